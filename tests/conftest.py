from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def _find_shared() -> Path:
    """The development data folder: $RESMASKNET_SHARED, else `../shared` beside the checkout, else /work/shared."""
    if os.environ.get("RESMASKNET_SHARED"):
        return Path(os.environ["RESMASKNET_SHARED"])
    for cand in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared")):
        if cand.exists():
            return cand
    return Path(__file__).resolve().parents[2] / "shared"


SHARED = _find_shared()
FER_DIR = SHARED / "fer2013"
REFERENCE = SHARED / "reference" / "original_resmasking_dropout1.json"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def fer_dir() -> Path:
    if not (FER_DIR / "fer2013.npz").exists():
        pytest.skip(f"real FER2013 not available at {FER_DIR}")
    return FER_DIR


@pytest.fixture(scope="session")
def reference_path() -> Path:
    if not REFERENCE.exists():
        pytest.skip(f"reference outputs not available at {REFERENCE}")
    return REFERENCE
