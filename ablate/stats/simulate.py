"""How often the verdicts are wrong: simulated studies through the same decision rules the summary uses.

Each simulated study compares a variant with a baseline over `n_seeds` seeds on a fixed test set of
`n_images` faces. Every trained model answers each image correctly with probability
sigmoid(difficulty_i + b), where b is the model's offset: a part shared by the two variants at one seed
(common random numbers) plus a part of its own, scaled so that the seed-to-seed sd of one variant's
accuracy (offsets and the binomial noise of which images each model gets right) is `seed_sd` points.
A planted effect shifts the variant's offset by `effect` points. Under the null (effect 0) a "better"/"worse"
verdict is a false positive; the t-interval of each variant's mean
should cover its expected accuracy (over seeds, on this test set) 95% of the time.

    python -m ablate.stats.simulate            # the rates in docs/statistics.md (a minute or two)
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

import numpy as np

from ablate.stats._mcnemar import mcnemar_clustered
from ablate.stats._seeds import t_interval
from ablate.stats._verdict import decide_arrays


@dataclass(frozen=True)
class Rates:
    n_seeds: int
    reps: int
    effect: float  # planted effect, points
    better: float  # share of studies with a "better" verdict
    worse: float
    equivalent: float
    coverage: float  # share of variant-mean t-intervals covering the expected accuracy
    diff_coverage: float  # share of paired-difference t-intervals covering the expected difference
    mcnemar_signif: float | None  # share with pooled McNemar p < 0.05 (None when not computed)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def simulate(n_seeds: int, *, reps: int = 1000, effect: float = 0.0, seed_sd: float = 1.2,
             shared: float = 0.5, n_images: int = 3589, base_acc: float = 0.70, rope: float = 0.5,
             alpha: float = 0.05, mcnemar_reps: int = 0, seed: int = 0) -> Rates:
    """Rates over `reps` simulated studies. `seed_sd`, `effect`, `rope` in accuracy points; `shared`: the
    share of each model's offset variance common to both variants at a seed (common random numbers)."""
    rng = np.random.default_rng(seed)
    logit = np.log(base_acc / (1 - base_acc))
    difficulty = rng.normal(logit, 1.5, n_images)
    pc = _sigmoid(difficulty)
    slope = float(np.mean(pc * (1 - pc)))  # d accuracy / d offset
    # two models with the same offset still err on different images: that binomial part is seed noise too,
    # so the offsets carry only what `seed_sd` (the total seed-to-seed sd of accuracy) leaves
    binom_var = float(np.sum(pc * (1 - pc))) / n_images**2 * 1e4
    if seed_sd**2 <= binom_var:
        raise ValueError(f"seed_sd={seed_sd} points is below the binomial noise of {n_images} images "
                         f"({binom_var**0.5:.2f} points)")
    sd_logit = (seed_sd**2 - binom_var) ** 0.5 / 100 / slope
    eff_logit = effect / 100 / slope
    # the estimand: a variant's expected accuracy over seeds on this test set
    b_draws = rng.normal(0, sd_logit, 4000)
    expected = np.array([np.mean(_sigmoid(difficulty[None, :] + b_draws[:, None])),
                         np.mean(_sigmoid(difficulty[None, :] + b_draws[:, None] + eff_logit))])
    u = rng.normal(0, sd_logit * np.sqrt(shared), (reps, n_seeds, 1))
    own = rng.normal(0, sd_logit * np.sqrt(1 - shared), (reps, n_seeds, 2))
    offsets = u + own + np.array([0.0, eff_logit])  # [..., 0] baseline, [..., 1] variant
    acc = np.empty((reps, n_seeds, 2))
    keep_preds = min(mcnemar_reps, reps)
    correct_kept = np.zeros((keep_preds, n_seeds, 2, n_images), dtype=bool)
    for r in range(reps):  # one study at a time keeps memory small; each is [seeds, 2, images]
        p = _sigmoid(difficulty[None, None, :] + offsets[r][:, :, None])
        correct = rng.random(p.shape, dtype=np.float32) < p
        acc[r] = correct.mean(axis=2)
        if r < keep_preds:
            correct_kept[r] = correct
    d = (acc[:, :, 1] - acc[:, :, 0]) * 100  # points, positive = variant better
    codes = decide_arrays(d, rope=rope, alpha=alpha)
    lo, hi = t_interval(acc[:, :, 1], 1 - alpha)
    dlo, dhi = t_interval(d, 1 - alpha)
    true_diff = (expected[1] - expected[0]) * 100
    signif = None
    if keep_preds:
        y = np.ones(n_images, dtype=np.int64)  # correctness as predictions of label 1
        ps = [mcnemar_clustered(y, [c[s, 0].astype(np.int64) for s in range(n_seeds)],
                                [c[s, 1].astype(np.int64) for s in range(n_seeds)]).pvalue for c in correct_kept]
        signif = float(np.mean(np.array(ps) < alpha))
    return Rates(n_seeds=n_seeds, reps=reps, effect=effect, better=float(np.mean(codes == 2)),
                 worse=float(np.mean(codes == 3)), equivalent=float(np.mean(codes == 1)),
                 coverage=float(np.mean((lo <= expected[1]) & (expected[1] <= hi))),
                 diff_coverage=float(np.mean((dlo <= true_diff) & (true_diff <= dhi))), mcnemar_signif=signif)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--mcnemar-reps", type=int, default=300)
    args = ap.parse_args(argv)
    print("setting                        n  better  worse  equiv  coverage  Δ coverage  McNemar p<.05")
    for label, kw in (("null, seed sd 1.2", dict(effect=0.0)), ("null, seed sd 0.8", dict(effect=0.0, seed_sd=0.8)),
                      ("null, seed sd 1.6", dict(effect=0.0, seed_sd=1.6)),
                      ("2-pt effect, seed sd 0.8", dict(effect=2.0, seed_sd=0.8, shared=0.0))):
        for n in (3, 5, 10):
            r = simulate(n, reps=args.reps, mcnemar_reps=args.mcnemar_reps if kw["effect"] == 0 else 0, **kw)  # type: ignore[arg-type]
            d = asdict(r)
            mc = "-" if d["mcnemar_signif"] is None else f"{100 * d['mcnemar_signif']:.1f}%"
            print(f"{label:<28} {n:>3}  {100 * r.better:5.1f}%  {100 * r.worse:4.1f}%  {100 * r.equivalent:4.1f}%  "
                  f"{100 * r.coverage:7.1f}%  {100 * r.diff_coverage:9.1f}%  {mc:>12}")


if __name__ == "__main__":
    main()
