"""Test-set inference: do these trained models differ on this test set? (McNemar, per image.)

McNemar treats the trained models as fixed: it measures test-set noise, not seed-to-seed noise, so it
never decides a verdict alone (the seed-level tests do); it answers a different, narrower question.
`mcnemar_exact` is statsmodels' exact McNemar; `mcnemar_clustered` pools several seed pairs with the image
as the unit (an exact sign-flip test written here: no library computes it; it reduces to the exact
McNemar with one seed pair, which the tests check against statsmodels). `holm` is statsmodels'
`multipletests(method="holm")`, with NaN entries (tests not run) left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from ablate.stats._validate import as_1d


class McNemarResult(NamedTuple):
    """`b`: images model A got right and B wrong; `c`: A wrong, B right; `pvalue`: exact two-sided."""

    b: int
    c: int
    statistic: int
    pvalue: float


class ClusteredMcNemarResult(NamedTuple):
    """`b`/`c` summed over seed pairs; `n_images`: images with a non-zero net count; `statistic`: c - b."""

    b: int
    c: int
    n_images: int
    statistic: int
    pvalue: float


def _correct(y_true: NDArray[Any], pred: ArrayLike, name: str) -> NDArray[np.bool_]:
    p = as_1d(pred, name)
    if p.shape[0] != y_true.shape[0]:
        raise ValueError(f"{name} has {p.shape[0]} predictions but y_true has {y_true.shape[0]} labels")
    return np.asarray(p == y_true, dtype=bool)


def mcnemar_exact(y_true: ArrayLike, pred_a: ArrayLike, pred_b: ArrayLike) -> McNemarResult:
    """Exact McNemar test of two classifiers on the same images (statsmodels, binomial on the discordant
    images); p = 1 when no image is discordant."""
    from statsmodels.stats.contingency_tables import mcnemar

    y = as_1d(y_true, "y_true")
    ca, cb = _correct(y, pred_a, "pred_a"), _correct(y, pred_b, "pred_b")
    b = int(np.count_nonzero(ca & ~cb))
    c = int(np.count_nonzero(~ca & cb))
    if b + c == 0:
        return McNemarResult(b=b, c=c, statistic=0, pvalue=1.0)
    table = [[int(np.count_nonzero(ca & cb)), b], [c, int(np.count_nonzero(~ca & ~cb))]]
    res = mcnemar(table, exact=True)
    return McNemarResult(b=b, c=c, statistic=min(b, c), pvalue=min(1.0, float(res.pvalue)))


def _sign_flip_pvalue(d: NDArray[np.int64]) -> float:
    """Exact two-sided p of sum(d) when each non-zero d_i keeps or flips its sign at random: grouping equal
    |d_i| = k (m_k of them), the null is a sum of independent k (2 Binomial(m_k, 1/2) - m_k), convolved
    exactly on the integer grid."""
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


def mcnemar_clustered(y_true: ArrayLike, preds_a: Sequence[ArrayLike], preds_b: Sequence[ArrayLike]
                      ) -> ClusteredMcNemarResult:
    """McNemar over several seed pairs, the image as the unit: d_i = (seeds where B is right and A wrong)
    - (seeds where A is right and B wrong), and an exact sign-flip test of sum(d). Summing discordant
    counts over seeds into one binomial test would count each image once per seed as if independent."""
    if len(preds_a) != len(preds_b):
        raise ValueError(f"preds_a has {len(preds_a)} seed(s) but preds_b has {len(preds_b)}")
    if len(preds_a) == 0:
        raise ValueError("mcnemar_clustered needs at least one seed pair")
    y = as_1d(y_true, "y_true")
    ca = np.stack([_correct(y, p, f"preds_a[{i}]") for i, p in enumerate(preds_a)])
    cb = np.stack([_correct(y, p, f"preds_b[{i}]") for i, p in enumerate(preds_b)])
    b = int(np.count_nonzero(ca & ~cb))
    c = int(np.count_nonzero(~ca & cb))
    d = (cb.astype(np.int64) - ca.astype(np.int64)).sum(axis=0)
    return ClusteredMcNemarResult(b=b, c=c, n_images=int(np.count_nonzero(d)), statistic=int(d.sum()),
                                  pvalue=_sign_flip_pvalue(d))


def holm(pvalues: ArrayLike) -> NDArray[np.float64]:
    """Holm-adjusted p-values in input order (statsmodels' multipletests); NaN entries stay NaN and do not
    count among the tests."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0.0) | (p[valid] > 1.0)):
        raise ValueError(f"p-values must lie in [0, 1]; got {p[valid & ((p < 0) | (p > 1))].tolist()}")
    out = np.full(p.shape, np.nan)
    if valid.any():
        out[valid] = multipletests(p[valid], method="holm")[1]
    return out
