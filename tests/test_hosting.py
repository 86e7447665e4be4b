"""Hosting on Streamlit Community Cloud: the analyst app's password gate, the secrets both apps read, the worker app's
independence from the analyst app, and the dependency files the platform installs (AppTest and plain reads; the
phone-sized browser test is in test_browser_worker.py)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import streamlit
from PIL import Image
from streamlit.runtime.secrets import Secrets
from streamlit.testing.v1 import AppTest

from app import ui as analyst_ui
from app.access import password_matches
from core.crowd import CampaignImage, CampaignSettings, CampaignStore

ROOT = Path(__file__).resolve().parent.parent
ANALYST_APP = ROOT / "app" / "main.py"
WORKER_APP = ROOT / "annotate" / "main.py"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    """A SliceScope home with no demo: an app that started building one would leave files here."""
    home = tmp_path / "home"
    monkeypatch.setenv("SLICESCOPE_HOME", str(home))
    monkeypatch.delenv("SLICESCOPE_WORKSPACES", raising=False)
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    return home


def analyst_app(password: str | None = PASSWORD, **secrets) -> AppTest:
    app = AppTest.from_file(str(ANALYST_APP), default_timeout=120)
    if password is not None:
        app.secrets["analyst"] = {"password": password}
    for name, section in secrets.items():
        app.secrets[name] = section
    return app


def only_the_password_form(app: AppTest) -> bool:
    return ([field.label for field in app.text_input] == ["Password"] and not app.sidebar.selectbox and not app.dataframe
            and [title.value for title in app.title] == ["SliceScope"])


def test_with_a_password_only_the_form_shows_and_no_demo_is_built(empty_home):
    app = analyst_app()
    app.run()
    assert not app.exception, app.exception
    assert only_the_password_form(app)
    assert not app.error
    assert not empty_home.exists()


def test_a_wrong_password_is_one_line_and_opens_nothing(empty_home):
    app = analyst_app()
    app.run()
    app.text_input[0].input("correct horse battery stapler")
    app.button[0].click().run()
    assert not app.exception, app.exception
    assert [error.value.splitlines() for error in app.error] == [[app.error[0].value]]
    assert app.error[0].value.startswith("Wrong password — ask whoever deployed SliceScope")
    assert only_the_password_form(app)
    assert not empty_home.exists()


def test_the_right_password_opens_the_app_for_the_session(demo_home, monkeypatch):
    monkeypatch.setenv("SLICESCOPE_HOME", str(demo_home))
    monkeypatch.delenv("SLICESCOPE_WORKSPACES", raising=False)
    app = analyst_app()
    app.run()
    app.text_input[0].input(PASSWORD)
    app.button[0].click().run()
    assert not app.exception, app.exception
    assert not app.error
    assert app.title[0].value.startswith("Slices · demo · biased model")
    app.run()  # a later run of the same session does not ask again
    assert not app.text_input or "Password" not in [field.label for field in app.text_input]
    assert app.title[0].value.startswith("Slices ·")


def test_without_a_password_the_app_opens_as_on_a_laptop(demo_home, monkeypatch, tmp_path):
    monkeypatch.setenv("SLICESCOPE_HOME", str(demo_home))
    monkeypatch.delenv("SLICESCOPE_WORKSPACES", raising=False)
    app = analyst_app(password=None, database={"url": f"sqlite:///{tmp_path / 'shared.sqlite'}"})
    app.run()
    assert not app.exception, app.exception
    assert app.title[0].value.startswith("Slices · demo · biased model")


@pytest.mark.parametrize("secrets, message", [
    ({"analyst": {"password": "  "}}, "[analyst] in the secrets has no password — add password = "),
    ({"analyst": {}}, "[analyst] in the secrets has no password — add password = "),
    ({"database": {"URL": "postgresql://host/db"}}, "[database] in the secrets has no url — add url = "),
    ({"worker": {"url": 8502}}, "[worker] in the secrets has no url — add url = "),
    ({"analyst": "hunter2"}, "The secrets give analyst as a plain value — write it as a [analyst] table"),
])
def test_missing_secrets_are_one_line_naming_the_fix(empty_home, secrets, message):
    app = analyst_app(password=None, **secrets)
    app.run()
    assert not app.exception, app.exception
    assert len(app.error) == 1 and app.error[0].value.startswith(message), [error.value for error in app.error]
    assert ".streamlit/secrets.toml.example" in app.error[0].value and "\n" not in app.error[0].value
    assert not app.text_input and not empty_home.exists()


def unreadable_secrets(tmp_path, monkeypatch) -> None:
    """Point Streamlit at a secrets file that is not TOML, as a deployer's typo would."""
    path = tmp_path / "secrets.toml"
    path.write_text('[analyst]\npassword = "unclosed\n')
    get_option = streamlit.config.get_option
    monkeypatch.setattr(streamlit.config, "get_option", lambda key: [str(path)] if key == "secrets.files" else get_option(key))
    monkeypatch.setattr(streamlit, "secrets", Secrets())  # a fresh one: the session's own has already looked for files


def test_an_unreadable_secrets_file_is_one_line_in_either_app(empty_home, tmp_path, monkeypatch):
    unreadable_secrets(tmp_path, monkeypatch)
    app = AppTest.from_file(str(ANALYST_APP), default_timeout=60)
    app.run()
    assert not app.exception, app.exception
    assert len(app.error) == 1 and app.error[0].value.startswith("The secrets could not be read (Error parsing secrets file at "), app.error
    assert "fix the file's TOML as in .streamlit/secrets.toml.example" in app.error[0].value
    assert not app.text_input and not empty_home.exists()
    worker = AppTest.from_file(str(WORKER_APP), default_timeout=60)
    worker.query_params["token"] = "x" * 43
    worker.run()
    assert not worker.exception, worker.exception
    assert len(worker.error) == 1 and worker.error[0].value.startswith("The secrets could not be read"), worker.error


def test_passwords_are_compared_as_bytes():
    assert password_matches(PASSWORD, PASSWORD)
    assert password_matches("pässwörd ✓", "pässwörd ✓")  # non-ASCII: compare_digest takes str only when ASCII
    assert not password_matches("pässwörd", "passwörd")
    assert not password_matches("", PASSWORD)


def test_the_worker_app_never_asks_for_the_analyst_password(empty_home, tmp_path):
    url = f"sqlite:///{tmp_path / 'campaign.sqlite'}"
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    picture = CampaignImage(8, 8, buffer.getvalue(), buffer.getvalue())
    store = CampaignStore(url)
    created = store.create_campaign("ws", "hosted", ["img-a"], CampaignSettings(images_per_task=1, workers_per_task=1, instructions="Box it."),
                                    pictures={"img-a": picture})
    store.close()
    worker = AppTest.from_file(str(WORKER_APP), default_timeout=60)
    worker.secrets["analyst"] = {"password": PASSWORD}
    worker.secrets["database"] = {"url": url}
    worker.query_params["token"] = created.tokens[0].token
    worker.run()
    assert not worker.exception, worker.exception
    assert not worker.error and not worker.text_input
    assert [button.label for button in worker.button] == ["Start the task"]


def test_the_worker_app_loads_no_analyst_module():
    """Run the worker app's script outside Streamlit and list what it imported: no page, no password gate, no System Menu."""
    listing = subprocess.run([sys.executable, "-c", (
        "import runpy, sys; runpy.run_path('annotate/main.py', run_name='__main__'); "
        "print('\\n'.join(f'{name} {getattr(module, \"__file__\", None)}' for name, module in sys.modules.items()))")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    names = {line.split(" ", 1)[0] for line in listing}
    files = {line.split(" ", 1)[1] for line in listing}
    assert "annotate.worker" in names  # the listing is the worker app's
    assert not {"app.access", "app.ui", "app.store"} & names
    assert not [file for file in files if file.startswith(str(ROOT / "pages"))]


def test_the_hosted_apps_install_cpu_only_torch_at_the_projects_versions():
    """Community Cloud installs the requirements.txt next to each entry point; both lead to the CPU index and to the
    torch and torchvision versions pyproject.toml pins, and the local requirements.txt stays the project, editable."""
    pinned = dict(requirement.split("==") for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                  if requirement.startswith(("torch==", "torchvision==")))
    for entry_point in ("app", "annotate"):
        assert "-r ../requirements-cloud.txt" in (ROOT / entry_point / "requirements.txt").read_text().splitlines()
    cloud = [line for line in (ROOT / "requirements-cloud.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert cloud == ["--extra-index-url https://download.pytorch.org/whl/cpu", f"torch=={pinned['torch']}+cpu",
                     f"torchvision=={pinned['torchvision']}+cpu", "-e ."]
    assert [line for line in (ROOT / "requirements.txt").read_text().splitlines() if not line.startswith("#")] == ["-e .[test]"]


def test_quick_none_opens_on_the_quick_demo_and_builds_no_full_demo(tiny_demo, tmp_path, monkeypatch):
    """SLICESCOPE_DEMO_PRESETS="quick,none" (the hosted template's root key): no builder process beside the server."""
    home = tmp_path / "home"
    shutil.copytree(tiny_demo, home / "demo-quick", ignore=shutil.ignore_patterns("*.sqlite*"))
    monkeypatch.setenv("SLICESCOPE_HOME", str(home))
    monkeypatch.setenv("SLICESCOPE_DEMO_PRESETS", "tiny,none")
    monkeypatch.delenv("SLICESCOPE_WORKSPACES", raising=False)

    def refuse(*_args, **_kwargs):
        raise AssertionError("started building the full demo")

    monkeypatch.setattr(analyst_ui, "start_background_build", refuse)
    app = AppTest.from_file(str(ANALYST_APP), default_timeout=120)
    app.run()
    assert not app.exception, [error.value for error in app.exception]
    assert app.sidebar.selectbox(key="menu_workspace").value.startswith(str((home / "demo-quick").resolve()))
    assert not (home / "demo").exists()
    assert not any("full demo is being built" in info.value for info in app.sidebar.info)
