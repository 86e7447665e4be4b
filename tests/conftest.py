"""Shared fixtures."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from core.extract import scan
from core.workspace import Workspace
from tests.helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    build_small_net,
    free_port,
    running_app,
    small_scan_config,
    train_small_net,
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
    with running_app(demo_home, tmp_path_factory.mktemp("streamlit")) as base_url:
        yield base_url


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


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server's URL: ``$SLICESCOPE_TEST_POSTGRES_URL``, else a throwaway cluster of Debian's PostgreSQL.

    The cluster lives in a temporary folder, listens on a free loopback port and is stopped at the end of the session.
    PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user that Debian's package creates
    (``nobody`` if there is none). Skips where neither works, unless ``SLICESCOPE_REQUIRE_POSTGRES=1`` (set by CI),
    which turns that into a failure. A database named by ``$SLICESCOPE_TEST_POSTGRES_URL`` must be one the tests
    may empty: they drop its annotation table.
    """
    if os.environ.get("SLICESCOPE_TEST_POSTGRES_URL"):
        yield os.environ["SLICESCOPE_TEST_POSTGRES_URL"]
        return

    def unavailable(reason: str):
        if os.environ.get("SLICESCOPE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}, and SLICESCOPE_REQUIRE_POSTGRES=1 requires the PostgreSQL tests to run")
        pytest.skip(reason)

    # Debian keeps the server's programs off PATH, one folder per major version.
    on_path = shutil.which("initdb")
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0)
    initdb = Path(on_path).resolve() if on_path else (versions[-1] if versions else None)
    if initdb is None:
        unavailable("PostgreSQL's initdb is not installed (apt-get install -y postgresql), and SLICESCOPE_TEST_POSTGRES_URL is not set")
    account = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
    as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    # Under /tmp, not pytest's folder: that one is private to root, and the server's user must reach its files.
    base = Path(tempfile.mkdtemp(prefix="slicescope-postgres-", dir="/tmp" if account else None))
    if account:
        os.chown(base, account.pw_uid, account.pw_gid)
    data, port = base / "data", free_port()

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(initdb.parent / command[0]), *command[1:]], capture_output=True, text=True, timeout=120, check=False,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}, cwd=base, **as_user)

    started = False
    try:
        created = run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "--no-locale", "-E", "UTF8")
        if created.returncode != 0:
            unavailable(f"initdb failed: {created.stderr.strip()[-1000:]}")
        # Durability settings off: the cluster is thrown away, and the tests should not wait on the disk.
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        start = run("pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-o", options, "-w", "-t", "60", "start")
        started = start.returncode == 0
        if not started:
            log = (base / "server.log").read_text(errors="replace")[-1000:] if (base / "server.log").is_file() else ""
            unavailable(f"PostgreSQL did not start: {start.stderr.strip()[-1000:]} {log}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """An empty database: a SQLite file, or the session's PostgreSQL server, emptied again after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'annotations.sqlite'}"
        return
    server = request.getfixturevalue("postgres_url")
    yield server
    from sqlalchemy import create_engine, text

    engine = create_engine(server.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray cluster of 2 CPUs for one test module (started on first use, shut down at the module's end, so that
    modules do not share one); for modules that skip themselves without Ray (tests/test_ray_*.py)."""
    import gc

    import ray

    from core.distributed import connect

    connect(ray, "local", 2)
    yield ray
    gc.collect()  # no Ray Data iterator of these tests outlives the cluster
    ray.shutdown()


@pytest.fixture
def trained_workspace(demo_home, image_folder, tmp_path, monkeypatch) -> Workspace:
    """A scan of the colour-class images by a SmallNet trained on them, listed (``SLICESCOPE_WORKSPACES``) beside the tiny demo."""
    checkpoint = train_small_net(image_folder, tmp_path / "trained.pt")
    workspace = scan(small_scan_config(image_folder, checkpoint, tmp_path / "workspaces" / "colours"))
    assert workspace.images["prediction"].nunique() == 3
    monkeypatch.setenv("SLICESCOPE_HOME", str(demo_home))
    monkeypatch.setenv("SLICESCOPE_WORKSPACES", str(tmp_path / "workspaces"))
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    return workspace


def pytest_collection_modifyitems(items):
    """Mark what needs a real browser (``browser``) or a PostgreSQL server (``postgres``), so either can be left out
    with ``-m "not browser"`` on a machine without one, or run alone with ``-m postgres``."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {"chromium_browser", "chromium_executable"}:
            item.add_marker(pytest.mark.browser)
        parameter = getattr(item, "callspec", None)
        if "postgres_url" in fixtures or (parameter is not None and parameter.params.get("url") == "postgresql"):
            item.add_marker(pytest.mark.postgres)
