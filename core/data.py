"""Image datasets: ImageFolder directories and CSV manifests, indexed once.

An :class:`ImageIndex` is the list of images a scan will read, in a fixed order
(sorted by path), with a stable id per image and the class list. It is built
without decoding any image, so it is cheap; unreadable files are found while
the extraction decodes them and are then skipped and reported, not fatal.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

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

    def absolute_path(self, relative_path: str) -> Path:
        return self.root / relative_path

    def fingerprint(self) -> str:
        """A hash of what the scan reads: paths, labels, file sizes and times."""
        digest = hashlib.sha256()
        for rel, label in zip(self.table["path"], self.table["label"]):
            stat = self.absolute_path(rel).stat()
            digest.update(f"{rel}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
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
            raise SliceScopeError("--split works only with a CSV manifest that has a split column", "drop --split or point --data at the manifest")
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


def _index_manifest(csv_path: Path, split: str | None) -> ImageIndex:
    try:
        table = pd.read_csv(csv_path, dtype={"path": str, "label": str}, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise SliceScopeError(f"cannot parse the manifest {csv_path.name} ({str(error).splitlines()[0]})", "save it as a UTF-8 CSV with a header row path,label") from None
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise SliceScopeError(f"manifest {csv_path.name} lacks the column(s) {', '.join(sorted(missing))}", "its header must include path,label")
    if split is not None:
        if "split" not in table.columns:
            raise SliceScopeError(f"manifest {csv_path.name} has no split column", "drop --split or add a split column")
        available = sorted(table["split"].astype(str).unique())
        table = table[table["split"].astype(str) == split]
        if table.empty:
            raise SliceScopeError(f"manifest {csv_path.name} has no rows with split '{split}'", f"choose one of: {', '.join(available)}")
    blank = table["path"].str.strip().eq("") | table["label"].str.strip().eq("")
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0]) + 2
        raise SliceScopeError(f"manifest {csv_path.name} line {row} has an empty path or label", "fill it in or delete the line")
    table = table.drop_duplicates("path").sort_values("path", kind="stable").reset_index(drop=True)
    table.insert(0, "image_id", table["path"].map(image_id))
    classes = tuple(sorted(table["label"].unique()))
    return ImageIndex(root=csv_path.parent, kind="csv", table=table, classes=classes)


def read_image(path: Path) -> tuple[Image.Image, str]:
    """Decode one image as RGB and return it with the SHA-1 of its bytes.

    Raises ``OSError`` or ``ValueError`` with a short reason when the file cannot
    be read or decoded; the caller records the reason and skips the image.
    """
    try:
        payload = path.read_bytes()
    except OSError as error:
        raise OSError(f"cannot open the file ({error.strerror or type(error).__name__})") from None
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            rgb = image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("not a recognised image format (corrupt or not an image)") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"image too large to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"damaged image data ({error})") from None
    if min(rgb.size) < 1:
        raise ValueError("image has no pixels")
    return rgb, hashlib.sha1(payload).hexdigest()


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
