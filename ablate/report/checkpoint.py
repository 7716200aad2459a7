"""`ablate analyse CKPT --data D`: one trained network on one data split, as a self-contained HTML report:
accuracy, confusion matrix and per-class metrics on the whole split (one `evaluate`, shown as it returns
them), misclassified faces, then the mask analysis of ``n_images`` of its faces and, in numbers, what each
stage's mask does. Written atomically (`resmasknet.runtime.atomic_dir`).

Example:
    >>> build_checkpoint_report("runs/quickstart/trials/0000/best.pt", "generated", "reports/analyse/0000")
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ablate.report.analysis_section import analysis_options, analysis_section
from ablate.report.figures import confusion_figure, misclassified_grid
from ablate.report.narrative import mask_sentences
from ablate.report.page import Page
from resmasknet.runtime import atomic_dir

if TYPE_CHECKING:
    from resmasknet.evaluate import EvalResult

__all__ = ["CHECKPOINT_SECTIONS", "build_checkpoint_report", "per_class_table"]

CHECKPOINT_SECTIONS = (
    "Checkpoint and data",
    "Confusion matrix",
    "Per-class precision, recall and F1",
    "Misclassified examples",
    "Mask analysis",
    "What the masks do",
)


def per_class_table(ev: EvalResult) -> pd.DataFrame:
    """An EvalResult's own per-class precision, recall, F1 and support, one row per class."""
    return pd.DataFrame({"class": list(ev.classes), "precision": ev.precision, "recall": ev.recall,
                         "f1": ev.f1, "support": ev.support})


def build_checkpoint_report(checkpoint: str | Path, data: str | Path, out: str | Path, *, split: str = "test",
                            n_images: int = 500, analysis: str = "standard", skip_bad_rows: bool = False,
                            progress: bool = True, device: str | None = None) -> Path:
    """Writes ``<out>/index.html``, ``report.json`` and the analysis tables and arrays; returns the page.
    device: where evaluation and analysis run (default: CUDA when available)."""
    from resmasknet import load_checkpoint
    from resmasknet.data import load_data
    from resmasknet.evaluate import evaluate

    analysis_options(analysis)
    t0 = time.perf_counter()
    model, ckpt = load_checkpoint(checkpoint)
    faces = load_data(data, skip_bad_rows=skip_bad_rows)
    test = faces.select(split)
    if len(test) == 0:
        raise ValueError(f"{data}: split {split!r} holds no images")
    dest = Path(out)
    with atomic_dir(dest) as tmp:
        page = Page(f"Mask analysis: {Path(checkpoint).name} on {split}", tmp)
        page.p(f"generated {time.strftime('%Y-%m-%d %H:%M:%S')}", "note")
        page.h(CHECKPOINT_SECTIONS[0])
        ev = evaluate(model, test, progress=progress, device=device)  # moves the model there
        classes = list(ev.classes)
        meta = ckpt.get("metadata", {})
        page.ul([f"checkpoint: {Path(checkpoint).resolve()}",
                 f"network: {model.config.to_json()}",
                 f"data: {faces!r}; split {split}: {len(test)} images",
                 f"accuracy on the whole split (no TTA): {100 * ev.accuracy:.2f}%",
                 f"checkpoint metadata: {json.dumps(meta, default=str)[:600]}"])
        page.h(CHECKPOINT_SECTIONS[1])
        fig, arr = confusion_figure({"model": ev.confusion}, classes, None, counts="counts")
        page.figure(fig, arr, "confusion", f"confusion matrix on {split} ({len(test)} images)")
        page.h(CHECKPOINT_SECTIONS[2])
        page.table(per_class_table(ev), floatfmt="{:.3f}")
        page.h(CHECKPOINT_SECTIONS[3])
        # evaluate() keeps the split's order, so row i of the evaluation is test.images[i]
        grid, arr = misclassified_grid(test.images, ev.confusion, ev.labels, ev.predictions, classes)
        if grid is not None:
            page.figure(grid, arr, "misclassified", "misclassified images per confusion cell")
        else:
            page.p("no misclassified images", "note")
        page.h(CHECKPOINT_SECTIONS[4])
        label = f"{min(n_images, len(test))} of {len(test)} {split} images"
        res = analysis_section(page, model, test, label=label, n_images=n_images, profile=analysis,
                               progress=progress, prefix="model")
        page.h(CHECKPOINT_SECTIONS[5])
        page.ul(mask_sentences(res.tables))
        page.p(f"report built in {time.perf_counter() - t0:.0f} s", "note")
        page.write()
        (tmp / "report.json").write_text(json.dumps(
            {"checkpoint": str(checkpoint), "data": str(data), "split": split, "n_images": res.meta["n_images"],
             "analysis": analysis, "accuracy": ev.accuracy,
             "device": str(next(model.parameters()).device), "sections": list(CHECKPOINT_SECTIONS),
             "analysis_seconds": res.meta["seconds"], "seconds": time.perf_counter() - t0}, indent=1))
    return dest / "index.html"
