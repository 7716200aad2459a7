"""Data layer: FaceData, fer2013.csv / pre-split / FER+ / image-folder loaders, bad input, dispatch.

Fixtures are written into tmp_path at test time: random pixels for the format tests, and real
FER2013 rows (from ../shared/fer2013, never copied into the project) for the `fer2013` tests.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resmasknet.data import (
    CLASSES,
    FERPLUS_CLASSES,
    DataError,
    FaceData,
    load_data,
    load_fer_csv,
)

USAGE = ("Training", "PublicTest", "PrivateTest")


def _pixels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)


def _row(label: object, pixels: np.ndarray | str, usage: str | None = "Training") -> str:
    text = pixels if isinstance(pixels, str) else " ".join(map(str, pixels.ravel().tolist()))
    return f"{label},{text}" + (f",{usage}" if usage is not None else "")


def _write_csv(path: Path, rows: list[str], header: str = "emotion,pixels,Usage", newline: str = "\n") -> Path:
    path.write_text(newline.join([header, *rows]) + newline)
    return path


@pytest.fixture
def small_csv(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """9 rows: 3 per split, labels 0..6 and back, random pixels (0 and 255 included)."""
    rng = np.random.default_rng(0)
    images = _pixels(rng, 9)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 0, 3])
    split = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    rows = [_row(labels[i], images[i], USAGE[split[i]]) for i in range(9)]
    return _write_csv(tmp_path / "fer2013.csv", rows), images, labels, split


def _bad_csv(tmp_path: Path, bad_row: str, *, header: str = "emotion,pixels,Usage") -> Path:
    """Two good rows, then `bad_row` on line 4, then one good row."""
    rng = np.random.default_rng(1)
    good = [_row(3, p) for p in _pixels(rng, 3)]
    return _write_csv(tmp_path / "bad.csv", [good[0], good[1], bad_row, good[2]], header=header)


# ---------------------------------------------------------------- FaceData


def _face_data(n: int = 10) -> FaceData:
    rng = np.random.default_rng(0)
    return FaceData(
        images=_pixels(rng, n),
        labels=np.arange(n) % 7,
        split=np.arange(n) % 3,
        classes=CLASSES,
        source="test",
    )


def test_facedata_select_subset_len_and_summary():
    data = _face_data(10)
    # dtypes are normalised on construction
    assert data.labels.dtype == np.int64 and data.split.dtype == np.int8 and data.images.flags.c_contiguous
    # len counts images
    assert len(data) == 10
    # select by name and by code agree and keep only that split
    val = data.select("val")
    assert len(val) == 3 and (val.split == 1).all()
    assert np.array_equal(data.select(1).images, val.images)
    # subset takes integer or boolean indices
    assert np.array_equal(data.subset(np.array([2, 0])).labels, [2, 0])
    assert len(data.subset(data.labels == 0)) == 2
    # summary is a short table with the per-split totals (4 train, 3 val, 3 test)
    table = data.summary()
    assert "train" in table and "angry" in table
    assert table.splitlines()[-1].split()[1:] == ["4", "3", "3", "10"]
    # repr does not dump arrays
    assert len(repr(data)) < 200
    # unknown split names are errors
    with pytest.raises(DataError, match="unknown split"):
        data.select("holdout")


def test_facedata_rejects_inconsistent_arrays():
    data = _face_data(4)
    # a label outside the class list is refused
    with pytest.raises(DataError, match="labels must lie"):
        FaceData(data.images, np.array([0, 1, 2, 7]), data.split, CLASSES, "t")
    # soft labels must be distributions over the classes
    with pytest.raises(DataError, match="sum to 1"):
        FaceData(data.images, data.labels, data.split, CLASSES, "t", soft_labels=np.ones((4, 7)))
    # regions must match the images
    with pytest.raises(DataError, match="regions"):
        FaceData(data.images, data.labels, data.split, CLASSES, "t", regions=np.ones((4, 8, 8)))


# ---------------------------------------------------------------- fer2013.csv


def test_fer_csv_roundtrip(small_csv):
    path, images, labels, split = small_csv
    data = load_data(path)
    # pixels, labels and Usage-derived splits come back exactly, in file order
    assert np.array_equal(data.images, images)
    assert np.array_equal(data.labels, labels)
    assert np.array_equal(data.split, split)
    # FER2013 class names, uint8 48x48, origin = data-row index, nothing skipped
    assert data.classes == CLASSES and data.images.dtype == np.uint8 and data.image_size == (48, 48)
    assert np.array_equal(data.origin, np.arange(9)) and data.skipped == 0
    # the source names the file
    assert str(path) in data.source


def test_fer_csv_tolerates_crlf_quotes_bom_blank_lines_and_column_order(tmp_path):
    rng = np.random.default_rng(2)
    images = _pixels(rng, 2)
    rows = [
        f'"Training","{" ".join(map(str, images[0].ravel()))}","4"',
        "",
        f"PrivateTest,{' '.join(map(str, images[1].ravel()))},6",
    ]
    path = tmp_path / "odd.csv"
    path.write_bytes(("\ufeffUsage,pixels,emotion\r\n" + "\r\n".join(rows) + "\r\n\r\n").encode())
    data = load_fer_csv(path)
    # quoted fields, CRLF endings, a BOM, blank lines and another column order all load
    assert np.array_equal(data.images, images)
    assert list(data.labels) == [4, 6] and list(data.split) == [0, 2]
    # line numbers in errors count the blank line (the third data line is line 5)
    path.write_bytes(path.read_bytes() + b"PublicTest,1 2,3\r\n")
    with pytest.raises(DataError, match="line 6: expected 2304 pixel values, found 2"):
        load_fer_csv(path)


def test_fer_csv_gzip(tmp_path, small_csv):
    path, images, _, _ = small_csv
    gz = tmp_path / "fer2013.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    # a gzipped fer2013.csv loads like the plain one
    assert np.array_equal(load_data(gz).images, images)


def test_fer_csv_size_option_resizes(small_csv):
    path, *_ = small_csv
    # size=64 resizes every image
    assert load_data(path, size=64).images.shape == (9, 64, 64)


BAD_ROWS = {
    "too_few_pixels": (_row(3, " ".join(["7"] * 2303)), "expected 2304 pixel values, found 2303"),
    "too_many_pixels": (_row(3, " ".join(["7"] * 2305)), "expected 2304 pixel values, found 2305"),
    "non_number": (_row(3, " ".join(["7"] * 2000 + ["x7"] + ["7"] * 303)), "non-numeric character 'x'"),
    "negative": (_row(3, " ".join(["-7"] + ["7"] * 2303)), "non-numeric character '-'"),
    "decimal": (_row(3, " ".join(["7.5"] + ["7"] * 2303)), "non-numeric character '.'"),
    "pixel_256": (_row(3, " ".join(["256"] + ["7"] * 2303)), "pixel value 256 outside 0..255"),
    "pixel_300": (_row(3, " ".join(["7"] * 2303 + ["300"])), "pixel value 300 outside 0..255"),
    "pixel_999": (_row(3, " ".join(["7", "999"] + ["7"] * 2302)), "pixel value 999 outside 0..255"),
    "pixel_huge": (_row(3, " ".join(["00001000"] + ["7"] * 2303)), "pixel value 1000 outside 0..255"),
    "empty_pixels": (_row(3, ""), "expected 2304 pixel values, found 0"),
    "label_7": (_row(7, " ".join(["7"] * 2304)), "emotion '7' is not a label in 0..6"),
    "label_text": (_row("happy", " ".join(["7"] * 2304)), "emotion 'happy' is not a label"),
    "label_empty": (_row("", " ".join(["7"] * 2304)), "emotion '' is not a label"),
    "unknown_usage": (_row(3, " ".join(["7"] * 2304), "Holdout"), "unknown Usage 'Holdout'"),
    "missing_field": (_row(3, " ".join(["7"] * 2304), None), "expected 3 fields, found 2"),
    "extra_field": (_row(3, " ".join(["7"] * 2304), "Training,x"), "expected 3 fields, found 4"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_raises_with_file_line_and_problem(tmp_path, case):
    bad_row, problem = BAD_ROWS[case]
    path = _bad_csv(tmp_path, bad_row)
    # the error names the file, the 1-based line (header = line 1, bad row = line 4) and the problem
    with pytest.raises(DataError) as err:
        load_data(path)
    assert str(path) in str(err.value)
    assert "line 4:" in str(err.value)
    assert problem in str(err.value)


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_skipped_with_warning(tmp_path, case):
    path = _bad_csv(tmp_path, BAD_ROWS[case][0])
    # skip_bad_rows drops only the bad row, warns with the count, and records it
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        data = load_data(path, skip_bad_rows=True)
    assert len(data) == 3 and data.skipped == 1
    # the surviving rows keep their data-row positions (row 2 was the bad one)
    assert list(data.origin) == [0, 1, 3]


def test_missing_column(tmp_path):
    path = _bad_csv(tmp_path, _row(3, "1 2"), header="emotion,pix,Usage")
    # a missing column is named together with the header actually found
    with pytest.raises(DataError, match=r"bad\.csv: line 1: missing column 'pixels'.*'pix'"):
        load_data(path)


def test_missing_usage_column_in_single_file(tmp_path):
    path = _write_csv(tmp_path / "fer2013.csv", [_row(0, " ".join(["1"] * 2304), None)], header="emotion,pixels")
    # a single fer2013.csv needs Usage to know the splits
    with pytest.raises(DataError, match="missing column 'Usage'"):
        load_data(path)


def test_empty_file(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_bytes(b"")
    # an empty file is named as such
    with pytest.raises(DataError, match=r"fer2013\.csv: empty file"):
        load_data(path)


def test_header_only(tmp_path):
    path = _write_csv(tmp_path / "fer2013.csv", [])
    # a header without rows is an error, not an empty dataset
    with pytest.raises(DataError, match="no data rows"):
        load_data(path)


def test_binary_file(tmp_path):
    path = tmp_path / "fer2013.csv"
    Image.new("L", (48, 48)).save(path, format="PNG")
    # a PNG renamed .csv is refused as undecodable / not text
    with pytest.raises(DataError, match="fer2013.csv: (not a text CSV|line 1: cannot decode)"):
        load_data(path)


def test_utf16_file(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_bytes("emotion,pixels,Usage\n0,1 2,Training\n".encode("utf-16"))
    # a UTF-16 export is refused with a decode error naming line 1
    with pytest.raises(DataError, match="fer2013.csv: (not a text CSV|line 1: cannot decode)"):
        load_data(path)


def test_truncated_gzip(tmp_path, small_csv):
    path, *_ = small_csv
    gz = tmp_path / "broken.csv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes())[:5000])
    # an unreadable (truncated) archive is a DataError naming the file
    with pytest.raises(DataError, match=r"broken\.csv\.gz.*cannot read"):
        load_data(gz)


def test_all_rows_bad_even_when_skipping(tmp_path):
    path = _write_csv(tmp_path / "fer2013.csv", [_row(9, "1 2"), _row(9, "3")])
    # skipping every row would silently return nothing: refused
    with pytest.raises(DataError, match="all 2 data rows are bad"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_data(path, skip_bad_rows=True)


def test_first_bad_row_is_reported_across_chunks(tmp_path):
    rng = np.random.default_rng(3)
    rows = [_row(1, p) for p in _pixels(rng, 1100)]  # > one 8 MB chunk
    rows[1050] = _row(1, "1 2 3")
    path = _write_csv(tmp_path / "fer2013.csv", rows)
    # line numbers stay exact past the first chunk
    with pytest.raises(DataError, match="line 1052: expected 2304 pixel values, found 3"):
        load_data(path)


# ---------------------------------------------------------------- authors' train/val/test.csv


def test_presplit_directory(tmp_path):
    rng = np.random.default_rng(4)
    images = _pixels(rng, 6)
    for k, name in enumerate(("train", "val", "test")):
        rows = [_row(k, images[2 * k + j], None) for j in range(2)]
        _write_csv(tmp_path / f"{name}.csv", rows, header="emotion,pixels")
    data = load_data(tmp_path)
    # each file's rows land in its split, in train, val, test order
    assert list(data.split) == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(data.images, images) and list(data.labels) == [0, 0, 1, 1, 2, 2]
    # a bad row names its own file
    _write_csv(tmp_path / "val.csv", [_row(1, "1 2", None)], header="emotion,pixels")
    with pytest.raises(DataError, match=r"val\.csv: line 2: expected 2304"):
        load_data(tmp_path)


def test_presplit_directory_missing_file(tmp_path):
    _write_csv(tmp_path / "train.csv", [_row(0, " ".join(["1"] * 2304), None)], header="emotion,pixels")
    # the missing files are listed
    with pytest.raises(DataError, match=r"missing \['val.csv', 'test.csv'\]"):
        load_data(tmp_path)


# ---------------------------------------------------------------- FER+

FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
#                         neu hap sur sad ang dis fea con unk NF   majority     plurality  soft
FERPLUS_VOTES = [
    ("a.png", [6, 0, 0, 4, 0, 0, 0, 0, 0, 0]),  # neutral      neutral    .6/.4
    ("b.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),  # happiness    happiness
    ("", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # no image name: dropped everywhere
    ("d.png", [4, 0, 0, 3, 3, 0, 0, 0, 0, 0]),  # no >50%: drop neutral
    ("e.png", [1, 0, 0, 0, 0, 0, 0, 0, 6, 3]),  # unknown wins: dropped everywhere
    ("f.png", [5, 1, 1, 1, 0, 0, 0, 0, 0, 0]),  # 1-votes removed: 5/5 -> neutral
    ("g.png", [0, 0, 0, 0, 0, 0, 0, 9, 1, 0]),  # contempt
    ("h.png", [0, 0, 4, 0, 0, 0, 4, 0, 0, 0]),  # tie: drop     surprise (first)
    ("i.png", [2, 0, 0, 0, 0, 2, 0, 0, 0, 6]),  # NF wins: dropped everywhere
]


@pytest.fixture
def ferplus_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(5)
    images = _pixels(rng, len(FERPLUS_VOTES))
    usage = [USAGE[i % 3] for i in range(len(FERPLUS_VOTES))]
    _write_csv(tmp_path / "fer2013.csv", [_row(0, images[i], usage[i]) for i in range(len(images))])
    lines = [f"{u},{name}," + ",".join(map(str, v)) for u, (name, v) in zip(usage, FERPLUS_VOTES)]
    _write_csv(tmp_path / "fer2013new.csv", lines, header=FERPLUS_HEADER)
    return tmp_path


def test_ferplus_majority_follows_the_authors_rule(ferplus_dir):
    data = load_data(ferplus_dir / "fer2013.csv", ferplus="majority")
    # FER+'s 8 classes replace FER2013's 7
    assert data.classes == FERPLUS_CLASSES
    # kept: a (neutral), b (happiness), f (neutral after removing single votes), g (contempt)
    assert list(data.origin) == [0, 1, 5, 6]
    assert [data.classes[k] for k in data.labels] == ["neutral", "happiness", "neutral", "contempt"]
    # splits still come from Usage; no soft labels in majority mode; drops are stated in source
    assert list(data.split) == [0, 1, 2, 0] and data.soft_labels is None
    assert "5 rows without a usable FER+ label dropped" in data.source


def test_ferplus_plurality_and_soft(ferplus_dir):
    plural = load_data(ferplus_dir / "fer2013.csv", ferplus="plurality")
    # plurality keeps rows without a strict majority; ties go to the first class in FER+ order
    assert list(plural.origin) == [0, 1, 3, 5, 6, 7]
    assert [plural.classes[k] for k in plural.labels][-1] == "surprise"
    soft = load_data(f"ferplus:{ferplus_dir / 'fer2013.csv'}", ferplus="soft")
    # soft keeps the same rows, with vote distributions over the 8 emotions summing to 1
    assert list(soft.origin) == list(plural.origin)
    assert soft.soft_labels is not None and soft.soft_labels.shape == (6, 8)
    assert np.allclose(soft.soft_labels.sum(1), 1) and np.allclose(soft.soft_labels[0, [0, 3]], [0.6, 0.4])
    # labels are the argmax of the distribution
    assert np.array_equal(soft.labels, soft.soft_labels.argmax(1))


def test_ferplus_spec_defaults_to_majority(ferplus_dir):
    # "ferplus:PATH" means the authors' majority labels
    assert list(load_data(f"ferplus:{ferplus_dir / 'fer2013.csv'}").origin) == [0, 1, 5, 6]


def test_ferplus_skipped_fer_rows_stay_aligned(ferplus_dir):
    path = ferplus_dir / "fer2013.csv"
    lines = path.read_text().splitlines()
    lines[1] = "0,1 2 3,Training"  # data row 0 (FER+ 'a.png') is now bad
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="skipped 1"):
        data = load_data(path, ferplus="majority", skip_bad_rows=True)
    # the bad row is skipped and the others keep their own FER+ labels
    assert list(data.origin) == [1, 5, 6] and data.skipped == 1


def test_ferplus_misaligned_files(ferplus_dir):
    new = ferplus_dir / "fer2013new.csv"
    new.write_text("\n".join(new.read_text().splitlines()[:-1]) + "\n")
    # a row-count mismatch means the files are not row-aligned
    with pytest.raises(DataError, match=r"fer2013new\.csv: 8 data rows, but the FER2013 file has 9"):
        load_data(ferplus_dir / "fer2013.csv", ferplus="majority")


def test_ferplus_usage_mismatch(ferplus_dir):
    new = ferplus_dir / "fer2013new.csv"
    lines = new.read_text().splitlines()
    lines[2] = lines[2].replace("PublicTest", "Training")
    new.write_text("\n".join(lines) + "\n")
    # rows whose Usage disagree are caught, naming the line in both files
    with pytest.raises(DataError, match=r"fer2013new\.csv: line 3: Usage 'train' but fer2013\.csv line 3.*row-aligned"):
        load_data(ferplus_dir / "fer2013.csv", ferplus="majority")


def test_ferplus_missing_votes_file(small_csv):
    path, *_ = small_csv
    # FER+ without fer2013new.csv next to fer2013.csv names the expected path
    with pytest.raises(DataError, match=r"fer2013new\.csv: FER\+ votes file not found"):
        load_data(path, ferplus="soft")


def test_ferplus_bad_mode(small_csv):
    path, *_ = small_csv
    # unknown modes list the accepted ones
    with pytest.raises(DataError, match="majority"):
        load_data(path, ferplus="average")


# ---------------------------------------------------------------- image folders


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(6)
    root = tmp_path / "faces"
    _save(root / "Training" / "Happiness" / "a.png", _pixels(rng, 1)[0])
    _save(root / "Training" / "angry" / "b.png", _pixels(rng, 1)[0])
    _save(root / "Training" / "angry" / "c.bmp", _pixels(rng, 1)[0])
    _save(root / "validation" / "SAD" / "d.jpg", np.full((48, 48), 100, np.uint8))
    _save(root / "test" / "surprised" / "e.png", rng.integers(0, 256, (96, 64, 3), dtype=np.uint8))  # RGB, not 48
    (root / "test" / "surprised" / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()
    return root


def test_image_folders(folder_root):
    data = load_data(folder_root)
    # split and class spellings map to canonical names; order is split, class, file name
    assert list(data.split) == [0, 0, 0, 1, 2]
    assert [data.classes[k] for k in data.labels] == ["angry", "angry", "happy", "sad", "surprise"]
    # the PNG comes back exactly; every image is 48x48 grayscale uint8 (RGB and 96x64 converted)
    expected = np.asarray(Image.open(folder_root / "Training" / "angry" / "b.png"))
    assert np.array_equal(data.images[0], expected)
    assert data.images.shape == (5, 48, 48) and data.images.dtype == np.uint8
    # JPEG is lossy but a flat grey stays close; the non-image file and hidden folder are ignored
    assert abs(int(data.images[3].mean()) - 100) <= 2
    # classes stay FER2013's seven (no contempt folder)
    assert data.classes == CLASSES


def test_image_folders_size_and_contempt(folder_root):
    _save(folder_root / "test" / "contempt" / "f.png", np.zeros((48, 48), np.uint8))
    data = load_data(folder_root, size=32)
    # size resizes; a contempt folder appends an eighth class
    assert data.images.shape[1:] == (32, 32)
    assert data.classes == (*CLASSES, "contempt") and data.labels[-1] == 7


def test_image_folders_unknown_class(folder_root):
    (folder_root / "Training" / "bored").mkdir()
    # the unknown folder and the accepted names are in the message
    with pytest.raises(DataError, match=r"bored: unknown class folder 'bored'; accepted names: angry \(angry/anger"):
        load_data(folder_root)


def test_image_folders_unknown_split(folder_root):
    (folder_root / "holdout" / "happy").mkdir(parents=True)
    # split folders are checked too
    with pytest.raises(DataError, match="unknown split folder 'holdout'"):
        load_data(folder_root)


def test_image_folders_corrupt_image(folder_root):
    bad = folder_root / "Training" / "angry" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # a corrupt image is named by path
    with pytest.raises(DataError, match=r"broken\.png: cannot decode image"):
        load_data(folder_root)
    # with skip_bad_rows it is skipped, warned about, and counted
    with pytest.warns(UserWarning, match="skipped 1"):
        data = load_data(folder_root, skip_bad_rows=True)
    assert len(data) == 5 and data.skipped == 1


def test_image_folders_empty_class_folder(folder_root):
    (folder_root / "test" / "fear").mkdir()
    # an empty class folder is an error naming it
    with pytest.raises(DataError, match=r"fear: empty class folder"):
        load_data(folder_root)
    # skip_bad_rows turns it into a warning
    with pytest.warns(UserWarning, match="empty class folder"):
        assert len(load_data(folder_root, skip_bad_rows=True)) == 5


def test_image_folders_empty_root(tmp_path):
    # a directory with nothing in it says what layout was expected
    with pytest.raises(DataError, match="no split folders"):
        load_data(tmp_path)
    (tmp_path / "train").mkdir()
    # a split folder without class folders is named
    with pytest.raises(DataError, match="train: empty split folder"):
        load_data(tmp_path)


def test_val_fraction_carves_validation_from_train(tmp_path):
    rng = np.random.default_rng(7)
    for i in range(10):
        _save(tmp_path / "train" / "happy" / f"{i}.png", _pixels(rng, 1)[0])
        _save(tmp_path / "train" / "sad" / f"{i}.png", _pixels(rng, 1)[0])
    _save(tmp_path / "test" / "sad" / "t.png", _pixels(rng, 1)[0])
    data = load_data(tmp_path, val_fraction=0.2)
    # 20% of each class's training images move to val, deterministically
    assert np.bincount(data.split, minlength=3).tolist() == [16, 4, 1]
    assert np.array_equal(load_data(tmp_path, val_fraction=0.2).split, data.split)


def _kaggle_layout(root: Path, per_class: dict[str, int], test_per_class: int = 2) -> Path:
    """Kaggle's FER2013 folders: train/<class>/*.png and test/<class>/*.png, no validation folder."""
    rng = np.random.default_rng(11)
    for name, n in per_class.items():
        for i in range(n):
            _save(root / "train" / name / f"Training_{i}.png", _pixels(rng, 1)[0])
        for i in range(test_per_class):
            _save(root / "test" / name / f"PrivateTest_{i}.png", _pixels(rng, 1)[0])
    return root


def test_kaggle_layout_gets_a_stratified_seeded_hold_out(tmp_path):
    counts = {"angry": 13, "disgust": 3, "fear": 21, "happy": 37, "sad": 9, "surprise": 17, "neutral": 25}
    root = _kaggle_layout(tmp_path / "kaggle", counts)
    data = load_data(root)
    # the default holds out 10% of each class's training images as val: within 1 of 0.1 x count
    c = data.counts()
    for k, name in enumerate(data.classes):
        assert abs(c[1, k] - 0.1 * counts[name]) <= 1, name
        assert c[0, k] + c[1, k] == counts[name]
    # test is untouched; the summary and repr say a hold-out was made, and of what
    assert c[2].tolist() == [2] * 7
    assert "hold-out of train" in repr(data) and "no validation split" in data.summary()
    # the same seed gives the same split; another seed another; another fraction other counts
    assert np.array_equal(load_data(root).split, data.split)
    assert not np.array_equal(load_data(root, val_seed=1).split, data.split)
    assert int((load_data(root, val_fraction=0.3).split == 1).sum()) == sum(round(0.3 * n) for n in counts.values())
    # val_fraction=0 keeps no validation split; a bad fraction is refused
    assert not (load_data(root, val_fraction=0).split == 1).any()
    with pytest.raises(DataError, match="val_fraction"):
        load_data(root, val_fraction=1.5)


def test_source_with_a_validation_split_keeps_it(tmp_path, folder_root):
    with_val = load_data(folder_root)
    # a layout that has val/ is loaded as it is: val_fraction does not apply
    assert np.array_equal(load_data(folder_root, val_fraction=0.5).split, with_val.split)
    assert "hold-out" not in with_val.source


def test_kaggle_layout_trains_and_evaluates(tmp_path, capsys):
    from ablate.cli import main

    root = _kaggle_layout(tmp_path / "kaggle", {name: 6 for name in CLASSES}, test_per_class=1)
    out = tmp_path / "run"
    rc = main(["train", "--model", "resmasknet_tiny", "--data", str(root), "--out", str(out), "--epochs", "1",
               "--batch-size", "8", "--max-train-batches", "1", "--no-progress", "--device", "cpu",
               "--val-fraction", "0.2"])
    text = capsys.readouterr().out
    # training on the Kaggle layout works (val is held out of train, and the command says so) and evaluates test
    assert rc == 0 and "hold-out of train" in text and "test (7 images" in text
    rc = main(["evaluate", str(out / "best.pt"), "--data", str(root), "--split", "val", "--val-fraction", "0.2",
               "--device", "cpu"])
    text = capsys.readouterr().out
    # evaluate holds out the same val images (same fraction and seed) and says so
    assert rc == 0 and "hold-out of train" in text and "n=7," in text


# ---------------------------------------------------------------- dispatch


def test_dispatch_generated_spec_and_options():
    data = load_data("generated:n=70,seed=3")
    # the spec's options apply; regions come with generated data
    assert len(data) == 70 and data.regions is not None and "seed=3" in data.source
    # keyword options override the spec
    assert load_data("generated:n=70", size=32).images.shape == (70, 32, 32)
    # unknown options are refused with the accepted list
    with pytest.raises(TypeError, match="accepted"):
        load_data("generated", colour=True)
    # malformed spec values are DataErrors
    with pytest.raises(DataError, match="not a number"):
        load_data("generated:n=many")


def test_dispatch_missing_path_and_directory_with_fer2013_csv(tmp_path, small_csv):
    # a path that does not exist explains every accepted spec
    with pytest.raises(DataError, match="no such file or directory.*generated"):
        load_data(tmp_path / "nope.csv")
    path, images, *_ = small_csv
    # a directory holding fer2013.csv loads that file
    assert np.array_equal(load_data(path.parent).images, images)
    # options of other sources are refused
    with pytest.raises(TypeError, match="do not apply"):
        load_data(path, seed=1)


# ---------------------------------------------------------------- real FER2013 (../shared/fer2013)


def _make_real_csv(fer_dir: Path, out: Path, rows: int) -> Path:
    subprocess.run(
        [sys.executable, str(fer_dir / "make_csv.py"), str(out), "--rows", str(rows)],
        check=True,
        capture_output=True,
    )
    return out


def _first_rows_per_split(split: np.ndarray, rows: int) -> np.ndarray:
    keep = np.zeros(len(split), bool)
    for s in range(3):
        keep[np.flatnonzero(split == s)[:rows]] = True
    return np.flatnonzero(keep)


@pytest.mark.fer2013
def test_real_fer2013_rows(fer_dir, tmp_path):
    path = _make_real_csv(fer_dir, tmp_path / "fer2013.csv", 20)
    data = load_data(path)
    z = np.load(fer_dir / "fer2013.npz")
    idx = _first_rows_per_split(z["split"], 20)
    # the real CSV text parses to exactly the reference arrays
    assert np.array_equal(data.images, z["pixels"][idx])
    assert np.array_equal(data.labels, z["label"][idx])
    assert np.array_equal(data.split, z["split"][idx])


@pytest.mark.fer2013
def test_real_ferplus_votes(fer_dir, tmp_path):
    path = _make_real_csv(fer_dir, tmp_path / "fer2013.csv", 20)
    z = np.load(fer_dir / "fer2013.npz")
    idx = _first_rows_per_split(z["split"], 20)
    # the same rows of the real fer2013new.csv (header kept) make an aligned votes file
    lines = (fer_dir / "fer2013new.csv").read_text().splitlines()
    (tmp_path / "fer2013new.csv").write_text("\n".join([lines[0], *(lines[i + 1] for i in idx)]) + "\n")
    soft = load_data(path, ferplus="soft")
    votes = z["ferplus_votes"][idx][soft.origin].astype(float)
    # soft labels are the real vote distributions over the 8 emotions
    assert np.allclose(soft.soft_labels, votes[:, :8] / votes[:, :8].sum(1, keepdims=True), atol=1e-6)
    majority = load_data(path, ferplus="majority")
    v = z["ferplus_votes"][idx].astype(float)
    v[v <= 1] = 0
    expect = np.flatnonzero((v.max(1) > 0.5 * v.sum(1)) & (v.argmax(1) < 8))
    # majority keeps exactly the rows the FER+ authors' rule keeps (real file's empty names included)
    named = np.array([bool(lines[i + 1].split(",")[1].strip()) for i in idx])
    assert list(majority.origin) == [i for i in expect if named[i]]
    assert np.array_equal(majority.labels, v.argmax(1)[majority.origin])


@pytest.mark.fer2013
def test_real_image_folders(fer_dir, tmp_path):
    with np.load(fer_dir / "fer2013.npz") as z:  # each z[...] re-reads the array: read once
        pixels, label, split = z["pixels"], z["label"], z["split"]
    picked = []
    for s, sname in {0: "train", 2: "test"}.items():
        for c, cname in enumerate(CLASSES):
            i = int(np.flatnonzero((split == s) & (label == c))[0])
            _save(tmp_path / sname / cname / f"{i:05d}.png", pixels[i])
            picked.append(i)
    data = load_data(tmp_path)
    # real faces written as PNG folders load back pixel-exact with their labels
    assert np.array_equal(data.images, pixels[picked])
    assert np.array_equal(data.labels, label[picked])


@pytest.mark.fer2013
@pytest.mark.slow
def test_real_full_fer2013_csv_loads_fast(fer_dir, tmp_path):
    import time

    path = _make_real_csv(fer_dir, tmp_path / "fer2013.csv", 10**9)
    start = time.perf_counter()
    data = load_data(path)
    elapsed = time.perf_counter() - start
    # all 35,887 rows, in under 20 s
    assert len(data) == 35887 and elapsed < 20, elapsed


def test_cli_skip_bad_rows(small_csv, tmp_path, capsys):
    """`ablate train` stops on a bad row naming its line; with --skip-bad-rows it trains and reports the count."""
    from ablate.cli import main

    path = small_csv[0]
    lines = path.read_text().splitlines()
    lines.insert(3, "9," + " ".join(["1"] * 2304) + ",Training")  # label 9 is out of range, on line 4
    path.write_text("\n".join(lines) + "\n")
    args = ["train", "--model", "resmasknet_tiny", "--data", str(path), "--epochs", "1", "--batch-size", "4",
            "--max-train-batches", "1", "--no-progress", "--device", "cpu", "--no-test"]
    rc = main([*args, "--out", str(tmp_path / "strict")])
    err = capsys.readouterr().err
    assert rc == 2 and "line 4" in err and str(path) in err
    assert not (tmp_path / "strict" / "best.pt").exists()
    with pytest.warns(UserWarning, match="1 bad"):
        rc = main([*args, "--out", str(tmp_path / "lenient"), "--skip-bad-rows"])
    assert rc == 0 and (tmp_path / "lenient" / "best.pt").exists()
    assert "1 skipped" in capsys.readouterr().out
