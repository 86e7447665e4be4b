"""Loading user models: torchvision + state_dict, TorchScript, factories, bad checkpoints."""

from __future__ import annotations

import pytest
import torch
import torchvision

from core.errors import SliceScopeError
from core.extract import attribute_batch
from core.models import AttributionModel, ModelSpec, find_target_layer, load_module
from tests.helpers import build_small_net


@pytest.fixture
def resnet_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    path = tmp_path / "resnet18.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def test_torchvision_state_dict_loads_with_the_same_weights(resnet_checkpoint):
    path, original = resnet_checkpoint
    loaded = load_module(ModelSpec(checkpoint=path, arch="resnet18", num_classes=4))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x))


def test_wrapped_and_data_parallel_state_dicts_load(resnet_checkpoint, tmp_path):
    _, original = resnet_checkpoint
    wrapped = {"state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    loaded = load_module(ModelSpec(checkpoint=tmp_path / "wrapped.pt", arch="resnet18", num_classes=4))
    torch.testing.assert_close(loaded.fc.weight, original.fc.weight)


def test_checkpoint_for_another_architecture_is_one_line_error(resnet_checkpoint):
    path, _ = resnet_checkpoint
    with pytest.raises(SliceScopeError, match="does not fit vgg11") as raised:
        load_module(ModelSpec(checkpoint=path, arch="vgg11", num_classes=4))
    assert "\n" not in str(raised.value)


def test_class_count_mismatch_names_the_right_count(resnet_checkpoint):
    path, _ = resnet_checkpoint
    with pytest.raises(SliceScopeError, match="has 4 output classes but the model was built with 10 — set `num_classes` to 4"):
        load_module(ModelSpec(checkpoint=path, arch="resnet18", num_classes=10))


def test_unknown_architecture_suggests_close_names(resnet_checkpoint):
    path, _ = resnet_checkpoint
    with pytest.raises(SliceScopeError, match="did you mean resnet18"):
        load_module(ModelSpec(checkpoint=path, arch="resnet-18", num_classes=4))


def test_pickled_model_is_refused_unless_trusted(tmp_path):
    model = build_small_net()
    torch.save(model, tmp_path / "whole_model.pt")
    with pytest.raises(SliceScopeError, match="pickled Python objects.*`trust_checkpoint`"):
        load_module(ModelSpec(checkpoint=tmp_path / "whole_model.pt"))
    trusted = load_module(ModelSpec(checkpoint=tmp_path / "whole_model.pt", trust_checkpoint=True))
    torch.testing.assert_close(trusted.classifier.weight, model.classifier.weight)


def test_garbage_and_missing_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(SliceScopeError, match="not a readable PyTorch checkpoint"):
        load_module(ModelSpec(checkpoint=tmp_path / "junk.pt", arch="resnet18", num_classes=4))
    with pytest.raises(SliceScopeError, match="not found"):
        load_module(ModelSpec(checkpoint=tmp_path / "absent.pt", arch="resnet18", num_classes=4))


def test_state_dict_without_architecture_says_what_to_add(resnet_checkpoint):
    path, _ = resnet_checkpoint
    with pytest.raises(SliceScopeError, match="is a state_dict, not a TorchScript model — pass `arch`"):
        load_module(ModelSpec(checkpoint=path))


def test_factory_errors_are_explained(small_net_checkpoint):
    with pytest.raises(SliceScopeError, match="not of the form module:function"):
        load_module(ModelSpec(checkpoint=small_net_checkpoint, factory="tests.helpers"))
    with pytest.raises(SliceScopeError, match="cannot import factory"):
        load_module(ModelSpec(checkpoint=small_net_checkpoint, factory="tests.helpers:no_such_function"))


@pytest.mark.parametrize("export", ["script", "trace"])
def test_torchscript_gradcam_matches_the_eager_model(tmp_path, export):
    torch.manual_seed(0)
    eager = torchvision.models.resnet18(num_classes=3).eval()
    example = torch.randn(1, 3, 64, 64)
    exported = torch.jit.script(eager) if export == "script" else torch.jit.trace(eager, example)
    path = tmp_path / "model.ts"
    torch.jit.save(exported, str(path))

    scripted = AttributionModel(load_module(ModelSpec(checkpoint=path)), image_size=64)
    assert scripted.target_layer == "layer4"
    reference = AttributionModel(eager, image_size=64)
    images = torch.randn(4, 3, 64, 64)
    ours, expected = attribute_batch(scripted, images), attribute_batch(reference, images)
    torch.testing.assert_close(ours.logits, expected.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.gradcam, expected.gradcam, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(ours.attribution_features, expected.attribution_features, rtol=1e-3, atol=1e-4)


def test_torchscript_with_a_non_chain_forward_is_refused(tmp_path):
    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.head((self.conv(x) + x.mean(1, keepdim=True)).mean((2, 3)))

    path = tmp_path / "skip.ts"
    torch.jit.save(torch.jit.script(Skip().eval()), str(path))
    with pytest.raises(SliceScopeError, match="not a plain chain"):
        AttributionModel(load_module(ModelSpec(checkpoint=path)), image_size=16, target_layer="conv")


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("resnet18", "layer4"),
        ("vgg11", "features"),
        ("densenet121", "features"),
        ("mobilenet_v3_small", "features"),
        ("efficientnet_b0", "features"),
        ("convnext_tiny", "features"),
    ],
)
def test_target_layer_found_for_common_families(arch, expected):
    model = torchvision.models.get_model(arch, weights=None, num_classes=3).eval()
    wrapped = AttributionModel(model, image_size=64)
    assert wrapped.target_layer == expected
    result = attribute_batch(wrapped, torch.randn(2, 3, 64, 64))
    assert result.gradcam.shape[0] == 2 and result.logits.shape == (2, 3)
    assert torch.isfinite(result.attribution_features).all()


def test_custom_model_target_layer_is_found_by_probing():
    assert find_target_layer(build_small_net(), image_size=32) == "features"


def test_named_target_layer_is_checked():
    with pytest.raises(SliceScopeError, match="no layer named 'featurs' — did you mean features"):
        AttributionModel(build_small_net(), image_size=32, target_layer="featurs")
    with pytest.raises(SliceScopeError, match="not a \\(batch, channels, height, width\\) map"):
        AttributionModel(build_small_net(), image_size=32, target_layer="classifier")
