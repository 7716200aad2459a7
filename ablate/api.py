"""The Python API for a finished (or running) study: open it, read its table, plot it, look inside a trial.

    >>> import ablate
    >>> s = ablate.open_study("quickstart")      # by name, from the project root or from notebooks/
    >>> s.summary()                              # the ablation table (renders in Jupyter)
    >>> s.forest_plot()                          # paired differences to the baseline, with the ROPE
    >>> s.confusion("masks_on")                  # summed over seeds
    >>> rec = s.best("masks_on")                 # a TrialRecord: rec.model(), rec.evaluation()
    >>> ablate.explore(s, variants=["masks_on", "masks_off"], faces="disagree")

`open_study` reads through the same session (`ablate.session`) and trial record (`ablate.trial`) as the
command line: what `ablate summarize` prints, `summary()` returns. Nothing here loads torch until a model is
needed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from ablate.session import Session
    from ablate.study import Study
    from ablate.trial import TrialRecord, TrialSet

__all__ = ["StudyResults", "Summary", "TestFaces", "open_study"]


def open_study(study: str | os.PathLike, out: str | os.PathLike | None = None, *, storage: str | None = None,
               tracking_uri: str | None = None, tiny: bool = False) -> StudyResults:
    """Open a study's results.

    study: a name in `studies/` (`"quickstart"`), a study file, or a study's output folder (`"runs/quickstart"`,
    which opens without its study file). out: the output folder, when it is not `runs/<study>` here or in a
    folder above (a notebook's kernel runs in `notebooks/`; the search finds the project's `runs/`).
    storage / tracking_uri: for a study on a shared database (`postgresql://...`). tiny: the `--tiny` run.
    Raises `ablate.session.StudyNotFound` (one line, saying where it looked) when there are no results."""
    from ablate.session import open_session

    return StudyResults(open_session(study, out, storage=storage, tracking_uri=tracking_uri, tiny=tiny,
                                     progress=False, must_exist=True))


@dataclass
class Summary:
    """A study's ablation table (`ablate.stats.compare_to_baseline`) with its notes. Shows itself in Jupyter;
    `to_markdown()` and `to_latex()` give the README's and the paper's versions; `table` is the raw frame."""

    table: pd.DataFrame
    notes: list[str]
    metric: str
    study: str

    @property
    def label(self) -> str:
        return self.metric.replace("_", " ")

    def to_markdown(self) -> str:
        from ablate import stats

        return stats.to_markdown(self.table, metric_label=self.label)

    def to_latex(self, caption: str | None = None) -> str:
        from ablate import stats

        base = self.table.attrs.get("baseline")
        return stats.to_latex(self.table, metric_label=self.label,
                              caption=caption or f"{self.study}: {self.label}, seed-level comparison with {base}")

    def display(self) -> pd.DataFrame:
        """The table as readable strings (what `_repr_html_` shows)."""
        from ablate import stats

        return stats.display_table(self.table, metric_label=self.label)

    def __str__(self) -> str:
        from ablate import stats

        return stats.format_table(self.table, metric_label=self.label)

    def _repr_html_(self) -> str:
        import html

        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (f"<b>{html.escape(self.study)}</b>: {html.escape(self.label)}"
                + self.display().to_html(index=False, escape=True)
                + (f"<ul style='font-size:smaller'>{notes}</ul>" if notes else ""))


@dataclass
class TestFaces:
    """Test faces in the order of the stored evaluations: `images` uint8 [N, H, W], `labels` [N], `index` [N]
    (each face's position in its source, as `EvalResult.index`), `classes`, and `regions` (generated data)."""

    images: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    classes: tuple[str, ...]
    regions: np.ndarray | None = None
    data: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class StudyResults:
    """One study's results, read through its trial records. Made by `open_study`."""

    session: Session
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # ---- what it is ------------------------------------------------------------------------------------------
    @property
    def study(self) -> Study:
        return self.session.study

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def folder(self) -> Path:
        return Path(self.session.paths.root)

    @cached_property
    def records(self) -> TrialSet:
        """The complete trials' records (`ablate.trial.read_trials`); `refresh()` reads them again."""
        from ablate.trial import read_trials

        trials = read_trials(self.session)
        if not trials.records:
            raise ValueError(f"study {self.name}: no finished trials in {self.folder} ({trials.describe()}); "
                             f"run `ablate run {self.name}` (or wait for its workers)")
        return trials

    def refresh(self) -> StudyResults:
        """Read the trials again (a study still running)."""
        self.__dict__.pop("records", None)
        self._cache.clear()
        return self

    @property
    def variants(self) -> list[str]:
        """The variants with at least one finished trial, in the study's order."""
        have = {r.variant for r in self.records.records}
        order = [v.name for v in self.study.variants] or sorted(have)
        return [v for v in order if v in have]

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.records.records})

    def __repr__(self) -> str:
        try:
            n = len(self.records.records)
        except ValueError:
            n = 0
        return (f"<study {self.name}: {self.study.mode}, {n} finished trials, variants {self.variants if n else []}, "
                f"baseline {self.study.baseline}, in {self.folder}>")

    # ---- tables ----------------------------------------------------------------------------------------------
    def trials(self) -> pd.DataFrame:
        """One row per finished trial: trial, variant, seed, status, every metric (and its folder)."""
        return self.records.frame()

    def summary(self, metric: str = "test_acc", baseline: str | None = None, test: str = "t") -> Summary:
        """The ablation table against the study's baseline (or `baseline`), as `ablate summarize` prints it:
        seed-level intervals, the paired test over seeds (`t` or the exact `sign-flip`), the study's
        equivalence margin, McNemar beside."""
        import dataclasses

        from ablate.summary import summarize

        key = f"summary/{metric}/{baseline}/{test}"
        if key not in self._cache:
            session = self.session
            if baseline is not None and baseline != self.study.baseline:
                self.study.variant(baseline)  # a KeyError naming the variants
                session = dataclasses.replace(session, study=dataclasses.replace(self.study, baseline=baseline))
            result = summarize(session, metric=metric, test=test)
            if "table" not in result:
                raise ValueError(f"study {self.name} is a {self.study.mode} study: no baseline table "
                                 f"(its parameter importances: `ablate summarize {self.name}`)")
            self._cache[key] = Summary(result["table"], list(result["notes"]), metric, self.name)
        return self._cache[key]

    def forest_plot(self, metric: str = "test_acc", baseline: str | None = None, test: str = "t") -> Figure:
        """Each variant's paired difference to the baseline with its interval, the ±ROPE margin shaded."""
        from ablate.report.figures import forest_plot

        _figures_show_in_jupyter()
        s = self.summary(metric, baseline, test)
        fig, _ = forest_plot(s.table, rope=float(self.study.rope) / 100.0, baseline=s.table.attrs.get("baseline"),
                             metric=metric)
        return fig

    def trial(self, variant: str, seed: int) -> TrialRecord:
        """The finished trial of (variant, seed); a KeyError names the variants and seeds there are."""
        rec = self.records.by_cell().get((variant, int(seed)))
        if rec is None:
            if variant not in self.variants:
                raise KeyError(f"study {self.name} has no finished trial of variant {variant!r}; "
                               f"variants: {self.variants}")
            seeds = sorted(r.seed for r in self.records.records if r.variant == variant)
            raise KeyError(f"study {self.name}: variant {variant!r} has no finished trial with seed {seed}; "
                           f"seeds: {seeds}")
        return rec

    def best(self, variant: str | None = None, metric: str = "val_acc") -> TrialRecord:
        """The trial of `variant` (any variant when None) with the highest `metric` (validation accuracy by
        default: choosing by the test split would bias what is then reported on it)."""
        recs = [r for r in self.records.records if variant is None or r.variant == variant]
        if not recs:
            raise KeyError(f"study {self.name} has no finished trial of variant {variant!r}; variants: {self.variants}")
        return max(recs, key=lambda r: (r.metrics.get(metric, float("-inf")), -r.trial))

    def evaluation(self, variant: str, seed: int, name: str = "test") -> Any:
        return self.trial(variant, seed).evaluation(name)

    def confusion(self, variant: str, seed: int | None = None, *, normalize: bool = False,
                  evaluation: str = "test") -> pd.DataFrame:
        """The stored test confusion matrix (rows true, columns predicted) of one trial, or summed over the
        variant's seeds; `normalize` divides each row by its count."""
        import numpy as np
        import pandas as pd

        recs = [self.trial(variant, seed)] if seed is not None else \
            [r for r in self.records.records if r.variant == variant]
        if not recs:
            self.trial(variant, -1)  # the KeyError naming the variants
        evs = [r.evaluation(evaluation) for r in recs]
        cm = np.sum([e.confusion for e in evs], axis=0).astype(float if normalize else np.int64)
        if normalize:
            cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        classes = list(evs[0].classes)
        return pd.DataFrame(cm, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))

    def per_class(self, evaluation: str = "test") -> pd.DataFrame:
        """Precision, recall and F1 per class and variant (mean and sd over seeds), from the stored evaluations."""
        import pandas as pd

        rows = []
        for r in self.records.records:
            ev = r.evaluation(evaluation)
            for k, c in enumerate(ev.classes):
                rows.append({"variant": r.variant, "seed": r.seed, "class": c, "precision": ev.precision[k],
                             "recall": ev.recall[k], "f1": ev.f1[k], "support": int(ev.support[k])})
        df = pd.DataFrame(rows)
        out = df.groupby(["variant", "class"], sort=False)[["precision", "recall", "f1"]].agg(["mean", "std"])
        return out.reindex(pd.MultiIndex.from_product([self.variants, list(ev.classes)], names=["variant", "class"]))

    # ---- faces and models ------------------------------------------------------------------------------------
    def test_faces(self) -> TestFaces:
        """The study's test faces in the order its trials stored their evaluations (loaded once)."""
        if "faces" not in self._cache:
            self._cache["faces"] = load_test_faces(self.study, self.records.records[0])
        return self._cache["faces"]

    def analyse(self, record: TrialRecord | None = None, profile: str = "fast", n_images: int = 64,
                device: str = "cpu", progress: bool = False) -> Any:
        """The mask analysis (`ablate.analysis.analyse`) of one trial's checkpoint on the test faces, with the
        report's profile (`fast`, `standard`, `full`); default: the best trial of the first variant with masks."""
        from ablate.analysis import analyse
        from ablate.report import analysis_options

        opts = analysis_options(profile)
        record = record or self._first_masked()
        faces = self.test_faces()
        data = (faces.images, faces.labels) if faces.regions is None else (faces.images, faces.labels, faces.regions)
        return analyse(record.model(device), data, n_images=n_images, device=device, progress=progress,
                       methods=opts.pop("methods"), **opts)

    def report(self, out: str | os.PathLike | None = None, *, n_images: int = 200, analysis: str = "standard",
               progress: bool = False) -> Path:
        """The study's HTML report (what `ablate report` writes); returns the path of its index.html."""
        from ablate.report import build_report

        return build_report(self.session, None if out is None else Path(out), n_images=n_images,
                            analysis=analysis, progress=progress)

    def explore(self, **kwargs: Any) -> Any:
        """`ablate.explore(self, **kwargs)`: the interactive mask explorer."""
        from ablate.explorer import explore

        return explore(self, **kwargs)

    def _first_masked(self) -> TrialRecord:
        for v in self.variants:
            rec = self.best(v)
            if any(m.get("enabled") for m in rec.config.get("masks", [])):
                return rec
        return self.best()


def _figures_show_in_jupyter() -> None:
    """In IPython, show a returned matplotlib Figure as a PNG: the project draws figures without pyplot (no global
    state), and IPython registers its figure formatter only once pyplot is imported."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    import io

    from matplotlib.figure import Figure

    def png(fig: Figure) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        return buf.getvalue()

    formatter = ip.display_formatter.formatters["image/png"]
    if Figure not in formatter.type_printers:  # matplotlib's own inline printer, when registered, is kept
        formatter.for_type(Figure, png)


def load_test_faces(study: Study, reference: TrialRecord) -> TestFaces:
    """The test split of the study's data, put in the order of `reference`'s stored evaluation (its `index`),
    and checked against its labels: a data file that changed since the study ran is an error, not a mismatch."""
    import numpy as np

    from resmasknet.data import load_data

    spec = study.resolved("data") or study.data
    test = load_data(spec).select("test")
    ev = reference.evaluation("test")
    if test.origin is None:
        rows = ev.index
    else:
        order = np.argsort(test.origin, kind="stable")
        pos = np.searchsorted(test.origin[order], ev.index)
        pos = np.clip(pos, 0, len(order) - 1)
        if not np.array_equal(test.origin[order][pos], ev.index):
            raise ValueError(f"{spec}: the test split does not hold the faces {reference.label} was evaluated on")
        rows = order[pos]
    rows = np.asarray(rows, np.int64)
    if rows.max(initial=-1) >= len(test.labels) or not np.array_equal(test.labels[rows], ev.labels):
        raise ValueError(f"{spec}: the test split's labels differ from those stored with {reference.label}; "
                         f"the data changed since the study ran")
    regions = None if test.regions is None else test.regions[rows]
    return TestFaces(test.images[rows], ev.labels.astype(np.int64), np.asarray(ev.index), tuple(ev.classes),
                     regions, str(spec))
