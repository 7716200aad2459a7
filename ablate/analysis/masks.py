"""Which stages have masks, and the per-pixel reductions and statistics of a mask tensor.

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
changes the feature vector there, which is what matters downstream.

Orientation
-----------
Anything that compares a mask map with attributions or ground truth (agreement, deletion curves,
localisation, sanity checks) reads a map as "larger = looked at more". ``entropy`` is the opposite
(larger = flatter = attended *less*) and is the exact mirror of ``kl`` (KL = log C - entropy,
Spearman -1), so it is kept as a descriptive statistic and for galleries but never used as a
saliency map: :data:`ORIENTATION` says what "higher" means for each map and :func:`is_attention_map`
picks the maps that may be scored. ``max`` never falls below 1/C: scores that depend on the map's
level (mass) subtract each image's minimum first (see ``localisation``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from resmasknet.model import ResMaskNet

__all__ = [
    "ATTENDED",
    "ORIENTATION",
    "REDUCTIONS",
    "MaskStage",
    "gain_map",
    "gini",
    "image_stats",
    "is_attention_map",
    "mask_stages",
    "orientation",
    "primary_reduction",
    "reduce_mask",
    "relative_change",
    "sparsity_threshold",
    "spatial_entropy",
]

#: The channel reductions computed for each mask activation (see the module docstring).
REDUCTIONS: dict[str, tuple[str, ...]] = {
    "softmax": ("max", "entropy", "kl"),
    "sigmoid": ("mean", "max"),
    "tanh": ("mean", "max"),
    "spatial_softmax": ("mean", "max"),
}

#: The orientation every scored map has: the phrase tables carry in their ``orientation`` column.
ATTENDED = "higher = attended more"

#: What "higher" means for each per-pixel mask map the probe keeps.
ORIENTATION: dict[str, str] = {
    "max": ATTENDED + " (peakier channel softmax)",
    "kl": ATTENDED + " (further from the uniform channel mix)",
    "mean": ATTENDED,
    "gain": ATTENDED + " (features amplified more)",
    "entropy": "higher = attended LESS (flatter); descriptive only, never scored as attention",
}

_EPS = 1e-8
SATURATION_HIGH = 0.99
SATURATION_LOW = 0.01


def is_attention_map(name: str) -> bool:
    """Whether a mask map (``"entropy"`` or ``"mask3/entropy"``) reads "larger = attended more", so
    it may be scored as a saliency map. Raw channel entropy is not."""
    return name.rsplit("/", 1)[-1] != "entropy"


def orientation(name: str) -> str:
    """The orientation note of any map key: mask maps from :data:`ORIENTATION`; attributions
    (absolute values, ReLU GradCAM) and baselines are all "larger = more"."""
    base = name.rsplit("/", 1)[-1]
    if name.startswith("mask") and "/" in name and base in ORIENTATION:
        return ORIENTATION[base]
    return ATTENDED

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


def image_stats(x: Tensor, m: Tensor, refined: Tensor, st: MaskStage,
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
