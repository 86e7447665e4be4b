"""Image datasets: ImageFolder directories and CSV manifests, indexed once.

An :class:`ImageIndex` is the list of images a scan will read, in a fixed order
(sorted by path), with a stable id per image and the class list. It is built
without decoding any image, so it is cheap; unreadable files are found while
the extraction decodes them and are then skipped and reported, not fatal.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from core.errors import SliceScopeError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def image_id(relative_path: str) -> str:
    """A stable id for an image: it depends only on the image's path in its dataset."""
    return hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ImageIndex:
    """The images of a dataset, in scan order.

    ``table`` has one row per image with columns ``image_id``, ``path`` (relative
    to ``root``, posix), ``label`` (class name) and any extra manifest columns
    (ground truth such as ``split`` or ``group`` travels with the image).
    """

    root: Path
    kind: str
    table: pd.DataFrame
    classes: tuple[str, ...]
    # Manifest rows that named an image already listed (same file), kept once: {"path", "lines"}.
    duplicates: tuple[dict, ...] = field(default=())

    def absolute_path(self, relative_path: str) -> Path:
        return self.root / relative_path

    def fingerprint(self) -> str:
        """A hash of what the scan reads: paths, labels, file sizes and times (a missing file counts as absent)."""
        digest = hashlib.sha256()
        for rel, label in zip(self.table["path"], self.table["label"]):
            try:
                stat = self.absolute_path(rel).stat()
                size, mtime = stat.st_size, stat.st_mtime_ns
            except OSError:
                size = mtime = -1
            digest.update(f"{rel}\0{label}\0{size}\0{mtime}\n".encode())
        return digest.hexdigest()


def load_index(data: str | Path, split: str | None = None) -> ImageIndex:
    """Index an ImageFolder directory or a CSV manifest (``path,label``).

    ``split`` keeps only the manifest rows whose ``split`` column equals it.
    """
    data = Path(data).expanduser()
    if not data.exists():
        raise SliceScopeError(f"dataset not found: {data}", "pass an ImageFolder directory or a CSV manifest with columns path,label")
    if data.is_dir():
        if split is not None:
            raise SliceScopeError("`split` works only with a CSV manifest that has a split column", "drop `split` or point `data` at the manifest")
        index = _index_image_folder(data)
    elif data.suffix.lower() == ".csv":
        index = _index_manifest(data, split)
    else:
        raise SliceScopeError(f"cannot read a dataset from {data.name}", "pass an ImageFolder directory or a .csv manifest with columns path,label")
    if index.table.empty:
        raise SliceScopeError(f"no images found in {data}", "check the path; images need one of the extensions " + ", ".join(sorted(IMAGE_EXTENSIONS)))
    return index


def _index_image_folder(root: Path) -> ImageIndex:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise SliceScopeError(f"{root} has no class folders", "an ImageFolder dataset holds one sub-folder per class, each with that class's images")
    rows = []
    for class_dir in class_dirs:
        files = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise SliceScopeError(f"class folder '{class_dir.name}' is empty", f"add its images or remove the folder {class_dir}")
        rows.extend((p.relative_to(root).as_posix(), class_dir.name) for p in files)
    table = pd.DataFrame(rows, columns=["path", "label"])
    table.insert(0, "image_id", table["path"].map(image_id))
    return ImageIndex(root=root, kind="imagefolder", table=table, classes=tuple(d.name for d in class_dirs))


# What pandas would read as a missing value; a label spelled like one is almost always a hole in the data.
_MISSING_LABELS = frozenset({"na", "n/a", "nan", "null", "none", "<na>", "#n/a"})


def _index_manifest(csv_path: Path, split: str | None) -> ImageIndex:
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise SliceScopeError(f"cannot parse the manifest {csv_path.name} ({str(error).splitlines()[0]})", "save it as a UTF-8 CSV with a header row path,label") from None
    table.columns = [str(column).strip() for column in table.columns]
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise SliceScopeError(f"manifest {csv_path.name} lacks the column(s) {', '.join(sorted(missing))}", "its header must include path,label")
    table["path"] = table["path"].str.strip()
    table["label"] = table["label"].str.strip()
    table.insert(0, "_line", np.arange(2, len(table) + 2))
    if split is not None:
        if "split" not in table.columns:
            raise SliceScopeError(f"manifest {csv_path.name} has no split column", "drop `split` or add a split column")
        available = sorted(table["split"].str.strip().unique())
        table = table[table["split"].str.strip() == split]
        if table.empty:
            raise SliceScopeError(f"manifest {csv_path.name} has no rows with split '{split}'", f"choose one of: {', '.join(available)}")
    blank = table["path"].eq("") | table["label"].eq("")
    if blank.any():
        raise SliceScopeError(f"manifest {csv_path.name} line {table['_line'][blank].iat[0]} has an empty path or label", "fill it in or delete the line")
    missing_label = table["label"].str.lower().isin(_MISSING_LABELS)
    if missing_label.any():
        line, label = table["_line"][missing_label].iat[0], table["label"][missing_label].iat[0]
        raise SliceScopeError(
            f"manifest {csv_path.name} line {line} has the label '{label}', which reads as a missing value",
            "write the image's class there, or delete the line",
        )
    table["path"] = table["path"].map(_normalised_path)
    table, duplicates = _drop_duplicate_files(table, csv_path)
    table = table.drop(columns="_line").sort_values("path", kind="stable").reset_index(drop=True)
    table.insert(0, "image_id", table["path"].map(image_id))
    classes = tuple(sorted(table["label"].unique()))
    return ImageIndex(root=csv_path.parent, kind="csv", table=table, classes=classes, duplicates=duplicates)


def _normalised_path(path: str) -> str:
    """``./cat//00.png`` and ``cat/00.png`` name one file; so do Windows separators."""
    return posixpath.normpath(path.replace("\\", "/"))


def _drop_duplicate_files(table: pd.DataFrame, csv_path: Path) -> tuple[pd.DataFrame, tuple[dict, ...]]:
    """Keep each file once: rows naming the same file (after symlinks) are one image, and must agree on its label."""
    root = csv_path.parent
    resolved = table["path"].map(lambda path: os.path.realpath(root / path))
    repeated = resolved.duplicated(keep=False)
    duplicates = []
    for _, rows in table[repeated].groupby(resolved[repeated], sort=False):
        labels = rows["label"].unique()
        lines = [int(line) for line in rows["_line"]]
        if len(labels) > 1:
            raise SliceScopeError(
                f"manifest {csv_path.name} lists {rows['path'].iat[0]} on lines {', '.join(map(str, lines))} with different labels ({', '.join(labels)})",
                "keep one line per image, with its correct label",
            )
        duplicates.append({"path": rows["path"].iat[0], "lines": lines})
    return table[~resolved.duplicated(keep="first")], tuple(duplicates)


class DecodedImage(NamedTuple):
    image: Image.Image  # 8-bit RGB
    sha1: str  # of the file's bytes
    conversion: str  # "" for ordinary 8-bit images, else what was done ("16-bit grayscale scaled to 8 bits")


def read_image(path: Path) -> DecodedImage:
    """Decode one image as 8-bit RGB, with the SHA-1 of its bytes and how it was converted (for the scan report).
 Raises ``OSError`` or ``ValueError`` with a short reason when the
    file cannot be read or decoded; the caller records the reason and skips the image.
    """
    try:
        payload = path.read_bytes()
    except OSError as error:
        raise OSError(f"cannot open the file ({error.strerror or type(error).__name__})") from None
    try:
        with warnings.catch_warnings():
            # PIL only warns between its pixel limit and twice it; decoding such an image
            # costs gigabytes per loader worker, so it is refused like a larger one.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(payload)) as image:
                frames = getattr(image, "n_frames", 1)
                image.load()
                rgb, conversion = _as_rgb(image)
    except UnidentifiedImageError:
        raise ValueError("not a recognised image format (corrupt or not an image)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(
            f"image too large to decode safely (over {Image.MAX_IMAGE_PIXELS // 1_000_000} megapixels): downscale it before scanning"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"damaged image data ({error})") from None
    if min(rgb.size) < 1:
        raise ValueError("image has no pixels")
    if frames > 1:
        conversion = "; ".join(filter(None, [conversion, f"first of {frames} frames"]))
    return DecodedImage(rgb, hashlib.sha1(payload).hexdigest(), conversion)


# Integer modes wider than 8 bits: PIL's convert("RGB") clips them at 255 instead of scaling.
_WIDE_INTEGER_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 16}


def _as_rgb(image: Image.Image) -> tuple[Image.Image, str]:
    """8-bit RGB, with high-bit-depth greyscale scaled into 0–255 rather than clipped."""
    if image.mode in ("RGB",):
        return image.copy(), ""
    if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F" or values.min() < 0 or values.max() > 65535:
            # Floating-point or 32-bit data has no fixed range: stretch what is there.
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            scaled = (np.nan_to_num(values, nan=low) - low) / max(high - low, 1e-12) * 255.0
            how = f"{image.mode} values {low:g}..{high:g} stretched to 8 bits"
        else:
            scaled = values / 65535.0 * 255.0
            how = "16-bit grayscale scaled to 8 bits"
        grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
        return grey.convert("RGB"), how
    # Everything else (L, P, CMYK, YCbCr, LAB, RGBA, ...) converts as torchvision's default loader does.
    return image.convert("RGB"), "" if image.mode in ("L", "P") else f"{image.mode} converted to RGB"


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input; recorded in the workspace.

    The image is resized to ``image_size`` × ``image_size`` without cropping, so
    every attribution map covers the whole image the analyst sees.
    """

    image_size: int
    normalize: str = "imagenet"

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise SliceScopeError(f"unknown normalisation '{self.normalize}'", f"use one of: {', '.join(NORMALIZATIONS)}")
        if not 8 <= self.image_size <= 4096:
            raise SliceScopeError(f"image size {self.image_size} is out of range", "use a size between 8 and 4096 pixels")

    def to_array(self, image: Image.Image) -> np.ndarray:
        """RGB image → float32 array (3, S, S), normalised."""
        resized = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        array = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0
        mean, std = NORMALIZATIONS[self.normalize]
        return (array - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]

    def as_dict(self) -> dict:
        return {"image_size": self.image_size, "normalize": self.normalize, "resize": "bilinear, whole image, no crop"}
