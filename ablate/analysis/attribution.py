"""Captum attributions on the 48-px face, for every stage and every mask.

Why a wrapper
-------------
Attributions must live on the face the user sees (48x48 grey), not on the network's input (224x224
RGB for the paper presets). ``FaceModel`` takes a float face [B, 1, 48, 48] in [0, 1] and calls
``model.prepare_input`` inside the graph, so the resize and the grey->RGB copy are differentiated
through and every input attribution is a [48, 48] map.

Conventions of the returned maps (all numpy float32):

* input methods (``ig``, ``saliency``, ``smoothgrad``, ``occlusion``, ``deeplift``): the absolute
  value summed over the input channel, [N, 48, 48] (non-negative; the signed sums are in ``raw``);
* ``gradcam/refineN`` (or ``layerN``): LayerGradCam with ReLU, upsampled bilinearly to 48x48
  (native-resolution maps in ``native``);
* ``mask_attr/maskN``: attribution to the mask's output (gradient x activation by default, or layer
  integrated gradients), summed over channels in absolute value and upsampled; the signed channel
  sum at native resolution is in ``native``. An ``unapplied`` mask has zero attribution by
  construction (nothing downstream depends on it): it is not run through Captum (whose gradient
  with respect to an unused tensor is an error), the map is exactly 0 and ``notes`` says why.

The explained class of every face is in ``targets`` (the prediction by default); deletion curves
and sanity checks score that class. Predictions come from the caller when it has them (the shared
forward pass of :func:`ablate.analysis.analyse`) and from ``resmasknet.evaluate.predict`` otherwise.

Captum traps handled here: ``model.eval()`` (via ``eval_mode``), IG memory bounded with
``internal_batch_size``, no ``torch.inference_mode`` around anything that needs gradients, and
``reused_modules`` to find modules called twice in one forward pass (DeepLift and GuidedGradCam
need each non-linearity module to be used once).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ablate.analysis.common import (
    batch_slices,
    check_images,
    eval_mode,
    faces_to_float,
    model_device,
    predict_classes,
    upsample_maps,
)
from ablate.analysis.masks import ATTENDED, mask_stages
from resmasknet.model import ResMaskNet

__all__ = [
    "AttributionResult",
    "DEFAULT_METHODS",
    "FaceModel",
    "INPUT_METHODS",
    "LAYER_METHODS",
    "attribute",
    "baseline_faces",
    "input_attribution",
    "UNAPPLIED_NOTE",
    "layer_attribution",
    "resolve_targets",
    "reused_modules",
]

INPUT_METHODS = ("ig", "saliency", "smoothgrad", "occlusion", "deeplift")
LAYER_METHODS = ("gradcam", "mask_attr")
DEFAULT_METHODS = ("ig", "saliency", "occlusion", "gradcam", "mask_attr")

#: The note every result carries for an attribution that is zero because the mask is not applied.
UNAPPLIED_NOTE = "mask not applied: attribution zero by construction"


class FaceModel(nn.Module):
    """float faces [B, 1, H, W] in [0, 1] -> logits, with ``prepare_input`` inside the graph so that
    attributions are taken with respect to the 48-px face (see the module docstring)."""

    def __init__(self, model: ResMaskNet):
        super().__init__()
        self.model = model

    def forward(self, faces: Tensor) -> Tensor:
        return self.model(self.model.prepare_input(faces))


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [B, 1, H, W] with reflect padding, on the input's device."""
    radius = max(1, int(round(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1))


def baseline_faces(x: Tensor, kind: str = "black", *, blur_sigma: float = 4.0) -> Tensor:
    """A reference face for IG, occlusion and deletion curves, same shape as ``x`` [B, 1, H, W]:
    ``black`` (0), ``grey`` (0.5), ``mean`` (each face's own mean grey: keeps brightness, removes
    structure), ``blur`` (Gaussian blur, sigma in pixels: removes fine evidence, keeps the face's
    layout, so the network sees a less out-of-distribution input than a flat grey)."""
    if kind == "black":
        return torch.zeros_like(x)
    if kind == "grey":
        return torch.full_like(x, 0.5)
    if kind == "mean":
        return x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x).contiguous()
    if kind == "blur":
        return _gaussian_blur(x, blur_sigma)
    raise ValueError(f"unknown baseline {kind!r}; choose 'black', 'grey', 'mean' or 'blur'")


def input_attribution(fm: FaceModel, x: Tensor, target: Tensor, method: str, *,
                      ig_steps: int = 32, internal_batch_size: int = 64, baseline: str = "black",
                      smoothgrad_samples: int = 16, smoothgrad_stdev: float = 0.15,
                      occlusion_window: int = 8, occlusion_stride: int = 5,
                      occlusion_baseline: str = "mean", perturbations_per_eval: int | None = None,
                      ) -> tuple[Tensor, Tensor | None]:
    """One Captum input method on float faces [B, 1, H, W]; returns the raw (signed where the method
    is signed) attribution [B, 1, H, W] and, for IG and DeepLift, the convergence delta [B]
    (sum of attributions minus F(x) - F(baseline): completeness)."""
    from captum.attr import DeepLift, IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    # gradient methods need x to require gradients (Captum sets it itself, with a warning per call)
    x = x.detach().requires_grad_(method != "occlusion")
    if method == "ig":
        attr, delta = IntegratedGradients(fm).attribute(
            x, baselines=baseline_faces(x, baseline), target=target, n_steps=ig_steps,
            internal_batch_size=internal_batch_size, return_convergence_delta=True)
        return attr.detach(), delta.detach()
    if method == "saliency":
        return Saliency(fm).attribute(x, target=target, abs=True).detach(), None
    if method == "smoothgrad":
        nt = NoiseTunnel(Saliency(fm))
        attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=smoothgrad_samples,
                            nt_samples_batch_size=max(1, internal_batch_size // max(1, x.shape[0])),
                            stdevs=smoothgrad_stdev, target=target, abs=True)
        return attr.detach(), None
    if method == "occlusion":
        ppe = perturbations_per_eval or max(1, 256 // max(1, x.shape[0]))
        attr = Occlusion(fm).attribute(
            x, sliding_window_shapes=(1, occlusion_window, occlusion_window),
            strides=(1, occlusion_stride, occlusion_stride), baselines=baseline_faces(x, occlusion_baseline),
            target=target, perturbations_per_eval=ppe)
        return attr.detach(), None
    if method == "deeplift":
        attr, delta = DeepLift(fm).attribute(x, baselines=baseline_faces(x, baseline), target=target,
                                             return_convergence_delta=True)
        return attr.detach(), delta.detach()
    raise ValueError(f"unknown input method {method!r}; choose from {INPUT_METHODS}")


def layer_attribution(fm: FaceModel, layer: nn.Module, x: Tensor, target: Tensor, kind: str, *,
                      ig_steps: int = 32, internal_batch_size: int = 64, baseline: str = "black") -> Tensor:
    """A layer attribution at native resolution.

    kind ``gradcam``: LayerGradCam with ReLU -> [B, h, w] (non-negative). ``gxa``: gradient x
    activation of the layer output, ``lig``: layer integrated gradients; both -> [B, C, h, w]
    (signed, per channel; the caller reduces over channels).
    """
    from captum.attr import LayerGradCam, LayerGradientXActivation, LayerIntegratedGradients

    x = x.detach()
    if kind == "gradcam":
        a = LayerGradCam(fm, layer).attribute(x, target=target, relu_attributions=True)
        return a.detach().squeeze(1)
    if kind == "gxa":
        return LayerGradientXActivation(fm, layer).attribute(x, target=target).detach()
    if kind == "lig":
        return LayerIntegratedGradients(fm, layer).attribute(
            x, baselines=baseline_faces(x, baseline), target=target, n_steps=ig_steps,
            internal_batch_size=internal_batch_size).detach()
    raise ValueError(f"unknown layer attribution {kind!r}; choose 'gradcam', 'gxa' or 'lig'")


def reused_modules(model: nn.Module, example: Tensor, types: tuple[type, ...] | None = None) -> list[str]:
    """Names of leaf modules that run more than once in one forward pass of ``example`` (optionally
    only of ``types``). DeepLift and GuidedGradCam store per-module state in hooks, so any
    non-linearity reused this way (a shared ReLU, or a shared MaxPool2d) breaks them."""
    calls: dict[str, int] = {}
    handles = []
    for name, mod in model.named_modules():
        if len(list(mod.children())) == 0 and (types is None or isinstance(mod, types)):
            def hook(_m: nn.Module, _i: Any, _o: Any, name: str = name) -> None:
                calls[name] = calls.get(name, 0) + 1
            handles.append(mod.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.inference_mode():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return sorted(k for k, v in calls.items() if v > 1)


@dataclass
class AttributionResult:
    """Attribution maps for N faces (see the module docstring for each key's convention)."""

    maps: dict[str, np.ndarray]
    native: dict[str, np.ndarray] = field(default_factory=dict)
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    preds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    labels: np.ndarray | None = None
    deltas: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def zero_by_construction(self) -> list[str]:
        """Maps that are exactly 0 because their mask is not applied (see ``notes``)."""
        return [k for k, v in self.notes.items() if v == UNAPPLIED_NOTE]

    def table(self) -> pd.DataFrame:
        """One row per map: mean and 99th percentile of the map, the fraction of finite values,
        the seconds it took, for IG/DeepLift the mean |convergence delta| (completeness error), the
        orientation, ``zero_by_construction`` and a ``note`` (e.g. an unapplied mask's)."""
        rows = []
        for key, a in self.maps.items():
            method = key.split("/")[0]
            fin = np.isfinite(a)
            d = self.deltas.get(key)
            rows.append({
                "map": key, "method": method, "n": a.shape[0], "shape": "x".join(map(str, a.shape[1:])),
                "mean": float(np.nanmean(a)) if a.size else float("nan"),
                "p99": float(np.nanpercentile(a, 99)) if a.size else float("nan"),
                "finite": float(fin.mean()) if a.size else float("nan"),
                "seconds": self.seconds.get(key, self.seconds.get(method, float("nan"))),
                "abs_delta": float(np.mean(np.abs(d))) if d is not None and d.size else float("nan"),
                "orientation": ATTENDED,
                "zero_by_construction": self.notes.get(key) == UNAPPLIED_NOTE,
                "note": self.notes.get(key, ""),
            })
        return pd.DataFrame(rows)


def attribute(
    model: ResMaskNet,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    target: str | np.ndarray = "pred",
    batch_size: int = 16,
    device: str | torch.device | None = None,
    ig_steps: int = 32,
    internal_batch_size: int = 64,
    baseline: str = "black",
    smoothgrad_samples: int = 16,
    smoothgrad_stdev: float = 0.15,
    occlusion_window: int = 8,
    occlusion_stride: int = 5,
    occlusion_baseline: str = "mean",
    gradcam_tap: str = "refine",
    mask_method: str = "gxa",
    preds: np.ndarray | None = None,
    progress: bool = False,
) -> AttributionResult:
    """Captum attributions for uint8 faces [N, 48, 48], batched.

    methods: any of ``INPUT_METHODS`` and ``LAYER_METHODS``. target: ``"pred"`` (the model's
    prediction: explains what the model did), ``"true"`` (needs labels: explains the evidence for
    the right answer) or an int array [N]. Occlusion uses an 8x8 window with stride 5 (9x9 positions
    that tile 48 px exactly; an 8-px window is about an eye on a 48-px face) over each face's mean grey.
    gradcam_tap: ``refine`` (after the mask: what the head sees) or ``layer`` (before the mask).
    mask_method: ``gxa`` (gradient x activation, one backward pass) or ``lig`` (layer IG, ig_steps
    passes). preds: the unmodified model's predictions [N] when the caller has them (one forward
    pass saved); otherwise they are computed.
    """
    images, labels_arr = check_images(images, labels)
    bad = [m for m in methods if m not in INPUT_METHODS + LAYER_METHODS]
    if bad:
        raise ValueError(f"unknown attribution method(s) {bad}; choose from {INPUT_METHODS + LAYER_METHODS}")
    if gradcam_tap not in ("refine", "layer"):
        raise ValueError(f"gradcam_tap must be 'refine' or 'layer', got {gradcam_tap!r}")
    if mask_method not in ("gxa", "lig"):
        raise ValueError(f"mask_method must be 'gxa' or 'lig', got {mask_method!r}")
    dev = model_device(model, device)
    n, h, w = images.shape
    if preds is None:
        preds = predict_classes(model, images, batch_size=max(batch_size, 64), device=dev)[0]
    preds = np.asarray(preds, np.int64)
    if preds.shape != (n,):
        raise ValueError(f"preds must have shape ({n},), got {preds.shape}")
    targets = resolve_targets(target, preds, labels_arr)

    fm = FaceModel(model).eval()
    stages = [i + 1 for i in range(len(model.config.masks))]
    taps = model.tap_modules()
    mstages = mask_stages(model)
    keys: list[str] = []
    for m in methods:
        if m in INPUT_METHODS:
            keys.append(m)
        elif m == "gradcam":
            keys += [f"gradcam/{gradcam_tap}{i}" for i in stages]
        else:
            keys += [f"mask_attr/{st.name}" for st in mstages]
    maps = {k: np.zeros((n, h, w), np.float32) for k in keys}
    notes = {f"mask_attr/{st.name}": UNAPPLIED_NOTE for st in mstages
             if not st.applied and f"mask_attr/{st.name}" in maps}
    native: dict[str, np.ndarray] = {
        k: np.zeros((n, st.size, st.size), np.float32) for st in mstages if (k := f"mask_attr/{st.name}") in notes}
    raw: dict[str, np.ndarray] = {}
    deltas: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {k: 0.0 for k in keys}

    with eval_mode(model):
        for sl in tqdm(batch_slices(n, batch_size), desc="attributions", disable=not progress, leave=False):
            x = faces_to_float(images[sl], dev)
            tgt = torch.from_numpy(targets[sl]).to(dev)
            for key in keys:
                if key in notes:  # unapplied mask: exactly 0, nothing to run
                    continue
                t0 = time.perf_counter()
                method, _, tap = key.partition("/")
                if method in INPUT_METHODS:
                    a, delta = input_attribution(
                        fm, x, tgt, method, smoothgrad_samples=smoothgrad_samples, smoothgrad_stdev=smoothgrad_stdev,
                        occlusion_window=occlusion_window, occlusion_stride=occlusion_stride,
                        occlusion_baseline=occlusion_baseline, ig_steps=ig_steps,
                        internal_batch_size=internal_batch_size, baseline=baseline)
                    signed = a.float().sum(dim=1)
                    maps[key][sl] = a.float().abs().sum(dim=1).cpu().numpy()
                    raw.setdefault(key, np.zeros((n, h, w), np.float32))[sl] = signed.cpu().numpy()
                    if delta is not None:
                        deltas.setdefault(key, np.zeros(n, np.float32))[sl] = delta.float().cpu().numpy()
                elif method == "gradcam":
                    a = layer_attribution(fm, taps[tap], x, tgt, "gradcam").float()
                    native.setdefault(key, np.zeros((n, *a.shape[1:]), np.float32))[sl] = a.cpu().numpy()
                    maps[key][sl] = upsample_maps(a, h)
                else:
                    a = layer_attribution(fm, taps[tap], x, tgt, mask_method, ig_steps=ig_steps,
                                          internal_batch_size=internal_batch_size, baseline=baseline).float()
                    native.setdefault(key, np.zeros((n, *a.shape[2:]), np.float32))[sl] = a.sum(1).cpu().numpy()
                    maps[key][sl] = upsample_maps(a.abs().sum(1), h)
                seconds[key] += time.perf_counter() - t0

    return AttributionResult(
        maps=maps, native=native, raw=raw, targets=targets, preds=preds, labels=labels_arr, deltas=deltas,
        seconds=seconds,
        options=dict(methods=list(methods), target=target if isinstance(target, str) else "array",
                     smoothgrad_samples=smoothgrad_samples, smoothgrad_stdev=smoothgrad_stdev,
                     occlusion_window=occlusion_window, occlusion_stride=occlusion_stride,
                     occlusion_baseline=occlusion_baseline, gradcam_tap=gradcam_tap, mask_method=mask_method,
                     ig_steps=ig_steps, internal_batch_size=internal_batch_size, baseline=baseline),
        notes=notes,
    )


def resolve_targets(target: str | np.ndarray, preds: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """The class each face's attribution explains: ``"pred"`` -> ``preds``, ``"true"`` -> ``labels``
    or an int array [N] as given."""
    n = preds.shape[0]
    if isinstance(target, str):
        if target == "pred":
            return preds
        if target == "true":
            if labels is None:
                raise ValueError("target='true' needs labels")
            return labels
        raise ValueError(f"target must be 'pred', 'true' or an int array, got {target!r}")
    targets = np.asarray(target, dtype=np.int64)
    if targets.shape != (n,):
        raise ValueError(f"target array must have shape ({n},), got {targets.shape}")
    return targets
