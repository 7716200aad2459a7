"""ablate.stats against hand computations and the libraries it builds on (scipy, statsmodels, baycomp)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ablate import stats
from ablate.stats.simulate import simulate


def _frame(values: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"variant": v, "seed": s, "test_acc": x} for v, xs in values.items() for s, x in enumerate(xs)]
    return pd.DataFrame(rows)


# ---- McNemar and Holm -----------------------------------------------------------------------------
def test_mcnemar_hand_case_b0_c6() -> None:
    y = np.zeros(6, dtype=int)
    # A wrong on all 6, B right on all 6: p = 2 * 0.5**6 by hand
    res = stats.mcnemar_exact(y, np.ones(6, dtype=int), y)
    assert (res.b, res.c) == (0, 6)
    assert res.pvalue == pytest.approx(2 * 0.5**6)


def test_mcnemar_without_discordance_is_one() -> None:
    y = np.array([0, 1, 2])
    # identical predictions: nothing to test, p = 1
    assert stats.mcnemar_exact(y, y, y).pvalue == 1.0


def test_clustered_mcnemar_equals_exact_with_one_seed_and_counts_images() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    a, b = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    # one seed pair: the clustered test is the exact McNemar (statsmodels) exactly
    assert stats.mcnemar_clustered(y, [a], [b]).pvalue == pytest.approx(stats.mcnemar_exact(y, a, b).pvalue)
    # 5 images won by B under each of 3 seeds: 5 independent pieces of evidence, p = 2 / 2**5
    y5 = np.zeros(5, dtype=int)
    res = stats.mcnemar_clustered(y5, [np.ones(5, int)] * 3, [y5] * 3)
    assert res.pvalue == pytest.approx(2 / 2**5)


def test_holm_hand_case_and_nan() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 0.04): by hand
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # a NaN (test not run) stays NaN and does not count among the tests
    out = stats.holm([0.01, math.nan, 0.04])
    assert math.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)


# ---- seed-level statistics ---------------------------------------------------------------------------
def test_t_interval_by_hand() -> None:
    # x = 1, 2, 3: mean 2, s = 1, half-width t(0.975, 2) / sqrt(3)
    lo, hi = stats.t_interval([1.0, 2.0, 3.0], 0.95)
    half = sps.t.ppf(0.975, 2) / math.sqrt(3)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half))
    # with 2 seeds the interval is far wider than [min, max] (a percentile bootstrap would give exactly that)
    lo2, hi2 = stats.t_interval([0.70, 0.72], 0.95)
    assert lo2 < 0.70 - 0.05 and hi2 > 0.72 + 0.05


def test_paired_t_equals_scipy_ttest_rel() -> None:
    rng = np.random.default_rng(1)
    xb = rng.normal(0.7, 0.01, 5)
    xv = xb + rng.normal(0.004, 0.003, 5)
    # the paired t over seeds is scipy's ttest_rel on the seed-matched values
    assert stats.paired_t(xv - xb) == pytest.approx(sps.ttest_rel(xv, xb).pvalue)


def test_sign_flip_cannot_go_below_2_over_2_to_the_n() -> None:
    # five seeds, all better: the exact two-sided sign-flip p is 2 / 2**5 = 0.0625
    assert stats.sign_flip_p([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(0.0625)


def test_tost_equals_statsmodels() -> None:
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(2)
    xb = rng.normal(0.7, 0.01, 6)
    xv = xb + rng.normal(0.001, 0.002, 6)
    # equivalence within +-0.005: the same p as statsmodels' paired TOST
    p_ref = ttost_paired(xv, xb, -0.005, 0.005)[0]
    assert stats.tost_p(xv - xb, 0.005) == pytest.approx(p_ref)


def test_posterior_probs_are_the_student_t_posterior_and_match_baycomp() -> None:
    from baycomp.single import CorrelatedTTest

    d = np.array([0.004, 0.006, 0.001, 0.008, 0.005])
    n, m, s = d.size, d.mean(), d.std(ddof=1)
    p_w, p_e, p_b = stats.posterior_probs(d, 0.002)
    # by hand: the posterior of the mean is t(n-1, loc=mean, scale=s/sqrt(n))
    post = sps.t(n - 1, loc=m, scale=s / math.sqrt(n))
    assert (p_w, p_b) == pytest.approx((post.cdf(-0.002), 1 - post.cdf(0.002)))
    assert p_w + p_e + p_b == pytest.approx(1.0)
    # baycomp's correlated t-test is the same posterior with a wider (Nadeau-Bengio) variance: same mean,
    # so its P(better) is smaller here but on the same side of 1/2
    bc = CorrelatedTTest.probs(np.zeros(n), d, rope=0.002)
    assert bc[2] < p_b and bc[2] > 0.5


def test_seeds_needed_matches_statsmodels_power() -> None:
    from statsmodels.stats.power import TTestPower

    n = stats.seeds_needed(1.13, 0.5)
    # the smallest n reaching 80% power, by statsmodels' power function
    assert TTestPower().power(0.5 / 1.13, n, 0.05) >= 0.8 > TTestPower().power(0.5 / 1.13, n - 1, 0.05)


# ---- verdicts ----------------------------------------------------------------------------------------
def test_verdicts_cover_every_case_with_reasons() -> None:
    base = [0.700, 0.710, 0.705, 0.695, 0.702]
    table = stats.compare_to_baseline(_frame({
        "base": base,
        "same": base,                                                  # identical runs (masks_off vs unapplied)
        "up": [x + 0.02 + e for x, e in zip(base, [0.001, -0.001, 0.002, 0.0, -0.002])],
        "tiny": [x + e for x, e in zip(base, [0.0005, -0.0004, 0.0003, -0.0002, 0.0001])],
        "noisy": [x + e for x, e in zip(base, [0.03, -0.04, 0.02, -0.01, 0.005])],
    }), None, None, baseline="base", rope=0.005)
    v = dict(zip(table["variant"], table["verdict"]))
    # identical results are equivalent, never better or worse
    assert v["same"] == "equivalent"
    # a clear shift over 5 seeds is better
    assert v["up"] == "better"
    # differences far inside the margin are equivalent
    assert v["tiny"] == "equivalent"
    # seeds pointing both ways with a wide interval are inconclusive
    assert v["noisy"] == "inconclusive"
    reasons = dict(zip(table["variant"], table["reason"]))
    assert "identical" in reasons["same"] and "Holm over 4" in reasons["up"] and "disagree" in reasons["noisy"]
    # the wording never contradicts the test: every better/worse row has p(Holm) < alpha, no other row does
    signif = table["verdict"].isin(["better", "worse"])
    assert ((table["p_holm"] < 0.05) == signif)[table["variant"] != "base"].all()


def test_one_seed_is_too_few() -> None:
    table = stats.compare_to_baseline(_frame({"b": [0.7], "v": [0.8]}), None, None, baseline="b")
    # one paired seed cannot be judged, however large the difference
    assert table.loc[1, "verdict"] == "too few seeds"


def test_missing_predictions_are_named_never_dropped_silently() -> None:
    frame = _frame({"b": [0.70, 0.71, 0.72], "v": [0.71, 0.72, 0.74]})
    y = np.zeros(10, dtype=int)
    preds = {("b", 0): y, ("v", 0): y, ("b", 1): y, ("v", 1): y}  # seed 2 has none
    table = stats.compare_to_baseline(frame, preds, y, baseline="b")
    # the note names the variant and the seed whose predictions are missing
    assert any("'v'" in n and "[2]" in n for n in table.attrs["notes"])
    # without predictions the notes say McNemar was not computed
    t2 = stats.compare_to_baseline(frame, None, None, baseline="b")
    assert any("McNemar not computed" in n for n in t2.attrs["notes"])


def test_lower_is_better_flips_the_verdict() -> None:
    frame = _frame({"b": [0.30, 0.31, 0.29, 0.30], "v": [0.25, 0.26, 0.24, 0.255]})
    # an error rate 5 points lower is better when lower is better
    table = stats.compare_to_baseline(frame, None, None, baseline="b", higher_is_better=False)
    assert table.loc[1, "verdict"] == "better"


# ---- tables ------------------------------------------------------------------------------------------
def test_tables_are_clean_and_agree() -> None:
    frame = _frame({"b": [0.70, 0.71, 0.72], "v": [0.71, 0.72, 0.74]}).assign(params=1000.0, macs=2e6)
    table = stats.compare_to_baseline(frame, None, None, baseline="b")
    shown = stats.display_table(table)
    text = " ".join(shown.astype(str).values.ravel())
    # no raw missing values, dicts or reprs in a paper table
    for bad in ("nan", "<NA>", "{", "None"):
        assert bad not in text
    # the mean of v is shown as a percentage with 2 decimals: (71 + 72 + 74) / 3 = 72.33
    assert shown.iloc[1, 2].startswith("72.33")
    # the seeds' range is the lowest and highest cell of each variant
    assert list(shown["seeds' range"]) == ["[70.00, 72.00]", "[71.00, 74.00]"]
    md, tex = stats.to_markdown(table), stats.to_latex(table)
    # Markdown and LaTeX carry the same cells
    assert "72.33" in md and "72.33" in tex and r"\toprule" in tex and r"test acc (\%)" in tex


# ---- the simulation: verdicts under the null, coverage, power ------------------------------------------
@pytest.mark.parametrize("n_seeds", [3, 5, 10])
def test_null_false_verdicts_and_coverage(n_seeds: int) -> None:
    reps = 3000
    r = simulate(n_seeds, reps=reps, seed_sd=1.2, seed=n_seeds)
    se = math.sqrt(0.05 * 0.95 / reps)
    # no architecture effect: "better" or "worse" at most 5% of the time, within Monte-Carlo error
    assert r.better + r.worse <= 0.05 + 2.5 * se
    # the 95% t-intervals cover the expected accuracy 93-97% of the time
    assert 0.93 <= r.coverage <= 0.97
    assert 0.93 <= r.diff_coverage <= 0.97


def test_power_for_a_2_point_effect_with_5_seeds() -> None:
    r = simulate(5, reps=2000, effect=2.0, seed_sd=0.8, shared=0.0, seed=7)
    # a planted 2-point effect at seed sd 0.8 is found "better" at least 80% of the time, never "worse"
    assert r.better >= 0.80 and r.worse == 0.0
