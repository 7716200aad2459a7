"""Evaluate a network on one split: accuracy, per-class precision/recall/F1, confusion matrix, and every
image's prediction and probabilities (paired tests between variants need per-image predictions).

Inference runs under `torch.inference_mode()`, channels_last, at `runtime.precision_for`'s precision: bf16
autocast on a GPU of compute capability 8.0 or newer (Ampere on), fp32 on older GPUs and on a CPU. The
evaluation records it (`EvalResult.info["precision"]`).

Example:
    >>> model, _ = resmasknet.load_checkpoint("runs/x/best.pt")
    >>> res = evaluate(model, load_data("fer2013.csv").select("test"), tta="flip")
    >>> res.accuracy, res.confusion            # float, int64 [K, K] (rows: true class, columns: predicted)
    >>> res.save("runs/x/test")                # metrics.json, predictions.csv, predictions.npz
    >>> print(res.report())                    # per-class table and confusion matrix
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from resmasknet.augment import TTA_MODES, predict_proba
from resmasknet.model import ResMaskNet
from resmasknet.runtime import atomic_write, atomic_write_json, precision_for, resolve_device

__all__ = ["EvalResult", "evaluate", "predict", "resolve_device"]


def predict(model: ResMaskNet, images: Tensor | np.ndarray, *, batch_size: int = 256,
            device: str | torch.device | None = None, tta: str | None = None, seed: int = 1234,
            max_batches: int | None = None, progress: bool = False, desc: str = "eval",
            precision: str | None = None) -> Tensor:
    """Probabilities float32 [N, K] (on the device) for uint8 faces [N, H, W].

    The model is put in eval mode (and restored afterwards). `seed` drives the authors' TTA draws.
    precision: "bf16" or "fp32" (default `runtime.precision_for(device)`: bf16 on Ampere or newer GPUs only)."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r} is not allowed; choose one of none, 'flip', 'authors'")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    precision = precision or precision_for(dev)
    imgs = torch.as_tensor(images)
    gen = torch.Generator().manual_seed(seed) if tta == "authors" else None
    n = imgs.shape[0]
    starts = list(range(0, n, batch_size))
    if max_batches is not None:
        starts = starts[:max_batches]
    was_training = model.training
    model.eval()
    out: list[Tensor] = []
    try:
        from tqdm.auto import tqdm

        with torch.inference_mode():
            for s in tqdm(starts, desc=desc, leave=False, disable=not progress, unit="batch"):
                batch = imgs[s:s + batch_size].to(dev, non_blocking=True)
                x = model.prepare_input(batch)
                out.append(predict_proba(model, x, tta, generator=gen, precision=precision))
    finally:
        model.train(was_training)
    if not out:
        k = model.config.num_classes
        return torch.zeros(0, k, device=dev)
    return torch.cat(out)


@dataclass
class EvalResult:
    """Metrics and per-image outputs of one evaluation. Arrays are numpy; `confusion[i, j]` counts images
    of true class i predicted as j."""

    accuracy: float
    loss: float  # mean negative log-likelihood of the true class under the (TTA) probabilities
    classes: tuple[str, ...]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray
    index: np.ndarray  # each image's position in its source (FaceData.origin) or 0..N-1
    tta: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])

    @property
    def macro_f1(self) -> float:
        return float(np.mean(self.f1)) if self.f1.size else 0.0

    @property
    def balanced_accuracy(self) -> float:
        present = self.support > 0
        return float(np.mean(self.recall[present])) if present.any() else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-image arrays, as plain JSON values."""
        return {
            "accuracy": self.accuracy, "loss": self.loss, "macro_f1": self.macro_f1,
            "balanced_accuracy": self.balanced_accuracy, "n": self.n, "tta": self.tta,
            "classes": list(self.classes),
            "per_class": {c: {"precision": float(self.precision[k]), "recall": float(self.recall[k]),
                              "f1": float(self.f1[k]), "support": int(self.support[k])}
                          for k, c in enumerate(self.classes)},
            "confusion": self.confusion.tolist(), **({"info": self.info} if self.info else {}),
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write metrics.json, predictions.csv (one row per image) and predictions.npz into `folder`, each
        atomically (a failed write leaves no file that looks complete)."""
        out = Path(folder)

        def write_npz(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, index=self.index, label=self.labels, prediction=self.predictions,
                                    probabilities=self.probabilities.astype(np.float32),
                                    classes=np.array(self.classes))

        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["index", "label", "prediction", "correct", *[f"p_{c}" for c in self.classes]])
                for i in range(self.n):
                    w.writerow([int(self.index[i]), int(self.labels[i]), int(self.predictions[i]),
                                int(self.labels[i] == self.predictions[i]),
                                *(f"{p:.6f}" for p in self.probabilities[i])])

        atomic_write(out / "predictions.npz", write_npz)
        atomic_write(out / "predictions.csv", write_csv)
        atomic_write_json(out / "metrics.json", self.to_dict())  # last: its presence marks a complete save
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike) -> EvalResult:
        """Rebuild a saved result from metrics.json and predictions.npz."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "metrics.json").read_text())
            classes = tuple(meta["classes"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{folder / 'metrics.json'}: corrupt metrics file ({_why(exc)})") from exc
        path = folder / "predictions.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("probabilities", "label", "index")}
        except FileNotFoundError:
            raise
        except (ValueError, OSError, EOFError, KeyError, AttributeError, TypeError, zipfile.BadZipFile) as exc:
            # numpy's own words for a file that is not a .npz are about pickles: say what it means here
            raise ValueError(f"{path}: corrupt predictions file, not a readable .npz archive ({_why(exc)}); "
                             f"evaluate the trial's checkpoint again to rewrite it") from exc
        res = from_probabilities(arrays["probabilities"], arrays["label"], classes, index=arrays["index"],
                                 tta=meta.get("tta"))
        res.info = meta.get("info", {})
        return res

    def report(self) -> str:
        """Accuracy, the per-class table and the confusion matrix as text."""
        w = max(9, *(len(c) for c in self.classes))
        lines = [f"accuracy {self.accuracy * 100:.2f}%  (n={self.n}, tta={self.tta or 'none'}, "
                 f"macro F1 {self.macro_f1 * 100:.2f}%, balanced acc {self.balanced_accuracy * 100:.2f}%, "
                 f"NLL {self.loss:.4f})", "",
                 f"{'class':<{w}} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
        for k, c in enumerate(self.classes):
            lines.append(f"{c:<{w}} {self.precision[k]:>9.3f} {self.recall[k]:>7.3f} {self.f1[k]:>7.3f} "
                         f"{int(self.support[k]):>8}")
        lines += ["", "confusion matrix (rows: true, columns: predicted)"]
        short = [c[:7] for c in self.classes]
        cw = max(7, len(str(int(self.confusion.max()) if self.confusion.size else 0)))
        lines.append(f"{'':<{w}} " + " ".join(f"{s:>{cw}}" for s in short))
        for k, c in enumerate(self.classes):
            lines.append(f"{c:<{w}} " + " ".join(f"{int(v):>{cw}}" for v in self.confusion[k]))
        return "\n".join(lines)


def from_probabilities(probabilities: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], *,
                       index: np.ndarray | None = None, tta: str | None = None) -> EvalResult:
    """Metrics from per-image probabilities [N, K] and true labels [N]."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    probs = np.asarray(probabilities, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    if probs.ndim != 2 or probs.shape != (labels.shape[0], k):
        raise ValueError(f"probabilities {probs.shape} must be [N={labels.shape[0]}, K={k}]")
    preds = probs.argmax(axis=1).astype(np.int64) if len(probs) else np.zeros(0, np.int64)
    ks = list(range(k))
    if len(labels):
        p, r, f, s = precision_recall_fscore_support(labels, preds, labels=ks, zero_division=0)
        conf = confusion_matrix(labels, preds, labels=ks).astype(np.int64)
        nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
        acc = float((preds == labels).mean())
    else:
        p = r = f = np.zeros(k)
        s = np.zeros(k, np.int64)
        conf, nll, acc = np.zeros((k, k), np.int64), float("nan"), float("nan")
    return EvalResult(accuracy=acc, loss=nll, classes=tuple(classes), precision=np.asarray(p, float),
                      recall=np.asarray(r, float), f1=np.asarray(f, float), support=np.asarray(s, np.int64),
                      confusion=conf, labels=labels, predictions=preds, probabilities=probs,
                      index=np.arange(len(labels)) if index is None else np.asarray(index, np.int64), tta=tta)


def evaluate(model: ResMaskNet, data_split: Any, *, tta: str | None = None, batch_size: int = 256,
             device: str | torch.device | None = None, seed: int = 1234, progress: bool = False,
             precision: str | None = None) -> EvalResult:
    """Evaluate `model` on a FaceData split (`data.select("test")`): images uint8 [N, H, W], labels, classes.

    tta: None, "flip" (mean of plain and mirrored) or "authors" (10 seeded flip/rotation draws summed).
    The model is moved to `device` (default: CUDA when available) in channels_last. precision: "bf16" or
    "fp32", default `runtime.precision_for(device)`; recorded in `info["precision"]`."""
    if tta == "none":
        tta = None
    dev = resolve_device(device)
    precision = precision or precision_for(dev)
    model.to(dev).to(memory_format=torch.channels_last)
    num_classes = model.config.num_classes
    classes = tuple(data_split.classes)
    if len(classes) != num_classes:
        raise ValueError(f"the data has {len(classes)} classes {classes} but the model predicts {num_classes}")
    probs = predict(model, data_split.images, batch_size=batch_size, device=dev, tta=tta, seed=seed,
                    progress=progress, precision=precision).float().cpu().numpy()
    origin = getattr(data_split, "origin", None)
    res = from_probabilities(probs, data_split.labels, classes, index=origin, tta=tta)
    res.info = {"source": str(getattr(data_split, "source", "")), "batch_size": batch_size, "device": str(dev),
                "precision": precision,
                **({"seed": seed} if tta == "authors" else {})}
    return res


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} in it"
    if isinstance(exc, ValueError) and "pickle" in str(exc):
        return "its bytes are not a numpy archive"
    return " ".join(str(exc).split()) or type(exc).__name__
