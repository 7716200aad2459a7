"""`ablate.explore`: an interactive mask explorer for a study (or one checkpoint on a data split), in Jupyter.

    >>> import ablate
    >>> s = ablate.open_study("quickstart")
    >>> app = ablate.explore(s, variants=["masks_on", "masks_off"], faces="disagree")
    >>> app                                      # the widgets (ipywidgets 8)
    >>> app.explorer.update(stage=2, reduction="kl"); app.explorer.render()   # the same, from code

What it answers that other tools do not: which faces (by class, by error, by confidence, by a mask statistic of a
stage, by a cell of the confusion matrix), how several variants and seeds treat the *same* faces, what a stage's
mask looks like under a reduction that means something for a softmax over channels, on one colour scale shared by
everything on screen, what an attribution for a chosen class says beside it, and what each prediction does when
that stage's mask is switched off. All of its logic is in `Explorer` (plain Python: tests and scripts drive it
without a browser); `ExplorerApp` only binds widgets to its `View`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablate.explorer._engine import Column, Explorer
from ablate.explorer._state import View

if TYPE_CHECKING:
    from ablate.api import StudyResults

__all__ = ["Column", "Explorer", "ExplorerApp", "View", "explore", "explorer_for"]

FACES = {"all": {}, "disagree": {"agreement": "split"}, "split": {"agreement": "split"},
         "wrong": {"correct": "wrong"}, "right": {"correct": "right"},
         "first right, second wrong": {"agreement": "first right, second wrong"},
         "first wrong, second right": {"agreement": "first wrong, second right"}}


def explorer_for(source: StudyResults | str | os.PathLike, *, variants: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None, faces: str = "all", data: str | None = None,
                 split: str = "test", device: str = "cpu", n_faces: int = 16, max_faces: int = 2048) -> Explorer:
    """The explorer's engine (no widgets). source: a study (`ablate.open_study(...)`, or its name / file / output
    folder), or a checkpoint file (`best.pt`) with `data` (and `split`). variants and seeds: the models compared
    (default: every variant of the study at its first seed; the first is the reference the filters use).
    faces: `all`, `disagree` (right in some, wrong in others), `wrong`, `right`, or `first right, second wrong`.
    max_faces: a checkpoint's split is cut to its first `max_faces` faces (one forward pass scores them)."""
    if faces not in FACES:
        raise ValueError(f"faces={faces!r}; choose from {list(FACES)}")
    src = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if src is not None and (src.endswith((".pt", ".pth")) or (Path(src).is_file() and data is not None)):
        ex = _checkpoint_explorer(Path(src), data, split, device, max_faces)
    else:
        if src is not None:
            from ablate.api import open_study

            source = open_study(src)
        ex = _study_explorer(source, variants, seeds, device)  # type: ignore[arg-type]
    ex.update(n_faces=n_faces, **FACES[faces])
    return ex


def _study_explorer(study: StudyResults, variants: Sequence[str] | None, seeds: Sequence[int] | None,
                    device: str) -> Explorer:
    import numpy as np

    have = study.variants
    variants = list(variants) if variants else have
    for v in variants:
        if v not in have:
            raise KeyError(f"study {study.name} has no finished trial of variant {v!r}; variants: {have}")
    if seeds is None:
        common = sorted(set.intersection(*({r.seed for r in study.records.records if r.variant == v}
                                           for v in variants)))
        seeds = common[:1] or [min(r.seed for r in study.records.records if r.variant == variants[0])]
    shown = [study.trial(v, s).label for v in variants for s in seeds]  # a KeyError names the seeds there are
    faces = study.test_faces()
    columns = []  # every trial of the study can be put beside the others (their predictions are stored)
    for rec in sorted(study.records.records, key=lambda r: (have.index(r.variant), r.seed)):
        ev = rec.evaluation("test")
        if not np.array_equal(ev.index, faces.index):
            raise ValueError(f"{rec.label}: its test evaluation covers other faces than the study's others")
        columns.append(Column(rec.label, np.asarray(ev.probabilities, np.float64), record=rec, variant=rec.variant,
                              seed=int(rec.seed)))
    return Explorer(faces, columns, study=study, device=device, view=View(columns=shown))


def _checkpoint_explorer(path: Path, data: str | None, split: str, device: str, max_faces: int) -> Explorer:
    import numpy as np
    import torch

    from ablate.api import TestFaces
    from resmasknet.checkpoint import load_checkpoint
    from resmasknet.data import load_data

    if data is None:
        raise ValueError(f"{path}: a checkpoint needs data= (e.g. 'generated' or a fer2013.csv) and split=")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    model = load_checkpoint(path, map_location=device)[0].to(device).eval()
    d = load_data(data)
    part = d.select(split)
    n = min(len(part.labels), max_faces)
    origin = part.origin[:n] if part.origin is not None else np.arange(n)
    faces = TestFaces(part.images[:n], part.labels[:n].astype(np.int64), np.asarray(origin), tuple(d.classes),
                      None if part.regions is None else part.regions[:n], str(data))
    probs = []
    with torch.inference_mode():
        for start in range(0, n, 64):
            x = model.prepare_input(torch.from_numpy(faces.images[start:start + 64]).to(device))
            probs.append(torch.softmax(model(x).double(), 1).cpu().numpy())
    val = d.select("val") if split != "val" else None
    label = path.parent.name + "/" + path.name
    col = Column(label, np.concatenate(probs) if probs else np.zeros((0, len(d.classes))), checkpoint=path,
                 model=model)
    return Explorer(faces, [col], device=device, val_faces=None if val is None or not len(val.labels)
                    else val.images[:256], view=View(columns=[label]))


def explore(source: StudyResults | str | os.PathLike, *, variants: Sequence[str] | None = None,
            seeds: Sequence[int] | None = None, faces: str = "all", data: str | None = None, split: str = "test",
            device: str = "cpu", n_faces: int = 16, view: View | str | os.PathLike | None = None) -> Any:
    """The interactive mask explorer (ipywidgets 8): see `explorer_for` for the arguments; `view`: a saved view
    (a JSON file from "save view", or a `View`) to start from. Display the returned app in a notebook cell."""
    ex = explorer_for(source, variants=variants, seeds=seeds, faces=faces, data=data, split=split, device=device,
                      n_faces=n_faces)
    if view is not None:
        if isinstance(view, View):
            ex.set_view(view)
        else:
            ex.load_view(Path(view))
    return ExplorerApp(ex)


def ExplorerApp(ex: Explorer) -> Any:  # noqa: N802 - a factory: ipywidgets loads only when the app is made
    from ablate.explorer._widgets import App

    return App(ex)
