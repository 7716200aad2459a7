""""What the masks do": one sentence per mask stage, every number read from the analysis tables
(``stages`` from the probe, ``interventions``), none computed here. A number the tables lack is left out
of the sentence rather than shown as ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

__all__ = ["mask_sentences"]

NO_MASKS = "This model has no mask stages, so there is nothing to measure."


def _num(row: Any, name: str) -> float | None:
    """A finite number from ``row.name``, else None."""
    v = getattr(row, name, None)
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _stage_sentence(r: Any) -> list[str]:
    applied = bool(getattr(r, "applied", True))
    parts = [f"Stage {r.stage} ({r.mask}, {r.activation} over {r.channels} channels at {r.size}px, "
             f"{r.application}{'' if applied else ', NOT applied'}):"]
    kl, ent = _num(r, "kl_mean"), _num(r, "entropy_mean")
    if kl is not None:
        umax = math.log(r.channels)
        parts.append(f"the mask departs from uniform by a mean KL of {kl:.4f} nats "
                     f"({100 * kl / umax:.2f}% of the maximum log C = {umax:.2f})"
                     + (f"; its normalised channel entropy is {ent:.3f} (1 = uniform)." if ent is not None else "."))
    else:
        mean, sd, sat = _num(r, "mask_mean"), _num(r, "mask_std"), _num(r, "saturation")
        if mean is not None:
            parts.append(f"mean mask value {mean:.3f}" + (f" (sd {sd:.3f})" if sd is not None else "")
                         + (f", saturated fraction {sat:.3f}." if sat is not None else "."))
    change, gain, gmax = _num(r, "rel_change"), _num(r, "gain_mean"), _num(r, "gain_max")
    if not applied:
        would = _num(r, "rel_change_if_applied")
        parts.append("It never reaches the features (the parameter-matched control)"
                     + (f"; applied, it would change them by {100 * would:.2f}%." if would is not None else "."))
    elif change is not None:
        parts.append(f"It changes the features by {100 * change:.2f}% (relative L2 change "
                     f"||x(1+m) − x|| / ||x||)"
                     + (f" with a mean gain of {gain:.3f}" if gain is not None else "")
                     + (f" (max {gmax:.3f})." if gmax is not None else "."))
    return parts


def _zero_sentence(z: Any) -> str | None:
    computed = getattr(z, "computed", True)
    if computed is not None and not pd.isna(computed) and not bool(computed):  # not run: zero by construction
        note = getattr(z, "note", None)
        return "Removing it (zero mask) cannot change the output" + (f" ({note})." if isinstance(note, str) and note
                                                                      else ".")
    base, acc, delta, flips = (_num(z, k) for k in ("base_accuracy", "accuracy", "delta_accuracy", "flip_rate"))
    if base is None or acc is None or delta is None:
        return None
    text = (f"Removing it (zero mask) changes accuracy from {100 * base:.1f}% to {100 * acc:.1f}% "
            f"({100 * delta:+.1f} points)")
    if flips is not None:
        text += f" and flips {100 * flips:.1f}% of predictions on {int(z.n)} faces"
    broken, fixed, p = _num(z, "broken"), _num(z, "fixed"), _num(z, "mcnemar_p")
    if broken is not None and fixed is not None:
        text += f" ({int(broken)} faces go from right to wrong, {int(fixed)} from wrong to right"
        text += f"; exact McNemar p = {p:.2g})." if p is not None else ")."
    else:
        text += "."
    return text


def mask_sentences(tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """One sentence per stage of the analysed model."""
    st = tables.get("stages")
    if st is None or st.empty:
        return [NO_MASKS]
    iv = tables.get("interventions")
    out = []
    for r in st.itertuples(index=False):
        parts = _stage_sentence(r)
        if iv is not None and not iv.empty and {"stage", "kind"} <= set(iv.columns):
            z = iv[(iv["stage"] == r.stage) & (iv["kind"] == "zero")]
            sentence = _zero_sentence(next(z.itertuples(index=False))) if not z.empty else None
            if sentence:
                parts.append(sentence)
        out.append(" ".join(parts))
    return out
