"""Extraction, or influence's gradient passes, on Ray (local mode) against the local path on the same machine: identical
results, and what Ray costs.

    python -m benchmarks.ray_extraction [--images 4000] [--workers 2] [--image-size 64] [--arch small|resnet18|…] [--influence]

A generated ImageFolder (``tests.helpers.write_image_folder``: colour classes with
noise) and the small test CNN fitted to it (or, with ``--arch``, a torchvision
architecture with seeded random weights: a real model's cost per image, against
which Ray's fixed costs are measured) are scanned locally. Then, by default, the scan is repeated into a fresh
workspace with ``--ray local`` and ``--workers`` actors, one CPU each. With
``--influence``, the same images are attached as the training data instead, the
Hessian is factorised once here (not timed: it never runs on Ray), and the two
embedding passes (every training and every workspace image) are timed locally
and then on Ray. Ray's start-up (``ray.init``) is timed on its own, then left
out of the Ray figure, as a cluster that is already up would not pay it. No
speed-up is expected on 2 cores; the point is the same arrays and an overhead
under 1.3×. The last line reads
``images=<n> local_s=<a> ray_s=<b> ray_over_local=<b/a> identical=<True|False>``,
with ``influence_images`` (training plus workspace images) for ``--influence``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torchvision

from core.distributed import connect, import_ray
from core.extract import ScanConfig, scan
from core.influence import InfluenceParams, compute_influence, record_influence_params
from core.models import ModelSpec
from core.training import attach_training_data
from core.workspace import ARRAY_NAMES, Workspace
from tests.helpers import CLASS_COLOURS, small_scan_config, train_small_net, write_image_folder

# Small enough that the untimed factorisation takes seconds; the passes cost the same per image whatever P and D are.
INFLUENCE = InfluenceParams(arnoldi_dim=40, embedding_dim=20, hessian_images=500)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000, help="images in all (split over the classes)")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors, one CPU each")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--arch", default="small", help="small (the test CNN, trained) or a torchvision architecture (random weights)")
    parser.add_argument("--influence", action="store_true", help="time influence's gradient passes instead of the extraction")
    args = parser.parse_args()
    if args.influence and args.arch != "small":
        parser.error("--influence needs the trained test CNN: leave --arch out")
    with tempfile.TemporaryDirectory(prefix="slicescope-ray-") as scratch:
        root = Path(scratch)
        data = write_image_folder(root / "images", per_class=args.images // len(CLASS_COLOURS), size=args.image_size)
        # Trained to zero loss on these separable colours (it is, with thousands of images), the net would leave influence
        # no curvature to factorise: for --influence it is trained briefly.
        options = {"image_size": args.image_size, "batch_size": 64, "chunk_size": 512}
        if args.arch == "small":
            checkpoint = train_small_net(data, root / "model.pt", **({"steps": 15} if args.influence else {}))

            def config(out: Path) -> ScanConfig:
                return small_scan_config(data, checkpoint, out, **options)
        else:
            torch.manual_seed(0)
            torch.save(getattr(torchvision.models, args.arch)(num_classes=len(CLASS_COLOURS)).state_dict(), root / "model.pt")
            spec = ModelSpec(checkpoint=root / "model.pt", arch=args.arch, num_classes=len(CLASS_COLOURS))

            def config(out: Path) -> ScanConfig:
                return ScanConfig(data=data, model=spec, out=out, **options)
        started = time.perf_counter()
        local = scan(config(root / "local"))
        if args.influence:
            compare_influence(local, data, args.workers)
            return
        local_seconds = time.perf_counter() - started
        ray = import_ray()
        started = time.perf_counter()
        connect(ray, "local", args.workers)
        startup = time.perf_counter() - started
        started = time.perf_counter()
        distributed = scan(replace(config(root / "ray"), ray="local", ray_workers=args.workers))
        ray_seconds = time.perf_counter() - started
        ray.shutdown()
        identical = local.images.equals(distributed.images) and all(
            np.allclose(np.asarray(local.array(name), np.float64), np.asarray(distributed.array(name), np.float64), rtol=1e-5, atol=1e-6)
            for name in ARRAY_NAMES)
    n = len(local.images)
    print(f"{args.arch}, {args.image_size} px: local {local_seconds:.1f} s ({n / local_seconds:.0f} images/s); Ray local, {args.workers} workers: {ray_seconds:.1f} s "
          f"({n / ray_seconds:.0f} images/s) after {startup:.1f} s of ray.init; identical arrays: {identical}")
    print(f"images={n} local_s={local_seconds:.1f} ray_s={ray_seconds:.1f} ray_over_local={ray_seconds / local_seconds:.2f} identical={identical}")


def compare_influence(workspace: Workspace, data: Path, workers: int) -> None:
    """Time the two embedding passes of ``workspace`` (its own images as the training data) here, then on Ray."""
    attach_training_data(workspace, data)
    record_influence_params(workspace, INFLUENCE)
    passes_started = []

    def time_the_passes(step: str, done: int, total: int) -> None:
        if "gradients" in step and not passes_started:
            passes_started.append(time.perf_counter())

    local_embeddings, local_training = compute_influence(workspace, progress=time_the_passes)
    local_seconds = time.perf_counter() - passes_started[0]
    for path in (workspace.path / "derived").glob("influence_*"):
        if not path.name.startswith("influence_factors"):  # the factorisation stays cached: only the passes run again
            path.unlink()
    ray = import_ray()
    started = time.perf_counter()
    connect(ray, "local", workers)
    startup = time.perf_counter() - started
    started = time.perf_counter()
    ray_embeddings, ray_training = compute_influence(workspace, ray="local", ray_workers=workers)
    ray_seconds = time.perf_counter() - started
    ray.shutdown()
    identical = all(np.allclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True)
                    for a, b in ((local_embeddings, ray_embeddings), (local_training, ray_training)))
    n = len(local_embeddings) + len(local_training)
    print(f"influence passes, {len(local_training)} training + {len(local_embeddings)} workspace images (D = {INFLUENCE.embedding_dim}): "
          f"local {local_seconds:.1f} s ({n / local_seconds:.0f} images/s); Ray local, {workers} workers: {ray_seconds:.1f} s "
          f"({n / ray_seconds:.0f} images/s) after {startup:.1f} s of ray.init; identical arrays: {identical}")
    print(f"influence_images={n} local_s={local_seconds:.1f} ray_s={ray_seconds:.1f} ray_over_local={ray_seconds / local_seconds:.2f} "
          f"identical={identical}")


if __name__ == "__main__":
    main()
