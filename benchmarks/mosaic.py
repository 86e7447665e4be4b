"""Cost of the Data Slice Mosaic, and pictures of what two of its tiles show.

    python -m benchmarks.mosaic [--demo DIR] [--per-tile 5]
    python -m benchmarks.mosaic --figures docs/ [--demo DIR]
    python -m benchmarks.mosaic --tiles [--demo DIR]

Builds the full demo if DIR has none (default: the app's demo folder).

Timing (default) runs on a copy of the demo's biased workspace with its
mosaics removed, so the first request is really a first one and the demo's own
cache is left alone. It times, at the demo's image size (64 px) with the
default inversion settings:

* ours, the first request: ``build_mosaic`` (tiles, model reload, every tile
  inverted in one batch by ``core.mosaic.inversion.invert_features``, stored);
* the cached second request: ``build_mosaic`` again, read from the workspace;
* the obvious alternative, one optimisation per tile (``invert_features`` with
  one target and one tile mask), timed on ``--per-tile`` tiles spread over the
  mosaic and extrapolated to all of them: every tile is the same 64-px image to
  optimise, whatever its shape.

The last line reads ``first_s=<x> cached_s=<y> per_tile_s=<z> ratio=<z/x>``:
seconds for the whole mosaic, batched and per tile, and how many times slower
per tile is.

``--figures DIR`` writes ``mosaic-background-slice.png`` and
``mosaic-object-slice.png`` into DIR: the tile of the largest background-driven
and of the largest object-driven slice (picked from the demo's ground truth by
``core.mosaic.check.demo_slices``), enlarged, beside the slice's most typical
real images, and prints the Mosaic-meaning check for both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from core.demo import build_demo, default_demo_dir, workspace_dir
from core.demo.mosaic import demo_images_and_masks, demo_slices
from core.extract import load_workspace_model
from core.mosaic import Mosaic, attention_on_objects, build_mosaic, invert_features, resemblance, tile_mask
from core.progress import tqdm_progress
from core.slicing import SliceParams, find_slices
from core.views import typical_members
from core.workspace import Workspace, is_workspace

TILE_PX = 256  # the 64-px tile, enlarged 4× with nearest-neighbour so its pixels stay visible
MEMBER_PX = 128
MEMBERS = 8  # real images beside each tile, in two rows
FIGURE_NAMES = {"background": "mosaic-background-slice.png", "object": "mosaic-object-slice.png"}
WHAT_READS = {
    "background": "background-driven: mostly non-circles on water predicted \"circle\"",
    "object": "object-driven: mostly red squares on land, correctly predicted \"square\"",
}


def slice_targets(workspace: Workspace, mosaic: Mosaic) -> np.ndarray:
    """Each tile's inversion target, the mean F_W of its slice, as ``build_mosaic`` computes it."""
    slice_ids = find_slices(workspace, "attribution", SliceParams())
    features = workspace.array("attribution_features")
    return np.stack([np.asarray(features[slice_ids == slice_id], dtype=np.float32).mean(axis=0) for slice_id in mosaic.slice_ids])


def time_mosaic(workspace: Workspace, per_tile: int) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "workspace"
        shutil.copytree(workspace.path, copy)
        for stored in (copy / "derived").glob("*mosaic*"):
            stored.unlink()
        fresh = Workspace(copy)
        print(f"{len(fresh.images)} images, {torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.2f} at the start")

        started = time.perf_counter()
        mosaic = build_mosaic(fresh)
        first = time.perf_counter() - started
        started = time.perf_counter()
        build_mosaic(fresh)
        cached = time.perf_counter() - started

        model = load_workspace_model(fresh)
        targets = slice_targets(fresh, mosaic)
        normalize = fresh.manifest["transforms"]["normalize"]
        chosen = np.linspace(0, len(targets) - 1, min(per_tile, len(targets))).round().astype(int)
        single = []
        for index in chosen:
            mask = tile_mask(mosaic.polygons[index], mosaic.boxes[index], model.image_size)[None]
            started = time.perf_counter()
            invert_features(model, targets[index : index + 1], mask, normalize)
            single.append(time.perf_counter() - started)
        per_tile_total = statistics.mean(single) * len(targets)

    tiles = len(targets)
    print(f"ours, first request (batched, {tiles} tiles): {first:.1f} s ({first / tiles:.2f} s per tile)")
    print(f"ours, cached second request: {cached:.3f} s")
    print(f"one optimisation per tile: {statistics.mean(single):.2f} s per tile (mean of {len(single)} tiles: "
          f"{', '.join(f'{s:.2f}' for s in single)} s), extrapolated to {tiles} tiles: {per_tile_total:.1f} s")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"first_s={first:.1f} cached_s={cached:.3f} per_tile_s={per_tile_total:.1f} ratio={per_tile_total / first:.1f}")


def tile_readability(workspace: Workspace) -> None:
    """How readable the tiles are, ours against the medoids' Voronoi diagram (the obvious tiling, and ours until issue 16).

    A tile is a sliver when its area is under 0.3 of the slice's √size share; *in tile* is the share of each slice's
    points its own tile covers, after our spreading (where our tiles live) or in the layout (where Voronoi's live).
    """
    from matplotlib.path import Path as Polygon
    from scipy.spatial import ConvexHull

    from core.mosaic import mosaic_tiles, polygon_area, power_cells, slice_medoids
    from core.slicing import default_slice_params, project

    layout = project(workspace, "attribution")
    hull = ConvexHull(layout)
    for name, params in (("default slicing", default_slice_params(len(workspace.images))), ("K-Means k=50", SliceParams(k=50))):
        slice_ids = find_slices(workspace, "attribution", params)
        ids, sizes = np.unique(slice_ids, return_counts=True)
        shares = np.sqrt(sizes) / np.sqrt(sizes).sum()
        medoids = slice_medoids(layout, slice_ids)
        started = time.perf_counter()
        voronoi = power_cells(layout[hull.vertices], np.array([medoids[i] for i in ids]), np.zeros(len(ids)))
        voronoi_seconds = time.perf_counter() - started
        started = time.perf_counter()
        ours = mosaic_tiles(layout, slice_ids)
        our_seconds = time.perf_counter() - started
        voronoi_ratio = np.array([polygon_area(cell) for cell in voronoi]) / hull.volume / shares
        our_ratio = np.array([tile.area for tile in ours]) / shares
        in_tile = np.mean([Polygon(cell).contains_points(layout[slice_ids == i]).mean() if len(cell) >= 3 else 0.0 for cell, i in zip(voronoi, ids)])
        print(f"{name}, {len(ids)} tiles: medoid Voronoi {int((voronoi_ratio < 0.3).sum())} slivers (area / share "
              f"{voronoi_ratio.min():.2f}–{voronoi_ratio.max():.2f}), {in_tile:.2f} of a slice's points in its tile, {voronoi_seconds:.2f} s; "
              f"ours {int((our_ratio < 0.3).sum())} slivers ({our_ratio.min():.2f}–{our_ratio.max():.2f}), {our_seconds:.2f} s")


def _tile_picture(rgba: np.ndarray) -> Image.Image:
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    # Light grey outside the tile, so its polygon's edge shows against the page.
    rgb = rgba[..., :3] * alpha + 235.0 * (1.0 - alpha)
    return Image.fromarray(rgb.round().astype(np.uint8)).resize((TILE_PX, TILE_PX), Image.Resampling.NEAREST)


def write_figures(workspace: Workspace, out: Path) -> None:
    mosaic = build_mosaic(workspace, progress=tqdm_progress())
    slice_ids = find_slices(workspace, "attribution", SliceParams())
    targets = slice_targets(workspace, mosaic)
    model = load_workspace_model(workspace)
    normalize = workspace.manifest["transforms"]["normalize"]
    features = workspace.array("attribution_features")
    images_table = workspace.images
    # Pillow's built-in font lacks arrows and ×, so the captions say -> and x.
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=12)
    out.mkdir(parents=True, exist_ok=True)
    for kind, slice_id in demo_slices(images_table, slice_ids).items():
        tile = mosaic.slice_ids.index(slice_id)
        members = np.flatnonzero(slice_ids == slice_id)
        images, masks = demo_images_and_masks(workspace, members)
        check = resemblance(model, mosaic.images[tile], targets[tile], images, masks, normalize)
        attention = attention_on_objects(workspace.array("gradcam")[members], masks)
        accuracy = images_table["correct"].to_numpy()[members].mean()
        print(f"{kind}-driven slice {slice_id}: {len(members)} images, accuracy {accuracy:.0%}, GradCAM on objects "
              f"{attention:.1f}× their area; inversion object share {check.object_share:.2f} "
              f"(unweighted {check.plain_object_share:.2f}): resembles the {check.resembles}")

        typical = typical_members(features, slice_ids, slice_id, MEMBERS)
        columns = MEMBERS // 2
        width = TILE_PX + 24 + columns * (MEMBER_PX + 8)
        header, footer = 52, 40
        figure = Image.new("RGB", (width + 16, header + 2 * (MEMBER_PX + 22) + footer), "white")
        draw = ImageDraw.Draw(figure)
        draw.text((8, 6), f"Slice {slice_id} · {len(members)} images · accuracy {accuracy:.0%} · {WHAT_READS[kind]}", fill="black", font=font)
        draw.text((8, 28), "left: its Data Slice Mosaic tile (feature inversion of the slice's mean F_W); right: its most typical images",
                  fill="dimgray", font=small)
        figure.paste(_tile_picture(mosaic.images[tile]), (8, header))
        for position, row in enumerate(typical):
            x = 8 + TILE_PX + 24 + (position % columns) * (MEMBER_PX + 8)
            y = header + (position // columns) * (MEMBER_PX + 22)
            picture = Image.open(workspace.image_path(images_table["path"].iat[row])).convert("RGB")
            figure.paste(picture.resize((MEMBER_PX, MEMBER_PX), Image.Resampling.NEAREST), (x, y))
            label, prediction, confidence = (images_table[column].iat[row] for column in ("label", "prediction", "confidence"))
            draw.text((x, y + MEMBER_PX + 3), f"{label} -> {prediction} {confidence:.0%}", fill="black", font=small)
        draw.text((8, header + 2 * (MEMBER_PX + 22) + 10),
                  f"Mosaic-meaning check: object share {check.object_share:.2f} (> 0.5 reads as the object): the tile resembles the {check.resembles}; "
                  f"GradCAM on objects {attention:.1f}x their area", fill="black", font=small)
        path = out / FIGURE_NAMES[kind]
        figure.save(path, optimize=True)
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=default_demo_dir())
    parser.add_argument("--per-tile", type=int, default=5, help="tiles optimised one at a time for the alternative")
    parser.add_argument("--figures", type=Path, help="write the two slice figures into this folder instead of timing")
    parser.add_argument("--tiles", action="store_true", help="measure how readable the tiles are (slivers, ours against Voronoi) instead of timing")
    args = parser.parse_args()

    workspace_path = workspace_dir(args.demo, "biased")
    if args.tiles and is_workspace(workspace_path):
        tile_readability(Workspace(workspace_path))  # reads a built demo's slices and layout, whatever preset built it
        return
    build_demo(args.demo, progress=tqdm_progress())
    workspace = Workspace(workspace_path)
    if args.figures:
        write_figures(workspace, args.figures)
    elif args.tiles:
        tile_readability(workspace)
    else:
        time_mosaic(workspace, args.per_tile)


if __name__ == "__main__":
    main()
