"""Sizes and training settings of the built-in demo benchmark.

The demo must be rebuilt locally (nothing is downloaded), so its cost is part of
the design: "full" is the real demo, tuned so that generation and each of the two
trainings take about a minute on a 2-core CPU; "small" draws under half as many
images and trains for fewer epochs: its biased model still takes the background
and colour shortcuts, and it reads red squares by their colour strongly enough
that slices of them form and their mosaic tiles show red (the Mosaic-meaning
test relies on that), in about 30 s; "quick" is what the app opens on while the
full demo is built behind it: 400 held-out images, models trained for 6 epochs
(the biased one already takes the background shortcut), no balanced model and
no crowd campaign, about 30 s on 2 idle cores; "tiny" runs the same code paths in a few seconds
for tests, without any promise about model quality. "waterbirds" is "full" made
closer to Waterbirds: objects 26–40 px across instead of 12–24 (the object
fills more of the frame) and 5% of the non-circles on water in training instead
of 1% (a weaker background shortcut with more counter-examples).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import SliceScopeError

# From 50 px across, no place in the 64-px frame keeps the object clear of the
# watermark's corner and drawing it would never end; 48 leaves a margin.
MAX_OBJECT_SIZE_PX = 48.0


@dataclass(frozen=True)
class DemoConfig:
    """How much data to draw and how long to train on it.

    ``n_train`` sizes both ``train`` and ``balanced_train``; ``image_size`` is
    fixed at 64 because the CNN's 8×8 feature map and the drawing scales assume it.
    ``object_size_px`` is the (min, max) diameter of the circle around the drawn
    shape; ``water_rate_other`` is P(water | not a circle) in ``train`` and
    ``val`` (circles stay on water 97% of the time there); ``balanced_train``
    and ``test`` do not depend on it.
    """

    n_train: int
    n_val: int
    n_test: int
    image_size: int = 64
    epochs: int = 8
    batch_size: int = 64
    seed: int = 0
    crowd_images: int = 300  # held-out images the simulated crowd annotates (0: no demo campaign)
    balanced_model: bool = True  # also train and scan the balanced model (a second version to compare)
    object_size_px: tuple[float, float] = (12.0, 24.0)
    water_rate_other: float = 0.01

    def __post_init__(self) -> None:
        sizes = tuple(self.object_size_px) if isinstance(self.object_size_px, (tuple, list)) else ()
        numbers = len(sizes) == 2 and all(isinstance(size, (int, float)) for size in sizes)
        if not numbers or not 0 < sizes[0] <= sizes[1] <= MAX_OBJECT_SIZE_PX:
            raise SliceScopeError(
                f"`object_size_px` must be (min, max) with 0 < min ≤ max ≤ {MAX_OBJECT_SIZE_PX:g}, not {self.object_size_px}",
                f"pass two diameters in pixels up to {MAX_OBJECT_SIZE_PX:g}, e.g. (26.0, 40.0)",
            )
        if not isinstance(self.water_rate_other, (int, float)) or not 0 <= self.water_rate_other < 1:
            raise SliceScopeError(
                f"`water_rate_other` must be in [0, 1), not {self.water_rate_other}",
                "pass the share of non-circles on water in training, e.g. 0.05",
            )
        # A list (e.g. from JSON) would make the frozen config unhashable and differ from the tuple it means.
        object.__setattr__(self, "object_size_px", (float(sizes[0]), float(sizes[1])))


PRESETS: dict[str, DemoConfig] = {
    "full": DemoConfig(n_train=5000, n_val=800, n_test=2000, epochs=14, batch_size=64, seed=0),
    "small": DemoConfig(n_train=2400, n_val=200, n_test=800, epochs=12, batch_size=64, seed=0),
    "quick": DemoConfig(n_train=800, n_val=100, n_test=400, epochs=6, batch_size=64, seed=0, crowd_images=0, balanced_model=False),
    "tiny": DemoConfig(n_train=96, n_val=32, n_test=64, epochs=1, batch_size=32, seed=0),
    "waterbirds": DemoConfig(
        n_train=5000, n_val=800, n_test=2000, epochs=14, batch_size=64, seed=0, object_size_px=(26.0, 40.0), water_rate_other=0.05
    ),
}
