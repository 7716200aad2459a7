"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018):
cascading model-parameter randomisation, the MPRT of Quantus.

A map that explains the *trained* model must change when the weights it depends on are replaced by
random ones. Following Quantus's ``MPRT`` (``layer_order="top_down"``, Spearman similarity per
sample, the explained class held fixed), a copy of the model is randomised from the head down,
cumulatively, one stage at a time: ``fc``; then ``layer4`` + ``mask4``; ``layer3`` + ``mask3``; ...;
``layer1`` + ``mask1``; finally the stem (``conv1``, ``bn1``). After each step the masks and every
attribution method are recomputed on the same faces and compared with the trained model's maps by
the Spearman rank correlation over pixels, per face (scipy's definition: average ranks for ties).

Randomisation mirrors PyTorch's default initialisation, as Quantus does with ``reset_parameters``:
convolution, transposed convolution and linear weights and biases uniform in +-1/sqrt(fan_in),
BatchNorm back to weight 1, bias 0, running mean 0, variance 1. The draws come from one seeded CPU
``torch.Generator`` (same numbers on any device); the caller's model is never touched (a deep copy
is randomised).

Each map has a *check step*: the step after which every weight between the map and the output,
and the map's own stage, is random (stage N for ``maskN/*``, ``gradcam/refineN`` and
``mask_attr/maskN``; the stem, i.e. everything, for input attributions and for any other map). A
map whose mean correlation at its check step is still above :data:`SANITY_THRESHOLD` is flagged:
it reflects the input (or nothing at all) more than what the network learnt. An image-independent
map never changes, keeps correlation 1 and is always flagged. A mask map computed *above* its own
stage's randomisation is exactly unchanged (it is a forward quantity of the stages below), which is
why the check step includes the stage itself. Maps that are zero by construction (attribution to an
unapplied mask) and maps that are constant on a face have no rank correlation: NaN with a note.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ablate.analysis.attribution import DEFAULT_METHODS, INPUT_METHODS, attribute, resolve_targets
from ablate.analysis.common import channels_last, check_images, model_device, upsample_maps
from ablate.analysis.forward import shared_forward
from ablate.analysis.localisation import spearman_rows
from ablate.analysis.masks import orientation
from ablate.analysis.probe import ProbeAccumulator
from resmasknet.config import NUM_STAGES
from resmasknet.model import ResMaskNet

__all__ = ["SANITY_THRESHOLD", "SanityResult", "randomisation_steps", "randomise_", "sanity_checks"]

log = logging.getLogger(__name__)

#: A map whose mean Spearman correlation with the trained model's map is still above this once
#: everything it depends on is randomised is flagged (Adebayo et al.'s failing methods stay near 1).
SANITY_THRESHOLD = 0.5

#: A map function for ``extra_maps``: (model, uint8 faces [N, H, W]) -> maps [N, h, w].
MapFn = Callable[[nn.Module, np.ndarray], np.ndarray]


def randomisation_steps(model: ResMaskNet) -> list[tuple[str, list[str]]]:
    """The cascade, head first: [("fc", ["fc"]), ("stage4", ["layer4", "mask4"]), ..., ("stem",
    ["conv1", "bn1"])]; a stage without a mask randomises its layer only."""
    steps: list[tuple[str, list[str]]] = [("fc", ["fc"])]
    for i in range(NUM_STAGES, 0, -1):
        names = [f"layer{i}"] + ([f"mask{i}"] if getattr(model, f"mask{i}", None) is not None else [])
        steps.append((f"stage{i}", names))
    steps.append(("stem", ["conv1", "bn1"]))
    return steps


def _uniform_(t: torch.Tensor, bound: float, gen: torch.Generator) -> None:
    draw = torch.rand(t.shape, generator=gen, dtype=torch.float32) * (2 * bound) - bound
    t.copy_(draw.to(device=t.device, dtype=t.dtype))


@torch.no_grad()
def randomise_(module: nn.Module, gen: torch.Generator) -> int:
    """Re-initialise every parameter of ``module`` in place as PyTorch's defaults would (see the
    module docstring), drawing from ``gen``. Returns the number of parameters touched."""
    touched = 0
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.reset_parameters()  # deterministic: weight 1, bias 0, running statistics 0 / 1
            touched += sum(p.numel() for p in sub.parameters(recurse=False))
            continue
        for p in sub.parameters(recurse=False):
            w = getattr(sub, "weight", None)
            ref = w if isinstance(w, torch.Tensor) and w.dim() > 1 else p
            fan_in = int(ref.shape[1] * math.prod(ref.shape[2:])) if ref.dim() > 1 else int(ref.shape[0])
            _uniform_(p, 1.0 / math.sqrt(max(fan_in, 1)), gen)
            touched += p.numel()
    return touched


@dataclass
class SanityResult:
    """table: one row per (map, step) with the mean Spearman correlation between the trained and the
    randomised model's maps (``spearman``, ``spearman_sem``, ``n`` faces with a defined value), the
    step's position and the modules randomised so far, and ``check_step`` (True on the map's check
    step). summary: one row per map: ``check_step``, ``spearman_at_check``, ``spearman_final``
    (everything random), ``threshold``, ``flagged``, ``orientation``, ``note``. rho: per-face
    correlations {step: {map: [N]}}. maps: the maps themselves {"trained" | step: {map: [N, H, W]}}
    when ``keep_maps``."""

    table: pd.DataFrame
    summary: pd.DataFrame
    rho: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    options: dict[str, Any] = field(default_factory=dict)


def check_step_of(key: str, steps: Sequence[str]) -> str:
    """The step after which the map ``key`` counts as fully randomised (see the module docstring)."""
    head, _, rest = key.partition("/")
    for prefix in ("mask", "refine", "layer"):
        for part in (head, rest):
            if part.startswith(prefix) and part[len(prefix):].isdigit() and head not in INPUT_METHODS:
                s = f"stage{part[len(prefix):]}"
                if s in steps:
                    return s
    return steps[-1]


def _maps_of(model: ResMaskNet, images: np.ndarray, labels: np.ndarray | None, targets: np.ndarray,
             methods: Sequence[str], masks: bool, extra: Mapping[str, MapFn], batch_size: int,
             options: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every compared map of one model on the faces, all on the face grid [N, H, W]; notes."""
    n, h, _ = images.shape
    out: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    if masks:
        acc = ProbeAccumulator(model, np.zeros(n, np.int64) if labels is None else labels, max_keep=n,
                               keep_class_masks=False)
        shared_forward(model, images, labels, [acc], batch_size=max(batch_size, 32))
        out.update(acc.result().all_maps(size=h))
    if methods:
        res = attribute(model, images, labels, methods=methods, target=targets, preds=targets,
                        batch_size=batch_size, **dict(options))
        out.update(res.maps)
        notes.update(res.notes)
    for name, fn in extra.items():
        a = np.asarray(fn(model, images), np.float32)
        out[name] = a if a.shape[1:] == (h, h) else upsample_maps(a, h)
    return out, notes


def sanity_checks(
    model: ResMaskNet,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    masks: bool = True,
    extra_maps: Mapping[str, MapFn] | None = None,
    target: str | np.ndarray = "pred",
    seed: int = 0,
    threshold: float = SANITY_THRESHOLD,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    keep_maps: bool = False,
    attribution_options: Mapping[str, Any] | None = None,
    preds: np.ndarray | None = None,
) -> SanityResult:
    """Cascading parameter randomisation (see the module docstring) on uint8 faces [N, H, W].

    methods: the attribution methods to check (as for ``attribute``); masks: also check every
    stage's mask maps (oriented reductions and gain); extra_maps: {name: fn(model, faces) -> maps}
    for any other map (e.g. an image-independent blob, which must be flagged). target: the
    explained class, resolved once on the trained model and held fixed on every randomised copy.
    preds: the trained model's predictions when the caller has them."""
    images, labels_arr = check_images(images, labels)
    dev = model_device(model, device)
    opts = dict(attribution_options or {})
    opts.pop("progress", None)
    extra = dict(extra_maps or {})
    if preds is None:
        preds = shared_forward(model, images, None, [], batch_size=max(batch_size, 32), device=dev).preds
    targets = resolve_targets(target, np.asarray(preds, np.int64), labels_arr)
    steps = randomisation_steps(model)
    step_names = [s for s, _ in steps]

    gen = torch.Generator().manual_seed(int(seed))
    work = copy.deepcopy(model).eval()  # the caller's model is never touched
    rows = []
    done: list[str] = []
    with channels_last(work):
        # the trained maps from the copy itself, before any randomisation: same layout, same numbers
        trained, notes = _maps_of(work, images, labels_arr, targets, methods, masks, extra, batch_size, opts)
        rho: dict[str, dict[str, np.ndarray]] = {}
        kept: dict[str, dict[str, np.ndarray]] = {"trained": trained} if keep_maps else {}
        for idx, (step, names) in enumerate(steps):
            for name in names:
                mod = getattr(work, name, None)
                if mod is not None:
                    randomise_(mod, gen)
                    done.append(name)
            maps, _ = _maps_of(work, images, labels_arr, targets, methods, masks, extra, batch_size, opts)
            if keep_maps:
                kept[step] = maps
            rho[step] = {}
            for key, ref in trained.items():
                if key in notes:
                    r = np.full(ref.shape[0], np.nan)
                else:
                    r = spearman_rows(ref.reshape(len(ref), -1).astype(np.float64),
                                      maps[key].reshape(len(ref), -1).astype(np.float64))
                rho[step][key] = r
                fin = np.isfinite(r)
                rows.append({
                    "map": key, "step_index": idx + 1, "step": step, "randomised": ",".join(done),
                    "spearman": float(r[fin].mean()) if fin.any() else float("nan"),
                    "spearman_sem": float(r[fin].std(ddof=1) / np.sqrt(fin.sum())) if fin.sum() > 1 else float("nan"),
                    "n": int(fin.sum()), "check_step": check_step_of(key, step_names) == step,
                })
            log.info("sanity step %s (%s randomised): %d maps compared", step, ",".join(done), len(trained))
    table = pd.DataFrame(rows)
    summary_rows = []
    for key in trained:
        t = table[table["map"] == key].set_index("step")
        cs = check_step_of(key, step_names)
        at_check = float(t.loc[cs, "spearman"])
        note = notes.get(key, "")
        if not note and not np.isfinite(at_check):
            note = "map constant on every face: no rank correlation"
        summary_rows.append({
            "map": key, "check_step": cs, "spearman_at_check": at_check,
            "spearman_final": float(t.loc[step_names[-1], "spearman"]), "threshold": threshold,
            "flagged": bool(np.isfinite(at_check) and at_check > threshold),
            "orientation": orientation(key), "note": note,
        })
    return SanityResult(
        table=table, summary=pd.DataFrame(summary_rows), rho=rho, maps=kept, targets=targets,
        options=dict(methods=list(methods), masks=masks, extra_maps=list(extra), seed=seed, threshold=threshold,
                     steps=[dict(step=s, modules=m) for s, m in steps], n_images=int(images.shape[0]),
                     similarity="spearman (per face, over pixels)", order="top_down (cascading)"),
    )
