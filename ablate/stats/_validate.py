"""Checking and cleaning the inputs of the statistics: a results frame (variant, seed, metric) and labels."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray


class StatsWarning(UserWarning):
    """Data were dropped or a fallback was taken; the numbers are still computed."""


def check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def sorted_if_possible(values: Sequence[Any]) -> list[Any]:
    """Sort for stable error messages and seed order; mixed types keep their given order."""
    try:
        return sorted(values)
    except TypeError:
        return list(values)


def variant_order(results: pd.DataFrame) -> list[Any]:
    """Variants in order of first appearance: the order the study declared them in."""
    return list(pd.unique(results["variant"]))


def clean_results(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Validate a results frame and drop rows whose metric is not finite (failed/pruned runs), with a
    warning that names them. Duplicated (variant, seed) rows are an error rather than averaged: a re-run
    that silently counts twice would make a variant look more certain than it is."""
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
        warnings.warn(f"dropping {int(bad.sum())} row(s) with a non-finite {metric!r}: (variant, seed) {dropped}",
                      StatsWarning, stacklevel=3)
        df = df.loc[~bad]
    dup = df.duplicated(["variant", "seed"], keep=False)
    if dup.any():
        pairs = sorted_if_possible(list(set(zip(df.loc[dup, "variant"], df.loc[dup, "seed"]))))
        raise ValueError(f"results has several rows for (variant, seed) {pairs}; aggregate or drop the repeats first")
    return df


def check_baseline(baseline: Hashable, variants: Sequence[Any]) -> None:
    if baseline not in variants:
        raise ValueError(f"baseline {baseline!r} is not in results; available variants: {list(variants)}")


def per_variant_constant(results: pd.DataFrame, column: str, variants: Sequence[Any]) -> dict[Any, Any]:
    """A per-variant constant (params, MACs) carried beside the statistics; several values are an error."""
    if column not in results.columns:
        return {v: np.nan for v in variants}
    out: dict[Any, Any] = {}
    for v in variants:
        values = pd.unique(results.loc[results["variant"] == v, column].dropna())
        if len(values) > 1:
            raise ValueError(f"variant {v!r} has several {column!r} values {list(values)}; expected one")
        out[v] = values[0] if len(values) else np.nan
    return out


def as_1d(x: ArrayLike, name: str) -> NDArray[Any]:
    arr = np.asarray(x)
    if arr.ndim != 1:
        hint = " (for scores or probabilities pass .argmax(axis=1))" if arr.ndim == 2 else ""
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}{hint}")
    return arr


def paired_values(df: pd.DataFrame, metric: str, variant: Any, baseline: Any
                  ) -> tuple[list[Any], NDArray[np.float64], NDArray[np.float64]]:
    """Seed-matched values of `variant` and `baseline` (a warning lists unpaired seeds); error if none."""
    base = df.loc[df["variant"] == baseline].set_index("seed")[metric]
    other = df.loc[df["variant"] == variant].set_index("seed")[metric]
    common = sorted_if_possible(list(set(base.index) & set(other.index)))
    unpaired = sorted_if_possible(list(set(base.index) ^ set(other.index)))
    if unpaired and common:
        warnings.warn(f"variant {variant!r} vs baseline {baseline!r}: seeds {unpaired} are not in both; comparing "
                      f"on the {len(common)} common seed(s) {common}", StatsWarning, stacklevel=3)
    return common, other.loc[common].to_numpy(dtype=float), base.loc[common].to_numpy(dtype=float)
