"""The numerical reference rule of `shared/reference/`: deterministic weights for every original key.

Used by the equality test and by anyone who wants to check that a modified build still computes the
authors' network (`ablate models --check-reference`).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from typing import Any

import torch
from torch import Tensor


def reference_value(key: str, shape: list[int]) -> Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    if key.endswith("running_var"):
        return 1.0 + 0.5 * torch.rand(shape, generator=g)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1 and key.endswith("weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:
        return 0.1 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) * (1.0 / math.prod(shape[1:])) ** 0.5


def reference_state_dict(spec: dict[str, Any]) -> dict[str, Tensor]:
    """The authors' state dict (alias keys included) with every tensor set by the reference rule."""
    sd: dict[str, Tensor] = {}
    for item in spec["state_dict"]:
        key = item["key"]
        sd[key] = sd[item["alias_of"]] if "alias_of" in item else reference_value(key, item["shape"])
    return sd


def load_reference(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)
