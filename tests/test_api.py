"""docs/API.md's tour runs as written: the library's main job end to end from a notebook's point of view."""

import importlib
import inspect
import re
import runpy
from pathlib import Path

import pytest

import core

API = Path(__file__).resolve().parent.parent / "docs" / "API.md"


def test_every_public_name_imports():
    assert set(core.__all__) >= {"scan", "find_slices", "slice_table", "build_mosaic", "mitigate", "evaluate_version"}
    for name in core.__all__:
        assert getattr(core, name) is not None, name


@pytest.mark.parametrize("package", ["core.mosaic", "core.influence", "core.crowd", "core.mitigation"])
def test_each_package_re_exports_every_public_name_of_its_modules(package):
    imported = importlib.import_module(package)
    for name in imported.__all__:
        assert getattr(imported, name) is not None, name
    for module_file in sorted(Path(imported.__file__).parent.glob("[!_]*.py")):
        module = importlib.import_module(f"{package}.{module_file.stem}")
        defined = {name for name, value in vars(module).items()
                   if not name.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == module.__name__}
        assert defined <= set(imported.__all__), f"{module.__name__} defines {sorted(defined - set(imported.__all__))} without re-exporting them"


def test_the_api_tour_runs_unchanged(tmp_path, monkeypatch, capsys):
    tour = tmp_path / "tour.py"
    tour.write_text(re.search(r"```python\n(.*?)```", API.read_text(), re.DOTALL).group(1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLICESCOPE_DATABASE_URL", raising=False)
    runpy.run_path(str(tour))
    printed = capsys.readouterr().out
    assert "metadata_description" in printed and "clean_acc=" in printed and "rcs=" in printed
    assert (tmp_path / "demo" / "workspace-v2" / "metrics.json").is_file()
