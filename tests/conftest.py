"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    build_small_net,
    free_port,
    start_streamlit,
    stop_process,
    wait_until_healthy,
    write_image_folder,
)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def small_net_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "small.pt"
    torch.save(build_small_net().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A SliceScope home whose demo is built at the tiny preset, once per session."""
    from core.demo import build_demo

    home = tmp_path_factory.mktemp("slicescope-home")
    build_demo(home / "demo", preset="tiny")
    return home


@pytest.fixture(scope="session")
def tiny_demo(demo_home) -> Path:
    return demo_home / "demo"


@pytest.fixture(scope="session")
def streamlit_server(demo_home, tmp_path_factory):
    """``streamlit run app/main.py`` on the tiny demo, on a free port, once per session; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    process = start_streamlit(demo_home, port, log_path)
    base_url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_healthy(process, base_url, log_path, timeout=60)
        yield base_url
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    """Debian's Chromium, for Playwright to drive (never Playwright's own browser download).

    Skips where the browser or Playwright is missing, unless ``SLICESCOPE_REQUIRE_BROWSER=1`` (set by CI),
    which turns that into a failure. Session-scoped so that it is checked before the demo and server are set up.
    """
    def unavailable(reason: str):
        if os.environ.get("SLICESCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and SLICESCOPE_REQUIRE_BROWSER=1 requires the real-browser tests to run")
        pytest.skip(reason)

    if not CHROMIUM.exists():
        unavailable(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("playwright is not installed (pip install -r requirements.txt)")
    return CHROMIUM


@pytest.fixture(scope="module")
def chromium_browser(chromium_executable):
    """A headless Chromium launched by Playwright; module-scoped so Playwright's event loop is gone before other modules run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium_executable), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
