"""From per-seed paired differences to a verdict, with its reason.

The rules, in order, for a variant against the baseline (d = per-seed differences variant - baseline,
oriented so that positive means better; alpha = 0.05, rope = the study's margin):

1. fewer than 2 paired seeds                         -> TOO_FEW   (no seed-to-seed spread to judge against)
2. every seed's difference is exactly 0              -> EQUIVALENT (identical results in every seed)
3. paired t over seeds, Holm across variants, < alpha -> BETTER / WORSE (by the sign of the mean)
4. TOST against +-rope, p < alpha                    -> EQUIVALENT (the 90% t-interval lies inside the margin)
5. otherwise, seeds pointing both ways               -> INCONCLUSIVE (seeds disagree)
   otherwise (all seeds the same way)                -> TOO_FEW (more seeds would decide; how many is given)

McNemar on the test images is reported beside, never used here: it treats the trained models as fixed.
`decide_arrays` is the vectorised core (a simulation runs thousands of studies through it); `decide`
is the same for one variant, with the sentence that explains it.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ablate.stats._seeds import paired_t, t_interval, tost_p


class Verdict(str, enum.Enum):
    BASELINE = "baseline"
    BETTER = "better"
    WORSE = "worse"
    EQUIVALENT = "equivalent"
    INCONCLUSIVE = "inconclusive"
    TOO_FEW = "too few seeds"

    def __str__(self) -> str:
        return self.value


_CODES = (Verdict.TOO_FEW, Verdict.EQUIVALENT, Verdict.BETTER, Verdict.WORSE, Verdict.INCONCLUSIVE)


def decide_arrays(d: ArrayLike, p_adjusted: ArrayLike | None = None, *, rope: float, alpha: float = 0.05
                  ) -> NDArray[np.int64]:
    """Verdict codes (indices into `_CODES`) for each row of d [studies, seeds] (positive = better).
    `p_adjusted`: each row's Holm-adjusted paired-t p (default: the unadjusted paired t of the row)."""
    a = np.atleast_2d(np.asarray(d, dtype=float))
    n = a.shape[1]
    codes = np.full(a.shape[0], 0, dtype=np.int64)  # TOO_FEW
    if n < 2:
        return codes
    p = np.atleast_1d(np.asarray(paired_t(a) if p_adjusted is None else p_adjusted, dtype=float))
    p_eq = np.atleast_1d(np.asarray(tost_p(a, rope), dtype=float))
    mean = a.mean(axis=1)
    zero = np.all(a == 0, axis=1)
    signif = (p < alpha) & ~zero
    equiv = ~zero & ~signif & (p_eq < alpha)
    mixed = (np.any(a > 0, axis=1) & np.any(a < 0, axis=1))
    codes[:] = np.where(mixed, 4, 0)
    codes[equiv] = 1
    codes[signif & (mean > 0)] = 2
    codes[signif & (mean < 0)] = 3
    codes[zero] = 1
    return codes


def verdict_of(code: int) -> Verdict:
    return _CODES[int(code)]


def _pp(x: float, scale: float) -> str:
    return f"{x * scale:+.2f}"


def decide(d: ArrayLike, p_adjusted: float, *, rope: float, alpha: float = 0.05, confidence: float = 0.95,
           n_variants: int = 1, needed: int | None = None, scale: float = 100.0, unit: str = "pp"
           ) -> tuple[Verdict, str]:
    """The verdict for one variant and the sentence that gives its basis. `d` oriented positive = better;
    `scale`/`unit` only format the numbers (100 and "pp" for accuracies held as fractions)."""
    a = np.asarray(d, dtype=float)
    code = int(decide_arrays(a[None, :], None if not np.isfinite(p_adjusted) else np.array([p_adjusted]),
                             rope=rope, alpha=alpha)[0])
    verdict = verdict_of(code)
    n = a.size
    if n < 2:
        return verdict, f"only {n} paired seed: no seed-to-seed spread to judge a difference against"
    lo, hi = t_interval(a, confidence)
    ci = f"{confidence:.0%} CI [{_pp(lo, scale)}, {_pp(hi, scale)}] {unit}"
    holm = f"p = {_fmt_p(p_adjusted)} (paired t over {n} seeds" + (f", Holm over {n_variants})" if n_variants > 1
                                                                    else ")")
    margin = f"±{rope * scale:.2g} {unit}"
    up, down = int(np.sum(a > 0)), int(np.sum(a < 0))
    if verdict is Verdict.EQUIVALENT and np.all(a == 0):
        return verdict, f"identical results in all {n} paired seeds"
    if verdict in (Verdict.BETTER, Verdict.WORSE):
        small = " (smaller than the margin)" if -rope < lo and hi < rope else ""
        return verdict, f"mean {_pp(float(a.mean()), scale)} {unit}, {ci}, {holm}{small}"
    if verdict is Verdict.EQUIVALENT:
        lo90, hi90 = t_interval(a, 1 - 2 * alpha)
        return verdict, (f"90% CI [{_pp(lo90, scale)}, {_pp(hi90, scale)}] {unit} lies inside the {margin} margin "
                         f"(TOST, {n} seeds)")
    more = f"; about {needed} seeds would detect a {margin} difference with 80% power" if needed else ""
    if verdict is Verdict.INCONCLUSIVE:
        tie = f", {n - up - down} tie" if n - up - down else ""
        return verdict, f"seeds disagree ({up} up, {down} down{tie}): {ci}, {holm}{more}"
    ties = n - up - down
    way = f"{up or down} of {n} seeds point {'up' if up else 'down'}" + (f", {ties} tie" if ties else "") + \
        (", none the other way" if up or down else "")
    return verdict, f"{way}, but {ci}, {holm}{more}"


def _fmt_p(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    p = float(p)
    if p == 0.0:
        return "0"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
