"""Statistics for ablation grids: seed-level error bars, paired comparisons, McNemar, Holm.

Why this module exists
----------------------
An ablation of ResMaskingNet trains every variant with the same few seeds (3-5: each run costs
hours). With so few seeds a rank test cannot say anything: the smallest two-sided p-value a
Wilcoxon signed-rank test can reach with 5 pairs is 2/2**5 = 0.0625, so "not significant" would
be guaranteed and meaningless. This module instead reports two kinds of uncertainty side by side:

* training randomness, from the seeds: a bootstrap confidence interval of each variant's mean
  (:func:`variant_summary`) and of its seed-matched difference to a baseline
  (:func:`paired_differences`). Pairing by seed removes whatever the seeds share (data order,
  initialisation of the common parts), which is usually most of the seed-to-seed spread;
* test-set randomness, from the per-image predictions: exact McNemar tests on discordant images
  (:func:`mcnemar_exact` for one pair of models, :func:`mcnemar_clustered` for several seed pairs
  at once), Holm-corrected across the variants compared with one baseline (:func:`holm`).

:func:`compare_to_baseline` joins both into one row per variant with a plain-words verdict, and
:func:`format_table` / :func:`to_markdown` print it. :func:`search_importance_table` puts Optuna's
parameter importances next to measured effects.

Everything here is a pure function of numpy arrays and pandas frames (no torch, no MLflow), so it
runs on results pulled from anywhere.

Example
-------
>>> import pandas as pd
>>> from ablate.stats import compare_to_baseline, format_table, holm, mcnemar_exact
>>> float(mcnemar_exact([0] * 6, [1] * 6, [0] * 6).pvalue)  # 0 vs 6 discordant images
0.03125
>>> [round(float(p), 4) for p in holm([0.01, 0.04, 0.03])]
[0.03, 0.06, 0.06]
>>> results = pd.DataFrame({
...     "variant": ["full"] * 3 + ["no_mask"] * 3,
...     "seed": [1, 2, 3] * 2,
...     "test_acc": [0.741, 0.738, 0.744, 0.726, 0.722, 0.729],
... })
>>> table = compare_to_baseline(results, None, None, baseline="full")
>>> table.loc[1, "verdict"]
'worse than baseline'
>>> print(format_table(table))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "CIMethod",
    "ClusteredMcNemarResult",
    "McNemarResult",
    "StatsWarning",
    "compare_to_baseline",
    "format_table",
    "holm",
    "mcnemar_clustered",
    "mcnemar_exact",
    "paired_differences",
    "search_importance_table",
    "to_markdown",
    "variant_summary",
]

CIMethod = Literal["percentile", "BCa", "basic"]

# Verdict phrases, kept as constants so callers (reports, tests) can match on them.
VERDICT_BASELINE = "baseline"
VERDICT_BETTER = "better than baseline"
VERDICT_WORSE = "worse than baseline"
VERDICT_CI_SPANS_0 = "no detectable difference (CI spans 0)"
VERDICT_NOT_SIGNIFICANT = "no detectable difference (McNemar not significant after Holm)"
VERDICT_DISAGREE = "inconclusive (seed CI and McNemar point in opposite directions)"
VERDICT_TOO_FEW = "cannot judge (fewer than 2 paired seeds)"

# The keyword that takes the random generator changed name in SciPy 1.15 (random_state -> rng);
# pyproject allows scipy>=1.11, so pick whichever this SciPy has.
_RNG_KW = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


class StatsWarning(UserWarning):
    """Data were dropped or a fallback was taken; the numbers are still computed."""


class McNemarResult(NamedTuple):
    """Exact McNemar test of two classifiers on the same images.

    ``b``: images model A got right and model B wrong; ``c``: A wrong, B right;
    ``statistic``: ``min(b, c)`` (the binomial count the exact test uses, as statsmodels does);
    ``pvalue``: two-sided exact binomial p-value, 1.0 when there is no discordant image.
    """

    b: int
    c: int
    statistic: int
    pvalue: float


class ClusteredMcNemarResult(NamedTuple):
    """McNemar over several seed pairs, with the image as the unit (see :func:`mcnemar_clustered`).

    ``b``/``c``: discordant (image, seed) pairs summed over seeds, oriented as in
    :class:`McNemarResult`; ``n_images``: images discordant in at least one seed pair with a
    non-zero net count; ``statistic``: ``c - b``, the net number of images B wins summed over seeds;
    ``pvalue``: exact two-sided sign-flip p-value.
    """

    b: int
    c: int
    n_images: int
    statistic: int
    pvalue: float


# --------------------------------------------------------------------------------------------
# validation helpers


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _check_method(method: str) -> None:
    if method not in ("percentile", "BCa", "basic"):
        raise ValueError(f"method must be 'percentile', 'BCa' or 'basic', got {method!r}")


def _sorted_if_possible(values: Sequence[Any]) -> list[Any]:
    """Sort for stable error messages and seed order; mixed types keep their given order."""
    try:
        return sorted(values)
    except TypeError:
        return list(values)


def _variant_order(results: pd.DataFrame) -> list[Any]:
    """Variants in order of first appearance: the order the study declared them in."""
    return list(pd.unique(results["variant"]))


def _clean_results(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Validate a results frame and drop rows whose metric is not finite (failed/pruned runs).

    Duplicated (variant, seed) rows are an error rather than averaged: a re-run that silently
    counts twice would make a variant look more certain than it is.
    """
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"results must be a pandas DataFrame, got {type(results).__name__}")
    missing = [c for c in ("variant", "seed", metric) if c not in results.columns]
    if missing:
        raise ValueError(f"results lacks column(s) {missing}; it has {list(results.columns)}")
    df = results.copy()
    try:
        df[metric] = pd.to_numeric(df[metric]).astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metric column {metric!r} is not numeric") from exc
    bad = ~np.isfinite(df[metric].to_numpy())
    if bad.any():
        dropped = list(zip(df.loc[bad, "variant"], df.loc[bad, "seed"]))
        warnings.warn(
            f"dropping {int(bad.sum())} row(s) with a non-finite {metric!r}: (variant, seed) {dropped}",
            StatsWarning,
            stacklevel=3,
        )
        df = df.loc[~bad]
    dup = df.duplicated(["variant", "seed"], keep=False)
    if dup.any():
        pairs = _sorted_if_possible(list(set(zip(df.loc[dup, "variant"], df.loc[dup, "seed"]))))
        raise ValueError(
            f"results has several rows for (variant, seed) {pairs}; aggregate or drop the repeats first"
        )
    return df


def _check_baseline(baseline: Hashable, variants: Sequence[Any]) -> None:
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not in results; available variants: {list(variants)}")


def _per_variant_constant(results: pd.DataFrame, column: str, variants: Sequence[Any]) -> dict[Any, Any]:
    """Carry a per-variant constant (params, MACs) beside the statistics.

    Several different values for one variant mean the grouping is wrong, so that is an error.
    """
    if column not in results.columns:
        return {v: np.nan for v in variants}
    out: dict[Any, Any] = {}
    for v in variants:
        values = pd.unique(results.loc[results["variant"] == v, column].dropna())
        if len(values) > 1:
            raise ValueError(f"variant {v!r} has several {column!r} values {list(values)}; expected one")
        out[v] = values[0] if len(values) else np.nan
    return out


def _as_1d(x: ArrayLike, name: str) -> NDArray[Any]:
    arr = np.asarray(x)
    if arr.ndim != 1:
        hint = " (for scores or probabilities pass .argmax(axis=1))" if arr.ndim == 2 else ""
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}{hint}")
    return arr


# --------------------------------------------------------------------------------------------
# bootstrap


def _bootstrap_mean_ci(
    x: ArrayLike, *, confidence: float, n_resamples: int, seed: int | None, method: CIMethod
) -> tuple[float, float, str]:
    """Bootstrap CI of a mean, with explicit answers for the degenerate cases.

    Returns ``(low, high, how)``. ``how`` is the method actually used, or ``"single value"``
    (n=1: no spread can be estimated, CI is NaN), ``"constant"`` (every value equal: every
    resample has the same mean, so the bootstrap CI is the point [mean, mean]; this reflects the
    data, not certainty) or ``"none"`` (no data). 'BCa' that comes out undefined falls back to
    'percentile' and ``how`` says so.
    """
    arr = np.asarray(x, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, "none"
    if arr.size == 1:
        return math.nan, math.nan, "single value"
    if np.ptp(arr) == 0.0:
        v = float(arr[0])
        return v, v, "constant"
    tried = [method] if method == "percentile" else [method, "percentile"]
    for m in tried:
        with warnings.catch_warnings():
            # BCa warns (DegenerateDataWarning, RuntimeWarning) when its acceleration is undefined;
            # the NaN it then returns is handled below by falling back.
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (arr,),
                np.mean,
                confidence_level=confidence,
                n_resamples=n_resamples,
                method=m,
                vectorized=True,
                **{_RNG_KW: np.random.default_rng(seed)},
            )
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(lo) and np.isfinite(hi):
            return lo, hi, m if m == method else f"{m} (fallback from {method})"
    return math.nan, math.nan, "failed"


# --------------------------------------------------------------------------------------------
# 1. per-variant summary


def variant_summary(
    results: pd.DataFrame,
    metric: str = "test_acc",
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | None = 0,
    method: CIMethod = "percentile",
) -> pd.DataFrame:
    """Mean, spread and bootstrap CI of ``metric`` over seeds, one row per variant.

    ``results`` has columns ``variant``, ``seed``, ``metric`` and optionally ``params``, ``macs``
    (constant within a variant; carried beside). Rows with a non-finite metric are dropped with a
    :class:`StatsWarning` (a failed run must not count as a zero); a variant left with no rows
    stays in the table with ``n = 0``.

    Returned columns: ``variant, n, mean, std, ci_low, ci_high, ci_method, params, macs``.
    ``std`` uses ddof=1 (NaN for n=1). The CI is a bootstrap of the mean over seeds
    (``scipy.stats.bootstrap``). Why percentile by default: with 3-5 values BCa's acceleration
    estimate rests on a jackknife of 3-5 points, and the percentile interval is easy to read (with
    3 seeds at 95% its ends are essentially the smallest and largest values). Either way a
    bootstrap over 3-5 seeds cannot be wider than the observed range, so it under-covers: read it
    as descriptive. Degenerate cases do not raise: n=1 gives a NaN CI (``ci_method="single
    value"``); identical values give ``[mean, mean]`` (``"constant"``); 'BCa' that is undefined
    falls back to 'percentile'.

    ``seed`` seeds the resampling generator so tables are reproducible.
    """
    _check_confidence(confidence)
    _check_method(method)
    df = _clean_results(results, metric)
    variants = _variant_order(results)
    params = _per_variant_constant(results, "params", variants)
    macs = _per_variant_constant(results, "macs", variants)
    rows = []
    for v in variants:
        x = df.loc[df["variant"] == v, metric].to_numpy(dtype=float)
        lo, hi, how = _bootstrap_mean_ci(
            x, confidence=confidence, n_resamples=n_resamples, seed=seed, method=method
        )
        rows.append(
            {
                "variant": v,
                "n": int(x.size),
                "mean": float(x.mean()) if x.size else math.nan,
                "std": float(x.std(ddof=1)) if x.size > 1 else math.nan,
                "ci_low": lo,
                "ci_high": hi,
                "ci_method": how,
                "params": params[v],
                "macs": macs[v],
            }
        )
    out = pd.DataFrame(
        rows, columns=["variant", "n", "mean", "std", "ci_low", "ci_high", "ci_method", "params", "macs"]
    )
    out.attrs.update(metric=metric, confidence=confidence)
    return out


# --------------------------------------------------------------------------------------------
# 2. paired differences


def _paired_values(
    df: pd.DataFrame, metric: str, variant: Any, baseline: Any
) -> tuple[list[Any], NDArray[np.float64], NDArray[np.float64]]:
    """Seed-matched values of ``variant`` and ``baseline``; error if they share no seed."""
    base = df.loc[df["variant"] == baseline].set_index("seed")[metric]
    other = df.loc[df["variant"] == variant].set_index("seed")[metric]
    common = _sorted_if_possible(list(set(base.index) & set(other.index)))
    if not common:
        raise ValueError(
            f"variant {variant!r} shares no seed with baseline {baseline!r}: "
            f"{variant!r} has seeds {_sorted_if_possible(list(other.index))}, "
            f"baseline seeds {_sorted_if_possible(list(base.index))} are all missing from it"
        )
    unpaired = _sorted_if_possible(list(set(base.index) ^ set(other.index)))
    if unpaired:
        warnings.warn(
            f"variant {variant!r} vs baseline {baseline!r}: seeds {unpaired} are not in both; "
            f"comparing on the {len(common)} common seed(s) {common}",
            StatsWarning,
            stacklevel=3,
        )
    return (
        common,
        other.loc[common].to_numpy(dtype=float),
        base.loc[common].to_numpy(dtype=float),
    )


def paired_differences(
    results: pd.DataFrame,
    baseline: Hashable,
    metric: str = "test_acc",
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | None = 0,
    method: CIMethod = "percentile",
) -> pd.DataFrame:
    """Seed-matched difference ``variant - baseline`` of ``metric`` with a bootstrap CI.

    Why paired: runs with the same seed share data order and the initialisation of common
    layers, so their results move together; differencing within a seed removes that shared
    noise, and the CI of the mean difference is often far narrower than the two marginal CIs
    suggest. Only seeds present for both are used (a :class:`StatsWarning` lists the others); a
    variant with no common seed is a ``ValueError`` naming it and the missing seeds.

    The CI is the bootstrap of the per-seed differences, which resamples exactly what
    ``scipy.stats.bootstrap((variant, baseline), stat, paired=True)`` resamples (seed indices),
    with the same degenerate-case rules as :func:`variant_summary`.

    Returned columns, one row per non-baseline variant in order of appearance:
    ``variant, baseline, n_pairs, seeds, mean_diff, std_diff, diff_ci_low, diff_ci_high,
    ci_method`` (``seeds`` is a tuple of the paired seeds).
    """
    _check_confidence(confidence)
    _check_method(method)
    df = _clean_results(results, metric)
    variants = _variant_order(results)
    _check_baseline(baseline, variants)
    rows = []
    for v in variants:
        if v == baseline:
            continue
        seeds, xv, xb = _paired_values(df, metric, v, baseline)
        d = xv - xb
        lo, hi, how = _bootstrap_mean_ci(
            d, confidence=confidence, n_resamples=n_resamples, seed=seed, method=method
        )
        rows.append(
            {
                "variant": v,
                "baseline": baseline,
                "n_pairs": len(seeds),
                "seeds": tuple(seeds),
                "mean_diff": float(d.mean()),
                "std_diff": float(d.std(ddof=1)) if d.size > 1 else math.nan,
                "diff_ci_low": lo,
                "diff_ci_high": hi,
                "ci_method": how,
            }
        )
    out = pd.DataFrame(
        rows,
        columns=[
            "variant",
            "baseline",
            "n_pairs",
            "seeds",
            "mean_diff",
            "std_diff",
            "diff_ci_low",
            "diff_ci_high",
            "ci_method",
        ],
    )
    out.attrs.update(metric=metric, confidence=confidence, baseline=baseline)
    return out


# --------------------------------------------------------------------------------------------
# 3. McNemar


def _correct(y_true: NDArray[Any], pred: ArrayLike, name: str) -> NDArray[np.bool_]:
    p = _as_1d(pred, name)
    if p.shape[0] != y_true.shape[0]:
        raise ValueError(f"{name} has {p.shape[0]} predictions but y_true has {y_true.shape[0]} labels")
    return np.asarray(p == y_true, dtype=bool)


def mcnemar_exact(y_true: ArrayLike, pred_a: ArrayLike, pred_b: ArrayLike) -> McNemarResult:
    """Exact (binomial) McNemar test: do classifiers A and B err on the same test images equally?

    Only discordant images carry information: ``b`` = A right and B wrong, ``c`` = A wrong and B
    right. Under the null each discordant image is a fair coin, so the p-value is the two-sided
    ``scipy.stats.binomtest(min(b, c), b + c, 0.5)``; with no discordant image p = 1. The exact
    form is used because the chi-square version is poor when ``b + c`` is small.

    This treats the two trained models as fixed: it measures test-set noise, not seed noise.
    """
    y = _as_1d(y_true, "y_true")
    ca = _correct(y, pred_a, "pred_a")
    cb = _correct(y, pred_b, "pred_b")
    b = int(np.count_nonzero(ca & ~cb))
    c = int(np.count_nonzero(~ca & cb))
    p = 1.0 if b + c == 0 else float(stats.binomtest(min(b, c), b + c, 0.5).pvalue)
    return McNemarResult(b=b, c=c, statistic=min(b, c), pvalue=min(1.0, p))


def _sign_flip_pvalue(d: NDArray[np.int64]) -> float:
    """Exact two-sided p of ``sum(d)`` when each non-zero ``d_i`` keeps or flips its sign at random.

    The null distribution of ``T = sum_i s_i |d_i|`` (s_i = +-1) is, grouping equal ``|d_i| = k``
    (m_k of them), a sum of independent ``k * (2 Binomial(m_k, 1/2) - m_k)``: convolved exactly
    on the integer grid. Its support is at most ``2 * n_seeds * n_images + 1`` points.
    """
    a = np.abs(d[d != 0]).astype(np.int64)
    if a.size == 0:
        return 1.0
    t = abs(int(d.sum()))
    ks, counts = np.unique(a, return_counts=True)
    pmf = np.ones(1)
    for k, m in zip(ks.tolist(), counts.tolist()):
        comp = np.zeros(2 * k * m + 1)
        comp[:: 2 * k] = stats.binom.pmf(np.arange(m + 1), m, 0.5)
        pmf = np.convolve(pmf, comp)
    half = (pmf.size - 1) // 2
    values = np.arange(-half, half + 1)
    return float(min(1.0, pmf[np.abs(values) >= t].sum()))


def mcnemar_clustered(
    y_true: ArrayLike, preds_a: Sequence[ArrayLike], preds_b: Sequence[ArrayLike]
) -> ClusteredMcNemarResult:
    """McNemar over several seed pairs at once, with the image as the independent unit.

    ``preds_a[s]`` and ``preds_b[s]`` are the predictions of the seed-``s`` models of A and B on
    the same images. For each image, ``d_i`` = (seeds where B is right and A wrong) - (seeds where
    A is right and B wrong). Under the null that A and B are exchangeable on each image, ``d_i`` is
    symmetric about 0, so the exact test flips the sign of each image's ``d_i`` at random.

    Why not simply sum the discordant counts over seeds and run one binomial test: the same image
    appears in every seed pair, and an image that favours B under one seed tends to favour it
    under the others (hard images are hard for every run). Summing treats those correlated
    discordances as independent coin flips and gives p-values that are too small. Example: 5
    images won by B under each of 3 seeds (b=0, c=15) give a pooled binomial p of 2/2**15 but only
    5 independent pieces of evidence, and this test's p = 2/2**5 = 0.0625. With one seed pair it
    equals :func:`mcnemar_exact` exactly. Like McNemar it treats the trained models as fixed.
    """
    if len(preds_a) != len(preds_b):
        raise ValueError(f"preds_a has {len(preds_a)} seed(s) but preds_b has {len(preds_b)}")
    if len(preds_a) == 0:
        raise ValueError("mcnemar_clustered needs at least one seed pair")
    y = _as_1d(y_true, "y_true")
    ca = np.stack([_correct(y, p, f"preds_a[{i}]") for i, p in enumerate(preds_a)])
    cb = np.stack([_correct(y, p, f"preds_b[{i}]") for i, p in enumerate(preds_b)])
    b = int(np.count_nonzero(ca & ~cb))
    c = int(np.count_nonzero(~ca & cb))
    d = (cb.astype(np.int64) - ca.astype(np.int64)).sum(axis=0)
    return ClusteredMcNemarResult(
        b=b,
        c=c,
        n_images=int(np.count_nonzero(d)),
        statistic=int(d.sum()),
        pvalue=_sign_flip_pvalue(d),
    )


# --------------------------------------------------------------------------------------------
# 4. Holm


def holm(pvalues: ArrayLike) -> NDArray[np.float64]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Why Holm: comparing several variants against one baseline makes several tests, and Holm
    controls the family-wise error rate like Bonferroni while being uniformly more powerful, with
    no assumption about how the tests depend on each other (they share the baseline's runs).

    Sorted ascending, the i-th of m p-values becomes ``max_{j<=i} min(1, (m - j + 1) p_(j))``:
    adjusted >= raw, capped at 1, and in the same order as the raw values. NaN entries (tests not
    run) stay NaN and do not count in m. Values outside [0, 1] are a ``ValueError``.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0.0) | (p[valid] > 1.0)):
        raise ValueError(f"p-values must lie in [0, 1]; got {p[valid & ((p < 0) | (p > 1))].tolist()}")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(valid)
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted)
    return out


# --------------------------------------------------------------------------------------------
# 5. the comparison table


def compare_to_baseline(
    results: pd.DataFrame,
    predictions: Mapping[tuple[Any, Any], ArrayLike] | None,
    y_true: ArrayLike | None,
    baseline: Hashable,
    metric: str = "test_acc",
    alpha: float = 0.05,
    *,
    higher_is_better: bool = True,
    confidence: float | None = None,
    n_resamples: int = 10_000,
    seed: int | None = 0,
    method: CIMethod = "percentile",
) -> pd.DataFrame:
    """One row per variant (baseline first): summary, paired difference, McNemar, Holm, verdict.

    ``predictions`` maps ``(variant, seed)`` to that run's predicted labels on the test images
    whose labels are ``y_true``; pass ``None`` (and ``y_true=None``) when predictions were not
    kept. When given, every paired (variant, seed) and (baseline, seed) must be present.

    Combined p per variant (``p_value``): :func:`mcnemar_clustered` over all paired seeds. Why
    this rather than the median or minimum of per-seed p-values (which have no clean null
    distribution) or one binomial test on discordant counts summed over seeds (which counts the
    same image once per seed as if independent, and so is anti-conservative): it pools every seed
    while keeping the image as the unit, and reduces to exact McNemar with one seed. ``p_holm``
    is Holm across the non-baseline variants. Per-seed McNemar p-values are kept in
    ``mcnemar_p_per_seed`` ({seed: p}) for inspection.

    Decision (``significant``, ``verdict``): a variant is "better"/"worse than baseline" only if
    the seed-level CI of the paired difference (level ``confidence``, default ``1 - alpha``)
    excludes 0 *and*, when predictions are given, ``p_holm < alpha`` with the McNemar wins/losses
    pointing the same way. The two checks answer different questions (would another seed change
    the answer? could another test set?), and a claim in a paper needs both. Otherwise the
    verdict says why not: "no detectable difference (CI spans 0)", "... (McNemar not significant
    after Holm)", "inconclusive (...opposite directions)", or "cannot judge (fewer than 2 paired
    seeds)". Without predictions the decision rests on the CI alone, which is not corrected for
    multiple variants; ``basis`` records which rule applied. ``higher_is_better=False`` flips the
    direction for losses/error rates (McNemar wins always mean more images right).

    Returned columns: ``variant, n, mean, std, ci_low, ci_high, n_pairs, mean_diff, diff_ci_low,
    diff_ci_high, wins, losses, mcnemar_p_per_seed, p_value, p_holm, significant, verdict, basis,
    params, macs``. ``wins``/``losses``: discordant (image, seed) pairs the variant got right and
    the baseline wrong / the reverse, summed over paired seeds. ``attrs`` holds metric, baseline,
    confidence and alpha for :func:`format_table`.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    conf = 1.0 - alpha if confidence is None else confidence
    boot: dict[str, Any] = dict(confidence=conf, n_resamples=n_resamples, seed=seed, method=method)
    summary = variant_summary(results, metric, **boot)
    variants = list(summary["variant"])
    _check_baseline(baseline, variants)
    with warnings.catch_warnings():
        # variant_summary has already warned about the dropped non-finite rows
        warnings.filterwarnings("ignore", message="dropping", category=StatsWarning)
        diffs = paired_differences(results, baseline, metric, **boot).set_index("variant")
    others = [v for v in variants if v != baseline]

    mc: dict[Any, tuple[Any, Any, dict[Any, float] | None, float]] = {}
    if predictions is not None:
        if y_true is None:
            raise ValueError("predictions were given without y_true; pass the test labels too")
        y = _as_1d(y_true, "y_true")
        needed = [(w, s) for v in others for s in diffs.loc[v, "seeds"] for w in (baseline, v)]
        missing = [k for k in dict.fromkeys(needed) if k not in predictions]
        if missing:
            raise ValueError(
                f"predictions lack (variant, seed) {missing}; it has {len(predictions)} entries, "
                f"e.g. {list(predictions)[:5]}"
            )
        for v in others:
            seeds = list(diffs.loc[v, "seeds"])
            seed_p = {
                s: mcnemar_exact(y, predictions[(baseline, s)], predictions[(v, s)]).pvalue for s in seeds
            }
            pooled = mcnemar_clustered(
                y, [predictions[(baseline, s)] for s in seeds], [predictions[(v, s)] for s in seeds]
            )
            # oriented as A = baseline, B = variant: c = variant wins, b = variant losses
            mc[v] = (pooled.c, pooled.b, seed_p, pooled.pvalue)
    raw_p = np.array([mc[v][3] if v in mc else math.nan for v in others], dtype=float)
    adj_p = dict(zip(others, holm(raw_p)))

    rows = []
    for _, srow in summary.iterrows():
        v = srow["variant"]
        row: dict[str, Any] = {k: srow[k] for k in ("variant", "n", "mean", "std", "ci_low", "ci_high")}
        if v == baseline:
            row.update(
                n_pairs=pd.NA, mean_diff=math.nan, diff_ci_low=math.nan, diff_ci_high=math.nan,
                wins=pd.NA, losses=pd.NA, mcnemar_p_per_seed=None, p_value=math.nan, p_holm=math.nan,
                significant=False, verdict=VERDICT_BASELINE, basis="",
            )  # fmt: skip
        else:
            drow = diffs.loc[v]
            wins, losses, per_seed, p = mc.get(v, (pd.NA, pd.NA, None, math.nan))
            significant, verdict = _decide(
                float(drow["diff_ci_low"]),
                float(drow["diff_ci_high"]),
                None if v not in mc else (float(adj_p[v]), int(wins) - int(losses)),
                alpha=alpha,
                higher_is_better=higher_is_better,
            )
            row.update(
                n_pairs=int(drow["n_pairs"]), mean_diff=float(drow["mean_diff"]),
                diff_ci_low=float(drow["diff_ci_low"]), diff_ci_high=float(drow["diff_ci_high"]),
                wins=wins, losses=losses, mcnemar_p_per_seed=per_seed, p_value=p,
                p_holm=float(adj_p[v]), significant=significant, verdict=verdict,
                basis="seed CI + McNemar (Holm)" if v in mc else "seed CI only (no predictions)",
            )  # fmt: skip
        row.update(params=srow["params"], macs=srow["macs"])
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("n_pairs", "wins", "losses"):
        out[col] = out[col].astype("Int64")
    out["significant"] = out["significant"].astype(bool)
    out.attrs.update(metric=metric, baseline=baseline, confidence=conf, alpha=alpha)
    return out


def _decide(
    lo: float,
    hi: float,
    mcnemar: tuple[float, int] | None,
    *,
    alpha: float,
    higher_is_better: bool,
) -> tuple[bool, str]:
    """Turn the CI (and Holm-adjusted McNemar p with net wins) into ``(significant, verdict)``."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return False, VERDICT_TOO_FEW
    if lo <= 0.0 <= hi:
        return False, VERDICT_CI_SPANS_0
    better = (lo > 0.0) == higher_is_better
    if mcnemar is not None:
        p_holm, net_wins = mcnemar
        if not p_holm < alpha:
            return False, VERDICT_NOT_SIGNIFICANT
        if (net_wins > 0) != better:
            return False, VERDICT_DISAGREE
    return True, VERDICT_BETTER if better else VERDICT_WORSE


# --------------------------------------------------------------------------------------------
# 6. text output


def _missing(x: Any) -> bool:
    try:
        return x is None or bool(pd.isna(x))
    except (TypeError, ValueError):  # arrays, dicts
        return False


def _fmt_p(p: Any) -> str:
    """Compact p-value: 3 decimals down to 0.001, then 2-digit scientific; '-' when absent."""
    if _missing(p):
        return "-"
    p = float(p)
    if p == 0.0:
        return "<1e-300"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _fmt_si(x: Any) -> str:
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
    if _missing(x):
        return "-"
    return str(x)


Column = tuple[str, str, Callable[[pd.Series], str]]


def _cell(key: Any, fmt: Callable[[Any], str]) -> Callable[[pd.Series], str]:
    """A row -> text function for one column (a factory, so each closure keeps its own key)."""
    return lambda r: fmt(r[key])


def _columns(df: pd.DataFrame, metric_label: str, percent: bool) -> list[Column]:
    """Which display columns a frame supports, each as (header, alignment, row -> text)."""
    scale = 100.0 if percent else 1.0

    def num(x: Any, signed: bool = False) -> str:
        if _missing(x):
            return "-"
        v = float(x) * scale
        if percent:
            return f"{v:+.2f}" if signed else f"{v:.2f}"
        return f"{v:+.4g}" if signed else f"{v:.4g}"

    def interval(lo: Any, hi: Any, signed: bool = False) -> str:
        if _missing(lo) or _missing(hi):
            return "-"
        return f"[{num(lo, signed)}, {num(hi, signed)}]"

    conf = df.attrs.get("confidence")
    ci = f"{conf:.0%} CI" if isinstance(conf, float) else "CI"
    unit = " (%)" if percent else ""
    base = df.attrs.get("baseline")
    delta = f"Δ vs {base}" if base is not None else "Δ"
    cols = set(df.columns)
    out: list[Column] = []
    for key in ("parameter", "variant"):
        if key in cols:
            out.append((key, "<", _cell(key, _fmt_generic)))
    if "importance" in cols:
        out.append(("importance", ">", lambda r: _fmt_generic(r["importance"])))
        if "importance_rank" in cols:
            out.append(("rank", ">", lambda r: _fmt_generic(r["importance_rank"])))
    if "n" in cols:
        out.append(("n", ">", lambda r: _fmt_generic(r["n"])))
    elif "n_pairs" in cols:
        out.append(("pairs", ">", lambda r: _fmt_generic(r["n_pairs"])))
    if {"mean", "std"} <= cols:
        out.append(
            (
                f"{metric_label}{unit}",
                ">",
                lambda r: num(r["mean"]) + ("" if _missing(r["std"]) else f" ± {num(r['std'])}"),
            )
        )
    elif "mean" in cols:
        out.append((f"{metric_label}{unit}", ">", lambda r: num(r["mean"])))
    if {"ci_low", "ci_high"} <= cols:
        out.append((ci, ">", lambda r: interval(r["ci_low"], r["ci_high"])))
    if "mean_diff" in cols:
        out.append((f"{delta}{' (pp)' if percent else ''}", ">", lambda r: num(r["mean_diff"], True)))
        if {"diff_ci_low", "diff_ci_high"} <= cols:
            out.append((f"Δ {ci}", ">", lambda r: interval(r["diff_ci_low"], r["diff_ci_high"], True)))
    if {"wins", "losses"} <= cols and df["wins"].notna().any():
        out.append(
            (
                "wins/losses",
                ">",
                lambda r: "-" if _missing(r["wins"]) else f"{int(r['wins'])}/{int(r['losses'])}",
            )
        )
    if "p_value" in cols and df["p_value"].notna().any():
        out.append(("p", ">", lambda r: _fmt_p(r["p_value"])))
    if "p_holm" in cols and df["p_holm"].notna().any():
        out.append(("p (Holm)", ">", lambda r: _fmt_p(r["p_holm"])))
    if "verdict" in cols:
        out.append(("verdict", "<", lambda r: str(r["verdict"])))
    for key, label in (("params", "params"), ("macs", "MACs")):
        if key in cols and df[key].notna().any():
            out.append((label, ">", _cell(key, _fmt_si)))
    if not any(h in ("variant", "parameter") for h, _, _ in out) or len(out) < 2:
        # not a frame from this module: show every column as it is
        return [(str(c), "<", _cell(c, _fmt_generic)) for c in df.columns]
    return out


def _cells(
    df: pd.DataFrame, metric_label: str, percent: bool
) -> tuple[list[str], list[str], list[list[str]]]:
    cols = _columns(df, metric_label, percent)
    headers = [h for h, _, _ in cols]
    aligns = [a for _, a, _ in cols]
    rows = [[fn(r) for _, _, fn in cols] for _, r in df.iterrows()]
    return headers, aligns, rows


def format_table(df: pd.DataFrame, metric_label: str = "test acc", *, percent: bool = True) -> str:
    """Fixed-width plain-text table of a frame from this module, for the terminal.

    Metric values are shown as percentages with 2 decimals (``percent=False`` for metrics that
    are not fractions), differences in percentage points with a sign, intervals as ``[lo, hi]``,
    p-values compactly (``0.031``, ``3.1e-05``), params/MACs with SI suffixes. Columns the frame
    lacks are left out; a frame this module did not make is printed column by column.
    """
    headers, aligns, rows = _cells(df, metric_label, percent)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(cells, widths, aligns)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def to_markdown(df: pd.DataFrame, metric_label: str = "test acc", *, percent: bool = True) -> str:
    """The same table as :func:`format_table`, as a GitHub-flavoured Markdown pipe table.

    Written here so that reports do not need the optional ``tabulate`` package that
    ``DataFrame.to_markdown`` imports. Pipes inside cells are escaped.
    """
    headers, aligns, rows = _cells(df, metric_label, percent)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join(":---" if a == "<" else "---:" for a in aligns) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in rows])


# --------------------------------------------------------------------------------------------
# 7. search importances next to effects


def search_importance_table(
    importances: Mapping[str, float], effects: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Optuna parameter importances beside measured effect sizes, most important first.

    Why side by side: an importance (e.g. ``optuna.importance.get_param_importances``, fANOVA)
    says how much the objective varied with a parameter across the sampled trials, one seed each,
    with no error bar and no direction; a seed-paired effect from :func:`compare_to_baseline` says
    how large and how certain a specific change is. A parameter important in the search but with a
    CI spanning 0 in the ablation is a lead, not a finding.

    ``effects`` must have a ``parameter`` column (or index named ``parameter``) and any effect
    columns (e.g. ``variant, mean_diff, diff_ci_low, diff_ci_high, p_holm, verdict``); several
    rows per parameter (one per tested value) are kept. Parameters found in only one input are
    kept with NaN on the other side.

    Returned columns: ``parameter, importance, importance_rank`` (1 = most important, ties share
    the better rank) followed by the columns of ``effects``.
    """
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
            if eff.index.name == "parameter":
                eff = eff.reset_index()
            else:
                raise ValueError(
                    f"effects needs a 'parameter' column (or index) to join on; it has {list(eff.columns)}"
                )
        eff = eff.assign(parameter=eff["parameter"].astype(str))
        table = table.merge(eff, on="parameter", how="outer", sort=False)
    table = table.sort_values("importance", ascending=False, na_position="last", kind="stable")
    return table.reset_index(drop=True)
