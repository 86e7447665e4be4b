"""Loading the user's classifier and exposing its GradCAM target layer.

Three ways in: a torchvision architecture name plus a state_dict, a TorchScript
file, or a ``module:function`` factory plus a state_dict. State dicts are loaded
with ``torch.load(..., weights_only=True)``; a checkpoint that pickles Python
objects is refused unless the user passes ``trust_checkpoint=True``.

:class:`AttributionModel` wraps the loaded network so that one forward pass
returns both the logits and the target layer's activation, with autograd
recording only the layers above the target layer (see ``forward_with_activation``).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.errors import SliceScopeError

# GradCAM's usual layer per torchvision family: the last block whose output is
# still a spatial feature map.
FAMILY_TARGET_LAYERS = {
    "ResNet": "layer4",
    "VGG": "features",
    "DenseNet": "features",
    "MobileNetV2": "features",
    "MobileNetV3": "features",
    "EfficientNet": "features",
    "ConvNeXt": "features",
    "RegNet": "trunk_output",
}
_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.AvgPool2d, nn.MaxPool2d)


@dataclass(frozen=True)
class ModelSpec:
    """Where the model comes from, as the user named it."""

    checkpoint: Path | None = None
    arch: str | None = None
    num_classes: int | None = None
    factory: str | None = None
    trust_checkpoint: bool = False

    @property
    def kind(self) -> str:
        if self.arch:
            return "torchvision"
        if self.factory:
            return "factory"
        return "torchscript"

    def describe(self) -> dict:
        described = {"kind": self.kind, "checkpoint": str(self.checkpoint) if self.checkpoint else ""}
        if self.arch:
            described["arch"] = self.arch
        if self.factory:
            described["factory"] = self.factory
        if self.num_classes is not None:
            described["num_classes"] = self.num_classes
        return described


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_module(spec: ModelSpec) -> nn.Module:
    """Build the network the spec names and load its weights, in eval mode."""
    if spec.arch and spec.factory:
        raise SliceScopeError("both `arch` and `factory` were given", "pass only one of them")
    checkpoint = Path(spec.checkpoint).expanduser() if spec.checkpoint else None
    if checkpoint is not None and not checkpoint.is_file():
        raise SliceScopeError(f"model checkpoint not found: {checkpoint}", "check the `checkpoint` path")
    if spec.kind == "torchscript":
        if checkpoint is None:
            raise SliceScopeError("no model given", "pass a `checkpoint` with `arch` and `num_classes`, a TorchScript file, or a `factory` (module:function)")
        module = _load_torchscript(checkpoint, spec.trust_checkpoint)
    else:
        module = _build_torchvision(spec) if spec.arch else _build_from_factory(spec)
        if checkpoint is not None:
            _load_weights(module, checkpoint, spec)
    return module.eval()


def _build_torchvision(spec: ModelSpec) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if spec.arch not in available:
        close = difflib.get_close_matches(spec.arch, available, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        raise SliceScopeError(f"unknown torchvision architecture '{spec.arch}'", hint)
    if spec.num_classes is None:
        raise SliceScopeError(f"`arch` {spec.arch} needs `num_classes`", "pass the number of classes the model was trained on")
    return torchvision.models.get_model(spec.arch, weights=None, num_classes=spec.num_classes)


def _build_from_factory(spec: ModelSpec) -> nn.Module:
    module_name, _, function_name = spec.factory.partition(":")
    if not module_name or not function_name:
        raise SliceScopeError(f"factory '{spec.factory}' is not of the form module:function", "e.g. `factory` mypkg.models:build_model")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise SliceScopeError(f"cannot import factory '{spec.factory}' ({error})", "make the module importable (run from its folder or set PYTHONPATH)") from None
    kwargs = {} if spec.num_classes is None else {"num_classes": spec.num_classes}
    module = function(**kwargs)
    if not isinstance(module, nn.Module):
        raise SliceScopeError(f"factory '{spec.factory}' returned {type(module).__name__}, not a torch.nn.Module", "make it return the model")
    return module


def _read_state_dict(checkpoint: Path, trust: bool):
    with open(checkpoint, "rb") as handle:
        head = handle.read(2)
    # torch.save writes a zip archive (a pickle protocol header before torch 1.6);
    # anything else would only surface as a cryptic unpickling error.
    if not zipfile.is_zipfile(checkpoint) and not head.startswith(b"\x80"):
        raise SliceScopeError(f"{checkpoint.name} is not a readable PyTorch checkpoint", "check the file is complete and was written by torch.save")
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        raise SliceScopeError(
            f"{checkpoint.name} contains pickled Python objects, which can run code when loaded",
            "save model.state_dict() instead, or pass `trust_checkpoint` if you trust the file",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise SliceScopeError(f"{checkpoint.name} is not a readable PyTorch checkpoint ({str(error).splitlines()[0]})", "check the file is complete and was written by torch.save") from None


def _load_weights(module: nn.Module, checkpoint: Path, spec: ModelSpec) -> None:
    state = _read_state_dict(checkpoint, spec.trust_checkpoint)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if isinstance(state, dict):
        for wrapper_key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(wrapper_key), dict):
                state = state[wrapper_key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SliceScopeError(f"{checkpoint.name} does not hold a state_dict", "save it with torch.save(model.state_dict(), path)")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    source = spec.arch or spec.factory
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise SliceScopeError(
            f"checkpoint {checkpoint.name} does not fit {source}: {len(missing)} missing and {len(unexpected)} unexpected weights (e.g. '{example}')",
            "check that `arch` or `factory` matches the model that was saved",
        )
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            if tensor.ndim >= 1 and key == _last_weight_key(expected) and tensor.shape[1:] == expected[key].shape[1:]:
                raise SliceScopeError(
                    f"checkpoint {checkpoint.name} has {tensor.shape[0]} output classes but the model was built with {expected[key].shape[0]}",
                    f"set `num_classes` to {tensor.shape[0]}",
                )
            raise SliceScopeError(
                f"checkpoint {checkpoint.name} does not fit {source}: weight '{key}' has shape {tuple(tensor.shape)}, the model expects {tuple(expected[key].shape)}",
                "check that `arch` or `factory` matches the model that was saved",
            )
    module.load_state_dict(state)


def _last_weight_key(state: dict) -> str:
    weight_keys = [key for key in state if key.endswith("weight")]
    return weight_keys[-1] if weight_keys else ""


def _load_torchscript(checkpoint: Path, trust: bool) -> nn.Module:
    try:
        with warnings.catch_warnings():
            # TorchScript is deprecated upstream but is what many users export;
            # the warning is noise to someone loading their own file.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(checkpoint), map_location="cpu")
    except RuntimeError:
        pass
    # Not TorchScript: tell a state_dict (needs an architecture) from a pickled model.
    loaded = _read_state_dict(checkpoint, trust)
    if isinstance(loaded, nn.Module):
        return loaded
    raise SliceScopeError(
        f"{checkpoint.name} is a state_dict, not a TorchScript model",
        "pass `arch` and `num_classes` (torchvision) or a `factory` (module:function) to build the network",
    )


class AttributionModel:
    """A classifier with a GradCAM target layer, ready for one-pass extraction."""

    def __init__(self, module: nn.Module, image_size: int, target_layer: str | None = None, device: str = "auto"):
        self.device = torch.device(resolve_device(device))
        self.module = module.to(self.device).eval()
        # Extraction never needs weight gradients; with none required, autograd
        # records nothing below the target layer (see forward_with_activation).
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.image_size = image_size
        self.is_script = isinstance(module, torch.jit.ScriptModule)
        if self.is_script:
            self._chain = _ScriptChain(self.module, target_layer, self._probe_input())
            self.target_layer = self._chain.target_name
        else:
            self.target_layer = target_layer or find_target_layer(module, image_size)
            layers = dict(module.named_modules())
            if self.target_layer not in layers:
                close = difflib.get_close_matches(self.target_layer, [name for name in layers if name], n=3)
                hint = f"did you mean {', '.join(close)}?" if close else "name one of the model's modules (see model.named_modules())"
                raise SliceScopeError(f"the model has no layer named '{self.target_layer}'", hint)
            self._target = layers[self.target_layer]
        with torch.no_grad():
            logits, activation = self.forward_with_activation(self._probe_input())
        if logits.ndim != 2:
            raise SliceScopeError(f"the model returns shape {tuple(logits.shape)}", "SliceScope needs (batch, classes) logits from the model's forward")
        if activation.ndim != 4:
            raise SliceScopeError(
                f"layer '{self.target_layer}' outputs shape {tuple(activation.shape)}, not a (batch, channels, height, width) map",
                "name a convolutional layer with `target_layer`",
            )
        self.num_classes = int(logits.shape[1])
        self.latent_shape = tuple(int(s) for s in activation.shape[2:])
        self.feature_dim = int(activation.shape[1])

    def _probe_input(self) -> torch.Tensor:
        return torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)

    @property
    def target_module(self) -> nn.Module:
        """The GradCAM target layer itself (Python models only)."""
        return self._target

    def forward_with_activation(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the target layer's activation, in one forward pass.

        The activation is a fresh leaf that requires grad; the parameters do not
        require grad, so autograd records nothing below the target layer (the
        backbone runs as plain inference) and only the head above it.
        """
        if self.is_script:
            return self._chain(images)
        captured: list[torch.Tensor] = []

        def capture(_module, _inputs, output):
            if captured:
                raise SliceScopeError(f"layer '{self.target_layer}' runs more than once per forward pass", "name a layer that runs once with `target_layer`")
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            # A clone, so that in-place ops above the layer (e.g. ReLU(inplace=True)
            # in DenseNet) modify a copy rather than the leaf autograd needs.
            return leaf.clone()

        handle = self._target.register_forward_hook(capture)
        try:
            with torch.enable_grad():
                logits = self.module(images)
        finally:
            handle.remove()
        if not captured:
            raise SliceScopeError(f"layer '{self.target_layer}' did not run in the forward pass", "name a layer on the path to the output with `target_layer`")
        return logits, captured[0]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SliceScopeError(f"device '{device}' was asked for but no CUDA GPU is available", "set `device` to cpu")
    return device


def find_target_layer(module: nn.Module, image_size: int) -> str:
    """GradCAM's target layer: known per torchvision family, else found by probing.

    The probe runs one forward pass and takes the last module to finish whose
    output is still a spatial map (4-D, more than one cell) and which is not a
    pooling layer: for a conv trunk followed by a head that is the trunk itself.
    """
    family = type(module).__name__
    if family in FAMILY_TARGET_LAYERS:
        return FAMILY_TARGET_LAYERS[family]
    finished: list[str] = []
    handles = []
    for name, layer in module.named_modules():
        if not name or isinstance(layer, _POOLING):
            continue

        def record(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[2] * output.shape[3] > 1:
                finished.append(name)

        handles.append(layer.register_forward_hook(record))
    try:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        with torch.no_grad():
            module(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    if not finished:
        raise SliceScopeError("found no convolutional layer with a spatial output for GradCAM", "name one with `target_layer`")
    return finished[-1]


class _ScriptChain:
    """Runs a TorchScript model as the chain of its top-level children.

    TorchScript modules accept no forward hooks, so the activation is taken by
    calling the children in order: the ones up to the target layer as plain
    inference, the rest with autograd. This holds only for models whose forward
    is that chain (flattening before the first linear layer); it is checked
    against the model's own forward on a probe input, and refused otherwise.
    """

    def __init__(self, module: torch.jit.ScriptModule, target_name: str | None, probe: torch.Tensor):
        self.children = [(name, child, _starts_with_linear(child)) for name, child in module.named_children()]
        names = [name for name, _, _ in self.children]
        if not names:
            raise SliceScopeError("this TorchScript model has no sub-modules to take GradCAM from", "export it with its layers as attributes, or use a `factory`")
        if target_name is None:
            target_name = self._last_spatial_child(probe)
        if target_name not in names:
            raise SliceScopeError(
                f"'{target_name}' is not a top-level layer of this TorchScript model",
                f"for TorchScript, `target_layer` must be one of: {', '.join(names)}",
            )
        self.target_name = target_name
        self.split = names.index(target_name) + 1
        with torch.no_grad():
            expected = module(probe)
        try:
            chained, _ = self(probe)
            same = expected.shape == chained.shape and torch.allclose(expected, chained, atol=1e-4, rtol=1e-3)
        except RuntimeError:
            same = False
        if not same:
            raise SliceScopeError(
                "this TorchScript model's forward is not a plain chain of its layers, so its GradCAM layer cannot be reached",
                "load it with `arch` or `factory` and a state_dict instead",
            )

    def _last_spatial_child(self, probe: torch.Tensor) -> str:
        chosen = None
        x = probe
        with torch.no_grad():
            for name, child, flatten in self.children:
                x = _apply(child, x, flatten)
                is_pool = getattr(child, "original_name", "").endswith("Pool2d")
                if x.ndim == 4 and x.shape[2] * x.shape[3] > 1 and not is_pool:
                    chosen = name
        if chosen is None:
            raise SliceScopeError("found no layer with a spatial output in this TorchScript model", "name one with `target_layer`")
        return chosen

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images
        with torch.no_grad():
            for _, child, flatten in self.children[: self.split]:
                x = _apply(child, x, flatten)
        activation = x.detach().requires_grad_(True)
        x = activation.clone()
        with torch.enable_grad():
            for _, child, flatten in self.children[self.split :]:
                x = _apply(child, x, flatten)
        return x, activation


def _starts_with_linear(child: nn.Module) -> bool:
    """Whether the first leaf layer of ``child`` is Linear (it then needs flat input)."""
    for layer in child.modules():
        if not list(layer.children()):
            return getattr(layer, "original_name", type(layer).__name__) == "Linear"
    return False


def _apply(child: nn.Module, x: torch.Tensor, flatten: bool) -> torch.Tensor:
    return child(torch.flatten(x, 1) if flatten and x.ndim > 2 else x)
