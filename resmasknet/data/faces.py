"""Faces from photos: read an image file, find the largest face with OpenCV's bundled Haar cascade, and
crop it to the 48x48 grey uint8 face the networks take. Nothing is downloaded.

Example:
    >>> from resmasknet.data.faces import detect_face, read_image
    >>> face, box = detect_face(read_image("photo.jpg"))   # box: (x, y, w, h) with margin, or None
    >>> face.shape, face.dtype                             # (48, 48), uint8
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FACE_SIZE", "detect_face", "face_detector", "read_image"]

FACE_SIZE = 48  # the FER2013 face size every preset's data pipeline starts from


def read_image(path: str | Path) -> np.ndarray:
    """The image at ``path`` as a BGR uint8 array; an error naming the path if it is missing or undecodable."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such image file")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{p}: not a readable image (OpenCV could not decode it)")
    return img


@functools.lru_cache(maxsize=1)
def face_detector() -> Any:
    """OpenCV's bundled frontal-face Haar cascade, or None where this OpenCV build lacks it (OpenCV 5
    removed ``CascadeClassifier`` and no longer ships ``cv2.data.haarcascades``). Loaded once per process."""
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", "") or ""
    path = Path(folder) / "haarcascade_frontalface_default.xml"
    if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
        return None
    cascade = cv2.CascadeClassifier(str(path))
    return None if cascade.empty() else cascade


def detect_face(img_bgr: np.ndarray, margin: float = 0.2) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """The largest face, cropped with ``margin`` (a fraction of its size), grey, 48x48 uint8, and its box
    (x, y, w, h); (the whole image resized, None) when no face is found or there is no detector."""
    import cv2

    grey = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2GRAY) if img_bgr.ndim == 3 else img_bgr
    cascade = face_detector()
    found = (cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
             if cascade is not None and min(grey.shape) >= 24 else ())
    box = None
    crop = grey
    if len(found):
        x, y, w, h = max(found, key=lambda f: f[2] * f[3])
        m = int(margin * max(w, h))
        x0, y0 = max(0, x - m), max(0, y - m)
        x1, y1 = min(grey.shape[1], x + w + m), min(grey.shape[0], y + h + m)
        crop = grey[y0:y1, x0:x1]
        box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    face = cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    return face.astype(np.uint8), box
