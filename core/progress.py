"""Progress reporting that works the same from the CLI, a notebook and the app.

Long steps in ``core`` accept a ``progress`` callable and call it as
``progress(step, done, total)``: ``step`` is a short human label ("extracting"),
``done`` and ``total`` count units of work. The CLI passes :func:`tqdm_progress`;
the Streamlit app passes a function that updates ``st.progress``; tests pass
``None`` (silent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

ProgressFn = Callable[[str, int, int], None]
T = TypeVar("T")


def silent(step: str, done: int, total: int) -> None:
    """A progress callback that reports nothing."""


def tqdm_progress() -> ProgressFn:
    """A callback drawing one tqdm bar per step on stderr, for the CLI."""
    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}

    def report(step: str, done: int, total: int) -> None:
        bar = bars.get(step)
        if bar is None:
            bar = bars[step] = tqdm(total=total, desc=step, unit="it", dynamic_ncols=True)
        bar.total = total
        bar.update(done - bar.n)  # tqdm rate-limits redraws itself
        if done >= total:
            bar.close()
            del bars[step]

    return report


def track(items: Iterable[T], step: str, total: int, progress: ProgressFn | None) -> Iterator[T]:
    """Yield ``items`` while reporting ``step`` progress, one unit per item."""
    report = progress or silent
    report(step, 0, total)
    for done, item in enumerate(items, start=1):
        yield item
        report(step, done, total)


def duration_text(seconds: float) -> str:
    """An estimate in words: seconds below a minute and a half, whole minutes above."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"

