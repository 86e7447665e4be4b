"""Influence embeddings (InfEmbed, Wang, Adebayo et al., NeurIPS 2023): how the training data pull on each image.

The influence of a training image z' on an image z estimates how much z's loss
would change if z' were left out of training (Koh & Liang):
I(z', z) = ∇θL(z')ᵀ H⁻¹ ∇θL(z), with H the Hessian of the training loss.
FactorHessian (Schioppa et al.: P Arnoldi iterations of Hessian-vector
products, then the top D eigenpairs of H restricted to that Krylov subspace)
gives H⁻¹ ≈ M λ⁻¹ Mᵀ, so that

    μ(z) = λ^(-1/2) Mᵀ ∇θL(z; θ)

is a D-dimensional *influence embedding* with I(z', z) ≈ μ(z')·μ(z). Images
with close embeddings are influenced alike by the whole training set (the
paper's Lemma 1), so clustering them (:mod:`core.influence.rule`) finds slices
that are wrong for the same reason, and a slice's *opponents* (§3.6) are the
training images whose influence on its total loss is most negative.

The factorisation is captum's ``ArnoldiInfluenceFunction``. Only the layers in
:attr:`InfluenceParams.layers` count (by default the model's last block and its
head, as the paper does for ImageNet, when they hold at most 100k parameters;
else the layers nearest the output that do: :func:`default_layers`). Since nothing below them changes, the
network is cut where they begin (torch.fx): the frozen part runs once per
image, not once per Hessian-vector product, and the per-example gradients are
one ``torch.func.vmap`` over the cut network rather than a backward pass per
image. H is the *mean* Hessian over a seeded subset of the training images, as
in the paper (captum sums over its data, so the loss is divided by the subset's
size).

A workspace needs the training data its model was fitted on: it is recorded in
the manifest's ``[training]`` table (:func:`core.training.attach_training_data`, ``python -m
core attach-train``), with the workspace's ``[influence]`` settings (:func:`record_influence_params`). The
factors, the training images' embeddings and the workspace images' embeddings
are cached in ``derived/``, keyed by the model checkpoint's hash, the training
data's fingerprint and the settings. :func:`compute_influence` can run the two
embedding passes (every training image, every workspace image) on a Ray
cluster (:mod:`core.distributed`): the factorisation, one sequential iteration,
stays on this machine, and the cached results are the same either way.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import fx, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from core.data import ImageIndex, Preprocess, read_image
from core.errors import SliceScopeError
from core.memory import retained_heap
from core.models import ModelSpec, load_module, resolve_device
from core.progress import ProgressFn, silent
from core.training import require_training_data, training_data, training_index
from core.workspace import MANIFEST, Workspace, load_cached_array, save_manifest

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
_HVP_BATCH = 256  # images per Hessian-vector product batch
_BATCH = 64  # images per gradient batch (B × |θ| per-example gradients sit in memory)
_RAY_BLOCK = 4 * _BATCH  # images per Ray work item: whole gradient batches, so that a block batches as the local pass does
_STEP_FACTOR = "influence: factorising the Hessian (Arnoldi)"
_STEP_TRAIN = "influence: gradients of the training images"
_STEP_WORKSPACE = "influence: gradients of the workspace images"


@dataclass(frozen=True)
class InfluenceParams:
    """How influence embeddings are computed; every setting changes the result, so all key the cache.

    ``layers`` names the modules whose parameters count (None: the last block
    and the head within a parameter budget, see :func:`default_layers`); ``arnoldi_dim`` is P, the Krylov
    subspace's size (P Hessian-vector products, the dominant cost);
    ``embedding_dim`` is D ≤ P; ``hessian_images`` is how many training images
    (a seeded random subset) the Hessian is estimated on; ``damping`` is added to
    the (mean) Hessian's diagonal: a trained network is near, not at, a minimum,
    so its Hessian has small negative eigenvalues, and damping them (0.01, as
    influence functions usually do) keeps the inverse from blowing up along them.
    The paper uses P = 500, D = 100; P = 200 halves the factorisation's cost.
    """

    layers: tuple[str, ...] | None = None
    arnoldi_dim: int = 200
    embedding_dim: int = 100
    hessian_images: int = 1000
    damping: float = 0.01
    seed: int = 0

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
            if not self.layers or any(not isinstance(name, str) or not name.strip() for name in self.layers):
                raise SliceScopeError("`layers` names no layer", "name the model's modules, e.g. `layers` layer4,fc, or leave it out for the default (see default_layers)")
        if self.embedding_dim < 1:
            raise SliceScopeError(f"embedding dimension D = {self.embedding_dim} is not possible", "set `embedding_dim` to 1 or more (the paper uses 100)")
        if self.arnoldi_dim < self.embedding_dim:
            raise SliceScopeError(
                f"the Arnoldi dimension P = {self.arnoldi_dim} is below the embedding dimension D = {self.embedding_dim}",
                "set `arnoldi_dim` to at least `embedding_dim` (the paper uses P = 500, D = 100)",
            )
        if self.hessian_images < 1:
            raise SliceScopeError("the Hessian needs at least one training image", "set `hessian_images` to 1 or more (default 1000)")
        if not math.isfinite(self.damping) or self.damping < 0:
            raise SliceScopeError(f"damping {self.damping} is not a non-negative number", "set `damping` to e.g. 0.01")

    def record(self) -> dict:
        """The settings as TOML stores them (no nulls: default layers are left out)."""
        record = asdict(self)
        if self.layers is None:
            del record["layers"]
        else:
            record["layers"] = list(self.layers)
        return record

    @classmethod
    def from_record(cls, record: dict) -> InfluenceParams:
        known = {name: record[name] for name in cls.__dataclass_fields__ if name in record}
        return cls(**known)


def influence_params(workspace: Workspace) -> InfluenceParams:
    """The workspace's recorded influence settings (the defaults where none are recorded)."""
    record = workspace.manifest.get("influence")
    return InfluenceParams.from_record(record) if isinstance(record, dict) else InfluenceParams()


def record_influence_params(workspace: Workspace, params: InfluenceParams) -> None:
    """Make ``params`` the workspace's influence settings (the manifest's ``[influence]`` table)."""
    manifest = {**workspace.manifest, "influence": params.record()}
    save_manifest(workspace.path / MANIFEST, manifest)
    workspace.manifest = manifest


# -- the model, cut where the counted layers begin ------------------------------------------------


# Counted parameters the default layers may hold. Per-example gradients and Hessian-vector products cost in
# proportion to them: the demo CNN's last block and head (37k) take minutes on 2 CPU cores, a ResNet-18's
# (4.7M) took an estimated 2 hours on a 64-px benchmark with 2,000 training images.
DEFAULT_PARAMETER_BUDGET = 100_000


def default_layers(module: nn.Module, budget: int = DEFAULT_PARAMETER_BUDGET) -> tuple[str, ...]:
    """The model's last block and the layers after it, the paper's choice for ImageNet (layer4 + fc of a ResNet),
    when they hold at most ``budget`` parameters; else the layers nearest the output that fit (at least the last).

    The last block is the non-container module holding the last convolution
    (a ResNet's ``layer4.1``), or that convolution itself when it sits in an
    ``nn.Sequential`` (the demo CNN's ``features.11``); every module with
    parameters registered after it (its normalisation, the head) follows. A
    model without convolutions gets its last two layers with parameters. Over
    the budget (a ResNet-18's last block: 4.7M), the layers are taken from the
    output backwards while they fit: a ResNet-18's ``layer4.1.bn2`` and ``fc``.
    """
    modules = dict(module.named_modules())
    leaves = [name for name, layer in modules.items() if name and next(layer.parameters(recurse=False), None) is not None]
    convolutions = [name for name, layer in modules.items() if isinstance(layer, nn.modules.conv._ConvNd)]
    if not convolutions:
        if not leaves:
            raise SliceScopeError("the model has no layers with parameters", "influence embeddings need a trained model")
        return tuple(leaves[-2:])
    last = convolutions[-1]
    parent = last.rpartition(".")[0]
    block = parent if parent and not isinstance(modules[parent], nn.Sequential | nn.ModuleList | nn.ModuleDict) else last
    names = list(modules)
    after = [name for name in leaves if names.index(name) > names.index(block) and not name.startswith(f"{block}.")]

    def size(name: str) -> int:
        return sum(parameter.numel() for parameter in modules[name].parameters())

    if size(block) + sum(map(size, after)) <= budget:
        return (block, *after)
    fitting, total = [], 0
    for name in reversed(leaves):
        total += sum(parameter.numel() for parameter in modules[name].parameters(recurse=False))
        if fitting and total > budget:
            break
        fitting.insert(0, name)
    return tuple(fitting)


def _split_at_layers(module: nn.Module, layers: tuple[str, ...]) -> tuple[fx.GraphModule, fx.GraphModule] | None:
    """``prefix`` (images → the tensors the counted layers' part reads) and ``suffix`` (those tensors → logits).

    The prefix is everything that does not depend on a counted parameter. None
    when the model cannot be traced by torch.fx or the cut is not a set of
    per-image tensors; the caller then runs the whole model each time.
    """
    try:
        traced = fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001 -- any tracing failure only means no shortcut
        return None

    def counted(target: str) -> bool:
        return any(target == name or target.startswith(f"{name}.") for name in layers)

    dependent: set[fx.Node] = set()
    for node in traced.graph.nodes:
        if (node.op in ("call_module", "get_attr") and counted(node.target)) or any(arg in dependent for arg in node.all_input_nodes):
            dependent.add(node)
    frontier = [node for node in traced.graph.nodes if node not in dependent and node.op != "get_attr" and any(user in dependent for user in node.users)]
    if not frontier or all(node.op == "placeholder" for node in frontier):
        return None

    suffix_graph, env = fx.Graph(), {}
    for position, node in enumerate(frontier):
        env[node] = suffix_graph.placeholder(f"cut_{position}")
    for node in traced.graph.nodes:
        if node.op == "output":
            suffix_graph.output(fx.map_arg(node.args[0], lambda arg: env[arg]))
        elif node in dependent or (node.op == "get_attr" and any(user in dependent for user in node.users)):
            env[node] = suffix_graph.node_copy(node, lambda arg: env[arg])

    needed, stack = set(), list(frontier)
    while stack:
        node = stack.pop()
        if node not in needed:
            needed.add(node)
            stack.extend(node.all_input_nodes)
    prefix_graph, prefix_env = fx.Graph(), {}
    for node in traced.graph.nodes:
        if node in needed:
            prefix_env[node] = prefix_graph.node_copy(node, lambda arg: prefix_env[arg])
    prefix_graph.output(tuple(prefix_env[node] for node in frontier))
    return fx.GraphModule(traced, prefix_graph), fx.GraphModule(traced, suffix_graph)


class _MeanCrossEntropy(nn.Module):
    """Cross-entropy per example divided by the Hessian sample's size, so captum's summed Hessian is the mean one."""

    reduction = "none"  # what captum checks: a per-example loss

    def __init__(self, n_examples: int):
        super().__init__()
        self.n_examples = n_examples

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, reduction="none") / self.n_examples


class _CountingLoader(DataLoader):
    """A DataLoader that reports each batch it yields: the Arnoldi iteration's only sign of progress."""

    def __init__(self, *args, on_batch: Callable[[], None], **kwargs):
        super().__init__(*args, **kwargs)
        self.on_batch = on_batch

    def __iter__(self) -> Iterator:
        for batch in super().__iter__():
            yield batch
            self.on_batch()


class InfluenceEmbedder:
    """Influence embeddings for one model, scikit-learn style: settings here, the factorisation in :meth:`fit`.

    ``module`` is the trained network (a Python ``nn.Module``: TorchScript
    cannot be differentiated per parameter here); it is put in eval mode, so
    BatchNorm uses its running statistics, as at test time. Learned state:
    ``layers_`` and ``parameter_names_`` (what counts), ``projection_`` (|θ| × D,
    the factor M λ^(-1/2), largest eigenvalue first), so that :meth:`transform`
    is μ = ∇θL(z)ᵀ · projection_.
    """

    def __init__(self, module: nn.Module, params: InfluenceParams = InfluenceParams(), device: str = "cpu"):
        if isinstance(module, torch.jit.ScriptModule):
            raise SliceScopeError(
                "influence embeddings need the model as Python code, and this one is TorchScript",
                "scan the model with `factory` or `arch` and its state_dict",
            )
        self.module = module.to(resolve_device(device)).eval()
        self.params = params
        self.device = next(module.parameters()).device
        self.layers_ = params.layers or default_layers(module)
        missing = [name for name in self.layers_ if name not in dict(module.named_modules())]
        if missing:
            raise SliceScopeError(f"the model has no layer named '{missing[0]}'", "name modules of the model (see model.named_modules()), e.g. `layers` layer4,fc")
        split = _split_at_layers(module, self.layers_)
        self._prefix, self._suffix = split if split else (None, module)
        self._cut_checked = split is None
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        chosen = [(f"{layer}.{name}", parameter) for layer in self.layers_ for name, parameter in self._suffix.get_submodule(layer).named_parameters()]
        if not chosen:
            raise SliceScopeError(f"the layers {', '.join(self.layers_)} have no parameters", "name layers with weights, e.g. `layers` layer4,fc")
        if len({name for name, _ in chosen}) != len(chosen):
            raise SliceScopeError(f"the layers {', '.join(self.layers_)} overlap", "name each module once, not a module and one of its parts")
        for _, parameter in chosen:
            parameter.requires_grad_(True)
        self.parameter_names_ = [name for name, _ in chosen]
        self.n_parameters_ = sum(parameter.numel() for _, parameter in chosen)

    # -- the cut network --------------------------------------------------
    def _cut(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The per-image tensors the counted layers' part of the network reads (the frozen part, run once)."""
        images = images.to(self.device)
        if not self._cut_checked:
            self._check_cut(images[:4])
        if self._prefix is None:
            return (images,)
        with torch.no_grad():
            return tuple(self._prefix(images))

    def _check_cut(self, images: torch.Tensor) -> None:
        """Fall back to the whole model if the cut network does not reproduce it (e.g. a size read below the cut)."""
        self._cut_checked = True
        with torch.no_grad():
            expected = self.module(images)
            try:
                cut = tuple(self._prefix(images))
                same = all(isinstance(t, torch.Tensor) and t.shape[:1] == images.shape[:1] for t in cut)
                same = same and torch.allclose(self._suffix(*cut), expected, rtol=1e-4, atol=1e-5)
            except (RuntimeError, TypeError, AttributeError):
                same = False
        if not same:
            self._prefix, self._suffix = None, self.module

    def per_example_gradients(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """∇θL(z) of each image over the counted parameters (B × |θ|): one vmap, no loop over images."""
        return self._gradients(self._cut(images), labels.to(self.device))

    def _gradients(self, cut: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        weights = {name: parameter.detach() for name, parameter in self._suffix.named_parameters() if name in set(self.parameter_names_)}

        def loss(weights: dict, *example: torch.Tensor) -> torch.Tensor:
            *inputs, label = example
            logits = functional_call(self._suffix, weights, tuple(t.unsqueeze(0) for t in inputs))
            return F.cross_entropy(logits, label.unsqueeze(0))

        gradients = vmap(grad(loss), in_dims=(None, *(0,) * (len(cut) + 1)))(weights, *cut, labels)
        return torch.cat([gradients[name].reshape(len(labels), -1) for name in self.parameter_names_], dim=1)

    # -- learning ---------------------------------------------------------
    def fit(
        self,
        batches: Batches,
        checkpoint: str | Path,
        load_checkpoint: Callable[[nn.Module, str], object] | None = None,
        progress: ProgressFn | None = None,
    ) -> InfluenceEmbedder:
        """FactorHessian on the Hessian sample ``batches``: captum's Arnoldi iteration on the cut network.

        captum reloads the weights from ``checkpoint`` through
        ``load_checkpoint(module, path)``; the default reads a state_dict.
        """
        from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

        report = progress or silent
        cuts, labels = [], []
        for images, batch_labels in batches:
            cuts.append(self._cut(images))
            labels.append(batch_labels.to(self.device))
        if not cuts:
            raise SliceScopeError("the Hessian sample has no images", "attach training data with readable images")
        tensors = [torch.cat(parts) for parts in zip(*cuts)]
        labels = torch.cat(labels)
        n_batches = -(-len(labels) // _HVP_BATCH)
        arnoldi_dim = min(self.params.arnoldi_dim, self.n_parameters_)
        done = [0]

        def on_batch() -> None:
            done[0] += 1
            report(_STEP_FACTOR, min(done[0], arnoldi_dim * n_batches), arnoldi_dim * n_batches)

        loader = _CountingLoader(TensorDataset(*tensors, labels), batch_size=_HVP_BATCH, on_batch=on_batch)
        load = load_checkpoint or _load_state_dict
        report(_STEP_FACTOR, 0, arnoldi_dim * n_batches)
        # captum seeds torch's global RNG for the Arnoldi start vector; keep the caller's RNG as it was.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), warnings.catch_warnings():
            # captum's own dot product copies a tensor with torch.tensor(); the warning is about its code, not the user's.
            warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
            try:
                influence = ArnoldiInfluenceFunction(
                    self._suffix,
                    loader,
                    str(checkpoint),
                    checkpoints_load_func=lambda _suffix, path: load(self.module, path),
                    layers=list(self.layers_),
                    loss_fn=_MeanCrossEntropy(len(labels)),
                    hessian_dataset=loader,
                    projection_dim=min(self.params.embedding_dim, arnoldi_dim),
                    seed=self.params.seed,
                    arnoldi_dim=arnoldi_dim,
                    # captum stops when a new Krylov vector's norm falls below this; a model that fits its data well
                    # has a Hessian of tiny norm, so the tolerance sits far below captum's usual 1e-4.
                    arnoldi_tol=1e-9,
                    hessian_reg=self.params.damping,
                )
            except Exception as error:  # captum raises a bare Exception when the Krylov basis is empty
                if "Arnoldi basis is empty" not in str(error):
                    raise
                raise SliceScopeError(
                    f"the training loss has no curvature at layers {', '.join(self.layers_)}: the model fits its Hessian images "
                    "(almost) perfectly, so there is nothing to factorise",
                    "use more training images for the Hessian (`hessian_images`) or count more layers (`layers` a,b,c)",
                ) from None
        if done[0] < arnoldi_dim * n_batches:  # the iteration stopped early: its Krylov subspace was complete
            report(_STEP_FACTOR, arnoldi_dim * n_batches, arnoldi_dim * n_batches)
        self.module.eval()  # a checkpoint loader may have changed the mode
        # captum's factors come in ascending eigenvalue order; the largest first reads better.
        columns = [torch.cat([t.reshape(-1) for t in factor]) for factor in reversed(influence.R)]
        self.projection_ = torch.stack(columns, dim=1).to(self.device)
        return self

    def restore(self, projection: np.ndarray) -> InfluenceEmbedder:
        """Take the factor from an earlier :meth:`fit` (a cached ``projection_``) instead of fitting again."""
        if projection.shape[0] != self.n_parameters_:
            raise SliceScopeError("the cached influence factors do not fit the model's layers", "delete the workspace's derived/influence_* files and run again")
        self.projection_ = torch.from_numpy(np.ascontiguousarray(projection)).to(self.device, next(self._suffix.parameters()).dtype)
        return self

    def transform(self, batches: Batches, total: int | None = None, progress: ProgressFn | None = None, step: str = "influence: gradients") -> np.ndarray:
        """μ(z) = ∇θL(z)ᵀ M λ^(-1/2) for every (image, label) in ``batches`` (N × D, float32)."""
        if not hasattr(self, "projection_"):
            raise RuntimeError("call fit() or restore() before transform()")
        report = progress or silent
        rows, done = [], 0
        if total is not None:
            report(step, 0, total)
        with retained_heap():  # the frozen part's activations, batch after batch, as in a scan
            for images, labels in batches:
                gradients = self.per_example_gradients(images, labels)
                rows.append((gradients @ self.projection_).float().cpu().numpy())
                done += len(labels)
                if total is not None:
                    report(step, done, total)
        return np.concatenate(rows) if rows else np.zeros((0, self.projection_.shape[1]), np.float32)

    def seconds_per_image(self, images: torch.Tensor, labels: torch.Tensor, hvp_batch: int | None = None) -> tuple[float, float, float]:
        """Measured cost per image of the frozen part (once per image), of one Hessian-vector product and of an embedding.

        The Hessian-vector product is timed on ``hvp_batch`` rows (the images repeated; default: as given): its cost
        per image falls with the batch, so an estimate times it at the batch :meth:`fit` uses.
        """

        def timed(step: Callable[[], object], count: int) -> float:
            step()  # the first call pays for one-off set-up (vmap, allocator); time the second
            started = time.perf_counter()
            step()
            return (time.perf_counter() - started) / count

        per_cut = timed(lambda: self._cut(images), len(labels))
        cut, labels = self._cut(images), labels.to(self.device)
        repeats = max(1, (hvp_batch or len(labels)) // len(labels))
        hvp_cut, hvp_labels = tuple(part.repeat(repeats, *[1] * (part.dim() - 1)) for part in cut), labels.repeat(repeats)
        weights = tuple(parameter for name, parameter in self._suffix.named_parameters() if name in set(self.parameter_names_))
        names = [name for name, _ in self._suffix.named_parameters() if name in set(self.parameter_names_)]

        def loss(*values: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(self._suffix, dict(zip(names, values)), hvp_cut), hvp_labels)

        direction = tuple(torch.ones_like(weight) for weight in weights)
        per_hvp = timed(lambda: torch.autograd.functional.hvp(loss, weights, direction), len(hvp_labels))
        return per_cut, per_hvp, timed(lambda: self._gradients(cut, labels), len(labels))


def _load_state_dict(module: nn.Module, path: str) -> float:
    state = torch.load(path, map_location="cpu", weights_only=True)
    module.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    return 1.0  # captum's contract: the checkpoint's learning rate, unused by influence functions


# -- workspaces ---------------------------------------------------------------------------------


class _ImageDataset(Dataset):
    """Decoded, preprocessed images with their class index; an unreadable file yields zeros and ok=False."""

    def __init__(self, files: list[Path], labels: np.ndarray, preprocess: Preprocess):
        self.files, self.labels, self.preprocess = files, labels, preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, position: int):
        try:
            image = read_image(self.files[position]).image
            return torch.from_numpy(self.preprocess.to_array(image)), int(self.labels[position]), True
        except (OSError, ValueError):
            size = self.preprocess.image_size
            return torch.zeros(3, size, size), int(self.labels[position]), False


def _loader(files: list[Path], labels: np.ndarray, preprocess: Preprocess, batch_size: int, workers: int | None = None) -> DataLoader:
    """Batches of (images, labels, readable); ``workers`` decoding processes (default: up to 4 when there is more than a batch)."""
    if workers is None:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if len(files) > batch_size else 0
    return DataLoader(_ImageDataset(files, labels, preprocess), batch_size=batch_size, num_workers=workers)


def _embed_readable(embedder: InfluenceEmbedder, loader: DataLoader, *reporting,
                    check: Callable[[int, np.ndarray], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The embedding of every image ``loader`` yields (an unreadable one is embedded as its zeros) and which were readable.

    ``reporting`` is :meth:`InfluenceEmbedder.transform`'s (total, progress, step); ``check(first position, readable)``
    sees each batch before it is embedded, and may refuse it.
    """
    readable: list[np.ndarray] = []

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first = 0
        for images, labels, ok in loader:
            if check is not None:
                check(first, ok.numpy())
            readable.append(ok.numpy())
            first += len(labels)
            yield images, labels

    vectors = embedder.transform(batches(), *reporting)
    return vectors, np.concatenate(readable) if readable else np.zeros(0, bool)


def _refuse_unreadable(files: list[Path]) -> Callable[[int, np.ndarray], None]:
    """A ``check`` for the workspace's images: each was read by the scan, so one that cannot be read now means the dataset changed."""

    def check(first: int, readable: np.ndarray) -> None:
        if not readable.all():
            raise SliceScopeError(f"the workspace image {files[first + int(np.flatnonzero(~readable)[0])]} can no longer be read",
                                  "restore the dataset the workspace was scanned from")

    return check


@dataclass(frozen=True)
class _EmbeddingPass:
    """One of :meth:`_WorkspaceInfluence.compute`'s passes: its images, the progress step it reports and the ``check`` of
    :func:`_embed_readable` (None: an unreadable image is allowed, and gets no embedding)."""

    files: list[Path]
    labels: np.ndarray
    step: str
    check: Callable[[int, np.ndarray], None] | None = None


def _without_unreadable(vectors: np.ndarray, readable: np.ndarray) -> np.ndarray:
    """The embeddings with a NaN row for each unreadable image: it has none."""
    vectors[~readable] = np.nan
    return vectors


@dataclass
class _RayBlocks:
    """What a Ray worker holds: the workspace's model with the driver's factor, and the images its blocks cut."""

    embedder: InfluenceEmbedder
    preprocess: Preprocess
    blocks: list[tuple[int, int]]  # (start, stop) positions in files
    files: list[Path]
    labels: np.ndarray


def _load_ray_blocks(spec: ModelSpec, params: InfluenceParams, device: str, preprocess: Preprocess, blocks: list[tuple[int, int]],
                     projection: np.ndarray, files: list[Path], labels: np.ndarray) -> _RayBlocks:
    """A Ray worker's ``load`` (:func:`core.distributed.ray_map`): the model as :meth:`_WorkspaceInfluence._embedder` builds it."""
    # Ray's object store hands out read-only arrays; torch wants one it may write.
    embedder = InfluenceEmbedder(load_module(spec), params, device).restore(np.array(projection))
    return _RayBlocks(embedder, preprocess, blocks, files, labels)


def _embed_ray_blocks(state: _RayBlocks, items: list[int]) -> list[dict]:
    """A Ray worker's ``work``: the embeddings of each block's images, and which of them were readable."""
    rows = []
    for item in items:
        start, stop = state.blocks[item]
        # No decoding processes: the worker has one CPU.
        loader = _loader(state.files[start:stop], state.labels[start:stop], state.preprocess, _BATCH, workers=0)
        vectors, readable = _embed_readable(state.embedder, loader)
        rows.append({"embeddings": vectors, "readable": readable})
    return rows


class _WorkspaceInfluence:
    """One workspace's influence embeddings: its recorded model, training data and settings, and their cache."""

    def __init__(self, workspace: Workspace, params: InfluenceParams | None):
        self.workspace = workspace
        self.training = require_training_data(workspace)
        self.params = params or influence_params(workspace)
        self.source = representation_source(workspace, self.params)

    def cached(self) -> bool:
        return all(self.workspace.has_cached(kind, self.source) for kind in ("influence_factors", "influence_train", "influence_embeddings"))

    def _embedder(self) -> tuple[InfluenceEmbedder, ModelSpec]:
        """The workspace's model as an embedder, and where it came from (its checkpoint checked against the scan's)."""
        from core.extract import recorded_scan_config, workspace_model_spec

        config = recorded_scan_config(self.workspace)
        if config.model.checkpoint is None:
            raise SliceScopeError("influence embeddings need the model's checkpoint file, and this workspace records none", "rebuild it with python -m core scan --model CKPT ...")
        spec = workspace_model_spec(self.workspace)
        return InfluenceEmbedder(load_module(spec), self.params, config.device), spec

    def _preprocess(self) -> Preprocess:
        transforms = self.workspace.manifest["transforms"]
        return Preprocess(int(transforms["image_size"]), transforms["normalize"])

    def _training_files(self) -> tuple[ImageIndex, list[Path], np.ndarray]:
        index = training_index(self.workspace)
        position = {name: i for i, name in enumerate(self.workspace.classes)}
        labels = index.table["label"].map(position).to_numpy(dtype=np.int64)
        return index, [index.absolute_path(path) for path in index.table["path"]], labels

    def compute(self, progress: ProgressFn | None = None, ray: str | None = None, ray_workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """(workspace embeddings, training embeddings), computing and caching what is missing; the two embedding passes
        on the Ray cluster at ``ray`` when given (see :func:`compute_influence`)."""
        report = progress or silent
        if self.cached():
            embeddings, training = (load_cached_array(self.workspace.derived_path(kind, self.source, ".npy")) for kind in ("influence_embeddings", "influence_train"))
            if embeddings is not None and training is not None:
                return embeddings, training
        if ray is not None:
            from core.distributed import join

            join(ray, ray_workers)  # a wrong setting or a cluster that does not answer is said now, not after the factorisation
        embedder, spec = self._embedder()
        preprocess = self._preprocess()
        _, files, labels = self._training_files()

        def factorise() -> np.ndarray:
            sample = np.sort(np.random.default_rng(self.params.seed).permutation(len(files))[: self.params.hessian_images])

            def readable_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                for images, batch_labels, ok in _loader([files[i] for i in sample], labels[sample], preprocess, _BATCH):
                    if ok.any():
                        yield images[ok], batch_labels[ok]

            def load(target: nn.Module, path: str) -> float:
                target.load_state_dict(load_module(replace(spec, checkpoint=Path(path))).state_dict())
                return 1.0

            embedder.fit(readable_batches(), spec.checkpoint, load, report)
            return embedder.projection_.float().cpu().numpy()

        projection = self.workspace.cached_array("influence_factors", self.source, factorise)
        embedder.restore(projection)

        images = self.workspace.images
        image_files = [self.workspace.image_path(path) for path in images["path"]]
        passes = {
            "influence_train": _EmbeddingPass(files, labels, _STEP_TRAIN),
            "influence_embeddings": _EmbeddingPass(image_files, images["label_index"].to_numpy(), _STEP_WORKSPACE, _refuse_unreadable(image_files)),
        }
        stored = {kind: load_cached_array(self.workspace.derived_path(kind, self.source, ".npy")) for kind in passes}
        pending = {kind: one for kind, one in passes.items() if stored[kind] is None}
        if ray is not None and pending:
            # Both passes come from one map, each cached as soon as its last block arrives.
            stored.update(self._embed_on_ray(pending, embedder, spec, preprocess, projection, report, ray, ray_workers))

        def embed(kind: str) -> np.ndarray:
            one = passes[kind]
            loader = _loader(one.files, one.labels, preprocess, _BATCH)
            return _without_unreadable(*_embed_readable(embedder, loader, len(one.files), report, one.step, check=one.check))
        # Locally each pass is cached once computed: the training images' before the workspace's are embedded.
        training, embeddings = (
            stored[kind] if stored[kind] is not None else self.workspace.cached_array(kind, self.source, partial(embed, kind)) for kind in passes
        )
        return embeddings, training

    def _embed_on_ray(self, pending: dict[str, _EmbeddingPass], embedder: InfluenceEmbedder, spec: ModelSpec, preprocess: Preprocess,
                      projection: np.ndarray, report: ProgressFn, address: str, workers: int) -> dict[str, np.ndarray]:
        """The ``pending`` passes (by cache kind) on Ray, all in one map (the workers load the model once), in blocks of
        :data:`_RAY_BLOCK` images of one pass each, put in order here; each pass's embeddings, as the local pass returns
        them, are cached as soon as its last block arrives, so a run stopped later keeps them."""
        from core.distributed import ray_map

        kinds, passes = list(pending), list(pending.values())
        embedded: dict[str, np.ndarray] = {}
        starts = np.cumsum([0] + [len(one.files) for one in passes]).tolist()  # of each pass, in all the passes' images
        blocks, owners = [], []
        for number, one in enumerate(passes):
            for first in range(0, len(one.files), _RAY_BLOCK):
                blocks.append((starts[number] + first, starts[number] + min(first + _RAY_BLOCK, len(one.files))))
                owners.append(number)
        vectors = [np.zeros((len(one.files), projection.shape[1]), np.float32) for one in passes]
        readable = [np.zeros(len(one.files), bool) for one in passes]
        done = [0] * len(passes)
        for one in passes:
            report(one.step, 0, len(one.files))

        def place(row: dict) -> None:
            number = owners[row["item"]]
            one, first = passes[number], blocks[row["item"]][0] - starts[number]
            block_readable = np.asarray(row["readable"], bool)
            if one.check is not None:
                one.check(first, block_readable)
            vectors[number][first: first + len(block_readable)] = row["embeddings"]
            readable[number][first: first + len(block_readable)] = block_readable
            done[number] += len(block_readable)
            if done[number] == len(one.files):
                embedded[kinds[number]] = self.workspace.cached_array(kinds[number], self.source,
                                                                      partial(_without_unreadable, vectors[number], readable[number]))
            report(one.step, done[number], len(one.files))

        load = partial(_load_ray_blocks, spec, self.params, str(embedder.device), preprocess, blocks)
        every_file = [file for one in passes for file in one.files]
        every_label = np.concatenate([one.labels for one in passes])
        ray_map(list(range(len(blocks))), load, _embed_ray_blocks, place, address, workers,
                gpu=embedder.device.type == "cuda", shared=(projection, every_file, every_label))
        return embedded

    def estimate_seconds(self) -> float:
        """About how long :meth:`compute` will take here, from one timed batch (0 when everything is cached)."""
        if self.cached():
            return 0.0
        embedder, _ = self._embedder()
        _, files, labels = self._training_files()
        started = time.perf_counter()
        images, batch_labels, ok = next(iter(_loader(files[: _BATCH], labels[: _BATCH], self._preprocess(), _BATCH)))
        per_read = (time.perf_counter() - started) / len(batch_labels)
        per_cut, per_hvp, per_gradient = embedder.seconds_per_image(images[ok], batch_labels[ok], hvp_batch=_HVP_BATCH)
        hessian_images = min(self.params.hessian_images, len(files))
        arnoldi_dim = min(self.params.arnoldi_dim, embedder.n_parameters_)
        embedded = len(files) + len(self.workspace.images)
        # Every image is read and run through the frozen part once per pass over it: the Hessian sample once, then
        # every training and workspace image for its embedding.
        return (hessian_images + embedded) * (per_read + per_cut) + arnoldi_dim * hessian_images * per_hvp + embedded * per_gradient


def representation_source(workspace: Workspace, params: InfluenceParams | None = None) -> dict:
    """What influence embeddings depend on beyond the scan: model, training data and settings (cheap, no torch work).

    :class:`~core.workspace.Workspace` keys every result derived from the
    ``influence`` representation (``slices-influence``, ``projection-influence``) by it.
    """
    training = require_training_data(workspace)
    return {"model": workspace.manifest["model"].get("sha256", ""), "training": training.fingerprint, **(params or influence_params(workspace)).record()}


def representation(workspace: Workspace) -> np.ndarray:
    """The ``influence`` representation: the workspace images' embeddings with its recorded settings."""
    return influence_embeddings(workspace)


def influence_embeddings(workspace: Workspace, params: InfluenceParams | None = None, progress: ProgressFn | None = None) -> np.ndarray:
    """μ of every workspace image (N × D, float32, in the workspace's row order), computed once per source."""
    return _WorkspaceInfluence(workspace, params).compute(progress)[0]


def training_embeddings(workspace: Workspace, params: InfluenceParams | None = None, progress: ProgressFn | None = None) -> np.ndarray:
    """μ of every training image (N' × D, in the training index's order; NaN rows for unreadable files)."""
    return _WorkspaceInfluence(workspace, params).compute(progress)[1]


def compute_influence(workspace: Workspace, params: InfluenceParams | None = None, progress: ProgressFn | None = None,
                      ray: str | None = None, ray_workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Compute and cache the influence embeddings (nothing to do when cached): (workspace's μ, training images' μ).

    With ``ray`` (``auto``, ``local`` or a cluster's address, as for the scan: :mod:`core.distributed`) the two embedding
    passes run on that Ray cluster, with ``ray_workers`` actors that load the model once (one CPU or GPU each) and must
    see the training data and the workspace at the same paths; the Hessian's factorisation stays on this machine. The
    cached results, and their keys, are the same either way.
    """
    return _WorkspaceInfluence(workspace, params).compute(progress, ray, ray_workers)


def is_computed(workspace: Workspace, params: InfluenceParams | None = None) -> bool:
    """Whether the embeddings are cached (False, not an error, without training data)."""
    if training_data(workspace) is None:
        return False
    return _WorkspaceInfluence(workspace, params).cached()


def estimate_seconds(workspace: Workspace, params: InfluenceParams | None = None) -> float:
    """About how many seconds computing the embeddings will take on this machine (0 when cached)."""
    return _WorkspaceInfluence(workspace, params).estimate_seconds()


def rank_opponents(training: np.ndarray, slice_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``k`` training embeddings most harmful to a slice, most harmful first, and their scores.

    The influence of training image z' on the slice's total loss is
    μ(z')·Σ_{i∈slice} μ(z_i) (§3.6); the most negative are the opponents:
    removing them from training would lower the slice's loss. NaN rows
    (unreadable images) are never chosen.
    """
    scores = training @ np.asarray(slice_embeddings).sum(axis=0)
    known = np.flatnonzero(np.isfinite(scores))
    order = known[np.argsort(scores[known], kind="stable")[:k]]
    return order, scores[order]


def slice_opponents(workspace: Workspace, members: np.ndarray, k: int = 10, params: InfluenceParams | None = None, progress: ProgressFn | None = None) -> pd.DataFrame:
    """The ``k`` training images whose influence on the slice's total loss is most negative (§3.6), most harmful first.

    ``members`` selects the slice's workspace rows (a boolean mask or row
    positions). Columns: rank, image_id, path (relative to the training data),
    file (absolute), label, influence (negative: harmful to the slice).
    """
    if k < 1:
        raise SliceScopeError(f"{k} opponents is not possible", "ask for 1 or more")
    members = np.asarray(members)
    rows = np.flatnonzero(members) if members.dtype == bool else members.astype(np.int64)
    if rows.size == 0:
        raise SliceScopeError("the slice has no images", "choose a slice with members")
    embeddings, training = _WorkspaceInfluence(workspace, params).compute(progress)
    order, scores = rank_opponents(training, embeddings[rows], k)
    index = training_index(workspace)
    table = index.table.iloc[order]
    return pd.DataFrame({
        "rank": np.arange(1, len(order) + 1),
        "image_id": table["image_id"].to_numpy(),
        "path": table["path"].to_numpy(),
        "file": [str(index.absolute_path(path)) for path in table["path"]],
        "label": table["label"].to_numpy(),
        "influence": scores,
    })
