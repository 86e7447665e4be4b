"""Background retraining jobs: ``python -m core mitigate`` run in a session of its own, and where each one stands.

A job outlives the server (and the browser tab) that started it, so where it stands is read from what the job
writes (``status.json`` in its folder, see :mod:`core.mitigation.corm`) and whether its process still runs, never from
the memory of whoever started it. The job's output goes to ``mitigate.log`` in its folder; each launch is marked
there, so the error of the latest launch can be told from an earlier one's.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from core.mitigation.corm import job_folder
from core.store import DATABASE_URL_ENV

LOG_FILE = "mitigate.log"
LAUNCH_MARK = "=== launched"
# Where a job can stand; ``status.json`` gives the first five, the process table the rest.
PHASES = ("starting", "preparing", "training", "scanning", "evaluating", "done", "cancelled", "failed", "interrupted")
LIVE_PHASES = ("starting", "preparing", "training", "scanning", "evaluating")  # its process is at work: watch it
CANCELLABLE_PHASES = ("starting", "preparing", "training")  # the new version is not being written yet
_PROJECT_ROOT = Path(__file__).resolve().parent.parent  # where ``python -m core`` finds the package


def log_path(out: Path) -> Path:
    return job_folder(out) / LOG_FILE


def start_job(arguments: Sequence[str], out: Path, database_url: str | None = None) -> subprocess.Popen:
    """Run ``python -m core ARGUMENTS`` for the version at ``out`` in the background, its output appended to the log.

    ``database_url`` is the database the caller reads annotations from (an app's secrets), passed on so the job
    reads the same ones. The process gets a session of its own: it survives its parent, and a Ctrl-C in the
    parent's terminal does not reach it.
    """
    folder = job_folder(out)
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "core", *arguments]
    environment = dict(os.environ)
    if database_url:
        environment[DATABASE_URL_ENV] = database_url
    with open(log_path(out), "a") as log:
        log.write(f"{LAUNCH_MARK} {datetime.now(UTC).isoformat(timespec='seconds')}: {shlex.join(command)}\n")
        log.flush()
        return subprocess.Popen(command, cwd=_PROJECT_ROOT, env=environment, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def process_alive(pid: int, child: subprocess.Popen | None = None) -> bool:
    """Whether process ``pid`` still runs: asked of ``child`` when it is that process (which also reaps it), else of the system."""
    if child is not None and child.pid == pid:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def job_phase(status: dict | None, child: subprocess.Popen | None = None) -> str:
    """Where a job stands (one of PHASES): its ``status.json`` read against whether its process still runs.

    ``child`` is the process the caller started for it, if any: running without a status of its own yet, the job
    is starting; ended without one, the command failed before the job began (its log says why).
    """
    if child is not None and child.poll() is None and (status is None or status["pid"] != child.pid):
        return "starting"
    if status is None:
        return "failed"
    alive = process_alive(status["pid"], child)
    if status["state"] == "done":
        return "evaluating" if alive else "done"
    if status["state"] in ("preparing", "training", "scanning"):
        return status["state"] if alive else "interrupted"
    return status["state"]


def last_error(out: Path) -> str | None:
    """The ``error: …`` line the command printed in its latest launch, if any."""
    try:
        text = log_path(out).read_text(errors="replace")
    except OSError:
        return None
    errors = [line.removeprefix("error: ") for line in text.rsplit(LAUNCH_MARK, 1)[-1].splitlines() if line.startswith("error: ")]
    return errors[-1] if errors else None
