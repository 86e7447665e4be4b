"""Tiny datasets and models for tests, made on the spot (nothing downloaded).

Importable as ``tests.helpers`` so that the factory path
``tests.helpers:build_small_net`` works like a user's own ``module:function``.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from core.extract import ChunkPlan, ScanConfig, _extract_whole_chunks
from core.influence import InfluenceParams, record_influence_params
from core.models import ModelSpec
from core.training import attach_training_data
from core.workspace import MANIFEST, Workspace, save_manifest

SMALL_NET_FACTORY = "tests.helpers:build_small_net"
CLASS_COLOURS = {"apple": (200, 40, 40), "leaf": (40, 170, 60), "sky": (50, 90, 210)}
# Influence settings small enough for tests: the tiny demo's 96 training images, seconds on 2 CPU cores.
SMALL_INFLUENCE = InfluenceParams(arnoldi_dim=40, embedding_dim=20, hessian_images=96)


def write_image_folder(root: Path, per_class: int = 6, size: int = 32, seed: int = 0) -> Path:
    """An ImageFolder with one colour-tinted class per folder and noisy pixels."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASS_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.asarray(colour) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i:02d}.png")
    return root


class SmallNet(nn.Module):
    """A conv trunk + linear head, like most classifiers SliceScope meets."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def build_small_net(num_classes: int = 3) -> SmallNet:
    torch.manual_seed(0)
    return SmallNet(num_classes)


def train_small_net(image_folder: Path, checkpoint: Path, steps: int = 60) -> Path:
    """SmallNet fitted to a :func:`write_image_folder` dataset (colour classes: a few Adam steps separate them)."""
    classes = sorted(CLASS_COLOURS)
    paths = sorted(image_folder.glob("*/*.png"))
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1) for path in paths])
    labels = torch.tensor([classes.index(path.parent.name) for path in paths])
    model = build_small_net(len(classes))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimiser.step()
    torch.save(model.state_dict(), checkpoint)
    return checkpoint


def small_scan_config(data: Path, checkpoint: Path, out: Path, **overrides) -> ScanConfig:
    """A scan of a :func:`write_image_folder` dataset with SmallNet, in chunks of 8 so that it has several."""
    options = {"image_size": 32, "normalize": "none", "batch_size": 4, "chunk_size": 8, "workers": 0}
    options.update(overrides)
    spec = ModelSpec(checkpoint=checkpoint, factory=SMALL_NET_FACTORY, num_classes=3)
    return ScanConfig(data=data, model=spec, out=out, **options)


def copy_workspace(tiny_demo: Path, tmp_path: Path, attach: bool) -> Workspace:
    """The tiny demo's biased workspace, copied so the test owns its cache; with the demo's training split or without."""
    target = tmp_path / "ws"
    shutil.copytree(tiny_demo / "workspace", target)
    manifest = tomllib.loads((target / MANIFEST).read_text())
    manifest.pop("training", None)
    manifest.pop("influence", None)
    save_manifest(target / MANIFEST, manifest)
    workspace = Workspace(target)
    if attach:
        attach_training_data(workspace, tiny_demo / "data" / "metadata.csv", "train")
        record_influence_params(workspace, SMALL_INFLUENCE)
    return workspace


# --- The scan's Ray work, with worker processes that die (tests/test_ray_extract.py) ---
# os._exit: no exception and no clean-up, as when the kernel kills a worker. Here, not in the test module, because Ray's
# workers import them by reference, and they can import tests.helpers (as they do its model factory) but not a test module.

def write_chunks_then_die_once(sentinel: Path, plan: ChunkPlan, model, chunks: list[int]) -> list[dict]:
    """Extract and write the chunks; the first call in any process then kills its worker before answering."""
    rows = _extract_whole_chunks(plan, model, chunks)
    try:
        os.close(os.open(sentinel, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return rows
    os._exit(1)


def die_after_the_first_chunk(plan: ChunkPlan, model, chunks: list[int]) -> list[dict]:
    """Write chunk 0; a worker given any other chunk dies, every time."""
    if chunks != [0]:
        os._exit(1)
    return _extract_whole_chunks(plan, model, chunks)


# --- Real-browser tests: `streamlit run app/main.py` driven by Playwright and Debian's Chromium ---

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_streamlit(home: Path, port: int, log_path: Path, script: str = "app/main.py", database_url: str | None = None):
    """``streamlit run script`` on ``port`` with ``$SLICESCOPE_HOME=home``; output goes to ``log_path``."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SLICESCOPE_HOME": str(home)}
    env.pop("SLICESCOPE_WORKSPACES", None)
    env.pop("SLICESCOPE_DATABASE_URL", None)  # annotations made by tests stay in the test's workspaces
    if database_url:
        env["SLICESCOPE_DATABASE_URL"] = database_url
    command = [
        sys.executable, "-m", "streamlit", "run", script,
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.address", "127.0.0.1", "--server.port", str(port),
        "--server.fileWatcherType", "none",  # edits to the sources during a run must not rerun the app
    ]
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_until_healthy(process, base_url: str, log_path: Path, timeout: float = 60.0) -> None:
    """Block until Streamlit's health endpoint answers "ok"; raise with the server's log if it never does."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}_stcore/health", timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"streamlit did not answer on {base_url} within {timeout:.0f} s:\n{log_path.read_text(errors='replace')[-4000:]}")


def stop_process(process, timeout: float = 10.0) -> None:
    """Terminate ``process``; kill it if it has not exited after ``timeout`` seconds."""
    import subprocess

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


@contextmanager
def running_app(home: Path, log_dir: Path, script: str = "app/main.py", database_url: str | None = None):
    """``streamlit run script`` (the analyst app) on ``home``'s demo, on a free port, until the block ends; yields its base URL."""
    port = free_port()
    log_path = log_dir / "streamlit.log"
    process = start_streamlit(home, port, log_path, script, database_url)
    base_url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_healthy(process, base_url, log_path, timeout=60)
        yield base_url
    finally:
        stop_process(process)


@contextmanager
def browser_page(browser, app_url: str, timeout_ms: int):
    """A fresh browser context and page on ``app_url``; uncaught JavaScript errors are collected in ``page.js_errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(timeout_ms)
    page = context.new_page()
    page.js_errors = []
    page.on("pageerror", lambda error: page.js_errors.append(str(error)))
    page.app_url = app_url
    try:
        yield page
    finally:
        context.close()
