"""Peak memory of the hosted apps' first start (issue 20, item 4): does either fit Streamlit Community Cloud?

    python -m benchmarks.hosting [--skip-full] [--timeout 1200]

*Analyst app*: ``streamlit run app/main.py`` on an empty ``SLICESCOPE_HOME`` until headless Chromium shows the Slices
page on the quick demo (built in front, inside the server), then on until the full demo, built behind it by a process
of its own (``python -m core demo``), is finished. *Worker app*: ``streamlit run annotate/main.py`` on a campaign
database of realistic pictures (320-px PNGs), until a task's first canvas is drawn.

Reported per process: VmHWM, the kernel's peak resident set; and, sampled every 0.2 s, the largest sum of the
resident sets of the server and all its descendants at one moment (what a container's memory limit sees).
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.first_start import CHROMIUM, ROOT, free_port

MIB = 1024 * 1024


def _status_kib(pid: int, field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/PID/status in KiB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _cuda_library_kib(pid: int) -> int:
    """Resident KiB of the CUDA libraries mapped into PID: this machine's torch is PyPI's CUDA build, which loads them
    even without a GPU; the CPU-only wheel the hosted apps install has none of them."""
    total, in_cuda_library = 0, False
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            for line in smaps:
                fields = line.split()
                if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
                    path = fields[5] if len(fields) > 5 else ""
                    in_cuda_library = "/nvidia/" in path or "libtorch_cuda" in path or "libc10_cuda" in path
                elif in_cuda_library and fields[0] == "Rss:":
                    total += int(fields[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


class MemoryWatch:
    """Samples a server and its descendants: each process's latest VmHWM and command, and the largest total RSS."""

    def __init__(self, server: int):
        self.server, self.peak_total_kib, self.high_water, self.commands, self.cuda = server, 0, {}, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rounds = 0
        while not self._stop.is_set():
            pids = [self.server, *_descendants(self.server)]
            if rounds % 25 == 0:  # reading smaps takes a while: every 5 s
                for pid in pids:
                    self.cuda[pid] = max(self.cuda.get(pid, 0), _cuda_library_kib(pid))
            rounds += 1
            total = 0
            for pid in pids:
                total += _status_kib(pid, "VmRSS")
                high = _status_kib(pid, "VmHWM")
                if high:
                    self.high_water[pid] = max(high, self.high_water.get(pid, 0))
                    self.commands.setdefault(pid, _command(pid))
            self.peak_total_kib = max(self.peak_total_kib, total)
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def high_water_mib(self, pid: int) -> float:
        return self.high_water.get(pid, 0) / 1024

    def cuda_mib(self, pid: int) -> float:
        return self.cuda.get(pid, 0) / 1024

    def builders(self) -> list[int]:
        return [pid for pid, command in self.commands.items() if "core demo" in command]


def _start_server(script: str, home: Path, port: int, database_url: str | None = None) -> subprocess.Popen:
    environment = {**os.environ, "SLICESCOPE_HOME": str(home)}
    environment.pop("SLICESCOPE_WORKSPACES", None)
    environment.pop("SLICESCOPE_DATABASE_URL", None)
    if database_url:
        environment["SLICESCOPE_DATABASE_URL"] = database_url
    return subprocess.Popen([sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(processes: list[int]) -> None:
    """End the server and the builders it started (each in a session of its own), by their ids."""
    for pid in processes:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _open(page, url: str, deadline: float) -> None:
    while True:
        try:
            page.goto(url, timeout=10_000)
            return
        except Exception:  # the server is not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def analyst_app(home: Path, timeout: float, wait_for_full: bool) -> None:
    from playwright.sync_api import sync_playwright

    from core.demo import is_demo_built

    port = free_port()
    started = time.monotonic()
    server = _start_server("app/main.py", home, port)
    watch = MemoryWatch(server.pid)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            deadline = started + timeout
            _open(page, f"http://127.0.0.1:{port}/", deadline)
            page.get_by_role("heading", name="Slices ·").first.wait_for(timeout=(deadline - time.monotonic()) * 1000)
            page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=(deadline - time.monotonic()) * 1000)
            opened = time.monotonic() - started
            server_at_page = _status_kib(server.pid, "VmHWM") / 1024
            print(f"analyst app: Slices page on the quick demo after {opened:.0f} s; server VmHWM {server_at_page:.0f} MiB "
                  f"(quick demo built inside the server), all processes together at most {watch.peak_total_kib / 1024:.0f} MiB so far", flush=True)
            if wait_for_full:
                while not is_demo_built(home / "demo") and time.monotonic() < deadline:
                    time.sleep(2)
                page.reload()  # the app moves to the full demo: its first page there counts too
                page.get_by_role("heading", name="Slices ·").first.wait_for(timeout=max(1.0, deadline - time.monotonic()) * 1000)
                time.sleep(3)
                print(f"analyst app: full demo built after {time.monotonic() - started:.0f} s "
                      f"({'done' if is_demo_built(home / 'demo') else 'NOT finished before the timeout'})", flush=True)
            browser.close()
    finally:
        watch.stop()
        _stop([server.pid, *watch.builders()])
        server.wait(timeout=30)
    for pid in watch.builders():
        print(f"analyst app: full-demo builder (python -m core demo) VmHWM {watch.high_water_mib(pid):.0f} MiB, "
              f"of which CUDA libraries {watch.cuda_mib(pid):.0f} MiB")
    print(f"analyst app: server VmHWM {watch.high_water_mib(server.pid):.0f} MiB at the end, of which CUDA libraries "
          f"{watch.cuda_mib(server.pid):.0f} MiB; "
          f"largest total RSS of the server and its builders at one moment: {watch.peak_total_kib / 1024:.0f} MiB", flush=True)


def _campaign_database(folder: Path, images: int = 10) -> tuple[str, str]:
    """A one-task campaign of ``images`` pictures like the demo's (320-px PNGs of noise: the largest a picture gets); its URL and token."""
    import numpy as np
    from PIL import Image

    from core.crowd import CampaignImage, CampaignSettings, CampaignStore

    def png(pixels) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    rng = np.random.default_rng(0)
    pictures = {}
    for index in range(images):
        pixels = (rng.random((320, 320, 3)) * 255).astype(np.uint8)
        pictures[f"img-{index}"] = CampaignImage(64, 64, png(pixels), png(255 - pixels))
    url = f"sqlite:///{folder / 'campaign.sqlite'}"
    store = CampaignStore(url)
    created = store.create_campaign("benchmark", "hosting", list(pictures), CampaignSettings(
        images_per_task=images, workers_per_task=1, min_seconds_per_image=0), pictures=pictures)
    store.close()
    return url, created.tokens[0].token


def worker_app(folder: Path, timeout: float) -> None:
    from playwright.sync_api import sync_playwright

    url, token = _campaign_database(folder)
    port = free_port()
    server = _start_server("annotate/main.py", folder, port, database_url=url)
    watch = MemoryWatch(server.pid)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 390, "height": 844})
            _open(page, f"http://127.0.0.1:{port}/?token={token}", time.monotonic() + timeout)
            page.get_by_role("button", name="Start the task").click(timeout=timeout * 1000)
            page.locator("canvas.upper-canvas").wait_for(timeout=timeout * 1000)
            page.get_by_role("button", name="Next image →").click()
            page.get_by_text("Image 2 of").wait_for(timeout=timeout * 1000)
            time.sleep(2)
            browser.close()
    finally:
        watch.stop()
        _stop([server.pid])
        server.wait(timeout=30)
    print(f"worker app: a task opened and its first two images shown: server VmHWM {watch.high_water_mib(server.pid):.0f} MiB, "
          f"of which CUDA libraries {watch.cuda_mib(server.pid):.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-full", action="store_true", help="stop once the quick demo's Slices page is drawn")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds to wait for each stage")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, torch threads default; limit to compare with: 1.5 GB ≈ 1430 MiB", flush=True)
    with tempfile.TemporaryDirectory(prefix="slicescope-hosting-") as scratch:
        worker_folder = Path(scratch) / "worker"
        worker_folder.mkdir()
        worker_app(worker_folder, args.timeout)
        analyst_app(Path(scratch) / "analyst", args.timeout, wait_for_full=not args.skip_full)


if __name__ == "__main__":
    main()
