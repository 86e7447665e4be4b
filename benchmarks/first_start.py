"""A new user's first start (issue 16, item 2): seconds from ``streamlit run app/main.py`` on a fresh cache to a usable Slices page.

    python -m benchmarks.first_start [--busy] [--skip-alternative]

*Usable* means what a user sees in a real browser (headless Chromium): the Slices
page's title and its Slice Table drawn, no exception on the page. Ours opens on the
quick demo (built in front) while the full demo is built behind it; the obvious
alternative is what the app did before: build the full demo first, then open. The
alternative's time is the full build (``python -m core demo``, the same code the app
ran in front) plus our page's own opening time, measured in the same run.

``--busy`` runs one CPU-bound process beside it all (a second user, a training job),
as the issue measured. The timing is never a test: it is printed, with the ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def cpu_hog(enabled: bool):
    """One process spinning a core for as long as the block runs (nothing when not enabled)."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if enabled else None
    try:
        yield
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def seconds_to_usable_page(home: Path, timeout: float = 900) -> float:
    """Start the app with ``SLICESCOPE_HOME=home`` and return the seconds until a browser shows its Slice Table."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    environment = {**os.environ, "SLICESCOPE_HOME": str(home)}
    environment.pop("SLICESCOPE_WORKSPACES", None)
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true",
                               "--server.port", str(port), "--browser.gatherUsageStats", "false"],
                              cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            deadline = started + timeout
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/", timeout=10_000)
                    break
                except Exception:  # the server is not listening yet
                    if time.perf_counter() > deadline:
                        raise
                    time.sleep(0.5)
            page.get_by_role("heading", name="Slices ·").first.wait_for(timeout=(deadline - time.perf_counter()) * 1000)
            page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=(deadline - time.perf_counter()) * 1000)
            seconds = time.perf_counter() - started
            if page.locator('[data-testid="stException"]').count():
                raise RuntimeError("the Slices page shows an exception")
            browser.close()
        return seconds
    finally:
        server.terminate()
        server.wait(timeout=30)


def seconds_to_build_full_demo(home: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "core", "demo", "--out", str(home / "demo")], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", action="store_true", help="run one CPU-bound process beside the app")
    parser.add_argument("--skip-alternative", action="store_true", help="do not time the full build (minutes)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, {'one CPU-bound process beside' if args.busy else 'idle'}", flush=True)
    with cpu_hog(args.busy), tempfile.TemporaryDirectory(prefix="slicescope-first-start-") as scratch:
        ours_home = Path(scratch) / "ours"
        ours = seconds_to_usable_page(ours_home)
        print(f"ours: first usable Slices page after {ours:.1f} s (quick demo; the full one builds behind it)", flush=True)
        # Stop the full build ours started before timing the alternative, so the two do not share the CPUs.
        subprocess.run(["pkill", "-f", f"core demo --out {ours_home / 'demo'}"], check=False)
        if args.skip_alternative:
            return
        alternative_home = Path(scratch) / "alternative"
        build = seconds_to_build_full_demo(alternative_home)
        opening = seconds_to_usable_page(alternative_home)
        alternative = build + opening
        print(f"alternative (build the full demo first): {alternative:.1f} s ({build:.1f} s building, {opening:.1f} s opening)")
        print(f"ratio alternative / ours: {alternative / ours:.1f}×")


if __name__ == "__main__":
    main()
