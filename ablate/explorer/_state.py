"""What the explorer shows, as plain data: the faces' filters, the models compared, the map and its scale, the
attribution, the intervention. Saved and restored as JSON (`to_json`, `from_json`); the widgets only edit it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AGREEMENTS", "CORRECT", "EXPLAIN_METHODS", "REDUCTIONS", "SCALES", "SORTS", "STATS", "View",
           "WHATIF_KINDS"]

FORMAT = "ablate-explorer-view/1"

#: which faces, by the correctness of the models compared (columns in order: the first is the reference)
AGREEMENTS = ("any", "split", "first right, second wrong", "first wrong, second right", "all right", "all wrong")
CORRECT = ("any", "right", "wrong")  # the reference column's prediction
#: per-pixel maps of a stage's mask: the peak channel weight, KL from the uniform channel mix (softmax masks),
#: the effective gain ||x(1+m)||/||x||, one channel, the sum of the k channels with the most mass
REDUCTIONS = ("peak", "kl", "gain", "channel", "topk")
STATS = ("peak", "kl", "gain")  # per-face statistics (the map's mean over pixels) that can filter the faces
SCALES = ("shared", "per image")
SORTS = ("index", "margin", "stat")
EXPLAIN_METHODS = ("none", "ig", "saliency", "gradcam")
WHATIF_KINDS = ("zero", "uniform", "class_mean")


@dataclass
class View:
    """Everything the explorer shows. Class names are strings; ranges are [low, high] lists or None."""

    columns: list[str] = field(default_factory=list)  # "variant/seedN" (or a checkpoint's label), first = reference
    # choosing faces
    true_class: list[str] = field(default_factory=list)  # empty: any
    pred_class: list[str] = field(default_factory=list)
    correct: str = "any"
    agreement: str = "any"
    margin: list[float] = field(default_factory=lambda: [0.0, 1.0])  # top-1 minus top-2 probability, reference
    cell: list[str] | None = None  # [true, predicted] of the reference column's confusion matrix
    stat: str = "peak"
    stat_stage: int | None = None  # the stage whose statistic filters/sorts (None: the displayed stage)
    stat_range: list[float] | None = None
    sort: str = "index"
    n_faces: int = 16
    page: int = 0
    # looking inside
    stage: int | None = None  # None: the first stage with a mask
    reduction: str = "peak"
    channel: int = 0
    topk: int = 8
    native: bool = False  # the map at the stage's own resolution instead of over the face
    opacity: float = 0.6
    cmap: str = "magma"
    scale: str = "shared"
    scale_range: list[float] | None = None  # a declared mask scale [vmin, vmax] (None: from what is on screen)
    # explaining
    explain: str = "none"
    target: str = "pred"  # "pred" or a class name
    # asking what if
    whatif_stage: int | None = None
    whatif: str = "zero"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> View:
        if d.get("format") != FORMAT:
            raise ValueError(f"not an explorer view (format {d.get('format')!r}, expected {FORMAT!r})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"format"})
        if unknown:
            raise ValueError(f"explorer view: unknown key(s) {unknown}")
        view = cls(**{k: v for k, v in d.items() if k in known})
        view.check()
        return view

    @classmethod
    def from_json(cls, text: str) -> View:
        return cls.from_dict(json.loads(text))

    def check(self) -> None:
        """One line naming the field when a value is not one the explorer knows."""
        for name, allowed in (("correct", CORRECT), ("agreement", AGREEMENTS), ("reduction", REDUCTIONS),
                              ("stat", STATS), ("scale", SCALES), ("sort", SORTS), ("explain", EXPLAIN_METHODS),
                              ("whatif", WHATIF_KINDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"explorer view: {name}={getattr(self, name)!r}; choose from {list(allowed)}")
        if not 0.0 <= self.opacity <= 1.0:
            raise ValueError(f"explorer view: opacity={self.opacity} must be in [0, 1]")
        if self.n_faces < 1:
            raise ValueError(f"explorer view: n_faces={self.n_faces} must be at least 1")
