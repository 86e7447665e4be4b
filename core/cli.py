"""Command line: ``python -m core demo | scan | slices | annotate | mitigate | evaluate | concepts``.

Errors caused by input are printed as one ``error: ...`` line (exit status 2);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from core.errors import SliceScopeError
from core.progress import tqdm_progress
from core.store import ANNOTATION_KINDS, NOTE_MAX_CHARS


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="SliceScope: find where an image classifier fails, without metadata.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="build the built-in demo: data, two trained models and a workspace")
    demo.add_argument("--out", type=Path, required=True, help="folder to build the demo in (data/, models/, workspace/)")
    demo.add_argument("--preset", default="full", help="size of the demo: full (default), small (the mosaic meaning test) or tiny (fast tests)")

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
    scan.add_argument("--batch-size", type=int, default=64)
    scan.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    scan.add_argument("--trust-checkpoint", action="store_true", help="allow checkpoints that pickle Python objects (runs their code: only for files you trust)")
    scan.add_argument("--overwrite", action="store_true", help="replace a workspace built from other inputs")
    scan.add_argument("--out", type=Path, required=True, help="workspace folder to create (or resume)")

    slices = commands.add_parser("slices", help="cluster a workspace into slices and write one row per image")
    slices.add_argument("workspace", type=Path)
    slices.add_argument("--method", default="attribution", help="attribution (F_W, the attribution space) or features (plain pooled features F)")
    slices.add_argument("--k", type=int, default=50, help="number of K-Means slices (default 50)")
    slices.add_argument("--seed", type=int, default=0)
    slices.add_argument("--n-neighbors", type=int, default=15, help="UMAP n_neighbors")
    slices.add_argument("--min-dist", type=float, default=0.05, help="UMAP min_dist")
    slices.add_argument("--metric", default="euclidean", help="UMAP metric")
    slices.add_argument("--out", type=Path, required=True, help="CSV to write: path,label,prediction,confidence,slice,x,y")

    annotate = commands.add_parser("annotate", help="annotate a slice in the workspace's annotation store; or clear, undo, list")
    annotate.add_argument("workspace", type=Path)
    annotate.add_argument("--slice", type=int, help="slice id, in the slicing chosen by --representation, --k and --seed")
    annotate.add_argument("--kind", help=f"what the slice shows: {', '.join(ANNOTATION_KINDS)}")
    annotate.add_argument("--note", default="", help=f"free text, one line, at most {NOTE_MAX_CHARS} characters")
    annotate.add_argument("--analyst", help="who annotates (default: your login name)")
    annotate.add_argument("--representation", default="attribution", help="what the slices were found on: attribution (default) or features")
    annotate.add_argument("--k", type=int, help="the slicing's number of slices (default: the app's, 50 or fewer for small datasets)")
    annotate.add_argument("--seed", type=int, default=0)
    action = annotate.add_mutually_exclusive_group()
    action.add_argument("--clear", action="store_true", help="remove the slice's annotation")
    action.add_argument("--undo", action="store_true", help="undo your latest annotation or relabel in this workspace")
    action.add_argument("--list", action="store_true", help="print the slicing's annotations and the images marked as mislabelled")

    mitigate = commands.add_parser("mitigate", help="retrain the workspace's model with CoRM on spurious slices and relabelled images; scan the new version")
    mitigate.add_argument("workspace", type=Path)
    mitigate.add_argument("--from", dest="source", required=True, choices=["annotations", "propagation"], help="treat the slices annotated spurious, or every slice whose propagated spuriousness reaches --threshold")
    mitigate.add_argument("--out", type=Path, required=True, help="folder for the new version's workspace (its model goes to OUT.training)")
    mitigate.add_argument("--threshold", type=float, default=0.5, help="spuriousness at which --from propagation treats a slice (default 0.5)")
    mitigate.add_argument("--slices", help="treat exactly these slices, e.g. 1,2,3 (instead of choosing them by --from; --from is kept as the record of why)")
    mitigate.add_argument("--epochs", type=int, default=8)
    mitigate.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule (default 0.002)")
    mitigate.add_argument("--batch-size", type=int, default=64)
    mitigate.add_argument("--sigma", type=float, default=1.0, help="CoRM noise on the spurious regions, in [0, 1] pixel units (default 1.0)")
    mitigate.add_argument("--train-data", type=Path, help="the images to retrain on (default: the scanned manifest's train split)")
    mitigate.add_argument("--train-split", help="split of --train-data to retrain on")
    mitigate.add_argument("--val-split", help="split of --train-data to validate on (default: 10%% of the training images)")
    _add_slicing_arguments(mitigate)

    evaluate = commands.add_parser("evaluate", help="clean, core and spurious accuracy, RCS and worst-group accuracy; writes WS/metrics.json")
    evaluate.add_argument("workspace", type=Path)
    evaluate.add_argument("--regions", default="auto", choices=["auto", "ground_truth", "attribution"], help="core/spurious regions: the dataset's object masks (auto when it has mask_path) or the annotated slices' attribution masks")
    evaluate.add_argument("--sigma", type=float, default=0.5, help="evaluation noise, in [0, 1] pixel units (default 0.5)")
    _add_slicing_arguments(evaluate)

    concepts = commands.add_parser("concepts", help="SECA: reconcile crowd annotations into concepts; rank the concepts typical of each predicted class")
    concepts.add_argument("annotations", type=Path, help="CSV: image_id,worker_id,box_id,entity_type,attribute, plus prediction (and label) unless --images")
    concepts.add_argument("--images", type=Path, help="CSV: image_id,prediction[,label] (default: the prediction column of the annotations)")
    concepts.add_argument("--out", type=Path, required=True, help="CSV of findings: concept,kind,class,p_value,cramers_v,frequency,...")
    concepts.add_argument("--fasttext", type=Path, help="embed terms with this fastText .bin model (default: the bundled MiniLM)")
    concepts.add_argument("--vocabulary", type=Path, help="use this (edited) vocabulary CSV instead of reconciling again")
    concepts.add_argument("--save-vocabulary", type=Path, help="write the vocabulary (term → concept) here, to edit and pass back with --vocabulary")
    concepts.add_argument("--table", type=Path, help="also write the images × concepts table here")
    concepts.add_argument("--query", action="append", default=[], help="validation query, e.g. 'stamp AND NOT fish_body' (repeatable; always reported)")
    concepts.add_argument("--min-typicality", type=float, default=0.2, help="keep findings with Cramér's V at least this (default 0.2)")
    concepts.add_argument("--alpha", type=float, default=0.05, help="significance level of the chi-square tests (default 0.05)")
    return parser


def _add_slicing_arguments(command) -> None:
    command.add_argument("--representation", default="attribution", help="the slicing the annotations refer to (default attribution)")
    command.add_argument("--k", type=int, help="its number of slices (default: the app's)")
    command.add_argument("--seed", type=int, default=0)


def _slicing(args):
    from core.loop import Slicing
    from core.slicing import SliceParams

    return Slicing(args.representation, None if args.k is None else SliceParams(k=args.k, seed=args.seed))


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


def _run_mitigate(args) -> None:
    from core.loop import evaluate_version, mitigate, open_store, plan_mitigation, read_annotations
    from core.mitigation import TrainingData, TrainingParams
    from core.robustness import read_metrics
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    params = TrainingParams(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, sigma=args.sigma)
    training = None
    if args.train_data is not None:
        training = TrainingData(args.train_data.expanduser().resolve(), args.train_split, args.val_split)
    store = open_store(workspace)
    try:
        state = read_annotations(store, workspace, _slicing(args))
        job = plan_mitigation(workspace, state, args.source, args.out, args.threshold, params, training, treated=_slice_list(args.slices))
        print(f"treating slices {', '.join(map(str, job.treated_slices))}; {len(job.relabels)} images relabelled")
        version = mitigate(job, state, progress=tqdm_progress())
        print(f"new version ready: {version.path} (model: {job.folder})")
        for member in (workspace, version):
            if member is version or read_metrics(member) is None:
                _print_metrics(member.name, evaluate_version(member, store, _slicing(args)))
    finally:
        store.close()


def _run_evaluate(args) -> None:
    from core.loop import evaluate_version, open_store
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    store = open_store(workspace)
    try:
        metrics = evaluate_version(workspace, store, _slicing(args), args.regions, args.sigma, progress=tqdm_progress())
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
    spec = ModelSpec(checkpoint=args.model, arch=args.arch, num_classes=args.num_classes, factory=args.factory, trust_checkpoint=args.trust_checkpoint)
    classes = tuple(name.strip() for name in args.classes.split(",")) if args.classes else None
    config = ScanConfig(
        data=args.data, model=spec, out=args.out, image_size=args.image_size, normalize=args.normalize,
        target_layer=args.target_layer, classes=classes, split=args.split, batch_size=args.batch_size,
        device=args.device, overwrite=args.overwrite,
    )
    workspace = scan(config, progress=tqdm_progress())
    report = workspace.report
    print(f"workspace ready: {workspace.path}")
    print(f"{report['num_images']} images, accuracy {report['accuracy']:.1%}, {report['num_skipped']} skipped (listed in report.json)")


def _run_slices(args) -> None:
    from core.slicing import ProjectionParams, SliceParams, slice_table, slices_frame
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    frame = slices_frame(
        workspace, args.method, SliceParams(k=args.k, seed=args.seed),
        ProjectionParams(n_neighbors=args.n_neighbors, min_dist=args.min_dist, metric=args.metric, seed=args.seed),
        progress=tqdm_progress(),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    worst = slice_table(workspace.images, frame["slice"].to_numpy()).nsmallest(5, "accuracy")
    print(f"wrote {len(frame)} rows to {args.out}; lowest-accuracy slices:")
    for row in worst.itertuples():
        print(f"  slice {row.slice}: {row.size} images, accuracy {row.accuracy:.0%}, mostly {row.dominant_label} → {row.dominant_prediction}")


def _run_annotate(args) -> None:
    from core.loop import open_store
    from core.slicing import SliceParams, default_k, slicing_name
    from core.workspace import Workspace

    workspace = Workspace(args.workspace)
    params = SliceParams(k=default_k(len(workspace.images)) if args.k is None else args.k, seed=args.seed)
    slicing = slicing_name(args.representation, params)
    analyst = args.analyst if args.analyst is not None else getpass.getuser()
    store = open_store(workspace)
    try:
        if args.undo:
            undone = store.undo_last(analyst, (workspace.fingerprint, workspace.dataset_fingerprint))
            print(undone or f"nothing to undo for {analyst} in {workspace.name}")
        elif args.list:
            _print_annotations(store, workspace, slicing)
        else:
            _annotate_slice(args, store, workspace, slicing, params.k, analyst)
    finally:
        store.close()


def _annotate_slice(args, store, workspace, slicing: str, k: int, analyst: str) -> None:
    if args.slice is None:
        raise SliceScopeError("annotate needs the slice to annotate", "pass --slice N (or --list, --undo)")
    if args.slice >= k:
        raise SliceScopeError(f"slice {args.slice} does not exist: {slicing} has slices 0 to {k - 1}", "pass a smaller --slice, or the --k the slices were made with")
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


def _run_concepts(args) -> None:
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

    annotations, images = read_annotations_csv(args.annotations, args.images)
    if args.vocabulary is not None:
        vocabulary = Vocabulary.read_csv(args.vocabulary)
    else:
        embedder = FastTextEmbedder(args.fasttext) if args.fasttext else MiniLMEmbedder()
        vocabulary = reconcile(annotations, embedder, progress=tqdm_progress())
    if args.save_vocabulary is not None:
        vocabulary.terms.to_csv(args.save_vocabulary, index=False)
        print(f"wrote the vocabulary ({len(vocabulary.terms)} terms, {len(vocabulary.concepts)} concepts) to {args.save_vocabulary}")
    table = build_concept_table(annotations, images, vocabulary)
    if args.table is not None:
        table.to_frame().to_csv(args.table)
    findings = filter_results(mine_concepts(table), args.min_typicality, args.alpha)
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


COMMANDS = {
    "demo": _run_demo, "scan": _run_scan, "slices": _run_slices, "annotate": _run_annotate,
    "mitigate": _run_mitigate, "evaluate": _run_evaluate, "concepts": _run_concepts,
}


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except SliceScopeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished chunks are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
