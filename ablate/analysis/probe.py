"""Probing the masks: what each stage's mask looks like, per image, per class and over a data set.

Why the reductions are what they are
------------------------------------
The paper's mask is ``softmax(x, dim=1)``: at every pixel the C channel values sum to 1, so the
channel mean is the constant 1/C and a "mean mask" heat map shows nothing. What can vary from
pixel to pixel is how *peaked* the softmax is, so for softmax masks we reduce over channels with

* ``max``      the largest channel weight (1/C when uniform, 1 when one channel takes everything),
* ``entropy``  the channel entropy divided by log C (1 when uniform, 0 when one-hot),
* ``kl``       KL(mask || uniform) = log C - entropy, in nats (0 when uniform).

Sigmoid, tanh and spatial-softmax masks are not normalised over channels, so their channel ``mean``
and ``max`` are meaningful. For every mask, the *effective gain* ``||x(1+m)||_2 / ||x||_2`` over
channels at each pixel (``||x m|| / ||x||`` for ``multiply``) says how much the mask actually
changes the feature vector there, which is what matters downstream. For ``unapplied`` masks
(the parameter-matched control) the gain is what the residual application *would* give; the
stage is flagged ``applied=False`` so nobody reads it as an effect.

Memory stays bounded for thousands of images: per-image maps are kept for the first ``max_keep``
images only; per-class means are running sums; per-image scalar statistics (a few floats per image
and stage) are kept for all images so tables can be regrouped later.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from resmasknet.model import ResMaskNet

__all__ = [
    "MaskStage",
    "ProbeResult",
    "REDUCTIONS",
    "default_classes",
    "eval_mode",
    "gain_map",
    "gini",
    "mask_stages",
    "primary_reduction",
    "probe",
    "reduce_mask",
    "relative_change",
    "resolve_device",
    "spatial_entropy",
    "upsample_maps",
]

#: The channel reductions computed for each mask activation (see the module docstring).
REDUCTIONS: dict[str, tuple[str, ...]] = {
    "softmax": ("max", "entropy", "kl"),
    "sigmoid": ("mean", "max"),
    "tanh": ("mean", "max"),
    "spatial_softmax": ("mean", "max"),
}

_FER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
_EPS = 1e-8
SATURATION_HIGH = 0.99
SATURATION_LOW = 0.01


# ---------------------------------------------------------------------------------------------
# small shared helpers (used by the other analysis modules too)
# ---------------------------------------------------------------------------------------------
def default_classes(num_classes: int) -> tuple[str, ...]:
    """FER2013's class names when there are 7 classes, else ``class0..``: tables need names."""
    try:  # the data layer is the source of truth when it is installed
        from resmasknet.data import CLASSES as data_classes

        if len(data_classes) == num_classes:
            return tuple(data_classes)
    except ImportError:
        pass
    if num_classes == len(_FER_CLASSES):
        return _FER_CLASSES
    return tuple(f"class{i}" for i in range(num_classes))


def resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run on: the model's own when ``device`` is None, else ``device`` (the model is
    moved there, because every analysis needs model and inputs on one device)."""
    current = next(model.parameters()).device
    if device is None:
        return current
    dev = torch.device(device)
    if dev != current:
        model.to(dev)
    return dev


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run in eval mode (BatchNorm running statistics, no dropout) and restore the previous mode:
    analyses must be deterministic and must not leave a training model switched to eval."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """Hold the weights in channels_last (the layout ``prepare_input`` gives the faces; a third faster on
    CPU than mixing layouts) and restore the previous layout afterwards. Values are unchanged."""
    conv = next((m.weight for m in model.modules()  # a weight whose two layouts differ (C > 1, k > 1)
                 if isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[2:].numel() > 1), None)
    was_cl = conv is None or (conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous())
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if not was_cl:
            model.to(memory_format=torch.contiguous_format)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices covering ``range(n)``: every analysis runs batched to bound memory."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [slice(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def check_images(images: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 faces [N, H, W] and int64 labels [N]; errors name the problem (wrong dtype or shape
    would otherwise surface deep inside torch)."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be uint8 [N, H, W], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0-255 grey faces), got {images.dtype}")
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    return images, labels


def faces_to_float(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 [B, H, W] -> float [B, 1, H, W] in [0, 1]: the face space attributions live in."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).unsqueeze(1).float() / 255.0


def upsample_maps(maps: np.ndarray | Tensor, size: int = 48, mode: str = "bilinear") -> np.ndarray:
    """Maps [N, h, w] -> float32 [N, size, size] (bilinear by default): mask reductions live at the
    stage's native resolution; comparing them with pixel attributions needs the face's grid."""
    t = torch.as_tensor(np.asarray(maps) if not isinstance(maps, Tensor) else maps).float()
    if t.ndim != 3:
        raise ValueError(f"maps must be [N, h, w], got shape {tuple(t.shape)}")
    if t.shape[-1] == size and t.shape[-2] == size:
        return t.cpu().numpy().astype(np.float32, copy=False)
    kw: dict[str, Any] = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(t.unsqueeze(1), size=(size, size), mode=mode, **kw).squeeze(1)
    return out.cpu().numpy().astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------
# which stages have masks
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskStage:
    """One stage with a mask: what it is and how it is applied."""

    stage: int  # 1-based
    activation: str
    application: str
    channels: int
    size: int  # the stage's spatial size (square)

    @property
    def name(self) -> str:
        """The tap / module name, ``maskN``."""
        return f"mask{self.stage}"

    @property
    def applied(self) -> bool:
        """False for the ``unapplied`` control: its mask runs but never touches the features."""
        return self.application != "unapplied"

    @property
    def reductions(self) -> tuple[str, ...]:
        return REDUCTIONS[self.activation]

    @property
    def primary(self) -> str:
        return primary_reduction(self.activation)


def primary_reduction(activation: str) -> str:
    """The one reduction used where a single map per stage is needed (galleries, deletion curves,
    spatial entropy): ``max`` for softmax (the peak weight), ``mean`` otherwise."""
    return "max" if activation == "softmax" else "mean"


def mask_stages(model: ResMaskNet) -> list[MaskStage]:
    """The stages of ``model`` that have a mask module (disabled masks have none)."""
    cfg = model.config
    out = []
    for i, mc in enumerate(cfg.masks):
        if mc.enabled and getattr(model, f"mask{i + 1}", None) is not None:
            out.append(MaskStage(i + 1, mc.activation, mc.application, cfg.stage_channels[i], cfg.stage_sizes[i]))
    return out


# ---------------------------------------------------------------------------------------------
# reductions and statistics on tensors
# ---------------------------------------------------------------------------------------------
def reduce_mask(m: Tensor, activation: str) -> dict[str, Tensor]:
    """Channel reductions of a mask [B, C, H, W] -> {name: [B, H, W]} (see ``REDUCTIONS``).

    For softmax masks the channel mean is the constant 1/C, so it is not offered; the entropy is
    normalised by log C so stages with different widths are comparable.
    """
    if activation not in REDUCTIONS:
        raise ValueError(f"unknown mask activation {activation!r}; known: {', '.join(REDUCTIONS)}")
    m = m.float()
    if activation == "softmax":
        c = m.shape[1]
        ent = -torch.xlogy(m, m).sum(dim=1)  # 0 log 0 = 0
        log_c = math.log(c)
        return {"max": m.amax(dim=1), "entropy": ent / log_c, "kl": (log_c - ent).clamp_min(0.0)}
    return {"mean": m.mean(dim=1), "max": m.amax(dim=1)}


def gain_map(x: Tensor, m: Tensor, application: str) -> Tensor:
    """Effective gain per pixel, [B, H, W]: ``||x(1+m)|| / ||x||`` over channels (``||x m|| / ||x||``
    for ``multiply``; the residual formula for ``unapplied``: what it would be if applied).

    Where ``||x|| = 0`` (every channel zero after the ReLU) the gain is defined as 1: no features,
    nothing changed.
    """
    x = x.float()
    m = m.float()
    nx = torch.linalg.vector_norm(x, dim=1)
    y = x * m if application == "multiply" else x * (1 + m)
    ny = torch.linalg.vector_norm(y, dim=1)
    return torch.where(nx > _EPS, ny / nx.clamp_min(_EPS), torch.ones_like(nx))


def relative_change(before: Tensor, after: Tensor) -> Tensor:
    """Per image ``||after - before|| / ||before||`` over all of C, H, W: how much a stage's mask
    changes the features it passes on (0 for unapplied masks)."""
    b = before.float().flatten(1)
    d = (after.float().flatten(1) - b).norm(dim=1)
    return d / b.norm(dim=1).clamp_min(_EPS)


def spatial_entropy(maps: Tensor) -> Tensor:
    """Entropy of each map [B, H, W] normalised to a distribution over pixels, divided by
    log(H*W): 1 for a flat map, 0 for a single hot pixel. Negative values are clipped to 0; an
    all-zero map gives NaN (no distribution)."""
    p = maps.float().clamp_min(0).flatten(1)
    s = p.sum(dim=1, keepdim=True)
    p = p / s.clamp_min(1e-30)
    h = -torch.xlogy(p, p).sum(dim=1) / math.log(p.shape[1])
    return torch.where(s.squeeze(1) > 0, h, torch.full_like(h, float("nan")))


def gini(maps: Tensor) -> Tensor:
    """Gini coefficient of each map's pixel values [B, H, W] -> [B]: 0 when every pixel is equal,
    near 1 when one pixel holds everything (a sparsity measure that needs no threshold).
    Negative values are clipped to 0; an all-zero map gives NaN."""
    v = maps.float().clamp_min(0).flatten(1)
    v, _ = torch.sort(v, dim=1)
    n = v.shape[1]
    idx = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    s = v.sum(dim=1)
    g = (2 * (v * idx).sum(dim=1)) / (n * s.clamp_min(1e-30)) - (n + 1) / n
    return torch.where(s > 0, g, torch.full_like(g, float("nan")))


def sparsity_threshold(activation: str, channels: int) -> float:
    """The value below which a mask entry counts as "off" for the sparsity fraction: a tenth of
    the uniform value (0.1/C) for softmax, 0.1 for spatial softmax (whose mean is 1), 0.01 for
    sigmoid and tanh (in absolute value)."""
    if activation == "softmax":
        return 0.1 / channels
    if activation == "spatial_softmax":
        return 0.1
    return SATURATION_LOW


def _image_stats(x: Tensor, m: Tensor, refined: Tensor, st: MaskStage,
                 reduced: dict[str, Tensor], gain: Tensor) -> dict[str, Tensor]:
    """Per-image scalar statistics for one stage; each value is [B]."""
    b = m.shape[0]
    mf = m.float().reshape(b, -1)
    a = mf.abs() if st.activation == "tanh" else mf
    out: dict[str, Tensor] = {
        "mask_mean": mf.mean(dim=1),
        "mask_std": mf.std(dim=1),
    }
    for name, r in reduced.items():
        out[f"{name}_mean"] = r.flatten(1).mean(dim=1)
    prim = reduced[st.primary]
    out["spatial_entropy"] = spatial_entropy(prim)
    out["gini"] = gini(prim)
    out["sparsity"] = (a < sparsity_threshold(st.activation, st.channels)).float().mean(dim=1)
    out["sat_high"] = (a > SATURATION_HIGH).float().mean(dim=1)
    out["sat_low"] = (a < SATURATION_LOW).float().mean(dim=1)
    out["saturation"] = out["sat_high"] + out["sat_low"]
    out["gain_mean"] = gain.flatten(1).mean(dim=1)
    out["gain_max"] = gain.flatten(1).amax(dim=1)
    out["rel_change"] = relative_change(x, refined)
    would = x.float() * (m.float() - 1 if st.application == "multiply" else m.float())
    out["rel_change_if_applied"] = would.flatten(1).norm(dim=1) / x.float().flatten(1).norm(dim=1).clamp_min(_EPS)
    return out


# ---------------------------------------------------------------------------------------------
# the probe
# ---------------------------------------------------------------------------------------------
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

    def all_maps(self, size: int | None = 48) -> dict[str, np.ndarray]:
        """Every kept map as {"maskN/<map>": [k, size, size]} (reductions and gain)."""
        out = {}
        for st in self.stages:
            for name, a in self.maps[st.name].items():
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
    ``batch_size`` and ``max_keep``, not by N.
    """
    images, labels_arr = check_images(images, labels)
    assert labels_arr is not None
    dev = resolve_device(model, device)
    stages = mask_stages(model)
    k_classes = int(model.config.num_classes)
    classes = tuple(classes) if classes is not None else default_classes(k_classes)
    n = images.shape[0]
    n_keep = min(n, max_keep) if keep_maps else 0

    preds = np.empty(n, np.int64)
    probs = np.empty((n, k_classes), np.float32)
    rows: dict[str, list[np.ndarray]] = {}
    kept: dict[str, dict[str, np.ndarray]] = {}
    sums: dict[str, dict[str, np.ndarray]] = {}
    mask_sums: dict[str, np.ndarray] = {}
    counts = np.zeros(k_classes, np.int64)

    with eval_mode(model), torch.inference_mode():
        for sl in tqdm(batch_slices(n, batch_size), desc="probe", disable=not progress, leave=False):
            x = model.prepare_input(torch.from_numpy(images[sl]).to(dev))
            logits, taps = model.forward_taps(x)
            lab = torch.from_numpy(labels_arr[sl]).to(dev)
            p = torch.softmax(logits.float(), dim=1)
            preds[sl] = p.argmax(dim=1).cpu().numpy()
            probs[sl] = p.cpu().numpy()
            b = lab.shape[0]
            valid = (lab >= 0) & (lab < k_classes)
            onehot = F.one_hot(lab.clamp(0, k_classes - 1), k_classes).float() * valid[:, None].float()
            counts += onehot.sum(0).long().cpu().numpy()
            base_cols = {"index": np.arange(sl.start, sl.stop), "label": labels_arr[sl], "pred": preds[sl]}
            for st in stages:
                xs, m, refined = taps[f"layer{st.stage}"], taps[st.name], taps[f"refine{st.stage}"]
                reduced = reduce_mask(m, st.activation)
                gain = gain_map(xs, m, st.application)
                stats = _image_stats(xs, m, refined, st, reduced, gain)
                cols = dict(base_cols, stage=np.full(b, st.stage))
                cols.update({k: v.cpu().numpy().astype(np.float64) for k, v in stats.items()})
                for k, v in cols.items():
                    rows.setdefault(k, []).append(np.asarray(v))
                maps = dict(reduced, gain=gain)
                # running per-class sums of the maps (float64 on the CPU: exact enough for 1e5 images)
                ssum = sums.setdefault(st.name, {})
                for name, mp in maps.items():
                    acc = torch.einsum("bk,bhw->khw", onehot, mp.float()).double().cpu().numpy()
                    ssum[name] = ssum.get(name, 0.0) + acc
                if keep_class_masks:
                    acc = torch.einsum("bk,bchw->kchw", onehot, m.float()).double().cpu().numpy()
                    mask_sums[st.name] = mask_sums.get(st.name, 0.0) + acc
                if sl.start < n_keep:
                    take = min(sl.stop, n_keep) - sl.start
                    dest = kept.setdefault(st.name, {})
                    for name, mp in maps.items():
                        if name not in dest:
                            dest[name] = np.empty((n_keep, *mp.shape[1:]), np.float32)
                        dest[name][sl.start:sl.start + take] = mp[:take].float().cpu().numpy()

    image_stats = pd.DataFrame({k: np.concatenate(v) for k, v in rows.items()}) if rows else pd.DataFrame(
        columns=["index", "label", "pred", "stage"])
    if not image_stats.empty:
        image_stats = image_stats.sort_values(["stage", "index"], kind="stable").reset_index(drop=True)
    total = max(int(counts.sum()), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = counts.astype(np.float64)
        class_mean_maps = {s: {k: (v / denom[:, None, None]).astype(np.float32) for k, v in d.items()}
                           for s, d in sums.items()}
        mean_maps = {s: {k: (v.sum(0) / total).astype(np.float32) for k, v in d.items()} for s, d in sums.items()}
        class_mean_masks = {s: (v / denom[:, None, None, None]).astype(np.float32) for s, v in mask_sums.items()}
        mean_masks = {s: (v.sum(0) / total).astype(np.float32) for s, v in mask_sums.items()}
    return ProbeResult(
        stages=stages, classes=classes, labels=labels_arr, preds=preds, probs=probs, image_stats=image_stats,
        kept=np.arange(n_keep), maps=kept, class_counts=counts, class_mean_maps=class_mean_maps,
        mean_maps=mean_maps, class_mean_masks=class_mean_masks, mean_masks=mean_masks,
    )
