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
for tests, without any promise about model quality.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoConfig:
    """How much data to draw and how long to train on it.

    ``n_train`` sizes both ``train`` and ``balanced_train``; ``image_size`` is
    fixed at 64 because the CNN's 8×8 feature map and the drawing scales assume it.
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


PRESETS: dict[str, DemoConfig] = {
    "full": DemoConfig(n_train=5000, n_val=800, n_test=2000, epochs=14, batch_size=64, seed=0),
    "small": DemoConfig(n_train=2400, n_val=200, n_test=800, epochs=12, batch_size=64, seed=0),
    "quick": DemoConfig(n_train=800, n_val=100, n_test=400, epochs=6, batch_size=64, seed=0, crowd_images=0, balanced_model=False),
    "tiny": DemoConfig(n_train=96, n_val=32, n_test=64, epochs=1, batch_size=32, seed=0),
}
