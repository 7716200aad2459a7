"""FER2013 in its CSV forms: fer2013.csv (emotion,pixels,Usage), the authors' pre-split
train.csv/val.csv/test.csv, and FER+ votes (fer2013new.csv, row-aligned with fer2013.csv).

Why a hand-written reader: fer2013.csv is 301 MB of space-separated numbers. A generic CSV parser
gives no cheap way to validate 83 million pixel values and to name the exact line of a bad one, so
lines are split with bytes operations (C speed, exact 1-based line numbers) and every chunk's pixel
text is parsed as one numpy byte array: digits, separators and row boundaries are found with
vectorised comparisons, never with a Python loop over pixels or over rows' values. The three CSV forms
share that reader and its error reporting, hence one module of about 450 lines.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, cast

import numpy as np

from resmasknet.data._core import CLASSES, FERPLUS_CLASSES, SPLITS, DataError, FaceData, warn_skipped

__all__ = ["FERPLUS_MODES", "load_fer_csv", "load_presplit_dir"]

FERPLUS_MODES = ("majority", "plurality", "soft")

_USAGE = {
    b"training": 0,
    b"train": 0,
    b"publictest": 1,
    b"val": 1,
    b"valid": 1,
    b"validation": 1,
    b"privatetest": 2,
    b"test": 2,
}
_COLUMN_ALIASES = {
    "emotion": ("emotion", "label", "emotions"),
    "pixels": ("pixels", "pixel"),
    "usage": ("usage", "split"),
}
_FERPLUS_VOTES = (*FERPLUS_CLASSES, "unknown", "nf")
_CHUNK_BYTES = 8 << 20  # ~1,000 FER rows: bounded memory, a progress tick per chunk
_SIDE = 48


def _open_binary(path: Path) -> IO[bytes]:
    """Open a file for bytes reading, transparently gunzipping fer2013.csv.gz."""
    try:
        f: IO[bytes] = open(path, "rb")  # noqa: SIM115 (returned to the caller)
        if f.read(2) == b"\x1f\x8b":
            f.close()
            return cast(IO[bytes], gzip.open(path, "rb"))
        f.seek(0)
        return f
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from e


def _split_fields(line: bytes) -> list[bytes]:
    """Split one CSV line; fields wrapped in double quotes lose the quotes (FER fields never hold
    commas or newlines, so this is all the quoting the format needs)."""
    fields = line.split(b",")
    if b'"' in line:
        fields = [f[1:-1] if len(f) >= 2 and f[:1] == b'"' and f[-1:] == b'"' else f for f in fields]
    return fields


def _iter_csv(
    path: Path, *, progress: bool | None = None, desc: str = ""
) -> Iterator[tuple[list[str], np.ndarray, list[list[bytes]]]]:
    """Yield (header, line numbers, rows of bytes fields) in chunks of about 8 MB.

    The first item always carries no rows, so a header-only file still yields its header. Blank
    lines are ignored (they hold no row). Raises DataError for an empty or non-text file.
    """
    from tqdm.auto import tqdm

    with _open_binary(path) as f:
        total = None if isinstance(f, gzip.GzipFile) else path.stat().st_size  # bar counts plain bytes
        try:
            first = f.readline()
        except (OSError, EOFError) as e:  # truncated gzip and the like
            raise DataError(f"{path}: cannot read file ({e})") from e
        if not first.strip():
            raise DataError(f"{path}: empty file (expected a header line such as 'emotion,pixels,Usage')")
        if b"\x00" in first:
            raise DataError(f"{path}: not a text CSV file (binary data on line 1)")
        try:
            head_text = first.decode("utf-8-sig").strip()
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: line 1: cannot decode the header as UTF-8 ({e.reason})") from e
        header = [h.strip().strip('"').strip().lower() for h in head_text.split(",")]
        line_no = 1
        yield header, np.zeros(0, np.int64), []
        show = (total or 0) > (32 << 20) if progress is None else progress
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc or path.name, disable=None if show else True)
        bar.update(len(first))
        try:
            while True:
                try:
                    lines = f.readlines(_CHUNK_BYTES)
                except (OSError, EOFError) as e:
                    raise DataError(f"{path}: line {line_no + 1}: cannot read file ({e})") from e
                if not lines:
                    break
                bar.update(sum(map(len, lines)))
                numbers = np.arange(line_no + 1, line_no + 1 + len(lines), dtype=np.int64)
                line_no += len(lines)
                stripped = [ln.rstrip(b"\r\n") for ln in lines]
                nonblank = np.fromiter((bool(s.strip()) for s in stripped), bool, len(stripped))
                if not nonblank.all():
                    stripped = [s for s, k in zip(stripped, nonblank) if k]
                    numbers = numbers[nonblank]
                if stripped:
                    yield header, numbers, [_split_fields(s) for s in stripped]
        finally:
            bar.close()


def _column(header: list[str], name: str, path: Path, *, required: bool = True) -> int | None:
    """Index of a column (case-insensitive, with common aliases); DataError naming what is there."""
    for alias in _COLUMN_ALIASES.get(name, (name,)):
        if alias in header:
            return header.index(alias)
    if required:
        shown = {"usage": "Usage"}.get(name, name)
        found = ", ".join(repr(h[:40]) for h in header[:12]) + (", ..." if len(header) > 12 else "")
        raise DataError(f"{path}: line 1: missing column {shown!r} (header has {found})")
    return None


def _field(rows: list[list[bytes]], index: int) -> list[bytes]:
    return [r[index] if len(r) > index else b"" for r in rows]


def _field_count_problems(rows: list[list[bytes]], n_expected: int) -> list[str]:
    """One problem string per row ('' when fine), flagging rows with the wrong number of fields."""
    problems = [""] * len(rows)
    n_fields = np.fromiter(map(len, rows), np.int64, len(rows))
    for r in np.flatnonzero(n_fields != n_expected).tolist():
        problems[r] = f"expected {n_expected} fields, found {int(n_fields[r])}"
    return problems


def _parse_uints(values: list[bytes], max_digits: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised parse of small non-negative integers; returns (values int64, ok mask)."""
    width = max_digits + 2  # room for surrounding spaces; longer fields were truncated: rejected
    arr = np.char.strip(np.array(values, dtype=f"S{width}"))
    lengths = np.char.str_len(arr)
    ok = np.char.isdigit(arr) & (lengths <= max_digits) & (lengths > 0)
    ok &= np.fromiter(map(len, values), np.int64, len(values)) <= width
    out = np.zeros(len(values), np.int64)
    if ok.any():
        out[ok] = arr[ok].astype(np.int64)
    return out, ok


def _parse_pixels(fields: list[bytes], n_values: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Parse space-separated pixel rows in one vectorised pass over their bytes.

    Returns (pixels uint8 [n_good, n_values], good mask [n_rows], problem per row or "").
    """
    m = len(fields)
    buf = b"\n".join(fields) + b"\n"
    a = np.frombuffer(buf, np.uint8)
    newline_at = np.flatnonzero(a == 10)  # one per row, sorted: row r ends at newline_at[r]
    d = a - np.uint8(48)
    digit = d < 10
    bad = ~(digit | (a == 32) | (a == 9) | (a == 13) | (a == 10))
    starts = np.flatnonzero(digit[1:] & ~digit[:-1]) + 1
    if digit[0]:
        starts = np.concatenate([[0], starts])
    ends = np.flatnonzero(digit[:-1] & ~digit[1:])  # the buffer ends in a newline, never a digit
    length = ends - starts + 1
    value = d[ends].astype(np.int32)
    two = length >= 2
    value[two] += 10 * d[ends[two] - 1].astype(np.int32)  # int32 before scaling: uint8 would wrap
    three = length >= 3
    value[three] += 100 * d[ends[three] - 2].astype(np.int32)
    for t in np.flatnonzero(length > 3):  # only in malformed or zero-padded data: rare
        value[t] = min(int(buf[starts[t] : ends[t] + 1]), 1 << 30)
    token_row = np.searchsorted(newline_at, starts)
    counts = np.bincount(token_row, minlength=m)
    too_big = np.bincount(token_row[value > 255], minlength=m) > 0
    bad_pos = np.flatnonzero(bad)
    bad_row = np.zeros(m, bool)
    problems = [""] * m
    if bad_pos.size:
        rows_with_bad, first = np.unique(np.searchsorted(newline_at, bad_pos), return_index=True)
        bad_row[rows_with_bad] = True
        for r, p in zip(rows_with_bad.tolist(), bad_pos[first].tolist()):
            char = bytes(buf[p : p + 1]).decode("latin-1")
            problems[r] = f"non-numeric character {char!r} in pixels"
    for r in np.flatnonzero(~bad_row & (counts != n_values)).tolist():
        problems[r] = f"expected {n_values} pixel values, found {int(counts[r])}"
    for r in np.flatnonzero(~bad_row & (counts == n_values) & too_big).tolist():
        v = int(value[token_row == r].max())
        problems[r] = f"pixel value {v} outside 0..255"
    good = ~bad_row & (counts == n_values) & ~too_big
    pixels = value[good[token_row]].astype(np.uint8).reshape(-1, n_values)
    return pixels, good, problems


def _read_fer_rows(
    path: Path,
    *,
    fixed_split: int | None,
    skip_bad_rows: bool,
    progress: bool | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int, list[str]]:
    """Read one FER-style CSV. Returns images, labels, split, origin (0-based data row), line
    numbers, number of data rows, number skipped, and example problems."""
    n_values = _SIDE * _SIDE
    images, labels, splits, origins, line_numbers = [], [], [], [], []
    examples: list[str] = []
    skipped = 0
    data_rows = 0
    cols: tuple[int | None, int | None, int | None] | None = None
    for header, numbers, rows in _iter_csv(path, progress=progress):
        if cols is None:
            cols = (
                _column(header, "emotion", path),
                _column(header, "pixels", path),
                _column(header, "usage", path, required=fixed_split is None),
            )
        ce, cp, cu = cols
        assert ce is not None and cp is not None
        m = len(rows)
        if not m:
            continue
        problems = _field_count_problems(rows, len(header))
        label, label_ok = _parse_uints(_field(rows, ce))
        label_ok &= label < len(CLASSES)
        for r in np.flatnonzero(~label_ok).tolist():
            if not problems[r]:
                raw = _field(rows[r : r + 1], ce)[0].decode("utf-8", "replace")
                problems[r] = f"emotion {raw!r} is not a label in 0..{len(CLASSES) - 1}"
        if fixed_split is not None:
            split = np.full(m, fixed_split, np.int8)
        else:
            assert cu is not None
            raw_usage = np.char.lower(np.char.strip(np.array(_field(rows, cu), dtype="S32")))
            uniq, inverse = np.unique(raw_usage, return_inverse=True)
            codes = np.array([_USAGE.get(bytes(u), -1) for u in uniq], np.int8)
            split = codes[inverse.reshape(-1)]
            for r in np.flatnonzero(split < 0).tolist():
                if not problems[r]:
                    raw = _field(rows[r : r + 1], cu)[0].decode("utf-8", "replace")
                    problems[r] = f"unknown Usage {raw!r} (expected Training, PublicTest or PrivateTest)"
        pixels, pix_good, pix_problems = _parse_pixels(_field(rows, cp), n_values)
        for r in np.flatnonzero(~pix_good).tolist():
            if not problems[r]:
                problems[r] = pix_problems[r]
        good = np.fromiter((not p for p in problems), bool, m)
        if not good.all():
            bad_rows = np.flatnonzero(~good)
            if not skip_bad_rows:
                r = int(bad_rows[0])
                raise DataError(f"{path}: line {int(numbers[r])}: {problems[r]}")
            skipped += bad_rows.size
            examples.extend(f"line {int(numbers[r])}: {problems[r]}" for r in bad_rows[:3].tolist())
        images.append(pixels[good[pix_good]])
        labels.append(label[good])
        splits.append(split[good])
        origins.append(np.flatnonzero(good) + data_rows)
        line_numbers.append(numbers[good])
        data_rows += m
    if data_rows == 0:
        raise DataError(f"{path}: no data rows after the header")
    if data_rows == skipped:
        raise DataError(f"{path}: all {data_rows} data rows are bad, e.g. {examples[0]}")
    return (
        np.concatenate(images).reshape(-1, _SIDE, _SIDE),
        np.concatenate(labels),
        np.concatenate(splits),
        np.concatenate(origins),
        np.concatenate(line_numbers),
        data_rows,
        skipped,
        examples,
    )


def load_fer_csv(
    path: str | os.PathLike[str],
    *,
    skip_bad_rows: bool = False,
    ferplus: str | None = None,
    ferplus_csv: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> FaceData:
    """Load fer2013.csv (`emotion,pixels,Usage`; Usage Training/PublicTest/PrivateTest ->
    train/val/test), optionally relabelled with FER+ votes.

    ferplus: None keeps FER2013's 7 labels. Otherwise fer2013new.csv (next to the file unless
    `ferplus_csv` says where) must be row-aligned with this file; rows with an empty "Image name"
    are dropped (the FER+ authors generate no image for them) and classes become FER+'s 8
    (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt):

    - "majority": the FER+ authors' rule (their `_process_data`, mode "majority"): votes of 1 are
      removed as outliers, a row keeps the class holding more than half of the remaining votes,
      and is dropped when no class does or that class is unknown/NF. 31,412 of 35,887 rows remain.
    - "plurality": the most-voted of the 10 columns (ties go to the first in FER+ order); dropped
      when that is unknown or NF. 35,488 rows remain.
    - "soft": `soft_labels` are the raw vote counts over the 8 emotions, normalised to sum to 1,
      and `labels` their argmax; dropped, as for plurality, when unknown/NF has the most votes.

    Dropped FER+ rows are a labelling decision, not bad input: `source` states how many.
    """
    path = Path(path)
    images, labels, split, origin, lines, n_rows, skipped, examples = _read_fer_rows(
        path, fixed_split=None, skip_bad_rows=skip_bad_rows, progress=progress
    )
    source = f"fer2013.csv ({path})"
    warn_skipped(str(path), skipped, examples)
    if ferplus is None:
        return FaceData(images, labels, split, CLASSES, source, skipped=skipped, origin=origin)
    if ferplus not in FERPLUS_MODES:
        raise DataError(f"ferplus={ferplus!r}: expected one of {FERPLUS_MODES} or None")
    new_path = Path(ferplus_csv) if ferplus_csv is not None else path.with_name("fer2013new.csv")
    if not new_path.is_file():
        raise DataError(f"{new_path}: FER+ votes file not found (FER+ needs fer2013new.csv next to {path.name})")
    votes, usage, named, bad_votes, new_lines = _read_ferplus(new_path, n_rows, skip_bad_rows=skip_bad_rows)
    mismatch = np.flatnonzero((usage[origin] != split) & ~bad_votes[origin])
    if mismatch.size:
        i = int(mismatch[0])
        raise DataError(
            f"{new_path}: line {int(new_lines[origin[i]])}: Usage {SPLITS[usage[origin[i]]]!r} but "
            f"{path.name} line {int(lines[i])} (the same data row) has {SPLITS[split[i]]!r}: "
            "the two files must be row-aligned"
        )
    v = votes[origin].astype(np.float64)
    keep = named[origin] & ~bad_votes[origin]
    soft = None
    if ferplus == "majority":
        w = np.where(v <= 1, 0.0, v)
        top = w.argmax(axis=1)
        keep &= (w.max(axis=1) > 0.5 * w.sum(axis=1)) & (top < len(FERPLUS_CLASSES))
        new_labels = top
    else:
        top = v.argmax(axis=1)
        emo = v[:, : len(FERPLUS_CLASSES)]
        keep &= (top < len(FERPLUS_CLASSES)) & (emo.sum(axis=1) > 0)
        new_labels = emo.argmax(axis=1) if ferplus == "soft" else top
        if ferplus == "soft":
            soft = (emo / np.maximum(emo.sum(axis=1, keepdims=True), 1)).astype(np.float32)[keep]
    n_bad_votes = int(bad_votes[origin].sum())
    dropped = int((~keep).sum()) - n_bad_votes
    source += f" + FER+ {ferplus} ({new_path.name}; {dropped} rows without a usable FER+ label dropped)"
    if n_bad_votes:
        warn_skipped(str(new_path), n_bad_votes, [f"{n_bad_votes} rows with bad votes"])
    return FaceData(
        images[keep],
        new_labels[keep],
        split[keep],
        FERPLUS_CLASSES,
        source,
        soft_labels=soft,
        skipped=skipped + n_bad_votes,
        origin=origin[keep],
    )


def _read_ferplus(
    path: Path, n_rows: int, *, skip_bad_rows: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read fer2013new.csv: votes int64 [N, 10], split int8 [N], has-image-name bool [N], bad [N],
    line numbers [N]."""
    votes, usage, named, bad, line_numbers = [], [], [], [], []
    header: list[str] = []
    examples: list[str] = []
    for header, numbers, rows in _iter_csv(path, progress=False):
        missing = [c for c in ("usage", "image name", *_FERPLUS_VOTES) if c not in header]
        if missing:
            raise DataError(f"{path}: line 1: missing column(s) {missing} (header has {header})")
        m = len(rows)
        if not m:
            continue
        problems = _field_count_problems(rows, len(header))
        cols = []
        for name in _FERPLUS_VOTES:
            val, ok = _parse_uints(_field(rows, header.index(name)), max_digits=3)
            for r in np.flatnonzero(~ok).tolist():
                problems[r] = problems[r] or f"vote count for {name!r} is not a non-negative integer"
            cols.append(val)
        raw_usage = np.char.lower(np.char.strip(np.array(_field(rows, header.index("usage")), dtype="S32")))
        codes = np.array([_USAGE.get(bytes(u), -1) for u in raw_usage.tolist()], np.int8)
        for r in np.flatnonzero(codes < 0).tolist():
            problems[r] = problems[r] or "unknown Usage (expected Training, PublicTest or PrivateTest)"
        bad_rows = np.array([bool(p) for p in problems])
        if bad_rows.any():
            r = int(np.flatnonzero(bad_rows)[0])
            if not skip_bad_rows:
                raise DataError(f"{path}: line {int(numbers[r])}: {problems[r]}")
            examples.append(f"line {int(numbers[r])}: {problems[r]}")
        votes.append(np.stack(cols, axis=1))
        usage.append(codes)
        named.append(np.array([bool(f.strip()) for f in _field(rows, header.index("image name"))]))
        bad.append(bad_rows)
        line_numbers.append(numbers)
    if not votes:
        raise DataError(f"{path}: no data rows after the header")
    all_usage = np.concatenate(usage)
    if len(all_usage) != n_rows:
        raise DataError(
            f"{path}: {len(all_usage)} data rows, but the FER2013 file has {n_rows}: "
            "fer2013new.csv must be row-aligned with the fer2013.csv it labels"
        )
    return (
        np.concatenate(votes),
        all_usage,
        np.concatenate(named),
        np.concatenate(bad),
        np.concatenate(line_numbers),
    )


def load_presplit_dir(
    directory: str | os.PathLike[str], *, skip_bad_rows: bool = False, progress: bool | None = None
) -> FaceData:
    """Load the authors' pre-split layout: train.csv, val.csv, test.csv with `emotion,pixels`
    columns (a Usage column, if present, is ignored: the file decides the split)."""
    directory = Path(directory)
    files = [directory / f"{s}.csv" for s in SPLITS]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{directory}: pre-split layout needs train.csv, val.csv and test.csv; missing {missing}")
    parts = []
    skipped = 0
    offset = 0
    for code, f in enumerate(files):
        images, labels, split, origin, _, n_rows, n_skipped, examples = _read_fer_rows(
            f, fixed_split=code, skip_bad_rows=skip_bad_rows, progress=progress
        )
        warn_skipped(str(f), n_skipped, examples)
        skipped += n_skipped
        parts.append((images, labels, split, origin + offset))
        offset += n_rows
    return FaceData(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
        CLASSES,
        f"train/val/test.csv ({directory})",
        skipped=skipped,
        origin=np.concatenate([p[3] for p in parts]),
    )
