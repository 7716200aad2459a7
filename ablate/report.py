"""Self-contained HTML reports: `ablate report STUDY` (a whole study) and `ablate explain` (single images).

Every figure is saved as PNG with its raw arrays (.npy / .npz) in ``figures/`` and embedded in the HTML
as a base64 data URI; CSS is inline; there are no external URLs, so the page reads offline. The report
is written to a temporary folder beside the destination and renamed into place at the end, so a failed
run never leaves a report that looks complete.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SECTIONS = (
    "Study summary",
    "Ablation table",
    "Accuracy against cost",
    "Confusion matrices",
    "Per-class precision, recall and F1",
    "Misclassified examples",
    "Mask analysis",
    "What the masks do",
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;color:#222;line-height:1.45;padding:0 1em}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:.5em 0}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
code{background:#f4f4f4;padding:0 3px}.note{color:#666;font-size:.9em}.warn{color:#a40}
"""


# --------------------------------------------------------------------------------------------- HTML


class Page:
    """An HTML page assembled in memory; figures go to ``folder/figures`` and are embedded inline."""

    def __init__(self, title: str, folder: Path):
        self.title = title
        self.folder = Path(folder)
        self.parts: list[str] = []

    def h(self, text: str, level: int = 2) -> None:
        anchor = "".join(c if c.isalnum() else "-" for c in text.lower())
        self.parts.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')

    def p(self, text: str, cls: str | None = None) -> None:
        c = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{c}>{html.escape(text)}</p>")

    def raw(self, text: str) -> None:
        self.parts.append(text)

    def ul(self, items: Sequence[str]) -> None:
        self.parts.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, df: pd.DataFrame | None, *, floatfmt: str = "{:.4g}", max_rows: int = 200) -> None:
        if df is None or df.empty:
            self.p("(no rows)", "note")
            return
        df = df.head(max_rows)
        self.parts.append(df.to_html(index=False, border=0, na_rep="-",
                                     float_format=lambda x: floatfmt.format(x)))

    def figure(self, fig: Any, arrays: dict[str, np.ndarray], name: str, caption: str = "", dpi: int = 100) -> Path:
        from ablate.analysis.plots import save_figure

        paths = save_figure(fig, arrays, self.folder / "figures", name, dpi=dpi)
        self.image(paths["png"], caption or name)
        return paths["png"]

    def image(self, png: Path, caption: str = "") -> None:
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{html.escape(caption)} <code>figures/{Path(png).name}</code>"
                          "</figcaption></figure>")

    def render(self) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>\n" + "\n".join(self.parts) + "\n</body></html>\n")


def _figure(**kw: Any):  # noqa: ANN202
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kw)


class _Atomic:
    """Write into a temporary sibling folder; rename onto ``dest`` only on success."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.tmp-", dir=self.dest.parent))
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.dest.exists():
            old = self.dest.with_name(f".{self.dest.name}.old-{int(time.time())}")
            self.dest.rename(old)
        self.tmp.rename(self.dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------- study figures


def confusion(y_true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(pred, int)), 1)
    return cm


def row_normalise(cm: np.ndarray) -> np.ndarray:
    s = cm.sum(axis=1, keepdims=True).astype(float)
    return np.divide(cm, s, out=np.zeros_like(cm, dtype=float), where=s > 0)


def per_class_table(y_true: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    cm = confusion(y_true, pred, len(classes))
    tp = np.diag(cm).astype(float)
    prec = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    rec = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    return pd.DataFrame({"class": list(classes), "precision": prec, "recall": rec, "f1": f1,
                         "support": cm.sum(1)})


def cost_scatter(trials: pd.DataFrame, metric: str = "test_acc"):  # noqa: ANN201
    fig = _figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    g = trials.groupby("variant")
    agg = pd.DataFrame({"mean": g[metric].mean() * 100, "sd": g[metric].std(ddof=1).fillna(0) * 100,
                        "params": g["params"].mean(), "macs": g["macs"].mean()})
    for ax, col, label in ((axes[0], "params", "parameters"), (axes[1], "macs", "MACs per image")):
        for name, r in agg.iterrows():
            ax.errorbar(r[col], r["mean"], yerr=r["sd"], fmt="o", capsize=4, label=str(name))
            ax.annotate(str(name), (r[col], r["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (%) mean ± sd over seeds")
        ax.grid(alpha=.3)
    axes[0].legend(fontsize=8)
    return fig, {"variants": np.array(agg.index.astype(str)), "stats": agg[["mean", "sd", "params", "macs"]].to_numpy()}


def confusion_figure(cms: dict[str, np.ndarray], classes: Sequence[str], baseline: str | None,  # noqa: ANN201
                     counts: str = "counts (sum over seeds)"):
    import seaborn as sns

    names = list(cms)
    rows = 3 if baseline in cms and len(names) > 1 else 2
    fig = _figure(figsize=(4.2 * len(names) + 1, 3.9 * rows))
    axes = np.atleast_2d(fig.subplots(rows, len(names), squeeze=False))
    vmax = max(int(c.max()) for c in cms.values()) or 1
    diffs = ({n: row_normalise(cms[n]) - row_normalise(cms[str(baseline)]) for n in names} if rows == 3
             else {})
    dmax = max([float(np.abs(d).max()) for d in diffs.values()] + [1e-9]) if diffs else 1
    for j, n in enumerate(names):
        sns.heatmap(cms[n], ax=axes[0, j], annot=True, fmt="d", cmap="Blues", vmin=0, vmax=vmax, square=True,
                    xticklabels=classes, yticklabels=classes, cbar=j == len(names) - 1, annot_kws={"size": 7})
        axes[0, j].set_title(f"{n}: {counts}")
        sns.heatmap(row_normalise(cms[n]), ax=axes[1, j], annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1,
                    square=True, xticklabels=classes, yticklabels=classes, cbar=j == len(names) - 1,
                    annot_kws={"size": 6})
        axes[1, j].set_title(f"{n}: row-normalised (recall)")
        if rows == 3:
            sns.heatmap(diffs[n], ax=axes[2, j], annot=True, fmt=".2f", cmap="RdBu_r", vmin=-dmax, vmax=dmax,
                        square=True, xticklabels=classes, yticklabels=classes, cbar=j == len(names) - 1,
                        annot_kws={"size": 6})
            axes[2, j].set_title(f"{n} − {baseline} (row-normalised)")
        for ax in axes[:, j]:
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.tick_params(labelsize=7)
    arrays = {f"counts/{n}": c for n, c in cms.items()}
    arrays.update({f"diff/{n}": d for n, d in diffs.items()})
    return fig, arrays


def misclassified_grid(images: np.ndarray, y_true: np.ndarray, pred: np.ndarray, classes: Sequence[str],
                       n_cells: int = 6, per_cell: int = 8):  # noqa: ANN201
    cm = confusion(y_true, pred, len(classes))
    off = [(int(cm[i, j]), i, j) for i in range(len(classes)) for j in range(len(classes)) if i != j and cm[i, j]]
    off.sort(reverse=True)
    off = off[:n_cells]
    if not off:
        return None, {}
    fig = _figure(figsize=(1.1 * per_cell + 1.5, 1.25 * len(off) + .4))
    axes = np.atleast_2d(fig.subplots(len(off), per_cell, squeeze=False))
    idx_all = np.full((len(off), per_cell), -1)
    for r, (c, i, j) in enumerate(off):
        idx = np.flatnonzero((y_true == i) & (pred == j))[:per_cell]
        idx_all[r, :len(idx)] = idx
        for k in range(per_cell):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k < len(idx):
                ax.imshow(images[idx[k]], cmap="gray", vmin=0, vmax=255)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(f"{classes[i]}→{classes[j]}\n({c})", fontsize=8)
    fig.suptitle("most frequent confusions: true → predicted (count); first test images of each cell")
    return fig, {"index": idx_all, "cells": np.array([[c, i, j] for c, i, j in off])}


# --------------------------------------------------------------------------------- mask narrative


def mask_sentences(tables: dict[str, pd.DataFrame]) -> list[str]:
    """One sentence per stage, every number taken from the analysis tables."""
    st = tables.get("stages")
    if st is None or st.empty:
        return ["This model has no mask stages, so there is nothing to measure."]
    iv = tables.get("interventions", pd.DataFrame())
    out = []
    for r in st.itertuples():
        parts = [f"Stage {r.stage} ({r.mask}, {r.activation} over {r.channels} channels at {r.size}px, "
                 f"{r.application}{'' if r.applied else ', NOT applied'}):"]
        kl, ent = getattr(r, "kl_mean", np.nan), getattr(r, "entropy_mean", np.nan)
        if pd.notna(kl):
            umax = np.log(r.channels)
            parts.append(f"the mask departs from uniform by a mean KL of {kl:.4f} nats "
                         f"({100 * kl / umax:.2f}% of the maximum log C = {umax:.2f}); its normalised channel "
                         f"entropy is {ent:.3f} (1 = uniform).")
        else:
            parts.append(f"mean mask value {r.mask_mean:.3f} (sd {r.mask_std:.3f}), saturated fraction "
                         f"{getattr(r, 'saturation', np.nan):.3f}.")
        parts.append(f"It changes the features by {100 * r.rel_change:.2f}% (relative L2 change "
                     f"||x(1+m) − x|| / ||x||) with a mean gain of {r.gain_mean:.3f}"
                     f" (max {r.gain_max:.3f}).")
        z = iv[(iv["stage"] == r.stage) & (iv["kind"] == "zero")] if not iv.empty else iv
        if not z.empty:
            z = z.iloc[0]
            parts.append(f"Removing it (zero mask) changes accuracy from {100 * z.base_accuracy:.1f}% to "
                         f"{100 * z.accuracy:.1f}% ({100 * z.delta_accuracy:+.1f} points) and flips "
                         f"{100 * z.flip_rate:.1f}% of predictions on {int(z.n)} faces"
                         + (f" ({int(z.broken)} faces go from right to wrong, {int(z.fixed)} from wrong to right; "
                            f"exact McNemar p = {z.mcnemar_p:.2g})." if "mcnemar_p" in z else "."))
        out.append(" ".join(parts))
    return out


# ------------------------------------------------------------------------------------------ analysis


ANALYSIS_PROFILES: dict[str, dict[str, Any]] = {
    # seconds on a CPU: the demo and tests
    "fast": {"methods": ("saliency", "gradcam", "mask_attr"), "steps": 5,
             "intervention_kinds": ("zero", "uniform")},
    # every method and intervention at coarser settings: 500 faces of a CPU preset in minutes on 2 cores
    "standard": {"steps": 10, "attribution_options": {"ig_steps": 16, "occlusion_window": 12,
                                                      "occlusion_stride": 12}},
    # analyse()'s own defaults: IG 32 steps, 8-px occlusion at stride 5, 20 deletion/insertion steps
    "full": {},
}


def analysis_options(profile: str) -> dict[str, Any]:
    """Options for ``analyse`` by profile name (``fast``, ``standard``, ``full``)."""
    if profile not in ANALYSIS_PROFILES:
        raise ValueError(f"unknown analysis profile {profile!r}; choose from {sorted(ANALYSIS_PROFILES)}")
    return dict(ANALYSIS_PROFILES[profile])


def analysis_section(page: Page, model: Any, data: Any, label: str, n_images: int, profile: str,
                     progress: bool, prefix: str) -> Any:
    from ablate.analysis import analyse

    res = analyse(model, data, n_images=n_images, progress=progress, **analysis_options(profile))
    res.save(page.folder / "analysis" / prefix, figures=False)
    page.h(f"{label}", 3)
    page.p(f"{res.meta['n_images']} test images, accuracy on them {100 * res.meta['accuracy']:.1f}%; "
           f"analysis ({profile} profile) took {res.meta['seconds']['total']:.0f} s. Tables and arrays: "
           f"analysis/{prefix}/.", "note")
    captions = {
        "class_means": "per-class mean masks (true class)", "class_diffs": "per-class mean minus the all-class mean",
        "class_gain": "per-class mean effective gain ||x(1+m)||/||x||", "stage_summary": "statistics per stage",
        "captum_panel": "Captum attributions on the 48-px face", "mask_attr_panel": "attribution to each mask",
        "agreement": "mask vs attribution agreement (Spearman)", "interventions": "mask interventions",
        "faithfulness": "deletion / insertion curves", "localisation": "localisation against true regions",
    }
    from tqdm.auto import tqdm

    for name, make in tqdm(list(res.figures.items()), desc=f"figures {prefix}", disable=not progress):
        fig, arrays = make()
        cap = captions.get(name, name.replace("mask_gallery_", "mask gallery, native resolution and over faces: "))
        page.figure(fig, arrays, f"{prefix}_{name}", f"{label}: {cap}")
    for t, title in (("stages", "per-stage mask statistics"), ("interventions", "interventions"),
                     ("agreement", "agreement (mask maps vs attributions)"),
                     ("faithfulness", "faithfulness: deletion / insertion AUC"),
                     ("localisation", "localisation (generated regions)")):
        if t in res.tables:
            page.h(f"{label}: {title}", 4)
            page.table(res.tables[t])
    return res


# -------------------------------------------------------------------------------------------- study


def default_report_dir(session: Any) -> Path:
    return Path("reports") / session.study.name


def build_report(session: Any, out: str | Path | None = None, *, n_images: int = 200, analysis: str = "standard",
                 progress: bool = True, log_mlflow: bool = True) -> Path:
    """Write ``<out>/index.html`` (default ``reports/<study>/``) and attach the folder to the MLflow parent run.

    analysis: the mask-analysis profile (``fast``, ``standard``, ``full``; see ``ANALYSIS_PROFILES``)."""
    from tqdm.auto import tqdm

    from ablate import stats
    from ablate.summary import summarize
    from resmasknet import load_checkpoint
    from resmasknet.data import load_data

    analysis_options(analysis)  # a bad profile fails before any work
    t0 = time.perf_counter()
    study = session.study
    dest = Path(out) if out else default_report_dir(session)
    result = summarize(session)
    trials: pd.DataFrame = result["trials"]
    if trials.empty:
        raise ValueError(f"study {study.name}: no complete trials in {session.paths.root}; run it first")
    with _Atomic(dest) as tmp:
        page = Page(f"Ablation report: {study.name}", tmp)
        page.p(f"generated {time.strftime('%Y-%m-%d %H:%M:%S')}", "note")
        # 1 summary
        page.h(SECTIONS[0])
        variants = [v.name for v in study.variants] or sorted(trials.variant.dropna().unique())
        page.ul([f"study file: {study.path}", f"description: {study.description or '-'}",
                 f"design: {study.mode}, model {study.model}, baseline {study.baseline}",
                 f"variants: {', '.join(variants)}; seeds: {', '.join(map(str, study.seeds))}",
                 f"complete trials: {len(trials)} (cells: {len(variants) * len(study.seeds)})",
                 f"data: {study.data}",
                 f"raw outputs: {Path(session.paths.root).resolve()} (trials/NNNN/ best.pt, predictions.npz, "
                 f"metrics.json, history.json); MLflow: {session.tracking_uri}"])
        cols = [c for c in ("trial", "variant", "seed", "val_acc", "test_acc", "params", "macs", "trial_dir")
                if c in trials]
        page.table(trials[cols])
        # 2 table
        page.h(SECTIONS[1])
        if "table" in result:
            page.raw("<pre>" + html.escape(stats.format_table(result["table"])) + "</pre>")
            page.table(result["table"])
        else:
            page.p("search-mode study: parameter importances instead of a baseline comparison")
            page.table(result.get("importance"))
        # 3 cost
        page.h(SECTIONS[2])
        if trials[["params", "macs", "test_acc"]].notna().all().all():
            fig, arr = cost_scatter(trials)
            page.figure(fig, arr, "accuracy_vs_cost", "test accuracy against parameters and MACs (mean ± sd)")
        # predictions
        preds: dict[str, list[np.ndarray]] = {}
        y_true = None
        for row in trials.itertuples():
            p = Path(str(row.trial_dir)) / "predictions.npz"
            if p.exists():
                z = np.load(p)
                preds.setdefault(str(row.variant), []).append(z["pred"])
                y_true = z["y_true"]
        data = load_data(study.resolved("data") or study.data) if study.data else None
        test = data.select("test") if data is not None else None
        classes = list(getattr(test, "classes", None) or [str(i) for i in range(7)])
        k = len(classes)
        # 4 confusion
        page.h(SECTIONS[3])
        if preds and y_true is not None:
            cms = {v: np.sum([confusion(y_true, p, k) for p in ps], axis=0) for v, ps in preds.items()}
            fig, arr = confusion_figure(cms, classes, study.baseline)
            page.figure(fig, arr, "confusion", "confusion matrices summed over seeds; bottom row: difference "
                        "to the baseline (row-normalised)")
        else:
            page.p("no predictions.npz found in the trial folders", "warn")
        # 5 per class
        page.h(SECTIONS[4])
        if preds and y_true is not None:
            rows = []
            for v, ps in preds.items():
                t = per_class_table(np.concatenate([y_true] * len(ps)), np.concatenate(ps), classes)
                rows.append(t.assign(variant=v))
            page.table(pd.concat(rows)[["variant", "class", "precision", "recall", "f1", "support"]])
        # best checkpoints
        best = trials.sort_values(["val_acc", "test_acc"], ascending=False).drop_duplicates("variant")
        best = best.set_index("variant")
        main = next((v for v in variants if v != study.baseline and v in best.index), None)
        # 6 misclassified
        page.h(SECTIONS[5])
        if main is not None and test is not None and y_true is not None:
            z = np.load(Path(best.loc[main, "trial_dir"]) / "predictions.npz")
            if len(test.images) == len(z["y_true"]):
                fig, arr = misclassified_grid(test.images, z["y_true"], z["pred"], classes)
                if fig is not None:
                    page.figure(fig, arr, "misclassified", f"{main} (seed {best.loc[main, 'seed']}): "
                                "misclassified test images per confusion cell")
            else:
                page.p("the test split does not match the stored predictions; thumbnails skipped", "warn")
        # 7 mask analysis
        page.h(SECTIONS[6])
        results = {}
        analysed = [v for v in (main, study.baseline) if v is not None and v in best.index]
        for v in tqdm(analysed, desc="mask analysis", disable=not progress):
            model, _ = load_checkpoint(Path(best.loc[v, "trial_dir"]) / "best.pt")
            from ablate.analysis import mask_stages

            if not mask_stages(model):
                page.p(f"{v}: no mask stages (skipped).", "note")
                continue
            results[v] = analysis_section(page, model, test, f"{v} (seed {best.loc[v, 'seed']}, best val)",
                                          n_images, analysis, progress, prefix=v)
        if not results:
            page.p("no variant with masks to analyse", "note")
        # 8 narrative
        page.h(SECTIONS[7])
        for v, res in results.items():
            page.h(v, 3)
            page.ul(mask_sentences(res.tables))
        page.p(f"report built in {time.perf_counter() - t0:.0f} s", "note")
        (tmp / "index.html").write_text(page.render(), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps({"study": study.name, "sections": list(SECTIONS),
                                                     "seconds": time.perf_counter() - t0}, indent=1))
    if log_mlflow:
        _attach(session, dest)
    return dest / "index.html"


def _attach(session: Any, folder: Path) -> None:
    try:
        from ablate.runner import load_optuna_study

        parent = load_optuna_study(session).user_attrs.get("mlflow_parent_run_id")
        if parent:
            session.tracker().log_artifacts(parent, str(folder), "report")
    except Exception as exc:  # the report stands on its own; MLflow is a copy
        warnings.warn(f"could not attach the report to MLflow: {exc}", stacklevel=2)


# -------------------------------------------------------------------------------------- checkpoint

CHECKPOINT_SECTIONS = (
    "Checkpoint and data",
    "Confusion matrix",
    "Per-class precision, recall and F1",
    "Misclassified examples",
    "Mask analysis",
    "What the masks do",
)


def build_checkpoint_report(checkpoint: str | Path, data: str | Path, out: str | Path, *, split: str = "test",
                            n_images: int = 500, analysis: str = "standard", skip_bad_rows: bool = False,
                            progress: bool = True) -> Path:
    """`ablate analyse`: one trained network on one data split: accuracy and confusion matrix on the whole
    split, then the mask analysis (probe, Captum, interventions, deletion/insertion) of ``n_images`` of its
    faces and, in numbers, what each stage's mask does. Writes ``<out>/index.html``, ``report.json`` and the
    analysis tables and arrays, atomically."""
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
    with _Atomic(dest) as tmp:
        page = Page(f"Mask analysis: {Path(checkpoint).name} on {split}", tmp)
        page.p(f"generated {time.strftime('%Y-%m-%d %H:%M:%S')}", "note")
        page.h(CHECKPOINT_SECTIONS[0])
        ev = evaluate(model, test, progress=progress)
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
        page.table(per_class_table(ev.labels, ev.predictions, classes))
        page.h(CHECKPOINT_SECTIONS[3])
        fig, arr = misclassified_grid(test.images, ev.labels, ev.predictions, classes)
        if fig is not None:
            page.figure(fig, arr, "misclassified", "misclassified images per confusion cell")
        page.h(CHECKPOINT_SECTIONS[4])
        label = f"{min(n_images, len(test))} of {len(test)} {split} images"
        res = analysis_section(page, model, test, label, n_images, analysis, progress, prefix="model")
        page.h(CHECKPOINT_SECTIONS[5])
        page.ul(mask_sentences(res.tables))
        page.p(f"report built in {time.perf_counter() - t0:.0f} s", "note")
        (tmp / "index.html").write_text(page.render(), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(
            {"checkpoint": str(checkpoint), "data": str(data), "split": split, "n_images": res.meta["n_images"],
             "analysis": analysis, "accuracy": ev.accuracy, "sections": list(CHECKPOINT_SECTIONS),
             "analysis_seconds": res.meta["seconds"], "seconds": time.perf_counter() - t0}, indent=1))
    return dest / "index.html"


# ------------------------------------------------------------------------------------------ explain


def read_image(path: str | Path) -> np.ndarray:
    import cv2

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such image file")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{p}: not a readable image (OpenCV could not decode it)")
    return img


def face_detector():  # noqa: ANN201
    """OpenCV's bundled frontal-face Haar cascade, or None where this OpenCV build lacks it (OpenCV 5
    removed ``CascadeClassifier`` and no longer ships ``cv2.data.haarcascades``); nothing is downloaded."""
    import cv2

    path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "") / "haarcascade_frontalface_default.xml"
    if not hasattr(cv2, "CascadeClassifier") or not path.is_file():
        return None
    c = cv2.CascadeClassifier(str(path))
    return None if c.empty() else c


def detect_face(img_bgr: np.ndarray, margin: float = 0.2) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """The largest Haar-cascade face, cropped with ``margin``, grey, 48x48 uint8; (whole image, None) if none."""
    import cv2

    grey = cv2.cvtColor(img_bgr, cv2.COLOR_BGR2GRAY) if img_bgr.ndim == 3 else img_bgr
    cascade = face_detector()
    faces = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24)) \
        if cascade is not None and min(grey.shape) >= 24 else ()
    box = None
    crop = grey
    if len(faces):
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        m = int(margin * max(w, h))
        x0, y0 = max(0, x - m), max(0, y - m)
        x1, y1 = min(grey.shape[1], x + w + m), min(grey.shape[0], y + h + m)
        crop = grey[y0:y1, x0:x1]
        box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    face = cv2.resize(crop, (48, 48), interpolation=cv2.INTER_AREA)
    return face.astype(np.uint8), box


def explain(checkpoint: str | Path, images: Sequence[str | Path], out: str | Path, *, progress: bool = False,
            methods: Sequence[str] = ("saliency", "ig", "gradcam", "mask_attr")) -> Path:
    """Per-image page: face detection, class probabilities, masks per stage and attributions."""
    import cv2

    from ablate.analysis import attribute, mask_stages, predict, probe
    from ablate.analysis.plots import captum_panel, mask_gallery
    from resmasknet import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    model.eval()
    loaded = [(Path(p), read_image(p)) for p in images]  # fail early, naming the path
    faces, notes = [], []
    for p, img in loaded:
        face, box = detect_face(img)
        if box is None:
            why = "no face found" if face_detector() is not None else (
                f"no face found (no Haar face detector in OpenCV {cv2.__version__}; opencv-python-headless<5 "
                "ships one)")
            msg = f"{p}: {why}; using the whole image"
            warnings.warn(msg, stacklevel=2)
            print(f"warning: {msg}")
        else:
            msg = f"{p}: face at x={box[0]} y={box[1]} w={box[2]} h={box[3]} (with margin)"
        faces.append(face)
        notes.append(msg)
    faces_arr = np.stack(faces)
    pred0, _ = predict(model, faces_arr)  # no true labels: the probe groups by the prediction
    pr = probe(model, faces_arr, pred0, max_keep=len(faces_arr), progress=progress)
    classes = list(pr.classes)
    dest = Path(out)
    with _Atomic(dest) as tmp:
        page = Page(f"ablate explain: {Path(checkpoint).name}", tmp)
        page.p(f"checkpoint {Path(checkpoint).resolve()}", "note")
        page.h("Faces and class probabilities")
        probs = pd.DataFrame(pr.probs, columns=classes)
        probs.insert(0, "prediction", [classes[i] for i in pr.preds])
        probs.insert(0, "image", [str(p) for p, _ in loaded])
        page.ul(notes)
        page.table(probs, floatfmt="{:.3f}")
        for (p, _), row in zip(loaded, pr.probs):
            print(f"{p}: " + ", ".join(f"{c} {v:.3f}" for c, v in sorted(zip(classes, row), key=lambda t: -t[1])))
        fig = _figure(figsize=(1.6 * len(faces_arr) + .5, 2.0))
        axes = np.atleast_1d(fig.subplots(1, len(faces_arr), squeeze=False)[0])
        for ax, f, i in zip(axes, faces_arr, pr.preds):
            ax.imshow(f, cmap="gray", vmin=0, vmax=255)
            ax.set_title(classes[i], fontsize=8)
            ax.axis("off")
        page.figure(fig, {"faces": faces_arr}, "faces", "the 48-px faces given to the model")
        page.h("Masks per stage")
        stages = mask_stages(model)
        if not stages:
            page.p("this model has no mask stages", "note")
        for st in stages:
            fig, arr = mask_gallery(pr, faces_arr, st.stage, n=len(faces_arr))
            page.figure(fig, arr, f"mask_{st.name}", f"{st.name}: native resolution and over the face")
        page.h("Attributions")
        ms = [m for m in methods if m != "mask_attr" or stages]
        attrs = attribute(model, faces_arr, None, methods=ms, progress=progress)
        fig, arr = captum_panel(faces_arr, attrs, n=len(faces_arr))
        page.figure(fig, arr, "attributions", "Captum attributions for the predicted class")
        (tmp / "index.html").write_text(page.render(), encoding="utf-8")
        probs.to_csv(tmp / "probabilities.csv", index=False)
    return dest / "index.html"
