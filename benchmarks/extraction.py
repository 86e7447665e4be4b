"""Cost of the one-pass extraction relative to plain inference.

    python -m benchmarks.extraction [--batches 4] [--batch-size 64] [--image-size 224]

Times, on the same batches and in one run (interleaved, so machine noise hits
all three alike), for a ResNet-18:

* forward-only inference (``torch.no_grad``), the baseline;
* ours: logits + F + GradCAM + F_W from one forward pass (``attribute_batch``);
* the straightforward captum way: a feature pass for logits and F, then
  ``LayerGradCam.attribute`` for the predicted class (its own forward and
  backward), then F_W from that map.

The last line reads ``ratio_ours=<x> ratio_captum=<y>`` (median time per batch
divided by the forward-only median). Random weights and images: the cost does
not depend on what the model learned.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision
from captum.attr import LayerGradCam

from core.extract import attribute_batch
from core.models import AttributionModel


def forward_only(model: torch.nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        model(images)


def captum_way(model: torch.nn.Module, gradcam: LayerGradCam, images: torch.Tensor) -> None:
    captured = {}
    handle = model.layer4.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out))
    with torch.no_grad():
        logits = model(images)
    handle.remove()
    activation = captured["a"]
    features = activation.mean(dim=(2, 3))
    maps = gradcam.attribute(images, target=logits.argmax(1), relu_attributions=True)[:, 0].detach()
    maps = maps / maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    weighted = torch.einsum("bkhw,bhw->bk", activation, maps) / maps.sum(dim=(1, 2)).clamp_min(1e-12)[:, None]
    del features, weighted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the batches; the first batch of the first pass is warm-up")
    args = parser.parse_args()

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=1000).eval()
    ours_model = AttributionModel(copy.deepcopy(reference), image_size=args.image_size, device="cpu")
    captum_model = copy.deepcopy(reference)  # parameters require grad, as a user's model does
    gradcam = LayerGradCam(captum_model, captum_model.layer4)
    batches = [torch.randn(args.batch_size, 3, args.image_size, args.image_size) for _ in range(args.batches)]

    methods = {
        "forward": lambda x: forward_only(reference, x),
        "ours": lambda x: attribute_batch(ours_model, x),
        "captum": lambda x: captum_way(captum_model, gradcam, x),
    }
    for run in methods.values():  # warm-up: allocator, thread pools, captum's hooks
        run(batches[0])
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for images in batches:
            for name, run in methods.items():
                start = time.perf_counter()
                run(images)
                times[name].append(time.perf_counter() - start)

    base = statistics.median(times["forward"])
    print(f"ResNet-18, {args.image_size}px, batch {args.batch_size}, {args.batches} batches × {args.repeats} passes, "
          f"{torch.get_num_threads()} threads, device cpu")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>8}: median {median:.3f} s/batch ({args.batch_size / median:.1f} img/s), ratio {median / base:.3f}")
    print(f"ratio_ours={statistics.median(times['ours']) / base:.3f} ratio_captum={statistics.median(times['captum']) / base:.3f}")


if __name__ == "__main__":
    main()
