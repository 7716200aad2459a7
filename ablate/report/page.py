"""One self-contained HTML page, assembled in memory.

Figures are saved as PNG with their raw arrays (.npy / .npz) in ``<folder>/figures/`` and embedded as base64
data URIs; CSS is inline; there are no external URLs, so the page reads offline. Tables are rendered with
every cell as clean text (no ``nan``, ``None``, ``<NA>`` or Python reprs) and scroll sideways inside the page
instead of widening it.

Example:
    >>> page = Page("Ablation report: quickstart", folder)
    >>> page.h("Ablation table"); page.table(df); page.figure(fig, {"x": x}, "forest", "caption")
    >>> page.write()                                   # folder/index.html
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CSS", "MISSING", "Page", "cell_text", "clean_frame"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;color:#222;line-height:1.45;padding:0 1em}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}
.scroll{overflow-x:auto;max-width:100%}.wrap td{white-space:normal}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}
td{white-space:nowrap}th{background:#f0f0f0;vertical-align:bottom}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:.5em 0}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
code{background:#f4f4f4;padding:0 3px}.note{color:#666;font-size:.9em}.warn{color:#a40}
"""

MISSING = "–"  # what an empty cell shows: never "nan", "None" or "<NA>"


def cell_text(x: Any, floatfmt: str = "{:.4g}") -> str:
    """One table cell as text: missing values as ``MISSING``, floats by ``floatfmt``, mappings and sequences
    as ``k: v; ...`` / ``a, b`` (never a Python repr)."""
    if x is None or x is pd.NA or x is pd.NaT:
        return MISSING
    if isinstance(x, (float, np.floating)):
        return MISSING if not math.isfinite(float(x)) else floatfmt.format(float(x))
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, Mapping):
        return "; ".join(f"{k}: {cell_text(v, floatfmt)}" for k, v in x.items()) or MISSING
    if isinstance(x, (list, tuple, np.ndarray)):
        return ", ".join(cell_text(v, floatfmt) for v in np.asarray(x, dtype=object).ravel()) or MISSING
    text = str(x)
    return MISSING if text in ("nan", "NaN", "None", "<NA>", "NaT", "") else text


def clean_frame(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> pd.DataFrame:
    """Every cell of ``df`` as clean text (see `cell_text`); column names as strings."""
    out = pd.DataFrame({str(c): [cell_text(v, floatfmt) for v in df[c].tolist()] for c in df.columns})
    return out.reset_index(drop=True)


class Page:
    """An HTML page assembled in memory; figures go to ``folder/figures`` and are embedded inline."""

    def __init__(self, title: str, folder: str | Path):
        self.title = title
        self.folder = Path(folder)
        self.parts: list[str] = []

    def h(self, text: str, level: int = 2) -> None:
        anchor = "".join(c if c.isalnum() else "-" for c in text.lower())
        self.parts.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')

    def p(self, text: str, cls: str | None = None) -> None:
        c = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{c}>{html.escape(text)}</p>")

    def ul(self, items: Sequence[str], cls: str | None = None) -> None:
        c = f' class="{cls}"' if cls else ""
        self.parts.append(f"<ul{c}>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, df: pd.DataFrame | None, *, floatfmt: str = "{:.4g}", max_rows: int = 200,
              wrap: bool = False) -> None:
        """``df`` as a table of clean text cells; a note when it has no rows or was cut at ``max_rows``.
        ``wrap`` lets cells break at their spaces (an interval "[lo, hi]" over two lines) so that a wide
        table fits the page instead of scrolling."""
        if df is None or df.empty:
            self.p("(no rows)", "note")
            return
        shown = clean_frame(df.head(max_rows), floatfmt)
        cls = "scroll wrap" if wrap else "scroll"
        self.parts.append(f'<div class="{cls}">' + shown.to_html(index=False, border=0, escape=True) + "</div>")
        if len(df) > max_rows:
            self.p(f"first {max_rows} of {len(df)} rows", "note")

    def figure(self, fig: Any, arrays: Mapping[str, np.ndarray], name: str, caption: str = "",
               dpi: int = 100) -> Path:
        """Save ``fig`` (PNG) and ``arrays`` (.npy / .npz) as ``figures/<name>``, embed the PNG; the PNG's path."""
        from ablate.analysis.plots import save_figure

        paths = save_figure(fig, dict(arrays), self.folder / "figures", name, dpi=dpi)
        self.image(paths["png"], caption or name)
        return Path(paths["png"])

    def image(self, png: str | Path, caption: str = "") -> None:
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                          f"<figcaption>{html.escape(caption)} <code>figures/{Path(png).name}</code>"
                          "</figcaption></figure>")

    def render(self) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>"
                f"<h1>{html.escape(self.title)}</h1>\n" + "\n".join(self.parts) + "\n</body></html>\n")

    def write(self, name: str = "index.html") -> Path:
        path = self.folder / name
        path.write_text(self.render(), encoding="utf-8")
        return path
