"""The in-memory form every loader returns, and the error every loader raises.

One small, frozen container of plain numpy arrays keeps the loaders, the trainers and the reports
independent of each other: nothing here knows about torch, files or augmentation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["CLASSES", "FERPLUS_CLASSES", "SPLITS", "DataError", "FaceData", "split_index"]

CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""FER2013's seven classes, in FER2013's label order (label 0 is angry)."""

FERPLUS_CLASSES: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
"""FER+'s eight emotion classes, in the column order of fer2013new.csv."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names; FER2013's Training / PublicTest / PrivateTest, in that order (codes 0, 1, 2)."""


class DataError(ValueError):
    """Bad input data. The message names the file, the row (1-based line, header = line 1) or the
    image path, and the problem, so a user can fix the file without reading our code."""


def split_index(split: str | int) -> int:
    """Map a split name ("train", "val", "test") or code (0, 1, 2) to its code."""
    if isinstance(split, (int, np.integer)) and not isinstance(split, bool):
        if 0 <= int(split) < len(SPLITS):
            return int(split)
    elif isinstance(split, str) and split.lower() in SPLITS:
        return SPLITS.index(split.lower())
    raise DataError(f"unknown split {split!r}: expected one of {SPLITS} or 0, 1, 2")


@dataclass(frozen=True, eq=False)
class FaceData:
    """Faces, labels and splits as plain arrays.

    images: uint8 [N, H, W] grayscale, C-contiguous. labels: int64 [N], an index into `classes`.
    split: int8 [N], 0 train / 1 val / 2 test. soft_labels: float32 [N, K] rows summing to 1 (FER+
    vote distributions) or None. regions: uint8 [N, H, W] ground-truth evidence maps (generated data
    only; 1 on the pixels that carry the class evidence) or None. skipped: how many bad rows or
    images the loader dropped (only with skip_bad_rows=True; the loader also warns). origin: int64
    [N] position of each image in its source (the 0-based data row of a CSV, which is also its row
    in fer2013new.csv and in the order of fer2013.csv; the file's index in sorted order for image
    folders) or None, so results can be traced back to the input.
    """

    images: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    classes: tuple[str, ...]
    source: str
    soft_labels: np.ndarray | None = None
    regions: np.ndarray | None = None
    skipped: int = 0
    origin: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Coerce once here so every consumer can rely on dtypes and layout without checking.
        images = np.ascontiguousarray(self.images, dtype=np.uint8)
        if images.ndim != 3:
            raise DataError(f"{self.source}: images must be [N, H, W], got shape {images.shape}")
        n = images.shape[0]
        labels = np.ascontiguousarray(self.labels, dtype=np.int64)
        split = np.ascontiguousarray(self.split, dtype=np.int8)
        classes = tuple(str(c) for c in self.classes)
        if labels.shape != (n,) or split.shape != (n,):
            raise DataError(f"{self.source}: labels {labels.shape} and split {split.shape} must both be ({n},)")
        if n and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DataError(f"{self.source}: labels must lie in 0..{len(classes) - 1}")
        if n and (split.min() < 0 or split.max() > 2):
            raise DataError(f"{self.source}: split codes must be 0, 1 or 2")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "split", split)
        object.__setattr__(self, "classes", classes)
        if self.soft_labels is not None:
            soft = np.ascontiguousarray(self.soft_labels, dtype=np.float32)
            if soft.shape != (n, len(classes)):
                raise DataError(f"{self.source}: soft_labels must be ({n}, {len(classes)}), got {soft.shape}")
            if n and not np.allclose(soft.sum(axis=1), 1.0, atol=1e-4):
                raise DataError(f"{self.source}: soft_labels rows must sum to 1")
            object.__setattr__(self, "soft_labels", soft)
        if self.regions is not None:
            regions = np.ascontiguousarray(self.regions, dtype=np.uint8)
            if regions.shape != images.shape:
                raise DataError(f"{self.source}: regions {regions.shape} must match images {images.shape}")
            object.__setattr__(self, "regions", regions)
        if self.origin is not None:
            origin = np.ascontiguousarray(self.origin, dtype=np.int64)
            if origin.shape != (n,):
                raise DataError(f"{self.source}: origin must be ({n},), got {origin.shape}")
            object.__setattr__(self, "origin", origin)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        # The dataclass default would print whole arrays.
        h, w = self.image_size
        extra = "".join(
            [", soft_labels" if self.soft_labels is not None else "", ", regions" if self.regions is not None else ""]
        )
        return f"FaceData(n={len(self)}, size={h}x{w}, classes={len(self.classes)}{extra}, source={self.source!r})"

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def subset(self, index: np.ndarray) -> FaceData:
        """Rows picked by an integer index or a boolean mask (copies; the result is independent)."""
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise DataError(f"boolean index must have shape ({len(self)},), got {index.shape}")
            index = np.flatnonzero(index)
        elif index.size and not np.issubdtype(index.dtype, np.integer):
            raise DataError(f"subset index must be integers or booleans, got {index.dtype}")
        index = index.astype(np.intp, copy=False).reshape(-1)
        return replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            split=self.split[index],
            soft_labels=None if self.soft_labels is None else self.soft_labels[index],
            regions=None if self.regions is None else self.regions[index],
            origin=None if self.origin is None else self.origin[index],
        )

    def select(self, split: str | int) -> FaceData:
        """Rows of one split: "train"/"val"/"test" or 0/1/2."""
        return self.subset(self.split == split_index(split))

    def counts(self) -> np.ndarray:
        """int64 [3, K]: images per split (rows) and class (columns)."""
        flat = self.split.astype(np.int64) * len(self.classes) + self.labels
        return np.bincount(flat, minlength=3 * len(self.classes)).reshape(3, len(self.classes))

    def summary(self) -> str:
        """Counts per split and class as one short text table."""
        counts = self.counts()
        width = max(8, *(len(c) for c in self.classes))
        h, w = self.image_size
        lines = [f"{self.source}: {len(self)} images {h}x{w}" + (f", {self.skipped} skipped" if self.skipped else "")]
        lines.append(f"{'class':<{width}} " + " ".join(f"{s:>7}" for s in (*SPLITS, "total")))
        for k, name in enumerate(self.classes):
            row = counts[:, k]
            lines.append(f"{name:<{width}} " + " ".join(f"{int(v):>7}" for v in (*row, row.sum())))
        tot = counts.sum(axis=1)
        lines.append(f"{'total':<{width}} " + " ".join(f"{int(v):>7}" for v in (*tot, tot.sum())))
        return "\n".join(lines)


def warn_skipped(source: str, skipped: int, examples: list[str], what: str = "bad row(s)/image(s)") -> None:
    """Report dropped rows/images loudly: skip_bad_rows must never lose data silently."""
    if skipped:
        shown = "; ".join(examples[:3]) + ("; ..." if len(examples) > 3 else "")
        warnings.warn(f"{source}: skipped {skipped} {what}: {shown}", UserWarning, stacklevel=3)
