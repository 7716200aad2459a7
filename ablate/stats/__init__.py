"""Statistics for ablation grids: the seed is the unit of replication.

A variant is compared with the baseline on seed-matched runs (common random numbers: the same seed
gives both the same data order, augmentation draws and initial weights of every shared module). The
answer rests on seed-level inference: t-intervals over seeds, the paired t-test over seeds with Holm
across variants, equivalence within the study's margin (TOST) and P(worse / equivalent / better) from
the Bayesian t-test posterior (baycomp). McNemar on the test images is reported for what it tests
(these trained models on this test set) and decides nothing. Each job lives in its own module:

    _seeds     intervals, tests, posterior and power over seeds (scipy, statsmodels, baycomp)
    _mcnemar   exact and seed-pooled McNemar, Holm (statsmodels)
    _verdict   the Verdict enum and the rules that turn the numbers into one, with its reason
    _compare   the comparison table (`compare_to_baseline`)
    _tables    the table as text, Markdown, LaTeX and a clean frame for HTML

Example:
    >>> import pandas as pd
    >>> results = pd.DataFrame({"variant": ["full"] * 5 + ["no_mask"] * 5, "seed": [1, 2, 3, 4, 5] * 2,
    ...                         "test_acc": [0.741, 0.738, 0.744, 0.740, 0.743, 0.726, 0.722, 0.729, 0.724, 0.727]})
    >>> table = compare_to_baseline(results, None, None, baseline="full", rope=0.005)
    >>> table.loc[1, "verdict"]
    'worse'
    >>> print(format_table(table))  # doctest: +SKIP
"""

from ablate.stats._compare import COLUMNS, compare_to_baseline, variant_summary
from ablate.stats._mcnemar import ClusteredMcNemarResult, McNemarResult, holm, mcnemar_clustered, mcnemar_exact
from ablate.stats._seeds import mean_sd, paired_t, posterior_probs, seeds_needed, sign_flip_p, t_interval, tost_p
from ablate.stats._tables import display_table, format_table, reasons, search_importance_table, to_latex, to_markdown
from ablate.stats._validate import StatsWarning
from ablate.stats._verdict import Verdict, decide, decide_arrays, verdict_of

__all__ = [
    "COLUMNS",
    "ClusteredMcNemarResult",
    "McNemarResult",
    "StatsWarning",
    "Verdict",
    "compare_to_baseline",
    "decide",
    "decide_arrays",
    "display_table",
    "format_table",
    "holm",
    "mcnemar_clustered",
    "mcnemar_exact",
    "mean_sd",
    "paired_t",
    "posterior_probs",
    "reasons",
    "search_importance_table",
    "seeds_needed",
    "sign_flip_p",
    "t_interval",
    "to_latex",
    "to_markdown",
    "tost_p",
    "variant_summary",
    "verdict_of",
]
