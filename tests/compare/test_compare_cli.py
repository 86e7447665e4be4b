"""``python -m core compare``: two workspaces in, segments.csv and clusters.csv out."""

from __future__ import annotations

import pandas as pd

from core.cli import main as cli_main


def test_compare_writes_segments_and_clusters(pair, tmp_path, capsys):
    biased, balanced = pair
    out = tmp_path / "comparison"
    code = cli_main(["compare", str(biased.path), str(balanced.path), "--class", "square", "--out", str(out), "--k", "3", "--per-model", "8", "--grid", "2"])
    assert code == 0
    segments, clusters = pd.read_csv(out / "segments.csv"), pd.read_csv(out / "clusters.csv")
    assert {"segment", "image_id", "x0", "y0", "x1", "y1", "model", "attribution", "cluster"} <= set(segments.columns)
    assert set(segments["segment"]) <= {0, 1, 2, 3} and len(clusters) == 3
    assert clusters["abs_disparity"].is_monotonic_decreasing
    printed = capsys.readouterr().out
    assert str(out / "segments.csv") in printed and str(out / "clusters.csv") in printed
    # The tiny demo's models call every image a square, so neither has a true negative or a false negative to sample.
    assert "model A has no true negatives for square" in printed and "model B has no false negatives for square" in printed


def test_compare_explains_bad_input_in_flags(pair, tmp_path, capsys):
    biased, balanced = pair
    code = cli_main(["compare", str(biased.path), str(balanced.path), "--class", "hexagon", "--out", str(tmp_path / "out")])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: class 'hexagon' is not one of") and error.endswith("set --class to one of them") and "\n" not in error


def test_bad_slic_settings_are_named_by_their_flags(pair, tmp_path, capsys):
    biased, balanced = pair
    code = cli_main(["compare", str(biased.path), str(balanced.path), "--class", "square", "--out", str(tmp_path / "out"), "--segments", "slic",
                     "--n-segments", "0"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --n-segments = 0 is not a number of superpixels") and "set --n-segments to" in error and "\n" not in error
