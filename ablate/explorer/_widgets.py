"""The explorer's widgets (ipywidgets 8): each control edits one field of the `View`; every change redraws the
picture (`Explorer.render`) and the tables. No logic lives here beyond that binding."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np

from ablate.explorer._engine import Explorer
from ablate.explorer._render import to_html
from ablate.explorer._state import AGREEMENTS, CORRECT, EXPLAIN_METHODS, SCALES, SORTS, STATS, WHATIF_KINDS

__all__ = ["App"]

CMAPS = ("magma", "viridis", "inferno", "plasma", "cividis", "gray")
_W = {"layout": w.Layout(width="300px"), "style": {"description_width": "100px"}}


class App:
    """The widgets around one `Explorer`: `controls` (field -> widget), `image`, `status`, `whatif`,
    `confusion` (cell buttons), `histogram`. Display it in a notebook cell."""

    def __init__(self, ex: Explorer):
        self.explorer = ex
        self._syncing = False
        classes = list(ex.classes)
        stages: list[tuple[str, int | None]] = [(f"mask{s}", s) for s in ex.stages]
        max_c = self._max_channels()
        c: dict[str, w.ValueWidget] = {
            "columns": w.SelectMultiple(options=list(ex.columns), description="models", rows=min(6, len(ex.columns)),
                                        **_W),
            "true_class": w.SelectMultiple(options=classes, description="true class", rows=4, **_W),
            "pred_class": w.SelectMultiple(options=classes, description="predicted", rows=4, **_W),
            "correct": w.Dropdown(options=CORRECT, description="reference is", **_W),
            "agreement": w.Dropdown(options=AGREEMENTS, description="models agree", **_W),
            "margin": w.FloatRangeSlider(min=0.0, max=1.0, step=0.01, description="margin", **_W),
            "stat": w.Dropdown(options=STATS, description="mask statistic", **_W),
            "stat_stage": w.Dropdown(options=[("shown stage", None), *stages], description="of stage", **_W),
            "sort": w.Dropdown(options=SORTS, description="order by", **_W),
            "n_faces": w.IntSlider(min=1, max=32, description="faces", **_W),
            "page": w.BoundedIntText(min=0, max=10_000, description="page", **_W),
            "stage": w.Dropdown(options=stages or [("no masks", None)], description="stage", **_W),
            "reduction": w.Dropdown(options=ex.reductions(), description="reduction", **_W),
            "channel": w.IntSlider(min=0, max=max(max_c - 1, 0), description="channel", **_W),
            "topk": w.IntSlider(min=1, max=max(min(max_c, 64), 1), description="top-k", **_W),
            "native": w.Checkbox(description="native resolution", indent=False),
            "opacity": w.FloatSlider(min=0.0, max=1.0, step=0.05, description="opacity", **_W),
            "cmap": w.Dropdown(options=CMAPS, description="colours", **_W),
            "scale": w.ToggleButtons(options=SCALES, description="scale", style={"button_width": "90px"}),
            "explain": w.Dropdown(options=EXPLAIN_METHODS, description="attribution", **_W),
            "target": w.Dropdown(options=["pred", *classes], description="for class", **_W),
            "whatif_stage": w.Dropdown(options=[("off", None), *stages], description="switch off", **_W),
            "whatif": w.Dropdown(options=WHATIF_KINDS, description="replace with", **_W),
        }
        self.controls = c
        self.stat_filter = w.Checkbox(description="filter by the statistic", indent=False)
        self.stat_range = w.FloatRangeSlider(min=0.0, max=1.0, step=0.001, description="range", readout_format=".3g",
                                             disabled=True, **_W)
        self.histogram = w.Image(format="png", layout=w.Layout(width="300px"))
        self.image = w.Image(format="png")
        self.status = w.HTML()
        self.whatif = w.HTML()
        self.path = w.Text(value="explorer-view", description="file", **_W)
        buttons = {name: w.Button(description=name) for name in ("save view", "restore view", "export PNG + HTML")}
        buttons["save view"].on_click(lambda _b: self.save())
        buttons["restore view"].on_click(lambda _b: self.restore())
        buttons["export PNG + HTML"].on_click(lambda _b: self.export())
        self.buttons = buttons
        k = len(classes)
        self.cells = [[w.Button(layout=w.Layout(width="44px", height="26px", padding="0")) for _ in range(k)]
                      for _ in range(k)]
        for i in range(k):
            for j in range(k):
                self.cells[i][j].on_click(lambda _b, i=i, j=j: self._toggle_cell(i, j))
        grid = [w.Label("true \\ pred")] + [w.Label(cl[:5]) for cl in classes]
        for i in range(k):
            grid += [w.Label(classes[i][:8]), *self.cells[i]]
        self.confusion = w.GridBox(grid, layout=w.Layout(grid_template_columns=f"80px repeat({k}, 46px)"))
        for name, ctl in c.items():
            ctl.observe(lambda ch, name=name: self._changed(name, ch["new"]), names="value")
        self.stat_filter.observe(lambda ch: self._stat_filter(ch["new"]), names="value")
        self.stat_range.observe(lambda ch: self._changed("stat_range", list(ch["new"])), names="value")
        tabs = w.Tab(children=[
            w.HBox([w.VBox([c["true_class"], c["pred_class"], c["correct"], c["margin"], c["sort"], c["n_faces"],
                            c["page"]]),
                    w.VBox([w.Label("confusion matrix of the reference model (click a cell)"), self.confusion])]),
            w.HBox([w.VBox([c["stat"], c["stat_stage"], self.stat_filter, self.stat_range]), self.histogram]),
            w.VBox([c["columns"], c["agreement"]]),
            w.HBox([w.VBox([c["stage"], c["reduction"], c["channel"], c["topk"]]),
                    w.VBox([c["native"], c["opacity"], c["cmap"], c["scale"]])]),
            w.VBox([c["explain"], c["target"]]),
            w.VBox([c["whatif_stage"], c["whatif"]]),
            w.VBox([self.path, w.HBox(list(buttons.values()))]),
        ])
        tabs.titles = ("faces", "mask statistic", "compare", "look inside", "explain", "what if", "keep")
        self.tabs = tabs
        self.widget = w.VBox([tabs, self.status, self.image, self.whatif])
        self.sync()
        self.refresh()

    # ---- binding --------------------------------------------------------------------------------------------
    def _max_channels(self) -> int:
        ex = self.explorer
        sizes = [ex._config(col).stage_channels[s - 1] for col in ex.columns.values() for s in ex.column_stages(col)]
        return max(sizes, default=1)

    def sync(self) -> None:
        """Set every control from the view (after a restore or a change made in code)."""
        self._syncing = True
        try:
            v = self.explorer.view
            stages: list[tuple[str, int | None]] = [(f"mask{s}", s) for s in self.explorer.stages_of(v)]
            c = self.controls
            for name, options in (("stage", stages or [("no masks", None)]),
                                  ("stat_stage", [("shown stage", None), *stages]),
                                  ("whatif_stage", [("off", None), *stages]),
                                  ("reduction", self.explorer.reductions(v))):
                if list(c[name].options) != list(options):
                    c[name].options = options
            for name, ctl in self.controls.items():
                value = getattr(v, name)
                if isinstance(ctl, (w.SelectMultiple, w.FloatRangeSlider)):
                    value = tuple(value)
                ctl.value = value
            self.stat_filter.value = v.stat_range is not None
            self.stat_range.disabled = v.stat_range is None
            if v.stat_range is not None:
                lo, hi = v.stat_range
                self.stat_range.min = min(self.stat_range.min, lo)
                self.stat_range.max = max(self.stat_range.max, hi)
                self.stat_range.value = (lo, hi)
        finally:
            self._syncing = False

    def _changed(self, name: str, value: Any) -> None:
        if self._syncing:
            return
        if isinstance(value, tuple) and name != "margin":
            value = list(value)
        if name == "margin":
            value = [float(value[0]), float(value[1])]
        try:
            self.explorer.update(**{name: value})
        except (ValueError, KeyError) as exc:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            self.sync()
            return
        if name == "columns":
            self.sync()
        if name in ("stat", "stat_stage", "stage") and self.stat_filter.value:
            self._stat_filter(True)
            return
        self.refresh()

    def _stat_filter(self, on: bool) -> None:
        if self._syncing:
            return
        ex = self.explorer
        if not on:
            ex.update(stat_range=None)
            self.stat_range.disabled = True
            self.refresh()
            return
        values = self._stat_values()
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1e-6
        self._syncing = True
        try:
            self.stat_range.min, self.stat_range.max = -1e9, 1e9  # widen first: min may not pass max
            self.stat_range.value = (lo, hi)
            self.stat_range.min, self.stat_range.max = lo, hi
            self.stat_range.step = (hi - lo) / 200
            self.stat_range.disabled = False
        finally:
            self._syncing = False
        ex.update(stat_range=[lo, hi])
        self.refresh()

    def _stat_values(self) -> np.ndarray:
        import dataclasses

        ex = self.explorer
        v = dataclasses.replace(ex.view, stat_range=None)
        faces = ex.candidates(v, with_stat=False).index.to_numpy()
        return ex.stat_values(faces, v)

    def _toggle_cell(self, i: int, j: int) -> None:
        cl = self.explorer.classes
        cell = [cl[i], cl[j]]
        self.explorer.update(cell=None if self.explorer.view.cell == cell else cell, page=0)
        self.sync()
        self.refresh()

    # ---- drawing --------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        ex = self.explorer
        try:
            r = ex.render()
        except (ValueError, KeyError, FileNotFoundError) as exc:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            return
        self.rendered = r
        self.image.value = r.png
        scale = "; ".join(f"{k} scale {lo:.4g} to {hi:.4g}" for k, (lo, hi) in r.scales.items()) or \
            "each image on its own scale"
        self.status.value = f"{html.escape(r.title)}<br><small>{html.escape(scale)}</small>"
        cm = ex.confusion()
        cell = ex.view.cell
        for i, row in enumerate(self.cells):
            for j, b in enumerate(row):
                b.description = str(int(cm.iat[i, j]))
                b.button_style = "info" if cell == [ex.classes[i], ex.classes[j]] else ""
        if self.stat_filter.value:
            self.histogram.value = self._histogram_png()
        wi = ex.whatif(r.faces)
        self.whatif.value = "" if wi.empty else (
            f"<b>what if mask{ex.view.whatif_stage} is replaced by {ex.view.whatif}</b>: "
            f"{int(wi['changed'].sum())} of {len(wi)} predictions change"
            + wi.to_html(index=False, float_format=lambda x: f"{x:.3f}"))

    def _histogram_png(self) -> bytes:
        import io

        from ablate.report.figures import new_figure

        values = self._stat_values()
        v = self.explorer.view
        fig = new_figure(figsize=(3.2, 1.6), dpi=80)
        ax = fig.subplots()
        finite = values[np.isfinite(values)]
        ax.hist(finite, bins=30, color="#1f4e9c")
        if v.stat_range is not None:
            ax.axvspan(*v.stat_range, color="#f90", alpha=0.3)
        ax.set_title(f"{v.stat} of mask{v.stat_stage or v.stage} ({finite.size} faces)", fontsize=8)
        ax.tick_params(labelsize=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    # ---- keeping a view --------------------------------------------------------------------------------------
    def save(self, path: str | None = None) -> Path:
        p = Path(path or self.path.value).with_suffix(".json")
        self.explorer.save_view(p)
        self.status.value = f"view saved to {html.escape(str(p))}"
        return p

    def restore(self, path: str | None = None) -> None:
        p = Path(path or self.path.value).with_suffix(".json")
        try:
            self.explorer.load_view(p)
        except (OSError, ValueError) as exc:
            self.status.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            return
        self.sync()
        self.refresh()

    def export(self, path: str | None = None) -> tuple[Path, Path]:
        """The current view as PNG and as a self-contained HTML page (opens offline, no kernel needed)."""
        from resmasknet.runtime import atomic_write, atomic_write_text

        base = Path(path or self.path.value)
        r = self.explorer.render()
        png = atomic_write(base.with_suffix(".png"), lambda tmp: Path(tmp).write_bytes(r.png))
        page = atomic_write_text(base.with_suffix(".html"), to_html(self.explorer, r, self.explorer.whatif(r.faces)))
        self.status.value = f"exported {html.escape(str(png))} and {html.escape(str(page))}"
        return Path(png), Path(page)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)
