"""Facial-expression data as plain arrays: FER2013 (fer2013.csv, the authors' train/val/test.csv,
image folders, FER+ votes) and a generated dataset with ground-truth evidence maps.

Example:
    >>> from resmasknet.data import load_data
    >>> data = load_data("generated:n=700")          # or "/data/fer2013.csv", "/data/folders"
    >>> train = data.select("train")
    >>> train.images.shape, train.labels[:5], data.classes
    >>> print(data.summary())

Accepted spellings (case-insensitive, surrounding spaces ignored):
  - fer2013.csv's `Usage` column: Training or Train -> train; PublicTest, Val, Valid or Validation -> val;
    PrivateTest or Test -> test. The column itself may be named Usage or Split, `emotion` also Label or
    Emotions, `pixels` also Pixel.
  - image folders' split folders: train, training -> train; val, valid, validation, publictest -> val;
    test, privatetest -> test. Class folders: see `CLASS_ALIASES` (e.g. angry/anger/mad, happy/happiness).
  - Kaggle's FER2013 folders (train/ and test/ only; its test/ is PublicTest + PrivateTest) have no
    validation split: `load_data` holds out a stratified, seeded `val_fraction` (default 0.1) of train as
    val, and the data's source (its repr and summary) says so.
"""

from resmasknet.data._baselines import baseline_check
from resmasknet.data._core import CLASSES, FERPLUS_CLASSES, SPLITS, DataError, FaceData
from resmasknet.data._fer import FERPLUS_MODES, load_fer_csv, load_presplit_dir
from resmasknet.data._folders import CLASS_ALIASES, IMAGE_EXTENSIONS, SPLIT_ALIASES, load_image_folders
from resmasknet.data._generated import EVIDENCE, PARTS, GeneratorConfig, generate_faces, save_examples
from resmasknet.data._load import DEFAULT_VAL_FRACTION, load_data

__all__ = [
    "CLASSES",
    "CLASS_ALIASES",
    "DEFAULT_VAL_FRACTION",
    "EVIDENCE",
    "FERPLUS_CLASSES",
    "FERPLUS_MODES",
    "IMAGE_EXTENSIONS",
    "PARTS",
    "SPLITS",
    "SPLIT_ALIASES",
    "DataError",
    "FaceData",
    "GeneratorConfig",
    "baseline_check",
    "generate_faces",
    "load_data",
    "load_fer_csv",
    "load_image_folders",
    "load_presplit_dir",
    "save_examples",
]
