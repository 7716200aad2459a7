"""The comparison table as text: terminal, Markdown, LaTeX, and a clean frame of strings for HTML.

Every format is made from `display_table`, so they show the same cells: metric values in percent with
2 decimals, differences in percentage points with a sign, intervals as [lo, hi], p-values compactly,
P(worse / equivalent / better) as three percentages, params and MACs with SI suffixes; "-" where a value
does not apply. The reasons for the verdicts follow the table as one line per variant (`reasons`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def _missing(x: Any) -> bool:
    try:
        return x is None or bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def fmt_p(p: Any) -> str:
    if _missing(p):
        return "-"
    p = float(p)
    if p == 0.0:
        return "<1e-300"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_si(x: Any) -> str:
    if _missing(x):
        return "-"
    x = float(x)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{suffix}"
    return f"{x:g}"


def _fmt_generic(x: Any) -> str:
    if isinstance(x, (float, np.floating)):
        return "-" if np.isnan(x) else f"{x:.4g}"
    return "-" if _missing(x) else str(x)


def display_table(df: pd.DataFrame, metric_label: str | None = None, *, percent: bool = True) -> pd.DataFrame:
    """The comparison table as a frame of strings with readable headers (no NaN, <NA>, dicts or reprs)."""
    if "variant" not in df.columns or "mean" not in df.columns:  # a frame of another shape: cell by cell
        return pd.DataFrame({str(c): [_fmt_generic(x) for x in df[c]] for c in df.columns})
    scale = 100.0 if percent else 1.0
    label = metric_label or str(df.attrs.get("metric", "metric")).replace("_", " ")
    conf = df.attrs.get("confidence", 0.95)
    base = df.attrs.get("baseline")
    unit = " (%)" if percent else ""

    def num(x: Any, signed: bool = False) -> str:
        if _missing(x):
            return "-"
        v = float(x) * scale
        if percent:
            return f"{v:+.2f}" if signed else f"{v:.2f}"
        return f"{v:+.4g}" if signed else f"{v:.4g}"

    def interval(lo: Any, hi: Any, signed: bool = False) -> str:
        return "-" if _missing(lo) or _missing(hi) else f"[{num(lo, signed)}, {num(hi, signed)}]"

    def probs(r: pd.Series) -> str:
        if any(_missing(r.get(k)) for k in ("p_worse", "p_equivalent", "p_better")):
            return "-"
        return " / ".join(f"{100 * float(r[k]):.0f}" for k in ("p_worse", "p_equivalent", "p_better"))

    cols: dict[str, list[str]] = {
        "variant": [str(v) for v in df["variant"]],
        "seeds": [_fmt_generic(n) for n in df["n"]],
        f"{label}{unit}": [num(m) + ("" if _missing(s) else f" ± {num(s)}") for m, s in zip(df["mean"], df["std"])],
        f"{conf:.0%} CI": [interval(lo, hi) for lo, hi in zip(df["ci_low"], df["ci_high"])],
    }
    if "min" in df.columns:  # every seed's cell lies in this range
        cols["seeds' range"] = [interval(lo, hi) for lo, hi in zip(df["min"], df["max"])]
    if "mean_diff" in df.columns:
        cols[f"Δ vs {base}" + (" (pp)" if percent else "")] = [num(x, True) for x in df["mean_diff"]]
        cols[f"Δ {conf:.0%} CI"] = [interval(lo, hi, True) for lo, hi in zip(df["diff_ci_low"], df["diff_ci_high"])]
        cols["p (Holm)"] = [fmt_p(p) for p in df["p_holm"]]
        cols["P(worse/equiv/better) %"] = [probs(r) for _, r in df.iterrows()]
        cols["verdict"] = [str(v) for v in df["verdict"]]
        if "mcnemar_p" in df.columns and df["mcnemar_p"].notna().any():
            cols["McNemar p*"] = [fmt_p(p) for p in df["mcnemar_p"]]
    for key, name in (("params", "params"), ("macs", "MACs")):
        if key in df.columns and df[key].notna().any():
            cols[name] = [fmt_si(x) for x in df[key]]
    return pd.DataFrame(cols)


def reasons(df: pd.DataFrame) -> list[str]:
    """One line per compared variant: its verdict and the basis, then the table's notes."""
    out = []
    if "reason" in df.columns:
        for _, r in df.iterrows():
            if str(r["verdict"]) != "baseline":
                out.append(f"{r['variant']}: {r['verdict']} ({r['reason']})")
    if "mcnemar_p" in df.columns and df["mcnemar_p"].notna().any():
        out.append("* McNemar: do these trained models differ on this test set (images pooled over seeds)? "
                   "It ignores seed-to-seed variation and decides no verdict.")
    return out + [str(n) for n in df.attrs.get("notes", [])]


def _aligns(table: pd.DataFrame) -> list[str]:
    return ["<" if c in ("variant", "verdict", "parameter") else ">" for c in table.columns]


def format_table(df: pd.DataFrame, metric_label: str | None = None, *, percent: bool = True,
                 with_reasons: bool = True) -> str:
    """Fixed-width text for the terminal, followed by the reasons and notes."""
    t = display_table(df, metric_label, percent=percent)
    headers, rows, aligns = list(t.columns), t.values.tolist(), _aligns(t)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(cells, widths, aligns)).rstrip()

    text = [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    if with_reasons:
        text += [""] + reasons(df)
    return "\n".join(text)


def to_markdown(df: pd.DataFrame, metric_label: str | None = None, *, percent: bool = True,
                with_reasons: bool = True) -> str:
    """The same table as a GitHub Markdown pipe table (pipes in cells escaped), reasons as a list."""
    t = display_table(df, metric_label, percent=percent)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join(":---" if a == "<" else "---:" for a in _aligns(t)) + "|"
    text = [line(t.columns), rule] + [line(r) for r in t.values.tolist()]
    if with_reasons:
        text += [""] + [f"- {r}" for r in reasons(df)]
    return "\n".join(text)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(s))
    return out.replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("*", r"$^{*}$")


def to_latex(df: pd.DataFrame, metric_label: str | None = None, *, percent: bool = True,
             caption: str | None = None) -> str:
    """The same table as a LaTeX `table` with `booktabs` rules (\\usepackage{booktabs}); the reasons go into
    the caption's notes below the tabular."""
    t = display_table(df, metric_label, percent=percent)
    spec = "".join("l" if a == "<" else "r" for a in _aligns(t))
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(_tex(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in row) + r" \\" for row in t.values.tolist()]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{_tex(caption)}}}")
    lines.append(r"\par\footnotesize " + r" \\ ".join(_tex(r) for r in reasons(df)))
    lines.append(r"\end{table}")
    return "\n".join(lines)


def search_importance_table(importances: Mapping[str, float], effects: pd.DataFrame | None = None) -> pd.DataFrame:
    """Optuna parameter importances beside measured effects, most important first. An importance says how
    much the objective varied with a parameter across sampled trials (one seed each, no error bar); a
    seed-paired effect says how large and how certain one change is. Columns: parameter, importance,
    importance_rank, then the columns of `effects` (joined on `parameter`)."""
    names = [str(k) for k in importances]
    values = np.array([float(v) for v in importances.values()], dtype=float)
    if not np.all(np.isfinite(values)):
        bad = [n for n, v in zip(names, values) if not np.isfinite(v)]
        raise ValueError(f"importances must be finite; not finite for {bad}")
    table = pd.DataFrame({"parameter": names, "importance": values})
    table["importance_rank"] = table["importance"].rank(ascending=False, method="min").astype("Int64")
    if effects is not None:
        eff = effects
        if "parameter" not in eff.columns:
            if eff.index.name != "parameter":
                raise ValueError("effects needs a 'parameter' column (or index) to join on; "
                                 f"it has {list(eff.columns)}")
            eff = eff.reset_index()
        eff = eff.assign(parameter=eff["parameter"].astype(str))
        table = table.merge(eff, on="parameter", how="outer", sort=False)
    table = table.sort_values("importance", ascending=False, na_position="last", kind="stable")
    return table.reset_index(drop=True)
