"""The one exception type users see.

Every problem caused by the user's input (a file, a flag, a checkpoint) is raised
as :class:`SliceScopeError` with a single-line message that names the problem and
the fix. The CLI prints it as ``error: ...`` and the apps show it in a callout;
neither shows a traceback for it.
"""


class SliceScopeError(Exception):
    """A problem with the user's input, explained in one line with its fix."""

    def __init__(self, problem: str, fix: str | None = None):
        message = problem if fix is None else f"{problem} — {fix}"
        super().__init__(" ".join(message.split()))
