"""Background jobs: a real ``python -m core`` process started, read back from its log and status, and reaped."""

from __future__ import annotations

import os
import subprocess
import sys

from core.mitigation import LAUNCH_MARK, job_phase, last_error, log_path, process_alive, start_job


def test_a_job_that_fails_before_it_begins_says_why(tmp_path):
    out = tmp_path / "WS-v2"
    child = start_job(["mitigate", str(tmp_path / "missing"), "--from", "annotations", "--out", str(out)], out)
    assert job_phase(None, child) == "starting"  # running, no status of its own yet
    child.wait(timeout=120)
    assert child.returncode == 2 and job_phase(None, child) == "failed"
    first = last_error(out)
    assert first is not None and str(tmp_path / "missing") in first, log_path(out).read_text()[-500:]
    log = log_path(out).read_text()
    assert log.startswith(LAUNCH_MARK) and "-m core mitigate" in log
    # A second launch: only its own error counts.
    start_job(["evaluate", str(tmp_path / "elsewhere")], out).wait(timeout=120)
    assert log_path(out).read_text().count(LAUNCH_MARK) == 2 and str(tmp_path / "elsewhere") in (last_error(out) or "")


def test_the_phase_follows_the_status_and_the_process():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        running = {"pid": sleeper.pid, "state": "training"}
        assert process_alive(sleeper.pid, sleeper) and job_phase(running, sleeper) == "training"
        assert job_phase({**running, "state": "done"}) == "evaluating"  # done training, still scanning and evaluating
        assert job_phase({**running, "state": "cancelled"}) == "cancelled"
    finally:
        sleeper.kill()
        sleeper.wait()
    ended = {"pid": sleeper.pid, "state": "training"}
    assert not process_alive(sleeper.pid, sleeper) and job_phase(ended, sleeper) == "interrupted"
    assert job_phase({**ended, "state": "done"}, sleeper) == "done"
    assert process_alive(os.getpid())
