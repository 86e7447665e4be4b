"""Slices named by their images' metadata (issue 15, item 4): a shallow tree's best leaf, in words."""

import numpy as np
import pandas as pd
import pytest

from core.descriptions import DescriptionParams, describable_columns, describe_by_columns, describe_members
from core.errors import SliceScopeError
from core.slicing import slice_table


def metadata(n=600, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "path": [f"images/{i}.png" for i in range(n)],
        "label": rng.choice(["square", "no_square"], n),
        "colour": rng.choice(["orange", "blue", "green"], n),
        "texture": rng.choice(["plain", "stripes", "speckle"], n),
        "background": rng.choice(["light", "dark"], n),
        "size_px": rng.uniform(8, 30, n).round(1),
        "mask_path": [f"masks/{i}.png" for i in range(n)],
        "serial": [f"id-{i}" for i in range(n)],
        "constant": "x",
    })


def test_describable_columns_keep_properties_and_drop_ids_paths_constants_and_scan_columns():
    assert describable_columns(metadata()) == ["colour", "texture", "background", "size_px"]
    assert describable_columns(metadata(), exclude=["colour"]) == ["texture", "background", "size_px"]


def test_a_conjunction_of_two_values_is_named_with_its_coverage():
    table = metadata()
    members = ((table["colour"] == "green") & (table["texture"] == "plain")).to_numpy()
    words = describe_members(table, members)
    assert words.startswith(("colour = green & texture = plain", "texture = plain & colour = green")), words
    assert "(100% of the slice, 0% of the other images)" in words


def test_a_two_valued_column_reads_as_its_other_value_and_a_number_as_a_threshold():
    table = metadata()
    assert describe_members(table, (table["background"] == "dark").to_numpy()).startswith("background = dark (100%")
    words = describe_members(table, (table["size_px"] <= 12).to_numpy())
    assert words.startswith("size_px ≤ 12"), words


def test_a_slice_no_column_explains_gets_no_description():
    table = metadata()
    random_members = np.random.default_rng(1).random(len(table)) < 0.1
    assert describe_members(table, random_members) == ""
    assert describe_members(table[["path", "label"]], random_members) == ""


def test_a_noisy_slice_is_still_named_when_most_of_it_shares_the_values():
    table = metadata()
    rng = np.random.default_rng(2)
    members = ((table["colour"] == "orange") & (table["background"] == "light")).to_numpy() & (rng.random(len(table)) < 0.9)
    members |= rng.random(len(table)) < 0.01
    assert describe_members(table, members).startswith(("colour = orange & background = light", "background = light & colour = orange"))


def test_wrong_inputs_say_what_to_pass():
    with pytest.raises(SliceScopeError, match="one bool per row"):
        describe_members(metadata(), np.ones(3, dtype=bool))
    with pytest.raises(SliceScopeError, match="max_depth"):
        DescriptionParams(max_depth=0)


def test_slice_table_names_flagged_slices_by_metadata_and_leaves_the_rest_blank():
    table = metadata()
    blindspot = ((table["colour"] == "green") & (table["texture"] == "plain")).to_numpy()
    images = table.assign(prediction=table["label"], confidence=0.9, correct=~blindspot)
    slice_ids = np.where(blindspot, 1, 0)
    slice_ids[~blindspot & (table["background"] == "dark").to_numpy()] = 2
    result = slice_table(images, slice_ids).set_index("slice")
    assert result.loc[1, "flagged"]
    assert "colour = green" in result.loc[1, "metadata_description"] and "texture = plain" in result.loc[1, "metadata_description"]
    assert result.loc[0, "metadata_description"] == result.loc[2, "metadata_description"] == ""
    described = describe_by_columns(images, slice_ids, [2, 1])
    assert list(described.index) == [2, 1] and described[2].startswith("background = dark")
