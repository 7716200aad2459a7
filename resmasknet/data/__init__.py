"""Facial-expression data as plain arrays: FER2013 (fer2013.csv, the authors' train/val/test.csv,
image folders, FER+ votes) and a generated dataset with ground-truth evidence maps.

Example:
    >>> from resmasknet.data import load_data
    >>> data = load_data("generated:n=700")          # or "/data/fer2013.csv", "/data/folders"
    >>> train = data.select("train")
    >>> train.images.shape, train.labels[:5], data.classes
    >>> print(data.summary())
"""

from resmasknet.data._core import CLASSES, FERPLUS_CLASSES, SPLITS, DataError, FaceData
from resmasknet.data._fer import FERPLUS_MODES, load_fer_csv, load_presplit_dir
from resmasknet.data._folders import CLASS_ALIASES, IMAGE_EXTENSIONS, SPLIT_ALIASES, load_image_folders
from resmasknet.data._generated import EVIDENCE, PARTS, GeneratorConfig, baseline_check, generate_faces, save_examples
from resmasknet.data._load import load_data

__all__ = [
    "CLASSES",
    "CLASS_ALIASES",
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
