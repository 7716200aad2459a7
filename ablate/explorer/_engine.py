"""The explorer's logic, without widgets: faces, the models compared, selection, maps, attributions and
interventions, each computed once per (model, face) and cached.

Columns are the models compared side by side on the same faces (a study's `variant/seedN` trials, or one
checkpoint). Their predictions on every test face come from the stored evaluations (a study) or one forward
pass (a checkpoint), so choosing faces costs no model at all; a model is loaded the first time a map, a
statistic, an attribution or an intervention of its column is asked for.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ablate.explorer._state import REDUCTIONS, View

if TYPE_CHECKING:
    from ablate.api import StudyResults, TestFaces
    from ablate.trial import TrialRecord

log = logging.getLogger(__name__)

__all__ = ["Column", "Explorer", "FaceMaps"]

MAX_STAT_FACES = 1024  # a mask statistic is computed on at most this many candidate faces (the rest: NaN)
CLASS_MEAN_FACES = 256  # validation faces behind each class's mean mask (the class_mean intervention)


@dataclass
class Column:
    """One model compared: its label, where its checkpoint is, and its predictions on every face."""

    label: str
    probabilities: np.ndarray  # [N, K] on the explorer's faces
    record: TrialRecord | None = None
    checkpoint: Path | None = None
    variant: str | None = None
    seed: int | None = None
    model: Any = None  # loaded on first use

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(1)

    @property
    def margin(self) -> np.ndarray:
        """Top-1 minus top-2 probability: how sure the model is."""
        p = np.sort(self.probabilities, axis=1)
        return p[:, -1] - p[:, -2]


@dataclass
class FaceMaps:
    """One model's forward pass on one face: logits [K] and, per masked stage, the mask [C, h, w] and the
    gain map [h, w]."""

    logits: np.ndarray
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    gain: dict[int, np.ndarray] = field(default_factory=dict)


class Explorer:
    """Faces x models, and every map the view asks for. Drive it from Python (`view`, `select`, `maps`,
    `whatif`, `render`) or through the widgets (`ablate.explore`)."""

    def __init__(self, faces: TestFaces, columns: Sequence[Column], *, study: StudyResults | None = None,
                 device: str = "cpu", val_faces: Any = None, view: View | None = None):
        if not columns:
            raise ValueError("the explorer needs at least one model to show")
        self.faces = faces
        self.columns = {c.label: c for c in columns}
        self.study = study
        self.device = device
        self._val_faces = val_faces
        self._maps: dict[tuple[str, int], FaceMaps] = {}
        self._stats: dict[tuple[str, int], dict[int, dict[str, float]]] = {}
        self._attr: dict[tuple[str, int, str, int], np.ndarray] = {}
        self._whatif: dict[tuple[str, int, int, str], np.ndarray] = {}
        self._class_masks: dict[tuple[str, int], np.ndarray] = {}
        self.view = view or View(columns=[c.label for c in columns][:2])
        if self.view.stage is None:
            self.view.stage = self.stages[0] if self.stages else None
        self.check_view(self.view)

    # ---- what there is ---------------------------------------------------------------------------------------
    @property
    def classes(self) -> tuple[str, ...]:
        return self.faces.classes

    @property
    def shown_columns(self) -> list[Column]:
        return [self.columns[c] for c in self.view.columns]

    def stages_of(self, view: View) -> list[int]:
        """Every stage with a mask in any model the view shows (empty for networks without masks)."""
        return sorted({s for c in view.columns if c in self.columns for s in self.column_stages(self.columns[c])})

    def _config(self, col: Column) -> Any:
        if col.record is not None:
            from resmasknet.config import NetConfig

            return NetConfig.from_dict(col.record.config)
        return self.model(col).config

    def column_stages(self, col: Column) -> list[int]:
        """The stages of a column's network that have a mask."""
        cfg = self._config(col)
        return [i + 1 for i, m in enumerate(cfg.masks) if m.enabled]

    @property
    def stages(self) -> list[int]:
        """Every stage with a mask in any model shown (empty for networks without masks)."""
        return self.stages_of(self.view)

    def activation(self, col: Column, stage: int) -> str:
        return self._config(col).masks[stage - 1].activation

    def reductions(self, view: View | None = None) -> list[str]:
        """The reductions that mean something for the masks shown (KL only for softmax masks)."""
        v = view or self.view
        acts = {self.activation(self.columns[c], s) for c in v.columns if c in self.columns
                for s in self.column_stages(self.columns[c])}
        return [r for r in REDUCTIONS if r != "kl" or "softmax" in acts]

    def check_view(self, view: View) -> None:
        view.check()
        unknown = [c for c in view.columns if c not in self.columns]
        if unknown or not view.columns:
            raise ValueError(f"explorer view: unknown column(s) {unknown or '(none chosen)'}; "
                             f"choose from {list(self.columns)}")
        for name in ("true_class", "pred_class"):
            bad = [c for c in getattr(view, name) if c not in self.classes]
            if bad:
                raise ValueError(f"explorer view: {name} {bad} not among the classes {list(self.classes)}")
        if view.cell is not None and (len(view.cell) != 2 or not set(view.cell) <= set(self.classes)):
            raise ValueError(f"explorer view: cell={view.cell} must be [true class, predicted class]")
        if view.target != "pred" and view.target not in self.classes:
            raise ValueError(f"explorer view: target={view.target!r}; 'pred' or one of {list(self.classes)}")
        stages = self.stages_of(view)
        for name in ("stage", "stat_stage", "whatif_stage"):
            v = getattr(view, name)
            if v is not None and v not in stages:
                raise ValueError(f"explorer view: {name}={v}: no model shown has a mask there"
                                 + (f" (stages with masks: {stages})" if stages else " (no model shown has masks)"))

    def set_view(self, view: View) -> None:
        self.check_view(view)
        self.view = view

    def update(self, **changes: Any) -> View:
        """Change some of the view's fields (checked first: a bad value leaves the view as it was)."""
        import dataclasses

        new = dataclasses.replace(self.view, **changes)
        stages = self.stages_of(new)
        if "columns" in changes:  # stages the new models lack are let go, not refused
            for name in ("stat_stage", "whatif_stage"):
                if getattr(new, name) not in stages:
                    setattr(new, name, None)
            if new.stage not in stages:
                new.stage = None
            if new.reduction not in self.reductions(new):
                new.reduction = "peak"
        if new.stage is None and stages:
            new.stage = stages[0]
        self.set_view(new)
        return new

    # ---- choosing faces --------------------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per face (its position in `faces`): index, true class, and per column its prediction,
        probability, correctness and margin; in a study, how many seeds of each variant get the face right."""
        key = "__table__"
        if key not in self.__dict__:
            t = pd.DataFrame({"face": np.arange(len(self.faces)), "index": self.faces.index,
                              "true": np.asarray(self.classes)[self.faces.labels]})
            for col in self.columns.values():
                pred = col.predictions
                t[f"{col.label}:pred"] = np.asarray(self.classes)[pred]
                t[f"{col.label}:prob"] = col.probabilities[np.arange(len(pred)), pred]
                t[f"{col.label}:correct"] = pred == self.faces.labels
                t[f"{col.label}:margin"] = col.margin
            if self.study is not None:
                for variant, counts in self._seeds_right().items():
                    t[f"right:{variant}"] = counts
            self.__dict__[key] = t.set_index("face", drop=False)
        return self.__dict__[key]

    def _seeds_right(self) -> dict[str, np.ndarray]:
        """Per variant of the study: how many of its seeds get each face right (from the stored evaluations)."""
        assert self.study is not None
        out: dict[str, np.ndarray] = {}
        for r in self.study.records.records:
            ev = r.evaluation("test")
            if not np.array_equal(ev.index, self.faces.index):
                continue
            out.setdefault(r.variant, np.zeros(len(self.faces), np.int64))
            out[r.variant] += ev.predictions == ev.labels
        return out

    def candidates(self, view: View | None = None, *, with_stat: bool = True) -> pd.DataFrame:
        """The faces that pass every filter of the view, before paging (in the view's order)."""
        v = view or self.view
        t = self.table()
        ref = v.columns[0]
        keep = np.ones(len(t), bool)
        if v.true_class:
            keep &= t["true"].isin(v.true_class).to_numpy()
        if v.pred_class:
            keep &= t[f"{ref}:pred"].isin(v.pred_class).to_numpy()
        if v.correct != "any":
            keep &= t[f"{ref}:correct"].to_numpy() == (v.correct == "right")
        lo, hi = v.margin
        m = t[f"{ref}:margin"].to_numpy()
        keep &= (m >= lo) & (m <= hi)
        if v.cell is not None:
            keep &= (t["true"] == v.cell[0]).to_numpy() & (t[f"{ref}:pred"] == v.cell[1]).to_numpy()
        keep &= self._agreement(t, v)
        out = t[keep]
        if with_stat and (v.stat_range is not None or v.sort == "stat") and self.stages_of(v):
            s = self.stat_values(out.index.to_numpy(), v)
            out = out.assign(stat=s)
            if v.stat_range is not None:
                lo, hi = v.stat_range
                out = out[(out["stat"] >= lo) & (out["stat"] <= hi)]
        if v.sort == "margin":
            out = out.sort_values(f"{ref}:margin", kind="stable")
        elif v.sort == "stat" and "stat" in out:
            out = out.sort_values("stat", ascending=False, kind="stable")
        return out

    @staticmethod
    def _agreement(t: pd.DataFrame, v: View) -> np.ndarray:
        right = np.stack([t[f"{c}:correct"].to_numpy() for c in v.columns], axis=1)
        a = v.agreement
        if a == "any":
            return np.ones(len(t), bool)
        if a == "all right":
            return np.asarray(right.all(1))
        if a == "all wrong":
            return np.asarray(~right.any(1))
        if a == "split":
            return np.asarray(right.any(1) & ~right.all(1))
        if len(v.columns) < 2:
            raise ValueError(f"explorer view: agreement={a!r} compares two columns; {len(v.columns)} shown")
        if a == "first right, second wrong":
            return right[:, 0] & ~right[:, 1]
        return ~right[:, 0] & right[:, 1]  # first wrong, second right

    def select(self, view: View | None = None) -> np.ndarray:
        """The faces on screen: positions in `faces`, at most `n_faces`, the view's page."""
        v = view or self.view
        c = self.candidates(v).index.to_numpy()
        start = v.page * v.n_faces
        return c[start:start + v.n_faces]

    def confusion(self, view: View | None = None) -> pd.DataFrame:
        """The reference column's confusion matrix over the faces the other filters keep (its cells pick faces)."""
        import dataclasses

        v = dataclasses.replace(view or self.view, cell=None)
        c = self.candidates(v, with_stat=v.stat_range is not None)
        ref = v.columns[0]
        k = len(self.classes)
        cm = np.zeros((k, k), np.int64)
        ti = pd.Categorical(c["true"], categories=self.classes).codes
        pi = pd.Categorical(c[f"{ref}:pred"], categories=self.classes).codes
        np.add.at(cm, (ti, pi), 1)
        return pd.DataFrame(cm, index=pd.Index(self.classes, name="true"),
                            columns=pd.Index(self.classes, name="predicted"))

    # ---- models and forward passes ---------------------------------------------------------------------------
    def model(self, col: Column) -> Any:
        if col.model is None:
            if col.record is not None:
                col.model = col.record.model(self.device)
            else:
                from resmasknet.checkpoint import load_checkpoint

                if col.checkpoint is None or not Path(col.checkpoint).exists():
                    raise FileNotFoundError(f"{col.label}: checkpoint {col.checkpoint} is missing")
                col.model = load_checkpoint(col.checkpoint, map_location=self.device)[0].to(self.device).eval()
        return col.model

    def _forward(self, col: Column, faces: np.ndarray, keep_maps: bool) -> None:
        """One forward pass of `col` over the faces not cached yet: maps (when asked) and per-face statistics."""
        import torch

        from ablate.analysis.masks import gain_map, reduce_mask

        need = [int(f) for f in faces if (col.label, int(f)) not in (self._maps if keep_maps else self._stats)]
        if not need:
            return
        model = self.model(col)
        stages = self.column_stages(col)
        for start in range(0, len(need), 64):
            rows = need[start:start + 64]
            x = model.prepare_input(torch.from_numpy(self.faces.images[rows]).to(self.device))
            with torch.inference_mode():
                logits, taps = model.forward_taps(x)
            for i, f in enumerate(rows):
                fm = FaceMaps(logits=logits[i].float().cpu().numpy())
                stats: dict[int, dict[str, float]] = {}
                for s in stages:
                    m = taps[f"mask{s}"][i:i + 1].float()
                    feats = taps[f"layer{s}"][i:i + 1].float()
                    act = self.activation(col, s)
                    app = self._config(col).masks[s - 1].application
                    g = gain_map(feats, m, app)[0]
                    red = reduce_mask(m, act)
                    peak = red["max"][0]
                    stats[s] = {"peak": float(peak.mean()), "gain": float(g.mean()),
                                "kl": float(red["kl"][0].mean()) if "kl" in red else math.nan}
                    if keep_maps:
                        fm.masks[s] = m[0].cpu().numpy()
                        fm.gain[s] = g.cpu().numpy()
                self._stats[(col.label, f)] = stats
                if keep_maps:
                    self._maps[(col.label, f)] = fm

    def face_maps(self, col: Column, face: int) -> FaceMaps:
        self._forward(col, np.array([face]), keep_maps=True)
        return self._maps[(col.label, int(face))]

    def stat_values(self, faces: np.ndarray, view: View | None = None) -> np.ndarray:
        """The view's mask statistic (`stat` of `stat_stage`, default the displayed stage) of the reference
        column on `faces` (the first MAX_STAT_FACES computed; the rest NaN). NaN where it has no such mask."""
        v = view or self.view
        col = self.columns[v.columns[0]]
        stage = v.stat_stage or v.stage
        if stage not in self.column_stages(col):
            return np.full(len(faces), np.nan)
        faces = np.asarray(faces, np.int64)
        todo = faces[:MAX_STAT_FACES]
        self._forward(col, todo, keep_maps=False)
        return np.array([self._stats[(col.label, int(f))][stage][v.stat] if i < MAX_STAT_FACES else np.nan
                         for i, f in enumerate(faces)])

    # ---- maps on screen --------------------------------------------------------------------------------------
    def mask_map(self, col: Column, face: int, view: View | None = None) -> np.ndarray | None:
        """The displayed stage's map of one face under the view's reduction, at the stage's resolution [h, w];
        None when the column has no mask at that stage."""
        v = view or self.view
        if v.stage is None or v.stage not in self.column_stages(col):
            return None
        fm = self.face_maps(col, face)
        m = fm.masks[v.stage]
        r = v.reduction
        if r == "gain":
            return fm.gain[v.stage]
        if r == "peak":
            return m.max(0)
        if r == "kl":
            if self.activation(col, v.stage) != "softmax":
                return None
            c = m.shape[0]
            ent = -(m * np.log(np.clip(m, 1e-30, None))).sum(0)
            return np.clip(math.log(c) - ent, 0.0, None)
        if r == "channel":
            return m[min(max(v.channel, 0), m.shape[0] - 1)]
        k = min(max(v.topk, 1), m.shape[0])  # topk: the k channels with the most mass on this face
        top = np.argsort(-m.reshape(m.shape[0], -1).sum(1), kind="stable")[:k]
        return m[top].sum(0)

    def top_channels(self, col: Column, face: int, k: int | None = None) -> list[int]:
        v = self.view
        if v.stage is None or v.stage not in self.column_stages(col):
            return []
        m = self.face_maps(col, face).masks[v.stage]
        return [int(c) for c in np.argsort(-m.reshape(m.shape[0], -1).sum(1), kind="stable")[:k or v.topk]]

    def targets(self, col: Column, faces: np.ndarray, view: View | None = None) -> np.ndarray:
        v = view or self.view
        if v.target == "pred":
            return col.predictions[faces]
        return np.full(len(faces), self.classes.index(v.target), np.int64)

    def attribution(self, col: Column, faces: np.ndarray, view: View | None = None) -> dict[int, np.ndarray]:
        """The view's attribution (IG, saliency, or GradCAM after the displayed stage) of each face for the
        view's target class, on the 48-px face: {face: map}. Cached per (column, face, method, target)."""
        from ablate.analysis import attribute

        v = view or self.view
        if v.explain == "none":
            return {}
        stage = v.stage or 4
        method_key = "gradcam" if v.explain == "gradcam" else v.explain
        tg = self.targets(col, faces, v)
        key = lambda f, t: (col.label, int(f), f"{method_key}{stage if v.explain == 'gradcam' else ''}", int(t))  # noqa: E731
        need = [i for i, f in enumerate(faces) if key(f, tg[i]) not in self._attr]
        if need:
            rows = np.asarray(faces)[need]
            res = attribute(self.model(col), self.faces.images[rows], methods=(method_key,), target=tg[need],
                            preds=col.predictions[rows], device=self.device, ig_steps=16, batch_size=16)
            name = f"gradcam/refine{stage}" if v.explain == "gradcam" else method_key
            for j, i in enumerate(need):
                self._attr[key(faces[i], tg[i])] = res.maps[name][j]
        return {int(f): self._attr[key(f, tg[i])] for i, f in enumerate(faces)}

    # ---- what if ---------------------------------------------------------------------------------------------
    def class_masks(self, col: Column, stage: int) -> np.ndarray:
        """Each class's mean mask at `stage` [K, C, h, w], over up to CLASS_MEAN_FACES validation faces grouped
        by the unmodified model's prediction (not the label: that would hand the model its answer)."""
        import torch

        key = (col.label, stage)
        if key not in self._class_masks:
            images = self._validation_images()
            model = self.model(col)
            k = len(self.classes)
            sums = None
            counts = np.zeros(k, np.int64)
            for start in range(0, len(images), 64):
                x = model.prepare_input(torch.from_numpy(images[start:start + 64]).to(self.device))
                with torch.inference_mode():
                    logits, taps = model.forward_taps(x)
                m = taps[f"mask{stage}"].float().cpu().numpy()
                pred = logits.argmax(1).cpu().numpy()
                if sums is None:
                    sums = np.zeros((k, *m.shape[1:]), np.float64)
                np.add.at(sums, pred, m)
                counts += np.bincount(pred, minlength=k)
            assert sums is not None
            mean_all = sums.sum(0) / max(counts.sum(), 1)
            self._class_masks[key] = np.stack([sums[i] / counts[i] if counts[i] else mean_all
                                               for i in range(k)]).astype(np.float32)
        return self._class_masks[key]

    def _validation_images(self) -> np.ndarray:
        if self._val_faces is None:
            if self.study is not None:
                from resmasknet.data import load_data

                val = load_data(self.study.study.resolved("data") or self.study.study.data).select("val")
                self._val_faces = val.images[:CLASS_MEAN_FACES] if len(val.labels) else None
            if self._val_faces is None:
                log.warning("no validation faces: the class means come from the first %d faces shown here",
                            CLASS_MEAN_FACES)
                self._val_faces = self.faces.images[:CLASS_MEAN_FACES]
        return np.asarray(self._val_faces)[:CLASS_MEAN_FACES]

    def whatif(self, faces: np.ndarray | None = None, view: View | None = None) -> pd.DataFrame:
        """With the view's `whatif_stage` mask replaced (`zero`, `uniform`, `class_mean`; see
        `ablate.analysis.interventions`) on the faces shown: each column's prediction and its probability before
        and after. Columns without a mask at that stage are left out."""
        import torch

        from ablate.analysis.forward import forward_after
        from ablate.analysis.interventions import replacement_mask
        from ablate.analysis.masks import mask_stages

        v = view or self.view
        faces = self.select(v) if faces is None else np.asarray(faces)
        rows: list[dict[str, Any]] = []
        if v.whatif_stage is None:
            return pd.DataFrame(rows)
        stage = v.whatif_stage
        for col in (self.columns[c] for c in v.columns):
            if stage not in self.column_stages(col):
                continue
            need = [int(f) for f in faces if (col.label, int(f), stage, v.whatif) not in self._whatif]
            if need:
                model = self.model(col)
                st = next(s for s in mask_stages(model) if s.stage == stage)
                x = model.prepare_input(torch.from_numpy(self.faces.images[need]).to(self.device))
                with torch.inference_mode():
                    logits, taps = model.forward_taps(x)
                    m = taps[f"mask{stage}"]
                    cm = None
                    if v.whatif == "class_mean":
                        cm = torch.from_numpy(self.class_masks(col, stage)).to(m.device)
                    repl = replacement_mask(v.whatif, m, st, class_masks=cm, pred=logits.argmax(1))
                    out = forward_after(model, stage, taps[f"layer{stage}"], repl)
                probs = torch.softmax(out.double(), 1).cpu().numpy()
                for i, f in enumerate(need):
                    self._whatif[(col.label, f, stage, v.whatif)] = probs[i]
            for f in faces:
                before = col.probabilities[int(f)]
                after = self._whatif[(col.label, int(f), stage, v.whatif)]
                b, a = int(before.argmax()), int(after.argmax())
                rows.append({"face": int(f), "column": col.label, "true": self.classes[self.faces.labels[int(f)]],
                             "pred": self.classes[b], "prob": float(before[b]),
                             f"pred without mask{stage}": self.classes[a], "prob after": float(after[a]),
                             "prob of pred after": float(after[b]), "changed": a != b})
        return pd.DataFrame(rows)

    # ---- drawing ---------------------------------------------------------------------------------------------
    def render(self, view: View | None = None) -> Any:
        """The view as a `Rendered` picture (PNG bytes, the scale used, every map's values)."""
        from ablate.explorer._render import render

        return render(self, view or self.view)

    def save_view(self, path: str | Path) -> Path:
        from resmasknet.runtime import atomic_write_text

        return atomic_write_text(Path(path), self.view.to_json())

    def load_view(self, path: str | Path) -> View:
        try:
            view = View.from_json(Path(path).read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        self.set_view(view)
        return view
