"""Extraction on Ray (local mode) against the local path on the same machine: identical results, and what Ray costs.

    python -m benchmarks.ray_extraction [--images 4000] [--workers 2] [--image-size 64]

A generated ImageFolder (``tests.helpers.write_image_folder``: colour classes with
noise) and the small test CNN fitted to it are scanned twice into fresh
workspaces: locally (the scan's own DataLoader workers) and with ``--ray local``
and ``--workers`` actors, one CPU each. Ray's start-up (``ray.init``) is timed
on its own, then left out of the Ray figure, as a cluster that is already up
would not pay it. No speed-up is expected on 2 cores; the point is the same
arrays and an overhead under 1.3×. The last line reads
``images=<n> local_s=<a> ray_s=<b> ray_over_local=<b/a> identical=<True|False>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.distributed import connect, import_ray
from core.extract import scan
from core.workspace import ARRAY_NAMES
from tests.helpers import CLASS_COLOURS, small_scan_config, train_small_net, write_image_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="images in all (split over the classes)")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors, one CPU each")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slicescope-ray-") as scratch:
        root = Path(scratch)
        data = write_image_folder(root / "images", per_class=args.images // len(CLASS_COLOURS), size=args.image_size)
        checkpoint = train_small_net(data, root / "model.pt")
        options = {"image_size": args.image_size, "batch_size": 64, "chunk_size": 512}
        started = time.perf_counter()
        local = scan(small_scan_config(data, checkpoint, root / "local", **options))
        local_seconds = time.perf_counter() - started
        ray = import_ray()
        started = time.perf_counter()
        connect(ray, "local", args.workers)
        startup = time.perf_counter() - started
        started = time.perf_counter()
        distributed = scan(replace(small_scan_config(data, checkpoint, root / "ray", **options), ray="local", ray_workers=args.workers))
        ray_seconds = time.perf_counter() - started
        ray.shutdown()
        identical = local.images.equals(distributed.images) and all(
            np.allclose(np.asarray(local.array(name), np.float64), np.asarray(distributed.array(name), np.float64), rtol=1e-5, atol=1e-6)
            for name in ARRAY_NAMES)
    n = len(local.images)
    print(f"local: {local_seconds:.1f} s ({n / local_seconds:.0f} images/s); Ray local, {args.workers} workers: {ray_seconds:.1f} s "
          f"({n / ray_seconds:.0f} images/s) after {startup:.1f} s of ray.init; identical arrays: {identical}")
    print(f"images={n} local_s={local_seconds:.1f} ray_s={ray_seconds:.1f} ray_over_local={ray_seconds / local_seconds:.2f} identical={identical}")


if __name__ == "__main__":
    main()
