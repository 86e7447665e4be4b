"""Dataset indexing: ImageFolder, CSV manifests, stable ids, malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.data import Preprocess, image_id, load_index, read_image
from core.errors import SliceScopeError


def test_image_folder_index_is_sorted_with_stable_ids(image_folder):
    index = load_index(image_folder)
    assert index.kind == "imagefolder"
    assert index.classes == ("apple", "leaf", "sky")
    assert list(index.table["path"]) == sorted(index.table["path"])
    assert index.table["image_id"].iat[0] == image_id("apple/apple_00.png")
    # Ids depend on the path only: the same dataset indexed elsewhere keeps them.
    moved = image_folder.rename(image_folder.parent / "moved")
    assert list(load_index(moved).table["image_id"]) == list(index.table["image_id"])


def test_manifest_paths_are_relative_to_the_csv_and_extra_columns_travel(image_folder):
    manifest = image_folder / "manifest.csv"
    manifest.write_text("path,label,split,group\napple/apple_00.png,apple,test,none\nsky/sky_01.png,sky,train,glare\nleaf/leaf_02.png,leaf,test,none\n")
    index = load_index(manifest)
    assert index.kind == "csv" and index.root == image_folder
    assert set(index.table.columns) >= {"image_id", "path", "label", "split", "group"}
    test_only = load_index(manifest, split="test")
    assert sorted(test_only.table["label"]) == ["apple", "leaf"]
    with pytest.raises(SliceScopeError, match="no rows with split 'val' — choose one of: test, train"):
        load_index(manifest, split="val")


@pytest.mark.parametrize(
    "content, message",
    [
        ("file,class\na.png,x\n", "lacks the column\\(s\\) label, path"),
        ("path,label\na.png,\n", "line 2 has an empty path or label"),
        ("", "cannot parse the manifest"),
    ],
)
def test_malformed_manifests_get_one_line_errors(tmp_path, content, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(SliceScopeError, match=message) as raised:
        load_index(manifest)
    assert "\n" not in str(raised.value)


def test_missing_and_wrong_kind_of_dataset(tmp_path):
    with pytest.raises(SliceScopeError, match="dataset not found"):
        load_index(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SliceScopeError, match="cannot read a dataset from notes.txt"):
        load_index(tmp_path / "notes.txt")
    with pytest.raises(SliceScopeError, match="has no class folders"):
        load_index(tmp_path)


def test_read_image_explains_corrupt_files(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="not a recognised image format"):
        read_image(tmp_path / "bad.png")
    Image.new("L", (5, 7), 128).save(tmp_path / "grey.png")
    image, sha1, conversion = read_image(tmp_path / "grey.png")
    assert image.mode == "RGB" and image.size == (5, 7) and len(sha1) == 40 and conversion == ""


def test_preprocess_resizes_whole_image_and_normalises():
    image = Image.fromarray(np.full((10, 20, 3), 255, np.uint8))
    assert Preprocess(16, "none").to_array(image).shape == (3, 16, 16)
    np.testing.assert_allclose(Preprocess(16, "none").to_array(image), 1.0)
    imagenet = Preprocess(16, "imagenet").to_array(image)
    np.testing.assert_allclose(imagenet[0], (1 - 0.485) / 0.229, rtol=1e-5)
    with pytest.raises(SliceScopeError, match="unknown normalisation"):
        Preprocess(16, "zscore")
