"""Tests for ablate.stats: hand-computed cases, paired-design behaviour, validation, degenerate input."""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

import ablate.stats as S
from ablate.stats import (
    compare_to_baseline,
    format_table,
    holm,
    mcnemar_clustered,
    mcnemar_exact,
    paired_differences,
    search_importance_table,
    to_markdown,
    variant_summary,
)

# few resamples keep the suite fast; the CIs in these tests do not hinge on resampling noise
FAST = 2000


def _results(values: dict[str, list[float]], seeds: list[int] | None = None) -> pd.DataFrame:
    rows = []
    for variant, vals in values.items():
        for i, v in enumerate(vals):
            rows.append({"variant": variant, "seed": (seeds or list(range(len(vals))))[i], "test_acc": v})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ McNemar


def test_mcnemar_hand_case_b0_c6() -> None:
    y = np.zeros(6, dtype=int)
    res = mcnemar_exact(y, np.ones(6, dtype=int), y)
    # A is wrong and B right on all 6 images: b = 0, c = 6
    assert (res.b, res.c) == (0, 6)
    # exact two-sided binomial: 2 * 0.5**6 = 0.03125
    assert res.pvalue == pytest.approx(0.03125, abs=1e-12)
    # the exact test's statistic is the smaller discordant count
    assert res.statistic == 0


def test_mcnemar_ignores_concordant_images_and_no_discordance_gives_p1() -> None:
    y = np.array([0, 1, 2, 3])
    res = mcnemar_exact(y, np.array([0, 1, 0, 0]), np.array([0, 1, 0, 0]))
    # identical predictions: no discordant image, so nothing to test and p = 1
    assert (res.b, res.c, res.pvalue) == (0, 0, 1.0)


def test_mcnemar_is_symmetric_in_the_two_models() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 200)
    a = np.where(rng.random(200) < 0.7, y, (y + 1) % 7)
    b = np.where(rng.random(200) < 0.6, y, (y + 2) % 7)
    ab, ba = mcnemar_exact(y, a, b), mcnemar_exact(y, b, a)
    # swapping A and B swaps the discordant counts and leaves the two-sided p unchanged
    assert (ab.b, ab.c) == (ba.c, ba.b)
    assert ab.pvalue == pytest.approx(ba.pvalue)


def test_mcnemar_length_mismatch_is_a_clear_error() -> None:
    # predictions must cover exactly the labelled images; the message gives both lengths
    with pytest.raises(ValueError, match=r"pred_b has 3 predictions but y_true has 4"):
        mcnemar_exact([0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2])


def test_mcnemar_rejects_probability_matrices_with_a_hint() -> None:
    # a (n, classes) score matrix is not a label vector; the error suggests argmax
    with pytest.raises(ValueError, match="argmax"):
        mcnemar_exact([0, 1], np.eye(2), [0, 1])


def test_clustered_mcnemar_equals_exact_mcnemar_with_one_seed() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 7, 500)
    a = np.where(rng.random(500) < 0.72, y, (y + 1) % 7)
    b = np.where(rng.random(500) < 0.70, y, (y + 1) % 7)
    one, clustered = mcnemar_exact(y, a, b), mcnemar_clustered(y, [a], [b])
    # with one seed pair the image-clustered test is McNemar's exact test
    assert (clustered.b, clustered.c) == (one.b, one.c)
    assert clustered.pvalue == pytest.approx(one.pvalue, rel=1e-9)


def test_clustered_mcnemar_counts_images_not_image_seed_pairs() -> None:
    # 5 images that B gets right and A wrong under each of 3 seeds; 5 images both get right
    y = np.zeros(10, dtype=int)
    a = np.array([1] * 5 + [0] * 5)
    res = mcnemar_clustered(y, [a, a, a], [y, y, y])
    # 15 discordant (image, seed) pairs, all won by B, spread over only 5 images
    assert (res.b, res.c, res.n_images, res.statistic) == (0, 15, 5, 15)
    # the evidence is 5 independent images: p = 2 / 2**5, not the pooled binomial's 2 / 2**15
    assert res.pvalue == pytest.approx(0.0625)
    assert sps.binomtest(0, 15, 0.5).pvalue == pytest.approx(2 / 2**15)


def test_clustered_mcnemar_validates_seed_counts() -> None:
    # each seed of A needs its seed of B
    with pytest.raises(ValueError, match="preds_a has 2 seed"):
        mcnemar_clustered([0, 1], [[0, 1], [0, 1]], [[0, 1]])


# --------------------------------------------------------------------------------------------- Holm


def test_holm_hand_case() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04), back in input order
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_holm_leaves_nan_and_does_not_count_it() -> None:
    out = holm([0.01, np.nan, 0.04])
    # NaN stays NaN, and m = 2: 2*0.01 and max(0.02, 0.04)
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04])


def test_holm_caps_at_one_and_handles_empty() -> None:
    # 2*0.6 = 1.2 is capped at 1; the larger p then cannot fall below it
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])
    # no p-values: an empty result, not an error
    assert holm([]).shape == (0,)


def test_holm_rejects_values_outside_unit_interval() -> None:
    # a p-value of 1.5 is a bug upstream, not something to adjust
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12))
def test_holm_properties(raw: list[float]) -> None:
    p = np.array(raw)
    adj = holm(p)
    # adjusting never makes a p-value smaller, and never above 1
    assert np.all(adj >= p - 1e-15)
    assert np.all(adj <= 1.0)
    # the adjusted values keep the order of the raw ones
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= -1e-15)


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0))
def test_holm_single_test_is_unchanged(p: float) -> None:
    # one test: nothing to correct for
    assert holm([p])[0] == pytest.approx(p)


# ---------------------------------------------------------------------------------- variant summary


def test_variant_summary_mean_std_ci_and_carried_columns() -> None:
    df = _results({"full": [0.74, 0.73, 0.75], "no_mask": [0.72, 0.71, 0.73]})
    df["params"] = [137_796_423] * 3 + [27_000_000] * 3
    out = variant_summary(df, seed=1, n_resamples=FAST)
    full = out.set_index("variant").loc["full"]
    # one row per variant, in the order the study listed them
    assert list(out["variant"]) == ["full", "no_mask"]
    # plain sample statistics over seeds (ddof=1)
    assert full["n"] == 3
    assert full["mean"] == pytest.approx(0.74)
    assert full["std"] == pytest.approx(0.01)
    # the bootstrap CI of the mean brackets the mean and stays inside the observed range
    assert 0.73 <= full["ci_low"] <= full["mean"] <= full["ci_high"] <= 0.75
    # params are carried beside; macs was not given so it is NaN
    assert full["params"] == 137_796_423
    assert np.isnan(full["macs"])


def test_variant_summary_degenerate_inputs_do_not_crash() -> None:
    df = _results({"one_seed": [0.7], "constant": [0.7, 0.7, 0.7], "two": [0.70, 0.72]})
    out = variant_summary(df, method="BCa", n_resamples=FAST).set_index("variant")
    # a single seed has no spread: std and CI are NaN and the method says why
    assert np.isnan(out.loc["one_seed", "std"])
    assert np.isnan(out.loc["one_seed", "ci_low"]) and np.isnan(out.loc["one_seed", "ci_high"])
    assert out.loc["one_seed", "ci_method"] == "single value"
    # identical values: every resample has the same mean, so the CI is the point [mean, mean]
    assert out.loc["constant", "ci_low"] == out.loc["constant", "ci_high"] == pytest.approx(0.7)
    assert out.loc["constant", "ci_method"] == "constant"
    # two distinct values still give a finite CI (BCa, or percentile if BCa is undefined)
    assert np.isfinite(out.loc["two", "ci_low"]) and np.isfinite(out.loc["two", "ci_high"])


def test_variant_summary_drops_failed_runs_with_a_warning() -> None:
    df = _results({"a": [0.7, np.nan, 0.72], "b": [np.nan]})
    # a failed (NaN) run is dropped and reported, not counted as a score
    with pytest.warns(S.StatsWarning, match="non-finite"):
        out = variant_summary(df, n_resamples=FAST).set_index("variant")
    assert out.loc["a", "n"] == 2
    # a variant whose runs all failed stays visible with n = 0
    assert out.loc["b", "n"] == 0


def test_results_validation_errors() -> None:
    # a missing metric column is named along with the columns present
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['val_acc'\]"):
        variant_summary(_results({"a": [0.7]}), metric="val_acc")
    # a repeated (variant, seed) would double-count a run
    dup = pd.DataFrame({"variant": ["a", "a"], "seed": [1, 1], "test_acc": [0.7, 0.71]})
    with pytest.raises(ValueError, match="several rows"):
        variant_summary(dup)
    # params must be constant within a variant
    bad = _results({"a": [0.7, 0.71]}).assign(params=[1, 2])
    with pytest.raises(ValueError, match="several 'params' values"):
        variant_summary(bad)


# ------------------------------------------------------------------------------- paired differences


def test_pairing_detects_a_shift_hidden_by_seed_noise() -> None:
    # seed noise (+-0.5 pp) shared by both variants, a +0.4 pp shift, and a little own noise
    seed_noise = np.array([0.000, -0.005, 0.005, -0.002, 0.002])
    jitter = np.array([0.0000, 0.0005, -0.0005, 0.0003, -0.0003])
    base = 0.740 + seed_noise
    better = 0.744 + seed_noise + jitter
    df = _results({"full": list(base), "better": list(better)})
    summ = variant_summary(df, n_resamples=FAST).set_index("variant")
    diff = paired_differences(df, "full", n_resamples=FAST).set_index("variant").loc["better"]
    # unpaired, the two marginal CIs overlap: the shift is smaller than the seed spread
    assert summ.loc["better", "ci_low"] < summ.loc["full", "ci_high"]
    # paired by seed, the shared noise cancels and the CI of the difference excludes 0
    assert diff["diff_ci_low"] > 0
    assert diff["mean_diff"] == pytest.approx(0.004)
    assert diff["n_pairs"] == 5


def test_pairing_without_shift_gives_ci_containing_zero() -> None:
    # independent noise, no shift: per-seed differences -0.3, +0.9, -0.9, +0.5, -0.3 pp
    base = [0.740, 0.735, 0.745, 0.738, 0.742]
    other = [0.737, 0.744, 0.736, 0.743, 0.739]
    diff = paired_differences(_results({"full": base, "other": other}), "full", n_resamples=FAST).iloc[0]
    # the CI of the mean difference spans 0
    assert diff["diff_ci_low"] < 0 < diff["diff_ci_high"]


def test_paired_differences_uses_common_seeds_and_warns() -> None:
    df = pd.concat([_results({"full": [0.74, 0.73, 0.75]}, [1, 2, 3]), _results({"v": [0.75, 0.74]}, [2, 3])])
    # seed 1 exists only for the baseline: it is left out and the warning names it
    with pytest.warns(S.StatsWarning, match=r"seeds \[1\]"):
        out = paired_differences(df, "full", n_resamples=FAST).iloc[0]
    assert out["n_pairs"] == 2
    assert out["seeds"] == (2, 3)
    assert out["mean_diff"] == pytest.approx(0.005)


def test_paired_differences_no_common_seed_names_variant_and_seeds() -> None:
    df = pd.concat([_results({"full": [0.74, 0.73]}, [1, 2]), _results({"v": [0.75]}, [7])])
    # no overlap at all: the error names the variant and the baseline seeds it lacks
    with pytest.raises(ValueError, match=r"variant 'v' shares no seed .* \[7\].*\[1, 2\]"):
        paired_differences(df, "full")


def test_unknown_baseline_lists_available_variants() -> None:
    df = _results({"full": [0.74], "no_mask": [0.72]})
    # a typo in the baseline name shows what could have been meant
    with pytest.raises(
        ValueError, match=r"baseline 'ful' is not in results; available variants: \['full', 'no_mask'\]"
    ):
        paired_differences(df, "ful")
    with pytest.raises(ValueError, match="available variants"):
        compare_to_baseline(df, None, None, baseline="ful")


# ----------------------------------------------------------------------------- compare_to_baseline


def _study(n_images: int = 400) -> tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray], np.ndarray]:
    """Three seeds; 'better' fixes 35-45 baseline errors, 'worse' breaks 30 hits, 'same' swaps evenly."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 7, n_images)
    preds: dict[tuple[str, int], np.ndarray] = {}
    for s in (1, 2, 3):
        ok = rng.random(n_images) < 0.70 + 0.01 * s
        better, worse, same = ok.copy(), ok.copy(), ok.copy()
        better[np.flatnonzero(~ok)[: 35 + 5 * s]] = True
        worse[np.flatnonzero(ok)[:30]] = False
        same[np.flatnonzero(ok)[:15]] = False
        same[np.flatnonzero(~ok)[: 15 + (s - 2)]] = True
        for name, correct in (("full", ok), ("better", better), ("worse", worse), ("same", same)):
            preds[(name, s)] = np.where(correct, y, (y + 1) % 7)
    rows = [
        {"variant": v, "seed": s, "test_acc": float((p == y).mean()), "params": 1e8, "macs": 2e10}
        for (v, s), p in preds.items()
    ]
    return pd.DataFrame(rows), preds, y


def test_compare_to_baseline_verdicts_with_predictions() -> None:
    results, preds, y = _study()
    out = compare_to_baseline(results, preds, y, "full", n_resamples=FAST).set_index("variant")
    # the baseline comes first and is labelled as such
    assert out.index[0] == "full" and out.loc["full", "verdict"] == "baseline"
    # consistent gains on every seed and many net-won images: better, and flagged significant
    assert out.loc["better", "verdict"] == "better than baseline"
    assert bool(out.loc["better", "significant"])
    assert out.loc["better", "wins"] > 0 and out.loc["better", "losses"] == 0
    # consistent losses: worse
    assert out.loc["worse", "verdict"] == "worse than baseline"
    # swaps that cancel out: the seed CI spans 0
    assert out.loc["same", "verdict"] == "no detectable difference (CI spans 0)"
    assert not bool(out.loc["same", "significant"])
    # Holm never lowers a p-value
    assert (
        out.loc[["better", "worse", "same"], "p_holm"] >= out.loc[["better", "worse", "same"], "p_value"]
    ).all()
    # per-seed McNemar p-values are kept, keyed by seed
    assert set(out.loc["better", "mcnemar_p_per_seed"]) == {1, 2, 3}
    # params / MACs ride along
    assert out.loc["worse", "params"] == 1e8 and out.loc["worse", "macs"] == 2e10


def test_compare_to_baseline_without_predictions_uses_seed_ci_only() -> None:
    results, _, _ = _study()
    out = compare_to_baseline(results, None, None, "full", n_resamples=FAST).set_index("variant")
    # no predictions: no McNemar p, and the basis column says so
    assert out.loc[["better", "worse", "same"], "p_value"].isna().all()
    assert out.loc["better", "basis"] == "seed CI only (no predictions)"
    # the CI alone still separates the clear cases
    assert out.loc["better", "verdict"] == "better than baseline"
    assert out.loc["same", "verdict"] == "no detectable difference (CI spans 0)"


def test_compare_to_baseline_lower_is_better_flips_direction() -> None:
    df = _results({"full": [0.30, 0.32, 0.31], "v": [0.25, 0.27, 0.26]}).rename(columns={"test_acc": "loss"})
    out = compare_to_baseline(df, None, None, "full", metric="loss", higher_is_better=False, n_resamples=FAST)
    # a lower loss on every seed is an improvement
    assert out.loc[1, "verdict"] == "better than baseline"


def test_compare_to_baseline_prediction_errors() -> None:
    results, preds, y = _study(n_images=50)
    # predictions without labels cannot be scored
    with pytest.raises(ValueError, match="without y_true"):
        compare_to_baseline(results, preds, None, "full")
    # a missing run is named exactly
    partial = {k: v for k, v in preds.items() if k != ("worse", 2)}
    with pytest.raises(ValueError, match=r"lack \(variant, seed\) \[\('worse', 2\)\]"):
        compare_to_baseline(results, partial, y, "full")


def test_compare_to_baseline_single_seed_does_not_crash() -> None:
    results, preds, y = _study(n_images=100)
    one = results[results["seed"] == 1]
    out = compare_to_baseline(one, preds, y, "full", n_resamples=FAST).set_index("variant")
    # one paired seed gives no CI, so no verdict either way, but McNemar is still reported
    assert out.loc["better", "verdict"] == "cannot judge (fewer than 2 paired seeds)"
    assert not bool(out.loc["better", "significant"])
    assert np.isfinite(out.loc["better", "p_value"])


# --------------------------------------------------------------------------------------------- text


def test_format_table_is_fixed_width_with_percentages_and_compact_p() -> None:
    results, preds, y = _study()
    table = compare_to_baseline(results, preds, y, "full", n_resamples=FAST)
    text = format_table(table)
    lines = text.splitlines()
    # header, rule, one line per variant
    assert len(lines) == 2 + len(table)
    # accuracies shown as percentages with two decimals, intervals as [lo, hi]
    mean_full = table.loc[0, "mean"] * 100
    assert f"{mean_full:.2f} ±" in text
    assert "[" in lines[3] and "]" in lines[3]
    # the verdict column starts at the same offset on every line
    col = lines[0].index("verdict")
    assert all(line[col:].startswith(v) for line, v in zip(lines[2:], table["verdict"]))
    # tiny p-values in scientific form, large ones with three decimals
    assert "e-" in lines[3]
    assert "1.000" in lines[5]


def test_to_markdown_is_a_pipe_table_and_escapes_pipes() -> None:
    df = variant_summary(_results({"a|b": [0.7, 0.72], "c": [0.71, 0.73]}), n_resamples=FAST)
    md = to_markdown(df)
    lines = md.splitlines()
    # every line has the same number of unescaped cell separators
    counts = {line.replace("\\|", "").count("|") for line in lines}
    assert len(counts) == 1
    # the second line is the alignment rule
    assert set(lines[1]) <= set("|:-")
    # a pipe in a variant name is escaped so it does not split the cell
    assert "a\\|b" in md


def test_format_table_falls_back_for_foreign_frames() -> None:
    # a frame this module did not make is still printed, column by column
    text = format_table(pd.DataFrame({"x": [1.23456, np.nan], "y": ["u", "v"]}))
    assert "1.235" in text and "-" in text.splitlines()[-1]


# ------------------------------------------------------------------------------- importance table


def test_search_importance_table_joins_effects() -> None:
    effects = pd.DataFrame(
        {
            "parameter": ["mask_depth", "mask_depth", "width"],
            "variant": ["d1", "d2", "w2"],
            "mean_diff": [0.01, -0.02, 0.0],
        }
    )
    out = search_importance_table({"lr": 0.3, "mask_depth": 0.6, "act": 0.1}, effects)
    # most important first, one row per measured effect of that parameter
    assert list(out["parameter"][:3]) == ["mask_depth", "mask_depth", "lr"]
    assert list(out["importance_rank"][:3]) == [1, 1, 2]
    # a searched parameter without an ablation has no effect;
    # an ablated one absent from the search has no importance
    assert np.isnan(out.set_index("parameter").loc["lr", "mean_diff"])
    assert np.isnan(out.set_index("parameter").loc["width", "importance"])
    # without effects: just the importances
    assert list(search_importance_table({"a": 0.2, "b": 0.8})["parameter"]) == ["b", "a"]


def test_search_importance_table_needs_parameter_column() -> None:
    # effects cannot be joined without knowing which parameter they belong to
    with pytest.raises(ValueError, match="'parameter' column"):
        search_importance_table({"a": 1.0}, pd.DataFrame({"variant": ["x"], "mean_diff": [0.1]}))


# ------------------------------------------------------------------------------------------ docs


def test_module_docstring_example_runs() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", S.StatsWarning)
        result = doctest.testmod(S)
    # the example in the module docstring is correct as written
    assert result.failed == 0 and result.attempted > 0
