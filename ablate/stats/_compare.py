"""The comparison table: one row per variant against the baseline, seed-level inference first.

Per variant: mean over seeds with a t-interval; the seed-matched difference to the baseline with its
t-interval; the paired t-test over seeds, Holm-corrected across variants (the test that decides);
P(worse / equivalent / better) within the study's margin (`rope`) from the Bayesian t-test posterior;
the verdict with its reason; the seeds that 80% power at the margin would need; and, labelled for what
it tests, McNemar on the test images pooled over seeds ("these trained models differ on this test set").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ablate.stats._mcnemar import holm, mcnemar_clustered
from ablate.stats._seeds import mean_sd, paired_t, posterior_probs, seeds_needed, sign_flip_p, t_interval
from ablate.stats._validate import (
    StatsWarning,
    as_1d,
    check_baseline,
    check_confidence,
    clean_results,
    paired_values,
    per_variant_constant,
    variant_order,
)
from ablate.stats._verdict import Verdict, decide

TESTS = ("t", "sign-flip")
COLUMNS = ["variant", "n", "mean", "std", "ci_low", "ci_high", "min", "max", "n_pairs", "mean_diff", "sd_diff",
           "diff_ci_low", "diff_ci_high", "p_value", "p_holm", "p_worse", "p_equivalent", "p_better", "verdict",
           "reason", "seeds_needed", "mcnemar_p", "wins", "losses", "params", "macs"]


def variant_summary(results: pd.DataFrame, metric: str = "test_acc", *, confidence: float = 0.95) -> pd.DataFrame:
    """Per variant (in order of appearance): n, mean, std (ddof=1), the t-interval of the mean over seeds,
    and the lowest and highest seed (every cell of the variant lies in [min, max]).
    Rows with a non-finite metric are dropped with a StatsWarning naming them."""
    check_confidence(confidence)
    df = clean_results(results, metric)
    rows = []
    for v in variant_order(results):
        x = df.loc[df["variant"] == v, metric].to_numpy(dtype=float)
        mean, sd = mean_sd(x)
        lo, hi = t_interval(x, confidence)
        rows.append({"variant": v, "n": int(x.size), "mean": mean, "std": sd, "ci_low": lo, "ci_high": hi,
                     "min": float(x.min()) if x.size else math.nan, "max": float(x.max()) if x.size else math.nan})
    out = pd.DataFrame(rows, columns=["variant", "n", "mean", "std", "ci_low", "ci_high", "min", "max"])
    out.attrs.update(metric=metric, confidence=confidence)
    return out


def compare_to_baseline(results: pd.DataFrame, predictions: Mapping[tuple[Any, Any], ArrayLike] | None,
                        y_true: ArrayLike | None, baseline: Hashable, metric: str = "test_acc",
                        alpha: float = 0.05, *, rope: float = 0.005, higher_is_better: bool = True,
                        confidence: float | None = None, test: str = "t", notes: list[str] | None = None,
                        scale: float = 100.0, unit: str = "pp") -> pd.DataFrame:
    """One row per variant (baseline first): the columns in `COLUMNS`; `attrs` holds metric, baseline, rope,
    confidence, alpha, test and `notes` (what was missing and the basis of the verdicts, as lines).

    `results`: columns variant, seed, the metric (and optionally params, macs). `rope`: the margin of
    practical equivalence, in the metric's units (0.005 = 0.5 points of accuracy). `test`: "t" (paired t
    over seeds, the default) or "sign-flip" (exact permutation; with n seeds its p cannot go below 2/2**n).
    `predictions` maps (variant, seed) to predicted labels on the test images (labels `y_true`); when given,
    the McNemar columns are filled; pairs whose predictions are missing are named in `notes`."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    if test not in TESTS:
        raise ValueError(f"test={test!r}: choose one of {', '.join(TESTS)}")
    if not (rope >= 0 and math.isfinite(rope)):
        raise ValueError(f"rope must be a finite number >= 0, got {rope!r}")
    conf = 1.0 - alpha if confidence is None else confidence
    notes = list(notes or [])
    summary = variant_summary(results, metric, confidence=conf)
    variants = list(summary["variant"])
    check_baseline(baseline, variants)
    df = clean_results(results, metric) if not results.empty else results
    others = [v for v in variants if v != baseline]
    sign = 1.0 if higher_is_better else -1.0

    pairs: dict[Any, tuple[list[Any], np.ndarray]] = {}
    raw_p: list[float] = []
    for v in others:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StatsWarning)
            seeds, xv, xb = paired_values(df, metric, v, baseline)
        notes += [str(w.message) for w in caught]
        d = xv - xb
        pairs[v] = (seeds, d)
        if len(seeds) < 2:
            raw_p.append(math.nan)
        elif test == "t":
            raw_p.append(float(paired_t(d)))
        else:
            raw_p.append(sign_flip_p(d))
    adj = dict(zip(others, holm(np.array(raw_p, dtype=float)))) if others else {}

    mc = _mcnemar_columns(predictions, y_true, baseline, pairs, notes)
    test_name = "paired t" if test == "t" else "exact sign-flip"
    rows = []
    for _, srow in summary.iterrows():
        v = srow["variant"]
        row: dict[str, Any] = {k: srow[k] for k in ("variant", "n", "mean", "std", "ci_low", "ci_high", "min", "max")}
        if v == baseline:
            row.update(n_pairs=pd.NA, mean_diff=math.nan, sd_diff=math.nan, diff_ci_low=math.nan,
                       diff_ci_high=math.nan, p_value=math.nan, p_holm=math.nan, p_worse=math.nan,
                       p_equivalent=math.nan, p_better=math.nan, verdict=Verdict.BASELINE.value,
                       reason="the reference every other row is compared with", seeds_needed=pd.NA,
                       mcnemar_p=math.nan, wins=pd.NA, losses=pd.NA)
        else:
            seeds, d = pairs[v]
            mean_d, sd_d = mean_sd(d) if len(d) else (math.nan, math.nan)
            lo, hi = t_interval(d, conf) if len(d) else (math.nan, math.nan)
            p_w, p_e, p_b = posterior_probs(sign * d, rope)
            needed = seeds_needed(float(sd_d), rope, alpha) if len(d) > 1 else None
            verdict, reason = decide(sign * d, float(adj[v]), rope=rope, alpha=alpha, confidence=conf,
                                     n_variants=len(others), needed=needed, scale=scale, unit=unit)
            if test != "t" and verdict not in (Verdict.TOO_FEW,):
                reason = reason.replace("paired t", test_name)
            wins, losses, p_mc = mc.get(v, (pd.NA, pd.NA, math.nan))
            row.update(n_pairs=len(seeds), mean_diff=mean_d, sd_diff=sd_d, diff_ci_low=lo, diff_ci_high=hi,
                       p_value=raw_p[others.index(v)], p_holm=float(adj[v]), p_worse=p_w, p_equivalent=p_e,
                       p_better=p_b, verdict=verdict.value, reason=reason,
                       seeds_needed=needed if needed is not None else pd.NA, mcnemar_p=p_mc, wins=wins,
                       losses=losses)
        rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("params", "macs")])
    for key in ("params", "macs"):
        const = per_variant_constant(results, key, variants)
        out[key] = [const[v] for v in out["variant"]]
    for col in ("n_pairs", "wins", "losses", "seeds_needed"):
        out[col] = out[col].astype("Int64")
    basis = (f"verdicts: {test_name} test over seeds on {metric}, Holm across {len(others)} variant(s), "
             f"alpha {alpha:g}; equivalence: TOST within ±{rope * scale:g} {unit}; McNemar (these trained "
             f"models on this test set) is shown beside and decides nothing")
    out.attrs.update(metric=metric, baseline=baseline, rope=rope, confidence=conf, alpha=alpha, test=test,
                     notes=[basis, *dict.fromkeys(notes)], higher_is_better=higher_is_better)
    return out


def _mcnemar_columns(predictions: Mapping[tuple[Any, Any], ArrayLike] | None, y_true: ArrayLike | None,
                     baseline: Hashable, pairs: dict[Any, tuple[list[Any], np.ndarray]], notes: list[str]
                     ) -> dict[Any, tuple[int, int, float]]:
    """(wins, losses, clustered McNemar p) per variant over the seeds whose predictions both sides have."""
    if predictions is None:
        notes.append("McNemar not computed: no per-image test predictions were given")
        return {}
    if y_true is None:
        raise ValueError("predictions were given without y_true; pass the test labels too")
    y = as_1d(y_true, "y_true")
    out: dict[Any, tuple[int, int, float]] = {}
    for v, (seeds, _) in pairs.items():
        have = [s for s in seeds if (baseline, s) in predictions and (v, s) in predictions]
        lacking = [s for s in seeds if s not in have]
        if lacking:
            notes.append(f"McNemar for {v!r} uses {len(have)} of {len(seeds)} seeds: no test predictions for "
                         f"seed(s) {lacking}")
        if not have:
            continue
        res = mcnemar_clustered(y, [predictions[(baseline, s)] for s in have], [predictions[(v, s)] for s in have])
        out[v] = (res.c, res.b, res.pvalue)  # A = baseline, B = variant: c = variant wins
    return out
