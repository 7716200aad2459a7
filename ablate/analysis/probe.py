"""Probing the masks: what each stage's mask looks like, per image, per class and over a data set.

The reductions (max, channel entropy, KL from uniform for softmax masks; mean and max otherwise;
the effective gain everywhere) and their orientation are explained in :mod:`ablate.analysis.masks`.
For ``unapplied`` masks (the parameter-matched control) the gain is what the residual application
*would* give; the stage is flagged ``applied=False`` so nobody reads it as an effect.

Memory stays bounded for thousands of images: per-image maps are kept for the first ``max_keep``
images only; per-class means are running sums; per-image scalar statistics (a few floats per image
and stage) are kept for all images so tables can be regrouped later.

:class:`ProbeAccumulator` reads batches of the shared forward pass (:mod:`ablate.analysis.forward`),
so :func:`ablate.analysis.analyse` probes and intervenes on the same pass; :func:`probe` is the
same thing on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ablate.analysis.common import check_images, default_classes, upsample_maps
from ablate.analysis.forward import Batch, shared_forward
from ablate.analysis.masks import (
    MaskStage,
    gain_map,
    image_stats,
    is_attention_map,
    mask_stages,
    reduce_mask,
)
from resmasknet.model import ResMaskNet

__all__ = ["ProbeAccumulator", "ProbeResult", "probe"]


@dataclass
class ProbeResult:
    """Everything the probe measured; plain numpy and pandas so it pickles and saves.

    maps[maskN][name]: per-image maps [k, h, w] for the first ``k = len(kept)`` images, names =
    the stage's reductions plus ``gain``. class_mean_maps / mean_maps: per-class [K, h, w] and
    global [h, w] means of the same maps (classes grouped by the *true* label). class_mean_masks:
    the full per-class mean mask [K, C, h, w], used by the ``class_mean`` intervention.
    image_stats: one row per (image, stage) with the per-image statistics.
    """

    stages: list[MaskStage]
    classes: tuple[str, ...]
    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray
    image_stats: pd.DataFrame
    kept: np.ndarray
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_mean_maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    mean_maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    class_mean_masks: dict[str, np.ndarray] = field(default_factory=dict)
    mean_masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.labels).mean()) if self.n else float("nan")

    def stage(self, name_or_index: str | int) -> MaskStage:
        for st in self.stages:
            if st.name == name_or_index or st.stage == name_or_index:
                return st
        raise KeyError(f"no mask stage {name_or_index!r}; stages with masks: {[s.name for s in self.stages]}")

    def class_diff_maps(self) -> dict[str, dict[str, np.ndarray]]:
        """Per-class mean minus global mean, {maskN: {map: [K, h, w]}}: where a class's mask differs
        from the average mask (signed; NaN for classes with no images)."""
        return {s: {k: v - self.mean_maps[s][k][None] for k, v in d.items()} for s, d in self.class_mean_maps.items()}

    def primary_maps(self, size: int | None = 48) -> dict[str, np.ndarray]:
        """{"maskN/<primary>": [k, size, size]}: the one map per stage used by faithfulness and
        localisation, upsampled bilinearly to the face (native resolution when size is None)."""
        out = {}
        for st in self.stages:
            a = self.maps[st.name][st.primary]
            out[f"{st.name}/{st.primary}"] = a if size is None else upsample_maps(a, size)
        return out

    def all_maps(self, size: int | None = 48, *, attention_only: bool = True) -> dict[str, np.ndarray]:
        """Every kept map as {"maskN/<map>": [k, size, size]} (reductions and gain). With
        ``attention_only`` (the default) only maps that read "larger = attended more": raw channel
        entropy, the mirror of KL, is left out (see :mod:`ablate.analysis.masks`)."""
        out = {}
        for st in self.stages:
            for name, a in self.maps[st.name].items():
                if attention_only and not is_attention_map(name):
                    continue
                out[f"{st.name}/{name}"] = a if size is None else upsample_maps(a, size)
        return out

    def stage_table(self) -> pd.DataFrame:
        """One row per stage: the stage's description and every statistic averaged over images
        (columns that do not apply to the activation, such as ``kl_mean`` for sigmoid, are NaN)."""
        if self.image_stats.empty:
            return pd.DataFrame()
        stats = self._stat_columns()
        agg = self.image_stats.groupby("stage", sort=True)[stats].mean()
        agg.insert(0, "n", self.image_stats.groupby("stage").size())
        meta = pd.DataFrame([_stage_meta(s) for s in self.stages]).set_index("stage")
        return meta.join(agg).reset_index()

    def class_table(self) -> pd.DataFrame:
        """One row per (stage, true class): the same statistics as ``stage_table`` per class, plus
        the class's accuracy, so a reader can see whether a class's mask is also a class the model gets
        right."""
        if self.image_stats.empty:
            return pd.DataFrame()
        df = self.image_stats.assign(correct=(self.image_stats["pred"] == self.image_stats["label"]).astype(float))
        stats = self._stat_columns()
        g = df.groupby(["stage", "label"], sort=True)
        agg = g[stats].mean()
        agg.insert(0, "accuracy", g["correct"].mean())
        agg.insert(0, "n", g.size())
        agg = agg.reset_index()
        agg.insert(2, "class", [self.classes[i] if 0 <= i < len(self.classes) else str(i) for i in agg["label"]])
        mask_names = {s.stage: s.name for s in self.stages}
        agg.insert(1, "mask", agg["stage"].map(mask_names))
        return agg

    def _stat_columns(self) -> list[str]:
        skip = {"index", "stage", "label", "pred"}
        return [c for c in self.image_stats.columns if c not in skip]


def _stage_meta(st: MaskStage) -> dict[str, Any]:
    return {"stage": st.stage, "mask": st.name, "activation": st.activation, "application": st.application,
            "applied": st.applied, "channels": st.channels, "size": st.size, "primary": st.primary}


class ProbeAccumulator:
    """Accumulates the probe's statistics, maps and class means from batches of the shared pass.

    ``update(batch)`` per batch (in order, covering all N faces), then ``result()``."""

    def __init__(self, model: ResMaskNet, labels: np.ndarray, *, keep_maps: bool = True, max_keep: int = 256,
                 keep_class_masks: bool = True, classes: Sequence[str] | None = None):
        self.stages = mask_stages(model)
        self.k = int(model.config.num_classes)
        self.classes = tuple(classes) if classes is not None else default_classes(self.k)
        self.labels = np.asarray(labels, np.int64)
        n = self.labels.shape[0]
        self.n_keep = min(n, max_keep) if keep_maps else 0
        self.keep_class_masks = keep_class_masks
        self.preds = np.empty(n, np.int64)
        self.probs = np.empty((n, self.k), np.float32)
        self.rows: dict[str, list[np.ndarray]] = {}
        self.kept: dict[str, dict[str, np.ndarray]] = {}
        self.sums: dict[str, dict[str, np.ndarray]] = {}
        self.mask_sums: dict[str, np.ndarray] = {}
        self.counts = np.zeros(self.k, np.int64)

    def update(self, batch: Batch) -> None:
        sl, taps, k = batch.sl, batch.taps, self.k
        p = torch.softmax(batch.logits.float(), dim=1)
        self.preds[sl] = p.argmax(dim=1).cpu().numpy()
        self.probs[sl] = p.cpu().numpy()
        lab = torch.from_numpy(self.labels[sl]).to(p.device)
        b = lab.shape[0]
        valid = (lab >= 0) & (lab < k)
        onehot = F.one_hot(lab.clamp(0, k - 1), k).float() * valid[:, None].float()
        self.counts += onehot.sum(0).long().cpu().numpy()
        base_cols = {"index": np.arange(sl.start, sl.stop), "label": self.labels[sl], "pred": self.preds[sl]}
        for st in self.stages:
            xs, m, refined = taps[f"layer{st.stage}"], taps[st.name], taps[f"refine{st.stage}"]
            reduced = reduce_mask(m, st.activation)
            gain = gain_map(xs, m, st.application)
            stats = image_stats(xs, m, refined, st, reduced, gain)
            cols: dict[str, Any] = dict(base_cols, stage=np.full(b, st.stage))
            cols.update({key: v.cpu().numpy().astype(np.float64) for key, v in stats.items()})
            for key, v in cols.items():
                self.rows.setdefault(key, []).append(np.asarray(v))
            maps = dict(reduced, gain=gain)
            # running per-class sums of the maps (float64 on the CPU: exact enough for 1e5 images)
            ssum = self.sums.setdefault(st.name, {})
            for name, mp in maps.items():
                acc = torch.einsum("bk,bhw->khw", onehot, mp.float()).double().cpu().numpy()
                ssum[name] = ssum.get(name, 0.0) + acc
            if self.keep_class_masks:
                acc = torch.einsum("bk,bchw->kchw", onehot, m.float()).double().cpu().numpy()
                self.mask_sums[st.name] = self.mask_sums.get(st.name, 0.0) + acc
            if sl.start < self.n_keep:
                take = min(sl.stop, self.n_keep) - sl.start
                dest = self.kept.setdefault(st.name, {})
                for name, mp in maps.items():
                    if name not in dest:
                        dest[name] = np.empty((self.n_keep, *mp.shape[1:]), np.float32)
                    dest[name][sl.start:sl.start + take] = mp[:take].float().cpu().numpy()

    def result(self) -> ProbeResult:
        rows, counts = self.rows, self.counts
        image_stats_df = pd.DataFrame({key: np.concatenate(v) for key, v in rows.items()}) if rows else pd.DataFrame(
            columns=["index", "label", "pred", "stage"])
        if not image_stats_df.empty:
            image_stats_df = image_stats_df.sort_values(["stage", "index"], kind="stable").reset_index(drop=True)
        total = max(int(counts.sum()), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            denom = counts.astype(np.float64)
            class_mean_maps = {s: {key: (v / denom[:, None, None]).astype(np.float32) for key, v in d.items()}
                               for s, d in self.sums.items()}
            mean_maps = {s: {key: (v.sum(0) / total).astype(np.float32) for key, v in d.items()}
                         for s, d in self.sums.items()}
            class_mean_masks = {s: (v / denom[:, None, None, None]).astype(np.float32)
                                for s, v in self.mask_sums.items()}
            mean_masks = {s: (v.sum(0) / total).astype(np.float32) for s, v in self.mask_sums.items()}
        return ProbeResult(
            stages=self.stages, classes=self.classes, labels=self.labels, preds=self.preds, probs=self.probs,
            image_stats=image_stats_df, kept=np.arange(self.n_keep), maps=self.kept, class_counts=counts,
            class_mean_maps=class_mean_maps, mean_maps=mean_maps, class_mean_masks=class_mean_masks,
            mean_masks=mean_masks,
        )


def probe(
    model: ResMaskNet,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    keep_maps: bool = True,
    max_keep: int = 256,
    keep_class_masks: bool = True,
    classes: Sequence[str] | None = None,
    progress: bool = False,
) -> ProbeResult:
    """Run ``model`` over uint8 faces [N, H, W] and measure every stage's mask.

    Returns a ``ProbeResult`` with per-image statistics (all images), per-image maps for the first
    ``max_keep`` images (``keep_maps``), per-class mean maps and per-class mean full masks
    (``keep_class_masks``; needed for the ``class_mean`` intervention). Memory is bounded by
    ``batch_size`` and ``max_keep``, not by N. Classes are grouped by the true ``labels``.
    """
    images, labels_arr = check_images(images, labels)
    assert labels_arr is not None
    acc = ProbeAccumulator(model, labels_arr, keep_maps=keep_maps, max_keep=max_keep,
                           keep_class_masks=keep_class_masks, classes=classes)
    shared_forward(model, images, labels_arr, [acc], batch_size=batch_size, device=device, progress=progress,
                   desc="probe")
    return acc.result()
