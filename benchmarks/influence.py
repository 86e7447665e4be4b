"""Influence embeddings (issue 7): do InfEmbed's slices find the demo's injected problems, and what do they cost?

    python -m benchmarks.influence [DEMO] [--k 20 50] [--arnoldi-dim 200] [--embedding-dim 100] [--hessian-images 1000]

DEMO is a built full demo (default /tmp/fulldemo if it exists, else the app's
demo folder, built if missing). Its biased workspace gets the training split
attached (``python -m core attach-train DEMO/workspace --data
DEMO/data/metadata.csv --split train``), then:

1. cost: the embeddings of the demo (Hessian factorisation on --hessian-images
   training images, gradients of all 5,000 training and 2,000 workspace
   images), timed in a fresh process on a copy of the workspace, with its peak
   memory (ru_maxrss); the embedding of 10,000 synthetic 64-px images through
   the demo CNN with those factors; and the per-example gradients three ways:
   one backward pass per image through the whole model (the naive loop), one
   vmap through the whole model, and SliceScope's vmap over the network cut
   below the counted layers (best of 3 runs on 256 workspace images), and one
   Hessian-vector product on the whole model and on the cut network;
2. quality, for each method (attribution F_W and features F by K-Means;
   InfEmbed, i.e. normalised K-Means on influence embeddings; plain K-Means on
   them; InfEmbed-Rule with A = 0.4, S = 25, B = 3) and each --k:
   * precision-at-10 of each injected group: the best, over slices of ≥ 10
     images, share of the group among the 10 members nearest the slice's centre
     (in the space the method sliced);
   * discovery rate (DR) and false discovery rate (FDR) over the slices the
     method *flags*: slices with accuracy below the overall accuracy, or, for
     InfEmbed-Rule, the slices that satisfy its rule. A target is discovered
     when one flagged slice with ≥ 80% of its images in the target covers ≥ 50%
     of it; a flagged slice is a false discovery when no target makes up ≥ 80%
     of it. Targets are the injected groups (all their images), and, since a
     group mixes several failures (background: four label → prediction pairs),
     also its *failure modes*: the group's misclassified images of one
     label → prediction pair, those with ≥ 25 images;
   * coherence on influence embeddings of the three K-Means slicings
     (core.influence.compare_slicings).

Prints Markdown tables; the figures are written up in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from core.data import Preprocess, read_image
from core.demo import build_demo, default_demo_dir, workspace_dir
from core.influence import (
    InfluenceEmbedder,
    InfluenceParams,
    RuleParams,
    compare_slicings,
    infembed_slices,
    influence_embeddings,
    influence_params,
    record_influence_params,
    representation_source,
    rule_slices,
)
from core.progress import tqdm_progress
from core.slicing import SliceParams, find_slices
from core.training import attach_training_data, training_data
from core.workspace import Workspace

GROUPS = ("background", "colour", "watermark", "flipped_label")
PURITY, COVERAGE, TOP, MIN_MODE = 0.8, 0.5, 10, 25
SYNTHETIC_IMAGES = 10_000
GRADIENT_IMAGES = 256
REPEATS = 3


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _embed_workspace(path: str, params: dict) -> dict:
    """In a fresh process: the workspace's influence embeddings from scratch, timed per step, with peak memory."""
    torch.set_num_threads(2)
    workspace, started, steps = Workspace(path), time.perf_counter(), {}

    def progress(step: str, done: int, total: int) -> None:
        first, _ = steps.get(step, (time.perf_counter(), None))
        steps[step] = (first, time.perf_counter())

    before = _rss_mb()
    influence_embeddings(workspace, InfluenceParams.from_record(params), progress)
    return {"seconds": time.perf_counter() - started, "steps": {step: end - start for step, (start, end) in steps.items()},
            "rss_before_mb": before, "rss_peak_mb": _rss_mb()}


def _embed_synthetic(checkpoint: str, factors: str, params: dict, n: int) -> dict:
    """In a fresh process: embed ``n`` random 64-px images (random labels) through the demo CNN with given factors."""
    from core.demo.model import build_demo_cnn

    torch.set_num_threads(2)
    module = build_demo_cnn()
    module.load_state_dict(torch.load(checkpoint, weights_only=True))
    embedder = InfluenceEmbedder(module, InfluenceParams.from_record(params)).restore(np.load(factors))
    generator = torch.Generator().manual_seed(0)
    before, started = _rss_mb(), time.perf_counter()

    def batches():
        for start in range(0, n, 64):
            size = min(64, n - start)
            yield torch.rand(size, 3, 64, 64, generator=generator), torch.randint(0, 4, (size,), generator=generator)

    vectors = embedder.transform(batches())
    return {"seconds": time.perf_counter() - started, "rss_before_mb": before, "rss_peak_mb": _rss_mb(), "shape": vectors.shape}


def _in_fresh_process(function, *args):
    # Not multiprocessing.Pool: its daemonic workers may not start the DataLoader's worker processes.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _best_of(method) -> tuple[float, object]:
    """Seconds of the fastest of a few runs after a warm-up (vmap's first call sets up its batching rules), and its result.

    The fastest, because other work on a shared machine only ever adds time.
    """
    method()
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        value = method()
        timings.append(time.perf_counter() - started)
    return min(timings), value


def speed(workspace: Workspace, params: InfluenceParams) -> tuple[dict, dict]:
    """Seconds per image of per-example gradients (a loop of backward passes, vmap on the whole model, vmap on the
    cut network) and of one Hessian-vector product (whole model, cut network)."""
    from core.demo.model import build_demo_cnn

    module = build_demo_cnn()
    module.load_state_dict(torch.load(workspace.manifest["model"]["checkpoint"], weights_only=True))
    embedder = InfluenceEmbedder(module.eval(), params)
    rows = workspace.images.head(GRADIENT_IMAGES)
    transforms = workspace.manifest["transforms"]
    preprocess = Preprocess(int(transforms["image_size"]), transforms["normalize"])
    images = torch.stack([torch.from_numpy(preprocess.to_array(read_image(workspace.image_path(path)).image)) for path in rows["path"]])
    labels = torch.tensor(rows["label_index"].to_numpy())
    names = embedder.parameter_names_
    weights = {name: parameter for name, parameter in module.named_parameters() if name in names}

    def loop() -> torch.Tensor:
        rows = []
        for image, label in zip(images, labels):
            gradients = torch.autograd.grad(F.cross_entropy(module(image[None]), label[None]), [weights[name] for name in names])
            rows.append(torch.cat([g.reshape(-1) for g in gradients]))
        return torch.stack(rows)

    def whole_model_vmap() -> torch.Tensor:
        detached = {name: weight.detach() for name, weight in weights.items()}

        def loss(w, x, y):
            return F.cross_entropy(functional_call(module, w, (x[None],)), y[None])

        parts = []
        for x, y in zip(images.split(64), labels.split(64)):
            g = vmap(grad(loss), in_dims=(None, 0, 0))(detached, x, y)
            parts.append(torch.cat([g[name].reshape(len(y), -1) for name in names], dim=1))
        return torch.cat(parts)

    def cut_vmap() -> torch.Tensor:
        return torch.cat([embedder.per_example_gradients(x, y) for x, y in zip(images.split(64), labels.split(64))])

    gradients, reference = {}, None
    for name, method in (("loop", loop), ("vmap, whole model", whole_model_vmap), ("vmap, cut network", cut_vmap)):
        seconds, value = _best_of(method)
        gradients[name] = seconds / len(labels)
        reference = value if reference is None else reference
        torch.testing.assert_close(value, reference, rtol=1e-3, atol=1e-5)

    direction = tuple(torch.randn_like(weights[name]) for name in names)

    def whole_model_hvp():
        def loss(*values):
            return F.cross_entropy(functional_call(module, dict(zip(names, values)), (images,)), labels)

        return torch.autograd.functional.hvp(loss, tuple(weights[name] for name in names), direction)[1]

    hvps = {"whole model": _best_of(whole_model_hvp)[0] / len(labels)}
    hvps["cut network"] = min(embedder.seconds_per_image(images, labels)[1] for _ in range(REPEATS))
    return gradients, hvps


# -- quality ----------------------------------------------------------------------------------------


def precision_at_10(vectors: np.ndarray, slice_ids: np.ndarray, in_group: np.ndarray) -> float:
    best = 0.0
    for slice_id in np.unique(slice_ids):
        members = np.flatnonzero(slice_ids == slice_id)
        if len(members) < TOP:
            continue
        centre = vectors[members].mean(axis=0)
        nearest = members[np.argsort(((vectors[members] - centre) ** 2).sum(axis=1), kind="stable")[:TOP]]
        best = max(best, float(in_group[nearest].mean()))
    return best


def discovery(slice_ids: np.ndarray, flagged: np.ndarray, target: np.ndarray, targets: list[str]) -> tuple[float, float, list[str]]:
    """(DR, FDR, targets missed): ``target`` names each image's target ('' for none)."""
    found, false = set(), 0
    for slice_id in flagged:
        members = slice_ids == slice_id
        shares = pd.Series(target[members]).value_counts(normalize=True)
        shares = shares[shares.index != ""]
        if shares.empty or shares.iloc[0] < PURITY:
            false += 1
        for name, share in shares.items():
            if share >= PURITY and (members & (target == name)).sum() >= COVERAGE * (target == name).sum():
                found.add(name)
    return len(found) / len(targets), false / max(1, len(flagged)), [name for name in targets if name not in found]


def slicings(workspace: Workspace, k: int, params: InfluenceParams) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """method → (slice ids, flagged slice ids, the vectors it sliced)."""
    correct = workspace.images["correct"].to_numpy(dtype=bool)
    overall = correct.mean()
    influence = influence_embeddings(workspace, params)
    slice_params = SliceParams(k=k)

    def below_overall(slice_ids: np.ndarray) -> np.ndarray:
        accuracy = pd.Series(correct).groupby(slice_ids).mean()
        return accuracy.index[accuracy < overall].to_numpy()

    result = {}
    for name, slice_ids, vectors in (
        ("attribution (F_W)", find_slices(workspace, "attribution", slice_params), workspace.array("attribution_features")),
        ("features (F)", find_slices(workspace, "features", slice_params), workspace.array("features")),
        ("influence (InfEmbed)", infembed_slices(workspace, slice_params, params), influence),
        # The comparison the paper's normalised centroids are weighed against (find_slices("influence") is InfEmbed's).
        ("influence, plain K-Means", KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(influence), influence),
    ):
        result[f"{name}, k={k}"] = (slice_ids, below_overall(slice_ids), np.asarray(vectors, dtype=np.float64))
    return result


def failure_mode_targets(images: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The demo's failure modes: per image, the mode it belongs to ('' for none), and the modes' names.

    A mode is an injected group's misclassified images of one label → prediction pair, with ≥ MIN_MODE images.
    """
    group = images["group"].to_numpy()
    cell = (images["group"] + ": " + images["label"] + " → " + images["prediction"]).to_numpy()
    failing = ~images["correct"].to_numpy(dtype=bool) & (group != "none")
    counts = pd.Series(cell[failing]).value_counts()
    modes = [name for name, count in counts.items() if count >= MIN_MODE]
    return np.where(failing & np.isin(cell, modes), cell, ""), modes


def quality_rows(workspace: Workspace, methods: dict) -> pd.DataFrame:
    images = workspace.images
    group = images["group"].to_numpy()
    group_target = np.where(np.isin(group, GROUPS), group, "")
    mode_target, modes = failure_mode_targets(images)
    rows = []
    for method, (slice_ids, flagged, vectors) in methods.items():
        row = {"method": method, "flagged": len(flagged)}
        for name in GROUPS:
            row[f"P@10 {name}"] = precision_at_10(vectors, slice_ids, group == name)
        row["DR groups"], row["FDR groups"], _ = discovery(slice_ids, flagged, group_target, list(GROUPS))
        row["DR modes"], row["FDR modes"], missed = discovery(slice_ids, flagged, mode_target, modes)
        row["modes missed"] = "; ".join(missed)
        rows.append(row)
    return pd.DataFrame(rows), modes


def markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    """A DataFrame as a Markdown table (pandas' to_markdown needs tabulate, which is not installed)."""
    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "|".join("---:" if frame[c].dtype.kind in "if" else "---" for c in frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", nargs="?", type=Path, default=Path("/tmp/fulldemo") if Path("/tmp/fulldemo/demo.json").is_file() else default_demo_dir())
    parser.add_argument("--k", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--arnoldi-dim", type=int, default=InfluenceParams().arnoldi_dim)
    parser.add_argument("--embedding-dim", type=int, default=InfluenceParams().embedding_dim)
    parser.add_argument("--hessian-images", type=int, default=InfluenceParams().hessian_images)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()

    build_demo(args.demo, progress=tqdm_progress())
    workspace = Workspace(workspace_dir(args.demo, "biased"))
    params = replace(influence_params(workspace), arnoldi_dim=args.arnoldi_dim, embedding_dim=args.embedding_dim, hessian_images=args.hessian_images)
    training = training_data(workspace)
    if training is None or influence_params(workspace) != params:
        training = attach_training_data(workspace, args.demo / "data" / "metadata.csv", training.split if training else "train")
        record_influence_params(workspace, params)
    print(f"# Influence embeddings on {workspace.path}\n")
    print(f"training data: {training.num_images} images of {training.data} (split {training.split}); "
          f"P = {params.arnoldi_dim}, D = {params.embedding_dim}, Hessian on {params.hessian_images} training images "
          f"(a seeded subset), layers: {params.layers or 'the last block and the head'}\n")

    # 1. cost, in fresh processes so that peak memory is the embeddings' own
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "workspace"
        shutil.copytree(workspace.path, copy, ignore=shutil.ignore_patterns("derived", "*.sqlite*"))
        print("computing the demo's embeddings from scratch in a fresh process ...", flush=True)
        demo_cost = _in_fresh_process(_embed_workspace, str(copy), params.record())
        for produced in (copy / "derived").glob("influence_*"):
            if not (workspace.path / "derived" / produced.name).exists():
                shutil.copy2(produced, workspace.path / "derived" / produced.name)
    factors = workspace.derived_path("influence_factors", representation_source(workspace, params), ".npy")
    synthetic = _in_fresh_process(_embed_synthetic, workspace.manifest["model"]["checkpoint"], str(factors), params.record(), SYNTHETIC_IMAGES)
    gradient_seconds, hvp_seconds = speed(workspace, params)

    print("## Cost (2 CPU cores)\n")
    print("| what | seconds | peak RSS (MB) | RSS before (MB) |\n|---|---:|---:|---:|")
    print(f"| demo: all embeddings ({training.num_images} training + {len(workspace.images)} workspace images) | "
          f"{demo_cost['seconds']:.1f} | {demo_cost['rss_peak_mb']:.0f} | {demo_cost['rss_before_mb']:.0f} |")
    for step, seconds in demo_cost["steps"].items():
        print(f"| &nbsp;&nbsp;{step} | {seconds:.1f} | | |")
    print(f"| {SYNTHETIC_IMAGES:,} synthetic 64-px images, embeddings with the demo's factors | {synthetic['seconds']:.1f} | "
          f"{synthetic['rss_peak_mb']:.0f} | {synthetic['rss_before_mb']:.0f} |")
    loop = gradient_seconds["loop"]
    print(f"\n| per-example gradients ({GRADIENT_IMAGES} images, best of {REPEATS}) | ms per image | speed-up over the loop |\n|---|---:|---:|")
    for name, seconds in gradient_seconds.items():
        print(f"| {name} | {seconds * 1000:.2f} | {loop / seconds:.1f}× |")
    whole = hvp_seconds["whole model"]
    print(f"\n| one Hessian-vector product ({GRADIENT_IMAGES} images, best of {REPEATS}) | ms per image | speed-up |\n|---|---:|---:|")
    for name, seconds in hvp_seconds.items():
        print(f"| {name} | {seconds * 1000:.3f} | {whole / seconds:.1f}× |")

    # 2. quality
    methods = {}
    for k in args.k:
        methods.update(slicings(workspace, k, params))
    rule = rule_slices(workspace, RuleParams(), params)
    methods["influence-rule (A=0.4, S=25, B=3)"] = (rule.slice_ids, rule.flagged["slice"].to_numpy(), influence_embeddings(workspace, params).astype(np.float64))
    table, modes = quality_rows(workspace, methods)
    print(f"\n## Slice quality ({len(workspace.images)} held-out images)\n")
    print("Flagged: slices with accuracy below the overall accuracy (K-Means methods) or satisfying the rule (InfEmbed-Rule). "
          f"Failure modes ({len(modes)}): {'; '.join(modes)}.\n")
    print(markdown(table.drop(columns="modes missed")))
    print("\nfailure modes missed:")
    for method, missed in zip(table["method"], table["modes missed"]):
        print(f"- {method}: {missed or 'none'}")
    print("\n## Coherence on influence embeddings (lower is more coherent; share: of the total spread)\n")
    comparison = pd.concat([compare_slicings(workspace, k, influence=params) for k in args.k], ignore_index=True)
    print(markdown(comparison, 3))
    print(f"\nbenchmark ran in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
