"""One entry point for every data source, so configs and CLIs name data with a single string."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from resmasknet.data._core import DataError, FaceData
from resmasknet.data._fer import FERPLUS_MODES, load_fer_csv, load_presplit_dir
from resmasknet.data._folders import load_image_folders
from resmasknet.data._generated import GeneratorConfig, generate_faces

__all__ = ["DEFAULT_VAL_FRACTION", "load_data", "parse_generated_spec"]

# Sources without a validation split (Kaggle's FER2013 folders: train/ and test/ only) hold this fraction of
# each class's training images out for validation: training keeps the best-validation checkpoint.
DEFAULT_VAL_FRACTION = 0.1

_SPEC_HELP = (
    "expected 'generated' or 'generated:n=6000,seed=0,size=48', a fer2013.csv file, "
    "'ferplus:/path/fer2013.csv', a directory holding train.csv/val.csv/test.csv or fer2013.csv, "
    "or a directory of image folders <split>/<class>/*.png"
)
_FILE_OPTIONS = ("size", "progress", "ferplus_csv")


def parse_generated_spec(spec: str) -> dict[str, Any]:
    """'generated:n=600,seed=1' -> {'n': 600, 'seed': 1} (ints stay ints, other numbers floats)."""
    body = spec.partition(":")[2].strip()
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise DataError(f"{spec!r}: expected key=value pairs after 'generated:', got {item!r}")
        try:
            out[key.strip()] = int(value)
        except ValueError:
            try:
                out[key.strip()] = float(value)
            except ValueError:
                raise DataError(f"{spec!r}: {key.strip()}={value!r} is not a number") from None
    return out


def _check_options(options: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"load_data: option(s) {unknown} do not apply to {what}; accepted: {sorted(allowed)}")


def _resize(data: FaceData, size: int | None) -> FaceData:
    """Resize CSV images (natively 48x48) when a different `size` is asked for."""
    if size is None or (int(size),) * 2 == data.image_size:
        return data
    import cv2

    size = int(size)
    if size < 1:
        raise DataError(f"size={size}: must be a positive number of pixels")
    interp = cv2.INTER_AREA if size < data.image_size[0] else cv2.INTER_LINEAR
    images = np.stack([cv2.resize(im, (size, size), interpolation=interp) for im in data.images])
    return replace(data, images=images, source=f"{data.source}, resized to {size}x{size}")


def _carve_val(data: FaceData, fraction: float | None, seed: int = 0) -> FaceData:
    """Move a class-stratified, seeded fraction of train to val when the source has no validation split
    (e.g. Kaggle's train/ + test/ folders); a source with one is returned unchanged."""
    if fraction is not None and not 0 <= fraction < 1:
        raise DataError(f"val_fraction={fraction}: must be between 0 and 1 (0 or None: no hold-out)")
    if not fraction or (data.split == 1).any():
        return data
    rng = np.random.default_rng(seed)
    split = data.split.copy()
    for c in range(len(data.classes)):
        idx = np.flatnonzero((data.labels == c) & (data.split == 0))
        k = int(round(fraction * idx.size))
        split[rng.permutation(idx)[:k]] = 1
    held = int((split == 1).sum())
    return replace(data, split=split, source=f"{data.source}; val: {held} images, a stratified {fraction:.0%} "
                                             f"hold-out of train (seed {seed}), the source has no validation split")


def load_data(
    spec: str | os.PathLike[str],
    *,
    skip_bad_rows: bool = False,
    ferplus: str | None = None,
    val_fraction: float | None = DEFAULT_VAL_FRACTION,
    val_seed: int = 0,
    **options: Any,
) -> FaceData:
    """Load any supported data source into a FaceData.

    spec:
      - "generated" or "generated:n=6000,seed=0,size=48": procedurally drawn faces with
        ground-truth evidence maps (see `GeneratorConfig` for every option).
      - a fer2013.csv-style file (emotion,pixels,Usage), plain or gzipped; "ferplus:PATH" or
        `ferplus="majority"|"plurality"|"soft"` relabels it with fer2013.csv's neighbour
        fer2013new.csv (see `load_fer_csv` for the rules).
      - a directory with train.csv, val.csv, test.csv (the authors' pre-split form), or with
        fer2013.csv, or of image folders <split>/<class>/*.{png,jpg,jpeg,bmp}.

    skip_bad_rows: drop malformed rows/undecodable images with a warning (and FaceData.skipped)
    instead of raising DataError.
    val_fraction: for a file or folder source with no validation split (Kaggle's FER2013 folders have
    only train/ and test/), hold out this fraction of each class's training images as val (stratified,
    rounded per class, drawn with `val_seed`; the same seed gives the same split). 0 or None: no hold-out.
    A source that has a validation split keeps it (val_fraction does not apply); `FaceData.source` (its
    repr and summary) says when a hold-out was made. Generated data always has its own val split.
    Options for files: size (resize, default native 48), progress (tqdm bar: None = automatic for
    long loads), ferplus_csv (where fer2013new.csv is).
    """
    if isinstance(spec, FaceData):
        raise TypeError("load_data: spec is already a FaceData")
    text = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    if not isinstance(text, str):
        raise TypeError(f"load_data: spec must be a string or path, got {type(spec).__name__}")
    if text == "generated" or text.startswith("generated:"):
        if ferplus is not None:
            raise DataError("ferplus applies to fer2013.csv, not to generated data")
        merged = {**parse_generated_spec(text), **options}
        _check_options(merged, tuple(f for f in GeneratorConfig.__dataclass_fields__), "generated data")
        return generate_faces(**merged)
    if text.startswith("ferplus:") and not Path(text).exists():
        text = text[len("ferplus:") :]
        ferplus = ferplus or "majority"
    if ferplus is not None and ferplus not in FERPLUS_MODES:
        raise DataError(f"ferplus={ferplus!r}: expected one of {FERPLUS_MODES} or None")
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory ({_SPEC_HELP})")
    size = options.pop("size", None)
    progress = options.get("progress")
    if path.is_dir() and (path / "fer2013.csv").is_file() and not (path / "train.csv").exists():
        path = path / "fer2013.csv"
    if path.is_file():
        _check_options(options, _FILE_OPTIONS, "fer2013.csv files")
        data = load_fer_csv(path, skip_bad_rows=skip_bad_rows, ferplus=ferplus, **options)
        return _carve_val(_resize(data, size), val_fraction, val_seed)
    if ferplus is not None:
        raise DataError(f"{path}: FER+ needs fer2013.csv (row-aligned with fer2013new.csv), not a directory layout")
    if any((path / f"{s}.csv").is_file() for s in ("train", "val", "test")):
        _check_options(options, ("progress",), "train/val/test.csv directories")
        data = load_presplit_dir(path, skip_bad_rows=skip_bad_rows, progress=progress)
        return _carve_val(_resize(data, size), val_fraction, val_seed)
    _check_options(options, ("progress",), "image folders")
    data = load_image_folders(path, skip_bad_rows=skip_bad_rows, size=48 if size is None else size, progress=progress)
    return _carve_val(data, val_fraction, val_seed)
