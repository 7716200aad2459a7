"""ablate: ablation studies, sweeps, statistics and mask analysis for ResMaskingNet.

In a notebook:

    >>> import ablate
    >>> s = ablate.open_study("quickstart")     # a finished study, by name, file or output folder
    >>> s.summary(); s.forest_plot()
    >>> ablate.explore(s, variants=["masks_on", "masks_off"], faces="disagree")

`import ablate` loads nothing heavy: torch, Optuna and MLflow load when first needed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# a notebook imports ablate before torch: PyTorch's OpenMP threads then sleep rather than spin while they wait
# (`resmasknet.runtime.configure_threads`; a busy core otherwise slows every forward pass several-fold)
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["StudyResults", "explore", "open_study"]

_LAZY = {"open_study": "ablate.api", "StudyResults": "ablate.api", "explore": "ablate.explorer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ablate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
