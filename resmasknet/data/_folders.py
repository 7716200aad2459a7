"""The image-folder layout: <root>/<split>/<class>/*.png (the popular Kaggle "msambare" form and
FER+'s generated folders renamed). Users name folders in many ways, so common spellings map to
the canonical names and anything unknown fails loudly, listing what is accepted."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from resmasknet.data._core import CLASSES, SPLITS, DataError, FaceData, warn_skipped

__all__ = ["CLASS_ALIASES", "IMAGE_EXTENSIONS", "SPLIT_ALIASES", "load_image_folders"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLIT_ALIASES: dict[str, int] = {
    "train": 0,
    "training": 0,
    "val": 1,
    "valid": 1,
    "validation": 1,
    "publictest": 1,
    "test": 2,
    "privatetest": 2,
}
CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "angry": ("angry", "anger", "mad"),
    "disgust": ("disgust", "disgusted", "disgusting"),
    "fear": ("fear", "fearful", "scared", "afraid"),
    "happy": ("happy", "happiness", "joy", "joyful"),
    "sad": ("sad", "sadness"),
    "surprise": ("surprise", "surprised"),
    "neutral": ("neutral", "calm"),
    "contempt": ("contempt", "contemptuous"),
}
_CLASS_OF = {alias: name for name, aliases in CLASS_ALIASES.items() for alias in aliases}


def _visible_dirs(path: Path) -> list[Path]:
    """Sub-directories, ignoring hidden and tool folders (.ipynb_checkpoints, __MACOSX)."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _to_gray(path: Path, size: int) -> np.ndarray:
    """Decode one image to uint8 [size, size] grayscale; raises DataError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float: rescale, don't clip
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                gray = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8))
            else:
                gray = img.convert("L")
            if gray.size != (size, size):
                gray = gray.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def load_image_folders(
    root: str | os.PathLike[str],
    *,
    skip_bad_rows: bool = False,
    size: int = 48,
    progress: bool | None = None,
) -> FaceData:
    """Load <root>/<split>/<class>/*.{png,jpg,jpeg,bmp} as grayscale size x size (default 48).

    Split folders: train/training, val/valid/validation/publictest, test/privatetest; class
    folders: see CLASS_ALIASES (case-insensitive). Classes are FER2013's seven in FER order, plus
    "contempt" last only when a contempt folder exists. Images are converted to grayscale and
    resized (aspect ratio not kept: face crops are square). A missing split simply has no rows.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    if int(size) < 1:
        raise DataError(f"size={size}: must be a positive number of pixels")
    size = int(size)
    entries: list[tuple[Path, int, str]] = []  # (file, split code, canonical class)
    empty: list[str] = []
    split_dirs = _visible_dirs(root)
    if not split_dirs:
        raise DataError(
            f"{root}: no split folders; expected <split>/<class>/*.png with split one of {sorted(SPLIT_ALIASES)}"
        )
    seen: dict[int, Path] = {}
    for sdir in split_dirs:
        code = SPLIT_ALIASES.get(sdir.name.lower())
        if code is None:
            raise DataError(f"{sdir}: unknown split folder {sdir.name!r}; accepted names: {sorted(SPLIT_ALIASES)}")
        if code in seen:
            raise DataError(f"{sdir}: split {SPLITS[code]!r} given twice (also {seen[code].name!r})")
        seen[code] = sdir
        class_dirs = _visible_dirs(sdir)
        if not class_dirs:
            raise DataError(f"{sdir}: empty split folder (expected one folder per class)")
        for cdir in class_dirs:
            name = _CLASS_OF.get(cdir.name.lower())
            if name is None:
                raise DataError(
                    f"{cdir}: unknown class folder {cdir.name!r}; accepted names: "
                    + ", ".join(f"{k} ({'/'.join(v)})" for k, v in CLASS_ALIASES.items())
                )
            files = sorted(p for p in cdir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                if not skip_bad_rows:
                    raise DataError(f"{cdir}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} images)")
                empty.append(str(cdir))
            entries.extend((p, code, name) for p in files)
    if empty:
        warn_skipped(str(root), len(empty), empty, what="empty class folder(s)")
    if not entries:
        raise DataError(f"{root}: no images found under the split/class folders")
    classes = CLASSES + (("contempt",) if any(e[2] == "contempt" for e in entries) else ())
    # Stable order: split, class order, file name.
    entries.sort(key=lambda e: (e[1], classes.index(e[2]), e[0].name))
    images = np.empty((len(entries), size, size), np.uint8)
    keep = np.ones(len(entries), bool)
    problems: list[str] = []
    show = len(entries) > 2000 if progress is None else progress
    for i, (path, _, _) in enumerate(tqdm(entries, desc=root.name, unit="img", disable=None if show else True)):
        try:
            images[i] = _to_gray(path, size)
        except DataError as e:
            if not skip_bad_rows:
                raise
            keep[i] = False
            problems.append(str(e))
    skipped = int((~keep).sum())
    if skipped == len(entries):
        raise DataError(f"{root}: none of the {len(entries)} images could be decoded, e.g. {problems[0]}")
    warn_skipped(str(root), skipped, problems)
    labels = np.array([classes.index(e[2]) for e in entries], np.int64)
    split = np.array([e[1] for e in entries], np.int8)
    return FaceData(
        images[keep],
        labels[keep],
        split[keep],
        classes,
        f"image folders ({root})",
        skipped=skipped,
        origin=np.flatnonzero(keep),
    )
