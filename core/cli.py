"""Command line: ``python -m core demo | scan | status | accept-model | attach-train | influence | slices | annotate | augment | mitigate | evaluate | campaign | concepts | compare``.

Errors caused by input are printed as one ``error: ...`` line (exit status 2);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from pathlib import Path

from core.errors import SliceScopeError
from core.progress import duration_text, tqdm_progress
from core.slicing import DEFAULT_REPRESENTATION, DEFAULT_SLICING, SLICING_METHODS, find_slices
from core.store import ANNOTATION_KINDS, NOTE_MAX_CHARS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="SliceScope: find where an image classifier fails, without metadata.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="build the built-in demo: data, two trained models and a workspace")
    demo.add_argument("--out", type=Path, required=True, help="folder to build the demo in (data/, models/, workspace/)")
    demo.add_argument("--preset", default="full", help="size of the demo: full (default), quick (what the app opens on while it builds the full one), "
                      "small (the mosaic meaning test), waterbirds (the full demo with larger objects and 5%% of the other shapes on water) or tiny (fast tests)")

    scan = commands.add_parser("scan", help="extract predictions, features and GradCAM for a dataset and model into a workspace")
    scan.add_argument("--data", type=Path, required=True, help="ImageFolder directory, or CSV manifest with columns path,label (paths relative to the CSV)")
    scan.add_argument("--model", type=Path, help="checkpoint: a state_dict (with --arch or --factory) or a TorchScript file")
    scan.add_argument("--arch", help="torchvision architecture name, e.g. resnet50")
    scan.add_argument("--num-classes", type=int, help="number of model outputs (with --arch or --factory)")
    scan.add_argument("--factory", help="module:function that returns the untrained nn.Module")
    scan.add_argument("--target-layer", help="layer for GradCAM (found automatically for common architectures)")
    scan.add_argument("--image-size", type=int, default=224, help="images are resized to S×S pixels (default 224)")
    scan.add_argument("--normalize", default="imagenet", choices=["imagenet", "none"], help="input normalisation (default imagenet)")
    scan.add_argument("--classes", help="the model's class names in output order, comma-separated (default: the dataset's classes, sorted)")
    scan.add_argument("--split", help="keep only manifest rows whose split column equals this")
    scan.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64; lower it if memory runs out)")
    scan.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    scan.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that pickle Python objects (runs their code: only for files you trust)")
    scan.add_argument("--overwrite", action="store_true", help="replace a workspace built from other inputs")
    scan.add_argument("--out", type=Path, required=True, help="workspace folder to create (or resume)")
    scan.add_argument("--ray", metavar="auto|local|ADDRESS", help="extract on a Ray cluster with Ray Data (pip install -r requirements-ray.txt): "
                      "auto joins the cluster this machine belongs to, local starts one here with --ray-workers CPUs, ADDRESS joins host:port. "
                      "Workers must see the data and --out at the same paths")
    scan.add_argument("--ray-workers", type=int, default=2, help="Ray actors extracting at once, one CPU (or GPU) each (default 2)")
    scan.add_argument("--train-data", type=Path, help="the data the model was trained on (ImageFolder or CSV manifest), recorded for influence embeddings and retraining")
    scan.add_argument("--train-split", help="split of --train-data the model was trained on")

    status = commands.add_parser("status", help="check a workspace's files (not only that they exist) and, with --repair, make it whole again")
    status.add_argument("workspace", type=Path, help="the workspace folder (made by python -m core scan or demo)")
    status.add_argument("--repair", action="store_true", help="drop damaged cached results and rescan damaged tables or arrays from the recorded inputs; annotations and your other files are kept")

    accept = commands.add_parser("accept-model", help="accept a workspace's changed model checkpoint as the one it was scanned with (results are kept, not recomputed)")
    accept.add_argument("workspace", type=Path, help="the workspace folder (made by python -m core scan or demo)")

    attach = commands.add_parser("attach-train", help="record the training data a workspace's model was fitted on (influence embeddings and mitigation read it)")
    attach.add_argument("workspace", type=Path, help="the workspace folder (made by python -m core scan or demo)")
    attach.add_argument("--data", type=Path, required=True, help="ImageFolder directory, or CSV manifest with columns path,label, of the training images")
    attach.add_argument("--split", help="keep only manifest rows whose split column equals this (the demo: train for the biased model)")
    attach.add_argument("--val-split", help="the manifest's split a retraining validates on (default: val, when --split is train and the manifest has it)")
    attach.add_argument("--layers", help="modules whose gradients count, comma-separated (default: the last block and the head, or the layers nearest the output within 100k parameters)")
    attach.add_argument("--arnoldi-dim", type=int, help="P, Arnoldi iterations of the Hessian factorisation (default 200; the paper: 500)")
    attach.add_argument("--embedding-dim", type=int, help="D, the influence embedding's dimension (default 100)")
    attach.add_argument("--hessian-images", type=int, help="training images the Hessian is estimated on, a seeded random subset (default 1000)")

    influence = commands.add_parser("influence", help="compute and cache a workspace's influence embeddings (after attach-train), here or on a Ray cluster")
    influence.add_argument("workspace", type=Path, help="the workspace folder (made by python -m core scan or demo), with training data attached")
    influence.add_argument("--ray", metavar="auto|local|ADDRESS", help="compute the per-example gradients on a Ray cluster with Ray Data (pip install -r "
                           "requirements-ray.txt), as scan --ray does; the Hessian's factorisation stays on this machine. "
                           "Workers must see the workspace and the training data at the same paths")
    influence.add_argument("--ray-workers", type=int, default=2, help="Ray actors computing gradients at once, one CPU (or GPU) each (default 2)")

    slices = commands.add_parser("slices", help="cluster a workspace into slices and write one row per image")
    slices.add_argument("workspace", type=Path, help="the workspace folder (made by python -m core scan or demo)")
    slices.add_argument("--method", default=DEFAULT_SLICING.method,
                        help=f"how slices are cut from --representation: kmeans, domino (error-aware mixture), planespot (2-D layout + confidence) "
                        f"or influence-rule (InfEmbed-Rule, on influence embeddings); default {DEFAULT_SLICING.method}, the benchmark's best. "
                        "The older names attribution, features and influence mean kmeans on that representation")
    slices.add_argument("--representation", default=DEFAULT_REPRESENTATION, choices=["attribution", "features", "influence"],
                        help=f"attribution (F_W, the attribution space), features (plain pooled features F) or influence (InfEmbed's embeddings; "
                        f"needs attach-train); default {DEFAULT_REPRESENTATION}")
    slices.add_argument("--k", type=int, default=DEFAULT_SLICING.k, help=f"number of K-Means slices, or the most a mixture may choose by BIC (default {DEFAULT_SLICING.k})")
    slices.add_argument("--accuracy", type=float, default=0.4, help="influence-rule: a slice is flagged at this accuracy or below (default 0.4)")
    slices.add_argument("--min-size", type=int, default=25, help="influence-rule: smallest slice (default 25)")
    slices.add_argument("--branching", type=int, default=3, help="influence-rule: K-Means clusters per split (default 3)")
    slices.add_argument("--seed", type=int, default=0, help="seed of the clustering and the layout (default 0)")
    slices.add_argument("--n-neighbors", type=int, default=15, help="UMAP n_neighbors")
    slices.add_argument("--min-dist", type=float, default=0.05, help="UMAP min_dist")
    slices.add_argument("--metric", default="euclidean", help="UMAP metric")
    slices.add_argument("--out", type=Path, required=True, help="CSV to write: path,label,prediction,confidence,slice,flagged, the slice's evidence "
                        "(slice_accuracy, rest_accuracy, its 95%% interval, q_value, slice_description), x,y")

    annotate = commands.add_parser("annotate", help="annotate a slice in the workspace's annotation store; or clear, undo, list")
    annotate.add_argument("workspace", type=Path, help="the workspace folder (made by python -m core scan or demo)")
    annotate.add_argument("--slice", type=int, help="slice id, in the slicing chosen by --representation, --method, --k and --seed")
    annotate.add_argument("--kind", help=f"what the slice shows: {', '.join(ANNOTATION_KINDS)}")
    annotate.add_argument("--note", default="", help=f"free text, one line, at most {NOTE_MAX_CHARS} characters")
    annotate.add_argument("--analyst", help="who annotates (default: your login name)")
    _add_slicing_arguments(annotate)
    action = annotate.add_mutually_exclusive_group()
    action.add_argument("--clear", action="store_true", help="remove the slice's annotation")
    action.add_argument("--undo", action="store_true", help="undo your latest annotation or relabel in this workspace")
    action.add_argument("--list", action="store_true", help="print the slicing's annotations and the images marked as mislabelled")

    augment = commands.add_parser("augment", help="make counterfactual training images (DASH): sources' objects in the style's context and colour")
    augment.add_argument("workspace", type=Path, help="the workspace folder (made by python -m core scan or demo)")
    augment.add_argument("--slices", help="source images: the training images nearest to these slices, e.g. 1,2 (or use --sources)")
    augment.add_argument("--sources", help="source images as slice:1,2, cluster:3 or rest (the training images not in --style)")
    augment.add_argument("--style", required=True, help="the look to give them: cluster:3 (of --clusters), slice:4 or rest; donors are of other classes")
    augment.add_argument("--clusters", type=int, default=8, help="K of the Cluster View that cluster:N refers to (2 to 20, default 8)")
    augment.add_argument("--foreground", default="segmentation", choices=["crowd", "attribution", "segmentation"],
                         help="where objects come from: the latest crowd campaign's boxes, the maps of slices annotated core, "
                         "or GrabCut on the boundary prior (default); images the first cannot serve fall back on segmentation")
    augment.add_argument("--keep-colour", action="store_true", help="keep the objects' own colour (default: take the donor object's)")
    augment.add_argument("--keep-background", action="store_true", help="keep the sources' own background (default: take the donor's)")
    augment.add_argument("--max-images", type=int, default=1000, help="at most this many counterfactuals (default 1000)")
    augment.add_argument("--per-source", type=int, default=1, help="counterfactuals per source image (default 1)")
    augment.add_argument("--donor-seed", type=int, default=0, help="seed of the donor draw (default 0)")
    augment.add_argument("--accept", action="store_true", help="accept the batch at once (default: leave it to preview, then `augment WS --accept-batch ID`)")
    augment.add_argument("--out", type=Path, help="also write the batch's images here as PNG files with a labels.csv (the batch itself stays in WS/augmentations)")
    augment.add_argument("--train-data", type=Path, help="the training images (default: those attached with attach-train, else the scanned manifest's train split)")
    augment.add_argument("--train-split", help="split of --train-data")
    _add_slicing_arguments(augment, "--slicing-method")

    batches = commands.add_parser("batches", help="list a workspace's augmentation batches, or accept or discard one")
    batches.add_argument("workspace", type=Path, help="the workspace folder (any version of the line)")
    decision = batches.add_mutually_exclusive_group()
    decision.add_argument("--accept", metavar="BATCH", help="accept this previewed batch (e.g. batch-001)")
    decision.add_argument("--discard", metavar="BATCH", help="discard this previewed batch")

    mitigate = commands.add_parser("mitigate", help="retrain the workspace's model (CoRM, augmentation, slice-balanced, last layer); scan the new version")
    mitigate.add_argument("workspace", type=Path, help="the workspace folder (made by python -m core scan or demo)")
    mitigate.add_argument("--method", help="what the retraining does, one or more of corm, augment, reweight, last-layer, "
                          "joined by commas or given as --method a --method b (default corm)", action="append", dest="methods")
    mitigate.add_argument("--batches", help="accepted augmentation batches to train with, e.g. batch-001,batch-002 (default with augment: every accepted batch)")
    mitigate.add_argument("--group-column", help="with reweight: balance this column of the training data (known groups) instead of the slices")
    mitigate.add_argument("--from-scratch", action="store_true", help="start from freshly initialised weights instead of the current model's")
    mitigate.add_argument("--from", dest="source", choices=["annotations", "propagation"],
                          help="treat the slices annotated spurious, or every slice whose propagated spuriousness reaches --threshold "
                          "(with --slices: only the record of why those slices; default annotations)")
    mitigate.add_argument("--out", type=Path, required=True, help="folder for the new version's workspace (its model goes to OUT.training)")
    mitigate.add_argument("--threshold", type=float, default=0.5, help="spuriousness at which --from propagation treats a slice (default 0.5)")
    mitigate.add_argument("--slices", help="treat exactly these slices, e.g. 1,2,3 (instead of choosing them by --from; --from is kept as the record of why)")
    mitigate.add_argument("--epochs", type=int, default=8, help="passes over the training images (default 8)")
    mitigate.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule (default 0.002)")
    mitigate.add_argument("--batch-size", type=int, default=64, help="training images per step (default 64)")
    mitigate.add_argument("--sigma", type=float, default=1.0, help="CoRM noise on the spurious regions, in [0, 1] pixel units (default 1.0)")
    mitigate.add_argument("--noise-region", default="attribution", choices=["attribution", "object-masks"],
                          help="where the noise goes: the model's GradCAM map (default, the paper) or everything outside the training data's object masks (mask_path column)")
    mitigate.add_argument("--train-data", type=Path, help="the images to retrain on (default: the training data attached with attach-train or scan --train-data, else the scanned manifest's train split)")
    mitigate.add_argument("--train-split", help="split of --train-data to retrain on")
    mitigate.add_argument("--val-split", help="split of --train-data to validate on (default: 10%% of the training images)")
    _add_slicing_arguments(mitigate, "--slicing-method")

    evaluate = commands.add_parser("evaluate", help="clean, core and spurious accuracy, RCS and worst-group accuracy; writes WS/metrics.json")
    evaluate.add_argument("workspace", type=Path, help="the workspace folder (made by python -m core scan or demo)")
    evaluate.add_argument("--regions", default="auto", choices=["auto", "ground_truth", "attribution"], help="core/spurious regions: the dataset's object masks (auto when it has mask_path) or the annotated slices' attribution masks")
    evaluate.add_argument("--sigma", type=float, default=0.5, help="evaluation noise, in [0, 1] pixel units (default 0.5)")
    _add_slicing_arguments(evaluate)

    campaign = commands.add_parser("campaign", help="SECA: a crowd campaign on a workspace: sample images, compute saliency, store tasks and write their links")
    campaign.add_argument("workspace", type=Path, help="the workspace folder (made by python -m core scan or demo)")
    campaign.add_argument("--images", type=int, default=300, help="images to annotate (default 300; clamped to the workspace's size)")
    campaign.add_argument("--sampling", default="random", choices=["random", "stratified"], help="random (default) or stratified by predicted class")
    campaign.add_argument("--saliency", default="smoothgrad", choices=["smoothgrad", "gradcam"], help="saliency method of the predicted class (default smoothgrad)")
    campaign.add_argument("--sigma", type=float, default=0.15, help="SmoothGrad noise, as a fraction of the input range (default 0.15)")
    campaign.add_argument("--samples", type=int, default=25, help="SmoothGrad noisy copies per image (default 25)")
    campaign.add_argument("--images-per-task", type=int, default=10, help="images per task (default 10)")
    campaign.add_argument("--workers-per-task", type=int, default=3, help="workers per task (default 3)")
    campaign.add_argument("--min-seconds", type=float, default=5.0, help="answers faster than this per image are stored as rejected (default 5)")
    campaign.add_argument("--hours", type=float, default=72.0, help="how long the task links stay valid (default 72)")
    campaign.add_argument("--seed", type=int, default=0, help="seed of the sampling and of SmoothGrad's noise")
    campaign.add_argument("--name", help="campaign name (default: 'Campaign <date>', or 'Simulated crowd <date>' with --simulate)")
    campaign.add_argument("--base-url", default="http://localhost:8502", help="address of the worker app, for the links (default http://localhost:8502)")
    campaign.add_argument("--links", type=Path, help="CSV to write the task links to (default WS/campaign-<id>-links.csv); they are shown only once")
    campaign.add_argument("--simulate", action="store_true", help="answer the campaign with the SIMULATED crowd (demo workspaces only: needs their ground truth)")

    concepts = commands.add_parser("concepts", help="SECA: reconcile crowd annotations into concepts; rank the concepts typical of each predicted class")
    concepts.add_argument("annotations", type=Path, help="a workspace (mines its crowd campaign) or a CSV: image_id,worker_id,box_id,entity_type,attribute, plus prediction (and label) unless --images")
    concepts.add_argument("--campaign", type=int, help="with a workspace: the campaign to mine (default: the workspace's latest)")
    concepts.add_argument("--images", type=Path, help="with a CSV: image_id,prediction[,label] (default: the prediction column of the annotations)")
    concepts.add_argument("--out", type=Path, required=True, help="CSV of findings: concept,kind,class,p_value,cramers_v,frequency,...")
    concepts.add_argument("--fasttext", type=Path, help="embed terms with this fastText .bin model (default: the bundled MiniLM)")
    concepts.add_argument("--vocabulary", type=Path, help="use this (edited) vocabulary CSV instead of reconciling again")
    concepts.add_argument("--save-vocabulary", type=Path, help="write the vocabulary (term → concept) here, to edit and pass back with --vocabulary")
    concepts.add_argument("--table", type=Path, help="also write the images × concepts table here")
    concepts.add_argument("--query", action="append", default=[], help="validation query, e.g. 'stamp AND NOT fish_body' (repeatable; always reported)")
    concepts.add_argument("--min-typicality", type=float, default=0.2, help="keep findings with Cramér's V at least this (default 0.2)")
    concepts.add_argument("--alpha", type=float, default=0.05, help="significance level of the chi-square tests (default 0.05)")
    compare = commands.add_parser("compare", help="IMACS: compare two model versions by what they attribute, in clusters of similar image segments")
    compare.add_argument("workspace_a", type=Path, help="model A's workspace (its training data also trains the embedding model)")
    compare.add_argument("workspace_b", type=Path, help="model B's workspace: the same images scanned by a model of the same classes")
    compare.add_argument("--class", dest="class_name", metavar="NAME", required=True, help="the class to compare the models on, one against the rest")
    compare.add_argument("--out", type=Path, required=True, help="folder to write segments.csv (one row per segment) and clusters.csv (one row per cluster) to")
    compare.add_argument("--k", type=int, default=8, help="clusters of segments (default 8)")
    compare.add_argument("--per-model", type=int, default=100, help="images per model, a quarter from each confusion cell (default 100, the paper's)")
    compare.add_argument("--segments", default="grid", choices=["grid", "slic"],
                         help="how images are cut: grid (default, the paper's: --grid cells per side) or slic (about --n-segments superpixels of similar colour per image)")
    compare.add_argument("--grid", type=int, default=4, help="segments per image side (default 4: the paper's 4 × 4 grid)")
    compare.add_argument("--n-segments", type=int, default=16, help="SLIC superpixels per image, about (default 16, as many as a 4 × 4 grid)")
    compare.add_argument("--compactness", type=float, default=10.0, help="SLIC: higher gives squarer, more grid-like superpixels, lower follows colour more (default 10)")
    compare.add_argument("--sampling", default="balanced", help="which images: balanced (default, the paper's: equal TP, FP, TN, FN per model), "
                         "disagreement (where the models disagree, most confident first), false_positives_a or false_positives_b (one model's)")
    compare.add_argument("--top-n", type=int, help="score only each image's N segments with the most GradCAM mass (the paper pre-selects 5); default: all")
    compare.add_argument("--embedder-arch", help="the third model that embeds segment tiles: a torchvision architecture (with --embedder-checkpoint); "
                         "default: a small CNN trained on model A's training data")
    compare.add_argument("--embedder-checkpoint", type=Path, help="the --embedder-arch model's state_dict (loaded with weights_only)")
    compare.add_argument("--baseline", default="mean_colour",
                         help="what a left-out segment shows: mean_colour (default: the dataset's mean colour) or blur (a blurred copy, the paper's)")
    return parser


def _add_slicing_arguments(command, method_flag: str = "--method") -> None:
    """The flags naming a slicing; ``mitigate`` and ``augment`` keep ``--method`` for what they do, so theirs is ``--slicing-method``."""
    command.add_argument("--representation", default="attribution", help="the slicing the annotations refer to (default attribution)")
    command.add_argument(method_flag, dest="slicing_method", default=DEFAULT_SLICING.method, choices=list(SLICING_METHODS),
                         help=f"how its slices were cut (default {DEFAULT_SLICING.method}, as in the app)")
    command.add_argument("--k", type=int, help="its number of slices, or the most a mixture could choose (default: the app's, 50 or fewer for small datasets)")
    command.add_argument("--seed", type=int, default=0, help="the slicing's seed (default 0, as in the app)")


def _slicing(args, workspace):
    """The slicing the flags name; without --k, the app's default number for ``workspace``'s size."""
    from core.mitigation.loop import Slicing
    from core.slicing import SliceParams, default_k

    k = default_k(len(workspace.images)) if args.k is None else args.k
    return Slicing(args.representation, SliceParams(k=k, seed=args.seed, method=args.slicing_method))


def _slice_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SliceScopeError(f"--slices {text!r} is not a list of slice numbers", "write them like --slices 1,2,3") from None


def _print_metrics(name: str, metrics) -> None:
    print(f"{name}: clean {metrics.clean_acc:.1%} · core {metrics.core_acc:.1%} · spurious {metrics.spurious_acc:.1%} · "
          f"RCS {metrics.rcs:.3f} · worst group {metrics.worst_group_acc:.1%} ({metrics.worst_group}) — regions: {metrics.regions}")


def training_params(args):
    """The retraining settings a parsed ``mitigate`` command asks for."""
    from core.mitigation.corm import TrainingParams

    return TrainingParams(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, sigma=args.sigma,
                          noise_region=args.noise_region.replace("-", "_"), from_scratch=args.from_scratch)


def _methods(values: list[str] | None) -> tuple[str, ...]:
    """--method a,b --method c → (a, b, c), spelled as the library spells them (last-layer → last_layer)."""
    return tuple(part.strip().replace("-", "_") for value in (values or ["corm"]) for part in value.split(",") if part.strip())


def _training_data_flags(args):
    from core.training import TrainingData

    if args.train_data is None:
        return None
    return TrainingData(args.train_data.expanduser().resolve(), args.train_split, getattr(args, "val_split", None))


def _run_augment(args) -> None:
    from core.mitigation.augment import AugmentParams
    from core.mitigation.batches import ImageGroup, accept_batch, batch_images, load_training_view, make_batch, style_clusters
    from core.mitigation.loop import read_annotations
    from core.store import open_store
    from core.training import default_training_data
    from core.versions import version_root
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    if (args.slices is None) == (args.sources is None):
        raise SliceScopeError("augment needs its source images", "pass --slices 1,2 or --sources slice:1,2 / cluster:3 / rest (one of them)")
    sources = ImageGroup("slice", tuple(_slice_list(args.slices))) if args.slices is not None else ImageGroup.parse(args.sources)
    style = ImageGroup.parse(args.style)
    params = AugmentParams(background=not args.keep_background, colour=not args.keep_colour, per_source=args.per_source, seed=args.donor_seed)
    store = open_store(workspace)
    try:
        state = read_annotations(store, workspace, _slicing(args, workspace))
        crowd_boxes = _crowd_object_boxes(workspace) if args.foreground == "crowd" else None
    finally:
        store.close()
    training = _training_data_flags(args) or default_training_data(workspace)
    view = load_training_view(workspace, state.slice_ids, state.relabels, training, tqdm_progress())
    clusters = style_clusters(view.features, args.clusters)[0] if "cluster" in (sources.kind, style.kind) else None
    core_slices = [s for s, kind in state.kinds.items() if kind == "core"]
    root = version_root(workspace)
    record = make_batch(root, view, sources, style, params, args.foreground, clusters, core_slices, crowd_boxes, args.max_images, tqdm_progress())
    if args.accept:
        record = accept_batch(root, record.batch_id)
    print(f"{record.batch_id} ({record.state}): {record.images:,} counterfactuals of {sources.describe()} in the style of {style.describe()} — "
          + ", ".join(f"{name} {count:,}" for name, count in record.per_class.items())
          + (f"; {record.left_out:,} images without a usable object left out" if record.left_out else ""))
    print(f"wrote {root.path / 'augmentations' / record.batch_id}")
    if args.out is not None:
        written = _write_batch_pictures(batch_images(root, record.batch_id), args.out)
        print(f"wrote {written:,} PNG files and labels.csv to {args.out}")
    if not args.accept:
        print(f"accept it with: python -m core batches {root.path} --accept {record.batch_id}")


def _crowd_object_boxes(workspace):
    """The latest crowd campaign's boxes named by a class name, per image id."""
    from core.crowd.pipeline import latest_campaign
    from core.mitigation.batches import object_boxes

    store = _open_campaign_store(workspace)
    try:
        campaign = latest_campaign(workspace, store)
        if campaign is None:
            raise SliceScopeError("the workspace has no crowd campaign to take boxes from", "run one (python -m core campaign), or use --foreground segmentation")
        return object_boxes(store.boxes_frame(campaign.id), workspace.classes)
    finally:
        store.close()


def _write_batch_pictures(arrays, out: Path) -> int:
    import pandas as pd
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    names = []
    for number, pixels in enumerate(arrays["pixels"]):
        name = f"{number:05d}.png"
        Image.fromarray(pixels).save(out / name)
        names.append(name)
    pd.DataFrame({"path": names, "label": arrays["labels"], "source_id": arrays["source_ids"], "donor_id": arrays["donor_ids"]}).to_csv(out / "labels.csv", index=False)
    return len(names)


def _run_batches(args) -> None:
    from core.mitigation.batches import accept_batch, batch_history, discard_batch, interrupted_batches
    from core.versions import version_root
    from core.workspace import Workspace

    root = version_root(Workspace(args.workspace))
    if args.accept or args.discard:
        record = accept_batch(root, args.accept) if args.accept else discard_batch(root, args.discard)
        print(f"{record.batch_id} is {record.state}")
        return
    history = batch_history(root)
    for name in interrupted_batches(root):
        print(f"{name} was interrupted while being made and does not count; make it again")
    print(history.to_string(index=False) if len(history) else "no augmentation batches yet: make one with python -m core augment")


def _run_mitigate(args) -> None:
    from core.mitigation.batches import accepted_batch_ids
    from core.mitigation.loop import evaluate_version, mitigate, plan_mitigation, read_annotations
    from core.mitigation.robustness import read_metrics
    from core.store import open_store
    from core.versions import version_root
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    params = training_params(args)
    training = _training_data_flags(args)
    methods = _methods(args.methods)
    batches = [part.strip() for part in (args.batches or "").split(",") if part.strip()]
    if "augment" in methods and not batches:
        batches = accepted_batch_ids(version_root(workspace))
    store = open_store(workspace)
    try:
        state = read_annotations(store, workspace, _slicing(args, workspace))
        treated = _slice_list(args.slices)
        if "corm" in methods and args.source is None and treated is None:
            raise SliceScopeError("CoRM needs the slices to treat", "pass --from annotations, --from propagation, or --slices 1,2,3")
        job = plan_mitigation(workspace, state, args.source or "annotations", args.out, args.threshold, params, training, treated=treated,
                              methods=methods, batches=batches, group_column=args.group_column)
        print(f"retraining with {' + '.join(job.methods)}"
              + (f"; CoRM treats slices {', '.join(map(str, job.treated_slices))}" if "corm" in job.methods else "")
              + (f"; batches {', '.join(job.batches)}" if job.batches else "") + f"; {len(job.relabels)} images relabelled")
        version = mitigate(job, state, progress=tqdm_progress())
        print(f"new version ready: {version.path} (model: {job.folder})")
        for member in (workspace, version):
            if member is version or read_metrics(member) is None:
                _print_metrics(member.name, evaluate_version(member, store, _slicing(args, workspace)))
    finally:
        store.close()


def _run_evaluate(args) -> None:
    from core.mitigation.loop import evaluate_version
    from core.store import open_store
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    store = open_store(workspace)
    try:
        metrics = evaluate_version(workspace, store, _slicing(args, workspace), args.regions, args.sigma, progress=tqdm_progress())
    finally:
        store.close()
    _print_metrics(workspace.name, metrics)
    print(f"wrote {workspace.path / 'metrics.json'}")


def _run_demo(args) -> None:
    from core.demo import build_demo

    result = build_demo(args.out, preset=args.preset, progress=tqdm_progress())
    print(f"demo ready: {result.workspace}")
    print(result.summary())


def _run_scan(args) -> None:
    from core.extract import ScanConfig, scan
    from core.models import ModelSpec

    if args.batch_size < 1:
        raise SliceScopeError("--batch-size must be at least 1", "e.g. --batch-size 64")
    if args.train_split is not None and args.train_data is None:
        raise SliceScopeError("--train-split needs --train-data", "pass --train-data PATH with it")
    spec = ModelSpec(checkpoint=args.model, arch=args.arch, num_classes=args.num_classes, factory=args.factory, trust_checkpoint=args.trust_checkpoint)
    classes = tuple(name.strip() for name in args.classes.split(",")) if args.classes else None
    config = ScanConfig(
        data=args.data, model=spec, out=args.out, image_size=args.image_size, normalize=args.normalize,
        target_layer=args.target_layer, classes=classes, split=args.split, batch_size=args.batch_size,
        device=args.device, overwrite=args.overwrite, ray=args.ray, ray_workers=args.ray_workers,
    )
    workspace = scan(config, progress=tqdm_progress())
    report = workspace.report
    print(f"workspace ready: {workspace.path}")
    print(f"{report['num_images']} images, accuracy {report['accuracy']:.1%}, {report['num_skipped']} skipped (listed in report.json)")
    if report.get("num_converted"):
        kinds = "; ".join(f"{kind}: {entry['n']}" for kind, entry in report["converted"].items())
        print(f"{report['num_converted']} images converted to 8-bit RGB ({kinds})")
    if report.get("duplicate_rows"):
        print(f"{len(report['duplicate_rows'])} images listed more than once in the manifest were scanned once (listed in report.json)")
    if args.train_data is not None:
        from core.training import attach_training_data

        training = attach_training_data(workspace, args.train_data, args.train_split)
        print(f"training data recorded: {training.num_images} images of {training.data}" + (f" (split {training.split})" if training.split else ""))


def _run_status(args) -> None:
    from core.workspace import workspace_status

    if args.repair:
        from core.extract import repair_workspace

        workspace, done = repair_workspace(args.workspace, progress=tqdm_progress())
        for line in done:
            print(line)
        print(f"workspace ready: {workspace.path}" + ("" if done else " (nothing needed repair)"))
        return
    status = workspace_status(args.workspace)
    print(f"{status.state}: {status.message}")
    if status.state != "ready":
        if status.can_rebuild:
            print(f"repair it with: python -m core status {args.workspace} --repair")
        raise SystemExit(1)


def _run_accept_model(args) -> None:
    from core.extract import accept_model_checkpoint
    from core.workspace import Workspace

    digest = accept_model_checkpoint(Workspace(args.workspace))
    print(f"model checkpoint accepted (sha256 {digest[:12]}…); the workspace's results are kept as they were computed")


def _run_attach_train(args) -> None:
    from dataclasses import replace

    from core.influence import influence_params, record_influence_params
    from core.training import attach_training_data
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    layers = tuple(name.strip() for name in args.layers.split(",")) if args.layers is not None else None
    given = {"layers": layers, "arnoldi_dim": args.arnoldi_dim, "embedding_dim": args.embedding_dim, "hessian_images": args.hessian_images}
    params = replace(influence_params(workspace), **{name: value for name, value in given.items() if value is not None})
    training = attach_training_data(workspace, args.data, args.split, args.val_split)
    record_influence_params(workspace, params)
    split = f", split {training.split}" if training.split else ""
    print(f"attached {training.num_images} training images ({training.data}{split}) to {workspace.path}")
    print(f"influence settings: layers {', '.join(params.layers) if params.layers else 'the default (last block and head, within 100k parameters)'}, "
          f"P = {params.arnoldi_dim}, D = {params.embedding_dim}, Hessian on {params.hessian_images} images")
    print(f"slice with: python -m core slices {workspace.path} --method influence --out slices.csv")


def _run_influence(args) -> None:
    import time

    import numpy as np

    from core.influence import compute_influence, is_computed
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    cached = is_computed(workspace)
    started = time.perf_counter()
    embeddings, training = compute_influence(workspace, progress=tqdm_progress(), ray=args.ray, ray_workers=args.ray_workers)
    where = f"on Ray ({args.ray}, {args.ray_workers} workers)" if args.ray else "here"
    unreadable = int(np.isnan(training).any(axis=1).sum())
    print(f"influence embeddings of {len(training)} training and {len(embeddings)} workspace images, D = {embeddings.shape[1]}: "
          + ("already cached" if cached else f"computed in {time.perf_counter() - started:.1f} s {where}") + f", in {workspace.path / 'derived'}"
          + (f"; {unreadable} unreadable training images have none (NaN rows)" if unreadable else ""))


# The names --method had before it was separate from --representation: K-Means on that representation.
_REPRESENTATION_METHODS = ("attribution", "features", "influence")


def _slices_frame(args, workspace, projection):
    """The CSV of ``slices``: the image columns, flagged and the evidence, x,y (+ slice_path, rule_holds for InfEmbed-Rule)."""
    from core.influence import RuleParams, rule_slices
    from core.slicing import SliceParams, image_frame, project

    method, representation = ("kmeans", args.method) if args.method in _REPRESENTATION_METHODS else (args.method, args.representation)
    if method == "influence-rule":
        representation = "influence"
    progress = tqdm_progress()
    if representation == "influence":
        _compute_influence_once(workspace, progress)
    rule = None
    if method == "influence-rule":
        rule = rule_slices(workspace, RuleParams(args.accuracy, args.min_size, args.branching, seed=args.seed), progress=progress)
        slice_ids = rule.slice_ids
    else:
        slice_ids = find_slices(workspace, representation, SliceParams(k=args.k, seed=args.seed, method=method), progress=progress)
    frame = image_frame(workspace.images, slice_ids, project(workspace, representation, projection, progress))
    if rule is not None:
        frame["slice_path"] = rule.slices.set_index("slice")["path"].reindex(rule.slice_ids).to_numpy()
        frame["rule_holds"] = rule.slices.set_index("slice")["flagged"].reindex(rule.slice_ids).to_numpy()
        print(f"InfEmbed-Rule: {len(rule.flagged)} of {len(rule.slices)} slices have accuracy ≤ {args.accuracy:.0%} on ≥ {args.min_size} images")
    return frame


def _compute_influence_once(workspace, progress) -> None:
    from core.influence import estimate_seconds, influence_embeddings, is_computed
    from core.training import require_training_data

    require_training_data(workspace)
    if not is_computed(workspace):
        print(f"computing influence embeddings, once: about {duration_text(estimate_seconds(workspace))} on this machine", flush=True)
    influence_embeddings(workspace, progress=progress)


def _run_slices(args) -> None:
    from core.evidence import evidence_order
    from core.slicing import ProjectionParams, slice_table
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    projection = ProjectionParams(n_neighbors=args.n_neighbors, min_dist=args.min_dist, metric=args.metric, seed=args.seed)
    frame = _slices_frame(args, workspace, projection)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    table = evidence_order(slice_table(workspace.images, frame["slice"].to_numpy()))
    flagged = table[table["flagged"]]
    print(f"wrote {len(frame)} rows to {args.out}; {len(flagged)} of {len(table)} slices flagged as problems"
          + (":" if len(flagged) else " (no slice is both large enough and clearly less accurate than the rest)"))
    for row in flagged.head(10).itertuples():
        print(f"  slice {row.slice}: {row.size} images, accuracy {row.accuracy:.0%} ({row.accuracy_low:.0%}–{row.accuracy_high:.0%}) "
              f"vs {row.rest_accuracy:.0%} elsewhere, q = {row.q_value:.1g}; {row.description}"
              + (f"; set apart by {row.metadata_description}" if row.metadata_description else ""))
    predicted = workspace.images["prediction"].unique()
    if len(predicted) == 1:
        print(f"note: the model predicts '{predicted[0]}' for every image, so slices can differ only in their labels")


def _run_annotate(args) -> None:
    from core.store import open_store
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    slicing, slice_ids = _slicing(args, workspace).resolve(workspace)
    analyst = args.analyst if args.analyst is not None else getpass.getuser()
    store = open_store(workspace)
    try:
        if args.undo:
            undone = store.undo_last(analyst, (workspace.fingerprint, workspace.dataset_fingerprint))
            print(undone or f"nothing to undo for {analyst} in {workspace.name}")
        elif args.list:
            _print_annotations(store, workspace, slicing)
        else:
            _annotate_slice(args, store, workspace, slicing, int(slice_ids.max()) + 1, analyst)
    finally:
        store.close()


def _annotate_slice(args, store, workspace, slicing: str, k: int, analyst: str) -> None:
    if args.slice is None:
        raise SliceScopeError("annotate needs the slice to annotate", "pass --slice N (or --list, --undo)")
    if args.slice >= k:
        raise SliceScopeError(f"slice {args.slice} does not exist: {slicing} has slices 0 to {k - 1}", "pass a smaller --slice, or the --method and --k the slices were made with")
    if args.clear:
        store.clear_slice(workspace.fingerprint, slicing, args.slice, analyst)
        print(f"cleared the annotation of slice {args.slice} ({slicing})")
        return
    if args.kind is None:
        raise SliceScopeError("annotate needs the kind of slice", f"pass --kind with one of: {', '.join(ANNOTATION_KINDS)} (or --clear)")
    annotation = store.set_slice(workspace.fingerprint, slicing, args.slice, args.kind, args.note, analyst)
    note = f": {annotation.note}" if annotation.note else ""
    print(f"slice {annotation.slice_id} ({slicing}) marked {annotation.kind} by {annotation.analyst}{note}")


def _print_annotations(store, workspace, slicing: str) -> None:
    annotations = store.slice_annotations(workspace.fingerprint, slicing)
    print(f"{len(annotations)} annotated slices in {workspace.name} ({slicing}, store: {store.url})")
    for annotation in sorted(annotations.values(), key=lambda annotation: annotation.slice_id):
        note = f" — {annotation.note}" if annotation.note else ""
        print(f"  slice {annotation.slice_id}: {annotation.kind}{note} ({annotation.analyst}, {annotation.created_at:%Y-%m-%d %H:%M} UTC)")
    relabels = store.relabels(workspace.dataset_fingerprint)
    paths = workspace.images.set_index("image_id")["path"]
    print(f"{len(relabels)} images marked as mislabelled")
    for relabel in relabels.values():
        print(f"  {paths.get(relabel.image_id, relabel.image_id)} should be {relabel.label} ({relabel.analyst}, {relabel.created_at:%Y-%m-%d %H:%M} UTC)")


def _open_campaign_store(workspace):
    from core.crowd.campaigns import CampaignStore

    return CampaignStore.for_version_line(workspace)


def _run_campaign(args) -> None:
    import os
    from datetime import UTC, datetime

    from core.crowd.pipeline import CampaignPlan, create_workspace_campaign, task_links
    from core.crowd.saliency import SaliencyParams
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    plan = CampaignPlan(
        n_images=args.images, sampling=args.sampling, saliency=SaliencyParams(args.saliency, args.sigma, args.samples, args.seed),
        images_per_task=args.images_per_task, workers_per_task=args.workers_per_task, min_seconds_per_image=args.min_seconds,
        hours_valid=args.hours, seed=args.seed,
    )
    name = args.name or f"{'Simulated crowd' if args.simulate else 'Campaign'} {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    store = _open_campaign_store(workspace)
    try:
        campaign = create_workspace_campaign(workspace, store, name, plan, progress=tqdm_progress())
        links = task_links(campaign, args.base_url)
        path = args.links or workspace.path / f"campaign-{campaign.id}-links.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        links.to_csv(path, index=False)
        os.chmod(path, 0o600)  # each link opens a task: keep them to whoever hands them out
        tasks = links["task_id"].nunique()
        print(f"campaign {campaign.id} ({campaign.name}): {campaign.n_images} images in {tasks} tasks × {plan.workers_per_task} workers, "
              f"stored in {store.url}")
        print(f"wrote {len(links)} task links to {path} (they are not stored anywhere else)")
        if args.simulate:
            from core.demo.crowd import simulate_campaign

            answered = simulate_campaign(workspace, store, campaign, seed=args.seed, progress=tqdm_progress())
            lazy = answered[answered["lazy"]]
            print(f"SIMULATED crowd: {len(answered)} assignments answered by {answered['worker_id'].nunique()} simulated workers "
                  f"({len(lazy)} by the lazy one, {lazy['worker_id'].iloc[0] if len(lazy) else '-'}, stored as rejected)")
        print(f"mine it with: python -m core concepts {workspace.path} --campaign {campaign.id} --out concepts.csv")
    finally:
        store.close()


def _campaign_concepts(args, embedder, vocabulary):
    """The workspace mode of ``concepts``: the campaign's table, vocabulary and findings, through core.crowd.pipeline.mine_campaign."""
    from core.crowd.pipeline import latest_campaign, mine_campaign, saved_vocabulary, vocabulary_path
    from core.workspace import Workspace

    if args.images is not None:
        raise SliceScopeError("--images goes with an annotation CSV, not with a workspace", "drop --images: the workspace knows each image's prediction")
    workspace = Workspace(args.annotations)
    store = _open_campaign_store(workspace)
    try:
        if args.campaign is None:
            latest = latest_campaign(workspace, store)
            if latest is None:
                raise SliceScopeError(f"workspace {workspace.name} has no crowd campaign", f"create one with: python -m core campaign {workspace.path}")
            args.campaign = latest.id
        if vocabulary is None:
            # The analyst's edits on the Concepts page are the campaign's vocabulary until discarded there.
            vocabulary = saved_vocabulary(workspace, args.campaign)
            if vocabulary is not None:
                print(f"using the vocabulary edited on the Concepts page: {vocabulary_path(workspace, args.campaign)}")
        mined = mine_campaign(workspace, store, args.campaign, embedder=embedder() if vocabulary is None else None,
                              vocabulary=vocabulary, progress=tqdm_progress())
    finally:
        store.close()
    print(f"campaign {mined.campaign.id} ({mined.campaign.name}): {len(mined.annotations)} accepted annotations")
    return mined.table, mined.vocabulary, mined.findings


MAX_DROPPED_LISTED = 5


def _print_dropped_terms(dropped) -> None:
    """One line naming the typed terms no concept can come from, so that they do not vanish unseen."""
    if dropped.empty:
        return
    listed = ", ".join(f"{row['term']!r} ×{row['count']} ({row['reason']})" for row in dropped.head(MAX_DROPPED_LISTED).to_dict("records"))
    more = f" and {len(dropped) - MAX_DROPPED_LISTED} more" if len(dropped) > MAX_DROPPED_LISTED else ""
    print(f"dropped {len(dropped)} typed terms no concept can come from: {listed}{more}")


def _run_concepts(args) -> None:
    from dataclasses import replace

    import pandas as pd

    from core.concepts import (
        FastTextEmbedder,
        MiniLMEmbedder,
        Vocabulary,
        build_concept_table,
        filter_results,
        mine_concepts,
        query_concepts,
        read_annotations_csv,
        reconcile,
    )
    from core.concepts.reconcile import dropped_terms
    from core.workspace import is_workspace

    vocabulary = Vocabulary.read_csv(args.vocabulary) if args.vocabulary is not None else None

    def embedder():
        return FastTextEmbedder(args.fasttext) if args.fasttext else MiniLMEmbedder()

    if is_workspace(args.annotations):
        table, vocabulary, mined = _campaign_concepts(args, embedder, vocabulary)
    elif args.campaign is not None or args.annotations.is_dir():
        raise SliceScopeError(f"{args.annotations} is not a workspace", "pass a workspace folder (to mine its campaign) or an annotation CSV")
    else:
        annotations, images = read_annotations_csv(args.annotations, args.images)
        if vocabulary is None:
            vocabulary = reconcile(annotations, embedder(), progress=tqdm_progress())
        else:
            vocabulary = replace(vocabulary, dropped=dropped_terms(annotations))
        table = build_concept_table(annotations, images, vocabulary)
        mined = mine_concepts(table)
    _print_dropped_terms(vocabulary.dropped)
    if args.save_vocabulary is not None:
        vocabulary.terms.to_csv(args.save_vocabulary, index=False)
        print(f"wrote the vocabulary ({len(vocabulary.terms)} terms, {len(vocabulary.concepts)} concepts) to {args.save_vocabulary}")
    if args.table is not None:
        table.to_frame().to_csv(args.table)
    findings = filter_results(mined, args.min_typicality, args.alpha)
    answers = [query_concepts(table, text) for text in args.query]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.concat([findings, *answers], ignore_index=True).to_csv(args.out, index=False)
    print(f"{table.concepts.shape[0]} images, {table.concepts.shape[1]} concepts; wrote {len(findings)} findings to {args.out}")
    for name, rows in findings.sort_values("cramers_v", ascending=False).groupby("class"):
        print(f"  most typical of {name}: " + " · ".join(f"{concept} (V {v:.2f})" for concept, v in zip(rows["concept"].head(3), rows["cramers_v"])))
    for answer in answers:
        print(f"  {answer['concept'].iloc[0]}: " + " · ".join(
            f"{row['class']} {row['frequency']:.0%} vs {row['frequency_outside']:.0%} elsewhere (V {row['cramers_v']:.2f}, p {row['p_value']:.2g})"
            for row in answer.to_dict("records")))


def _run_compare(args) -> None:
    from core.compare import CompareParams, EmbeddingParams, SegmentParams, ShapleyParams, compare_versions, estimate_seconds

    if (args.embedder_arch is None) != (args.embedder_checkpoint is None):
        raise SliceScopeError("an embedding model needs both `embedder_arch` and `embedder_checkpoint`", "pass both, or neither to train a small CNN")
    segments = SegmentParams(method=args.segments, grid=args.grid, n_segments=args.n_segments, compactness=args.compactness)
    params = CompareParams(per_model=args.per_model, k=args.k, sampling=args.sampling, segments=segments,
                           shapley=ShapleyParams(baseline=args.baseline, top_n=args.top_n),
                           embedding=EmbeddingParams(arch=args.embedder_arch, checkpoint=args.embedder_checkpoint))
    seconds = estimate_seconds(args.workspace_a, args.workspace_b, args.class_name, params)
    print(f"comparing on {args.class_name}: about {duration_text(seconds)}" if seconds else f"comparing on {args.class_name}: cached")
    result = compare_versions(args.workspace_a, args.workspace_b, args.class_name, params, progress=tqdm_progress())
    for message in result.sample.messages:
        print(f"note: {message}")
    args.out.mkdir(parents=True, exist_ok=True)
    result.segments.to_csv(args.out / "segments.csv", index=False)
    result.clusters.to_csv(args.out / "clusters.csv", index=False)
    print(f"wrote {len(result.segments)} segments ({result.workspace_a}: A, {result.workspace_b}: B) to {args.out / 'segments.csv'}")
    print(f"wrote {len(result.clusters)} clusters, largest |disparity| first, to {args.out / 'clusters.csv'}")
    top = result.clusters.iloc[0]
    print(f"  cluster {int(top['cluster'])}: attribution per image A {top['mean_A']:.3g}, B {top['mean_B']:.3g} "
          f"({int(top['images_A'])} and {int(top['images_B'])} images, {int(top['size_A'])} and {int(top['size_B'])} segments)")


COMMANDS = {
    "demo": _run_demo, "scan": _run_scan, "status": _run_status, "accept-model": _run_accept_model, "attach-train": _run_attach_train,
    "influence": _run_influence, "slices": _run_slices, "annotate": _run_annotate, "augment": _run_augment, "batches": _run_batches,
    "mitigate": _run_mitigate, "evaluate": _run_evaluate, "campaign": _run_campaign, "concepts": _run_concepts, "compare": _run_compare,
}


# The library's parameters whose flag is not their name with dashes.
_FLAG_ALIASES = {"checkpoint": "--model", "max_accuracy": "--accuracy", "learning_rate": "--lr", "source": "--from", "train_data": "--train-data"}


def parameter_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Library parameter name → the CLI flag that sets it, from every subcommand's options (plus the aliases)."""
    flags = {}
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                flags.update({option.dest: option.option_strings[-1] for option in subparser._actions if option.option_strings and option.dest != "help"})
    return {**flags, **_FLAG_ALIASES}


def in_flags(message: str, flags: dict[str, str]) -> str:
    """A library message as the CLI says it: each parameter the library names in backticks (`out`) becomes its flag (--out)."""
    return re.sub(r"`(\w+)`", lambda match: flags.get(match.group(1), match.group(0)), message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except SliceScopeError as error:
        print(f"error: {in_flags(str(error), parameter_flags(parser))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished chunks are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
