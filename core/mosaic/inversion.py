"""Feature inversion (AttributionScanner §3.5.1, after Mahendran & Vedaldi).

For each slice, an image x is optimised from random noise so that the model's
target-layer features of x, averaged over the grid, match the slice's mean
attribution-weighted feature vector F_W. What the model "sees" in the slice
then appears as image content. Plain pixel optimisation yields high-frequency
noise, so the image is parameterised in Fourier space with a 1/f spectrum
(lucid's decorrelated parameterisation), its channels are mixed by lucid's
colour-correlation matrix before the sigmoid, it is regularised by total
variation, and it is jittered by a few pixels at every step so the result must
be robust to small shifts. A tile's shape is a hard constraint: pixels outside
its mask are zeroed at every step. All tiles of a mosaic are optimised together
as one batch.

Written with torch directly: the maintained inversion libraries (lucent) pin
old torch versions, and the loop is short.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from core.data import NORMALIZATIONS
from core.errors import SliceScopeError
from core.models import AttributionModel
from core.progress import ProgressFn, silent


@dataclass(frozen=True)
class InversionParams:
    steps: int = 256
    learning_rate: float = 0.05
    total_variation: float = 0.02
    jitter: int = 2  # pixels of random shift per step
    # Optimise in decorrelated colour space (see COLOUR_CORRELATION). Off, each
    # RGB channel moves on its own and inversions drift to saturated primaries.
    decorrelate_colour: bool = True
    seed: int = 0


# lucid's square root of the colour covariance of natural (ImageNet) images, in
# its SVD basis, scaled so that its largest column has unit norm. The optimiser
# moves along luminance and two opponent-colour axes, so a small step changes
# a pixel the way natural colours vary. On the demo, water tiles become muted
# blues instead of saturated primaries; with the tile-only feature average this
# is what makes the Mosaic-meaning check (core.mosaic.check) read them as
# background (docs/BENCHMARKS.md, "Data Slice Mosaic").
_COLOUR_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOUR_CORRELATION = _COLOUR_SVD_SQRT / _COLOUR_SVD_SQRT.norm(dim=0).max()


def _fourier_scale(size: int) -> torch.Tensor:
    """1/f amplitude per rfft2 frequency, so the optimiser moves low frequencies first."""
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    frequency = torch.sqrt(fx**2 + fy**2)
    return 1.0 / torch.clamp(frequency, min=1.0 / size)


def _total_variation(images: torch.Tensor) -> torch.Tensor:
    return (images[..., 1:, :] - images[..., :-1, :]).abs().mean() + (images[..., :, 1:] - images[..., :, :-1]).abs().mean()


def target_layer_features(model: AttributionModel, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Grid-averaged target-layer activation, differentiable with respect to ``images``.

    With ``masks`` (B × 1 × S × S), each grid cell counts by how much of it the
    mask covers: a tile's features are those of the tile alone, not of the
    black around it. ``AttributionModel.forward_with_activation`` cuts the graph
    at the target layer (extraction needs no gradient below it); inversion
    needs the whole path down to the pixels, so it hooks the layer without
    detaching.
    """
    if model.is_script:
        raise SliceScopeError("feature inversion needs a Python model, not TorchScript", "scan with `arch` or `factory` to get a mosaic")
    captured: list[torch.Tensor] = []
    handle = model.target_module.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        model.module(images)
    finally:
        handle.remove()
    activation = captured[0]
    if masks is None:
        return activation.mean(dim=(2, 3))
    coverage = functional.adaptive_avg_pool2d(masks, activation.shape[-2:])
    return (activation * coverage).sum(dim=(2, 3)) / coverage.sum(dim=(2, 3)).clamp(min=1e-6)


def invert_features(
    model: AttributionModel,
    targets: np.ndarray,
    masks: np.ndarray | None = None,
    normalize: str = "none",
    params: InversionParams = InversionParams(),
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Images (B × S × S × 3, uint8) whose grid-averaged features match ``targets`` (B × K).

    ``masks`` (B × S × S, values in [0, 1]) confine each image to its tile,
    and only the tile's grid cells enter the average; S is the model's input size.
    """
    report = progress or silent
    size = model.image_size
    targets_tensor = torch.as_tensor(np.asarray(targets, dtype=np.float32), device=model.device)
    if targets_tensor.ndim != 2 or targets_tensor.shape[1] != model.feature_dim:
        raise SliceScopeError(f"inversion targets have shape {tuple(targets_tensor.shape)}", f"pass one {model.feature_dim}-d feature vector per tile")
    count = len(targets_tensor)
    mask = torch.ones(count, 1, size, size, device=model.device) if masks is None else torch.as_tensor(np.asarray(masks, np.float32), device=model.device)[:, None]
    mean, std = (torch.tensor(v, device=model.device).view(1, 3, 1, 1) for v in NORMALIZATIONS[normalize])

    generator = torch.Generator().manual_seed(params.seed)
    spectrum = (0.01 * torch.randn(count, 3, size, size // 2 + 1, 2, generator=generator)).to(model.device).requires_grad_(True)
    scale = _fourier_scale(size).to(model.device)
    optimiser = torch.optim.Adam([spectrum], lr=params.learning_rate)
    target_norm = targets_tensor.norm(dim=1, keepdim=True).clamp(min=1e-6)
    colour = COLOUR_CORRELATION.to(model.device) if params.decorrelate_colour else torch.eye(3, device=model.device)

    def render() -> torch.Tensor:
        pixels = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale, s=(size, size), norm="ortho")
        return torch.sigmoid(torch.einsum("ij,bjhw->bihw", colour, pixels)) * mask

    report("inverting slice features", 0, params.steps)
    for step in range(params.steps):
        optimiser.zero_grad()
        images, tile = render(), mask
        if params.jitter:
            dy, dx = (int(v) for v in torch.randint(-params.jitter, params.jitter + 1, (2,), generator=generator))
            images, tile = (torch.roll(t, shifts=(dy, dx), dims=(2, 3)) for t in (images, mask))
        # Matching the whole grid's mean would count the zeroed pixels around a
        # tile too, and the tile would compensate for them with exaggerated,
        # oversaturated colours, the more so the smaller the tile.
        features = target_layer_features(model, (images - mean) / std, tile)
        match = (((features - targets_tensor) / target_norm) ** 2).sum(dim=1).mean()
        loss = match + params.total_variation * _total_variation(images)
        loss.backward()
        optimiser.step()
        report("inverting slice features", step + 1, params.steps)
    with torch.no_grad():
        final = render().permute(0, 2, 3, 1).cpu().numpy()
    return np.clip(final * 255.0 + 0.5, 0, 255).astype(np.uint8)
