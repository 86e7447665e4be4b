"""Cost of the one-pass extraction relative to plain inference.

    python -m benchmarks.extraction [--batches 4] [--batch-size 64] [--image-size 224]

Times, on the same batches and in one run (interleaved, so machine noise hits
all three alike), for a ResNet-18:

* forward-only inference (``torch.no_grad``), the baseline;
* ours: logits + F + GradCAM + F_W from one forward pass (``attribute_batch``);
* the straightforward captum way: a feature pass for logits and F, then
  ``LayerGradCam.attribute`` for the predicted class (its own forward and
  backward), then F_W from that map.

Each pass runs the three twice: with glibc's default allocator settings, and
inside :func:`core.memory.retained_heap`, as a scan runs its batches (freed
blocks kept for the next batch instead of unmapped and faulted back in). With
the defaults, whether a method pays the page faults depends on what ran before it
in the process, which is what made the ratio 0.92 on one machine and 1.36 on
another; the retained heap takes that out (see ``core/memory.py``).

The last line reads ``ratio_ours=<x> ratio_captum=<y> ratio_ours_default_heap=<z>
heap_speedup=<s>``: median time per batch divided by the forward-only median,
with the retained heap; the same ratio with the defaults; and how much faster a
scan's batches are with the retained heap (ours, default over retained). Random
weights and images: the cost does not depend on what the model learned.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import resource
import statistics
import time

import torch
import torchvision
from captum.attr import LayerGradCam

from core.extract import attribute_batch
from core.memory import retained_heap
from core.models import AttributionModel

HEAPS = {"default heap": contextlib.nullcontext, "retained heap": retained_heap}


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
    parser.add_argument("--repeats", type=int, default=2, help="passes over the batches, each with both heap settings after one warm-up batch")
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
    times = {(heap, name): [] for heap in HEAPS for name in methods}
    faults = {(heap, name): [] for heap in HEAPS for name in methods}
    for _ in range(args.repeats):
        for heap, setting in HEAPS.items():
            with setting():
                for run in methods.values():  # warm-up: allocator, thread pools, captum's hooks
                    run(batches[0])
                for images in batches:
                    for name, run in methods.items():
                        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                        start = time.perf_counter()
                        run(images)
                        times[heap, name].append(time.perf_counter() - start)
                        faults[heap, name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)

    print(f"ResNet-18, {args.image_size}px, batch {args.batch_size}, {args.batches} batches × {args.repeats} passes, "
          f"{torch.get_num_threads()} threads, device cpu")
    ratios = {}
    for heap in HEAPS:
        base = statistics.median(times[heap, "forward"])
        print(heap)
        for name in methods:
            median = statistics.median(times[heap, name])
            ratios[heap, name] = median / base
            print(f"{name:>10}: median {median:.3f} s/batch ({args.batch_size / median:.1f} img/s), ratio {median / base:.3f}, "
                  f"page faults {statistics.median(faults[heap, name]):,.0f} per batch")
    speedup = statistics.median(times["default heap", "ours"]) / statistics.median(times["retained heap", "ours"])
    print(f"ratio_ours={ratios['retained heap', 'ours']:.3f} ratio_captum={ratios['retained heap', 'captum']:.3f} "
          f"ratio_ours_default_heap={ratios['default heap', 'ours']:.3f} heap_speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
