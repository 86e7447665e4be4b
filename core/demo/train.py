"""Training and per-group evaluation of the demo CNNs on CPU.

The demo trains the same :class:`DemoCNN` twice: ``biased`` on ``train`` (where
the shortcuts hold) and ``balanced`` on ``balanced_train`` (where they do not).
Whole splits are loaded into memory once, since 64-px images are small and
decoding PNGs every epoch would cost more than the training steps.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.nn import functional as F

from core.demo.config import DemoConfig
from core.demo.dataset import CLASSES, GROUPS
from core.demo.model import DemoCNN, build_demo_cnn
from core.errors import SliceScopeError
from core.progress import ProgressFn, track

_EVAL_BATCH = 256
_LEARNING_RATE = 3e-3
_WEIGHT_DECAY = 1e-4
# A short warm-up: the shape features are found late, so time at full rate matters.
_WARMUP_SHARE = 0.05


def _split_rows(metadata: pd.DataFrame, split: str) -> pd.DataFrame:
    rows = metadata[metadata["split"] == split]
    if rows.empty:
        raise SliceScopeError(f"the demo metadata has no rows for split {split!r}", "regenerate the demo data")
    return rows


def load_split(metadata: pd.DataFrame, data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of ``split`` as one float tensor ``(N, 3, H, W)`` in [0, 1], and label indices."""
    rows = _split_rows(metadata, split)
    pixels = np.stack([np.asarray(Image.open(Path(data_dir) / path).convert("RGB")) for path in rows["path"]])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
    labels = torch.tensor([CLASSES.index(label) for label in rows["label"]], dtype=torch.long)
    return images, labels


@torch.no_grad()
def predict_logits(model: DemoCNN, images: torch.Tensor) -> torch.Tensor:
    """Logits for ``images`` in eval mode, batched to bound memory."""
    model.eval()
    return torch.cat([model(batch) for batch in images.split(_EVAL_BATCH)])


def _evaluate(model: DemoCNN, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    logits = predict_logits(model, images)
    loss = F.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def train_classifier(
    metadata: pd.DataFrame,
    data_dir: Path,
    split: str,
    config: DemoConfig,
    progress: ProgressFn | None = None,
) -> tuple[DemoCNN, list[dict]]:
    """Train a fresh DemoCNN on ``split``, validating on ``val`` after each epoch.

    AdamW with a one-cycle schedule and a short warm-up: the balanced model
    finds the shape features only after several epochs, so the time at a high
    rate is what lets the full preset train in under a minute on two cores
    (measured 40–50 s per model). There is no augmentation:
    flips or crops would move the watermark and weaken the planted shortcuts.
    Seeded by ``config.seed`` without touching the caller's global RNG state.
    Returns the model in eval mode and one history dict per epoch.
    """
    train_images, train_labels = load_split(metadata, data_dir, split)
    val_images, val_labels = load_split(metadata, data_dir, "val")
    steps_per_epoch = -(-len(train_labels) // config.batch_size)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_demo_cnn(num_classes=len(CLASSES))
        optimizer = torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE, weight_decay=_WEIGHT_DECAY)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=_LEARNING_RATE,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=_WARMUP_SHARE,
        )
        shuffler = torch.Generator().manual_seed(config.seed)
        history = []
        for epoch in track(range(1, config.epochs + 1), f"training on {split}", config.epochs, progress):
            started = time.perf_counter()
            model.train()
            total_loss, correct = 0.0, 0
            for batch in torch.randperm(len(train_labels), generator=shuffler).split(config.batch_size):
                logits = model(train_images[batch])
                loss = F.cross_entropy(logits, train_labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += loss.item() * len(batch)
                correct += (logits.argmax(1) == train_labels[batch]).sum().item()
            val_loss, val_acc = _evaluate(model, val_images, val_labels)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": total_loss / len(train_labels),
                    "train_acc": correct / len(train_labels),
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "seconds": time.perf_counter() - started,
                }
            )
    return model.eval(), history


def group_accuracy(model: DemoCNN, metadata: pd.DataFrame, data_dir: Path, split: str) -> pd.DataFrame:
    """Accuracy against the given ``label`` per ``group`` of ``split`` (columns group, n, accuracy)."""
    rows = _split_rows(metadata, split)
    images, labels = load_split(metadata, data_dir, split)
    correct = (predict_logits(model, images).argmax(1) == labels).numpy()
    table = (
        pd.DataFrame({"group": rows["group"].to_numpy(), "correct": correct})
        .groupby("group")["correct"]
        .agg(n="size", accuracy="mean")
        .reset_index()
    )
    order = {group: position for position, group in enumerate(GROUPS)}
    return table.sort_values("group", key=lambda groups: groups.map(order)).reset_index(drop=True)
