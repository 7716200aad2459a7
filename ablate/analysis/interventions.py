"""Causal interventions on the masks at inference: replace a stage's mask and watch the logits.

Attribution maps say where gradients are large; they do not say the mask *matters*. Here each
stage's mask output is replaced (with a forward hook on the ``maskN`` module, so nothing else in the
network changes) by

* ``zero``         all zeros: for ``residual`` masks exactly "no refinement" (x * (1 + 0) = x);
                   for ``multiply`` masks it deletes the features;
* ``uniform``      1/C for softmax (the uniform distribution over channels), 1 for spatial
                   softmax (its mean by construction), each image's own mean mask value otherwise:
                   keeps the average strength, removes all spatial and channel structure;
* ``shuffle``      the same mask with its pixel positions permuted (one permutation per image,
                   shared by all channels, seeded): keeps every per-pixel channel profile, breaks
                   *where* they are;
* ``spatial_mean`` each channel replaced by its spatial mean: keeps the channel weighting,
                   removes the spatial pattern (not run by default);
* ``class_mean``   the mean mask of the class the *unmodified* model predicts, from a probe
                   (``ProbeResult.class_mean_masks``). Using the predicted rather than the true
                   class avoids handing the model its label through the mask. The class means come
                   from the probe's data: probe a different split (train or val) than the one you
                   intervene on for a leakage-free estimate; on the same split each image contributes
                   1/n_class of its own class mean.

On a network whose masks are ``unapplied`` every intervention must change nothing (the mask never
reaches the features); that is the control that makes a change on the real network meaningful.
Such stages are not run (``skip_unapplied``, the default): their rows report the zero effect with
``computed=False`` and a note saying it is zero by construction (a test checks the construction by
running them anyway).

Cost: the reference (unmodified) logits and each stage's pre-mask features come from the shared
forward pass (:mod:`ablate.analysis.forward`), and an intervention on stage k re-runs only stages
k..4 and the head (:func:`ablate.analysis.forward.forward_after`). ``class_mean`` needs the class
means of all faces first, so it runs in a second pass (:func:`intervene` does both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ablate.analysis.common import check_images, model_device
from ablate.analysis.forward import Batch, forward_after, shared_forward
from ablate.analysis.masks import MaskStage, mask_stages
from ablate.analysis.probe import ProbeResult
from resmasknet.model import ResMaskNet

__all__ = [
    "DEFAULT_INTERVENTIONS",
    "INTERVENTIONS",
    "UNAPPLIED_INTERVENTION_NOTE",
    "InterventionAccumulator",
    "InterventionResult",
    "intervene",
    "replace_mask",
    "replacement_mask",
]

INTERVENTIONS = ("zero", "uniform", "shuffle", "spatial_mean", "class_mean")
DEFAULT_INTERVENTIONS = ("zero", "uniform", "shuffle", "class_mean")
UNAPPLIED_INTERVENTION_NOTE = "mask not applied: no intervention can change the output (zero by construction; not run)"


@contextmanager
def replace_mask(model: ResMaskNet, stage: int, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """While inside, stage ``stage``'s mask output ``m`` is replaced by ``fn(m)`` (a forward hook
    on ``maskN`` whose return value replaces the module's output); the hook is always removed."""
    module = getattr(model, f"mask{stage}", None)
    if module is None:
        raise KeyError(f"model has no mask{stage} (disabled or absent)")
    handle = module.register_forward_hook(lambda _m, _i, out: fn(out))
    try:
        yield
    finally:
        handle.remove()


def replacement_mask(kind: str, m: Tensor, stage: MaskStage, *, generator: torch.Generator | None = None,
                     class_masks: Tensor | None = None, pred: Tensor | None = None) -> Tensor:
    """The replacement for mask ``m`` [B, C, H, W] under intervention ``kind`` (see module docstring).
    ``class_masks`` [K, C, H, W] and ``pred`` [B] are needed for ``class_mean``; ``generator`` (a CPU
    generator) makes ``shuffle`` reproducible."""
    if kind == "zero":
        return torch.zeros_like(m)
    if kind == "uniform":
        if stage.activation == "softmax":
            return torch.full_like(m, 1.0 / m.shape[1])
        if stage.activation == "spatial_softmax":
            return torch.ones_like(m)
        return m.mean(dim=(1, 2, 3), keepdim=True).expand_as(m).contiguous()
    if kind == "spatial_mean":
        return m.mean(dim=(2, 3), keepdim=True).expand_as(m).contiguous()
    if kind == "shuffle":
        b, c, h, w = m.shape
        perm = torch.argsort(torch.rand(b, h * w, generator=generator), dim=1).to(m.device)
        flat = m.reshape(b, c, h * w)
        return torch.gather(flat, 2, perm[:, None, :].expand(b, c, h * w)).reshape(b, c, h, w)
    if kind == "class_mean":
        if class_masks is None or pred is None:
            raise ValueError("the class_mean intervention needs class_masks and the unmodified predictions")
        return class_masks[pred].to(dtype=m.dtype)
    raise ValueError(f"unknown intervention {kind!r}; choose from {INTERVENTIONS}")


@dataclass
class InterventionResult:
    """table: one row per (stage, kind) with accuracy, its change from the unmodified model, mean
    |delta logit| over all classes, mean change of the true-class logit and probability, and the
    fraction of flipped predictions. predictions: {"maskN/kind": preds [N]} plus "base", for paired
    tests (McNemar) elsewhere."""

    table: pd.DataFrame
    base_accuracy: float
    predictions: dict[str, np.ndarray] = field(default_factory=dict)


def _class_mask_tensors(class_masks: ProbeResult | Mapping[str, np.ndarray] | None,
                        stages: Sequence[MaskStage], device: torch.device) -> dict[str, Tensor]:
    if class_masks is None:
        return {}
    src = class_masks.class_mean_masks if isinstance(class_masks, ProbeResult) else class_masks
    out = {}
    for st in stages:
        if st.name not in src:
            raise ValueError(f"class masks have no entry for {st.name}; probe with keep_class_masks=True")
        a = torch.as_tensor(np.nan_to_num(np.asarray(src[st.name], np.float32)))
        if a.ndim != 4 or a.shape[1] != st.channels:
            raise ValueError(f"class masks for {st.name} must be [K, {st.channels}, H, W], got {tuple(a.shape)}")
        out[st.name] = a.to(device)
    return out


class InterventionAccumulator:
    """Runs interventions on batches of the shared forward pass: each batch's unmodified logits are
    the reference and each stage's ``layerN`` tap the starting point (see the module docstring).

    ``update(batch)`` per batch, in order, covering all N faces; then ``rows()`` and ``predictions``.
    Stages in ``skip`` are not run (their rows are filled with the zero effect by ``intervene``)."""

    def __init__(self, model: ResMaskNet, labels: np.ndarray, stages: Sequence[MaskStage], kinds: Sequence[str], *,
                 class_masks: Mapping[str, Tensor] | None = None, seed: int = 0,
                 kind_index: Mapping[str, int] | None = None):
        self.model = model
        self.labels = np.asarray(labels, np.int64)
        self.keys = [(st, k) for st in stages for k in kinds]
        self.cms = dict(class_masks or {})
        index = kind_index or {k: i for i, k in enumerate(kinds)}
        self.gens = {(st.stage, k): torch.Generator().manual_seed(seed * 1000 + st.stage * 10 + index[k])
                     for st, k in self.keys}
        n = self.labels.shape[0]
        self.base_pred = np.empty(n, np.int64)
        self.predictions = {f"{st.name}/{k}": np.empty(n, np.int64) for st, k in self.keys}
        # abs dlogit, dlogit true, dprob true, flips, correct
        self.sums = {f"{st.name}/{k}": np.zeros(5) for st, k in self.keys}

    def update(self, batch: Batch) -> None:
        if batch.labels is None:
            raise ValueError("interventions need the true labels")
        base, lab, sl = batch.logits, batch.labels, batch.sl
        bp = base.argmax(1)
        self.base_pred[sl] = bp.cpu().numpy()
        base_prob = torch.softmax(base, 1)
        idx = lab.clamp(0, base.shape[1] - 1)[:, None]
        for st, kind in self.keys:
            key = f"{st.name}/{kind}"
            m = replacement_mask(kind, batch.taps[st.name], st, generator=self.gens[(st.stage, kind)],
                                 class_masks=self.cms.get(st.name), pred=bp)
            out = forward_after(self.model, st.stage, batch.taps[f"layer{st.stage}"], m)
            p = out.argmax(1)
            self.predictions[key][sl] = p.cpu().numpy()
            d = out - base
            s = self.sums[key]
            s[0] += d.abs().mean(1).sum().item()
            s[1] += d.gather(1, idx).sum().item()
            s[2] += (torch.softmax(out, 1) - base_prob).gather(1, idx).sum().item()
            s[3] += (p != bp).sum().item()
            s[4] += (p == lab).sum().item()


def intervene(
    model: ResMaskNet,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    kinds: Sequence[str] = DEFAULT_INTERVENTIONS,
    stages: Sequence[int] | None = None,
    class_masks: ProbeResult | Mapping[str, np.ndarray] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int = 0,
    skip_unapplied: bool = True,
    shared: InterventionAccumulator | None = None,
    base_preds: np.ndarray | None = None,
    progress: bool = False,
) -> InterventionResult:
    """Replace each stage's mask by each kind of replacement and measure the effect on uint8 faces
    [N, H, W] with true ``labels``. ``class_mean`` needs ``class_masks`` (a ``ProbeResult`` or
    {maskN: [K, C, H, W]}); without it, ask for the other kinds. Batched; no gradients.

    skip_unapplied: do not run stages whose mask is ``unapplied``; report their zero effect with
    ``computed=False`` and a note. shared: an :class:`InterventionAccumulator` that already saw a
    shared forward pass over the same faces (as :func:`ablate.analysis.analyse` does) for the kinds
    it holds; only the kinds it lacks (``class_mean``) get a pass of their own here. base_preds: the
    unmodified model's predictions, used when nothing needs running (every chosen mask unapplied).
    """
    images, labels_arr = check_images(images, labels)
    assert labels_arr is not None
    bad = [k for k in kinds if k not in INTERVENTIONS]
    if bad:
        raise ValueError(f"unknown intervention(s) {bad}; choose from {INTERVENTIONS}")
    dev = model_device(model, device)
    all_stages = mask_stages(model)
    chosen = [s for s in all_stages if stages is None or s.stage in stages]
    run = [s for s in chosen if s.applied or not skip_unapplied]
    if "class_mean" in kinds and class_masks is None:
        raise ValueError("kinds include 'class_mean' but no class_masks were given: pass class_masks=probe(...)")
    n = images.shape[0]
    index = {k: i for i, k in enumerate(kinds)}
    done = {(st.stage, k) for st, k in shared.keys} if shared is not None else set()
    todo = [k for k in kinds if any((st.stage, k) not in done for st in run)]
    accs = [shared] if shared is not None else []
    if todo and run:
        cms = _class_mask_tensors(class_masks, run, dev) if "class_mean" in todo else {}
        acc = InterventionAccumulator(model, labels_arr, run, todo, class_masks=cms, seed=seed, kind_index=index)
        shared_forward(model, images, labels_arr, [acc], batch_size=batch_size, device=dev, progress=progress,
                       desc="interventions")
        accs.append(acc)
    if accs:
        base_pred = accs[0].base_pred
    elif base_preds is not None:  # nothing to run (every chosen mask unapplied)
        base_pred = np.asarray(base_preds, np.int64)
    else:
        base_pred = shared_forward(model, images, labels_arr, [], batch_size=batch_size, device=dev).preds
    sums: dict[str, np.ndarray] = {}
    preds: dict[str, np.ndarray] = {}
    for a in accs:
        sums.update(a.sums)
        preds.update(a.predictions)

    from ablate.stats import mcnemar_exact

    base_acc = float((base_pred == labels_arr).mean()) if n else float("nan")
    rows = []
    for st in chosen:
        for kind in kinds:
            key = f"{st.name}/{kind}"
            computed = key in sums
            if not computed:  # an unapplied mask: the output cannot change
                preds[key] = base_pred.copy()
            s = sums[key] / max(n, 1) if computed else np.array([0.0, 0.0, 0.0, 0.0, base_acc])
            # paired: faces the intervention breaks (right before, wrong after) and fixes; exact McNemar p
            mc = mcnemar_exact(labels_arr, base_pred, preds[key]) if n else None
            rows.append({
                "stage": st.stage, "mask": st.name, "kind": kind, "activation": st.activation,
                "application": st.application, "applied": st.applied, "n": n,
                "accuracy": s[4], "base_accuracy": base_acc, "delta_accuracy": s[4] - base_acc,
                "mean_abs_dlogit": s[0], "mean_dlogit_true": s[1], "mean_dprob_true": s[2], "flip_rate": s[3],
                "broken": mc.b if mc else 0, "fixed": mc.c if mc else 0,
                "mcnemar_p": mc.pvalue if mc else float("nan"),
                "computed": computed, "note": "" if computed else UNAPPLIED_INTERVENTION_NOTE,
            })
    preds["base"] = base_pred
    return InterventionResult(table=pd.DataFrame(rows), base_accuracy=base_acc, predictions=preds)
