"""How often the demo's table finds its known harm, over reruns with fresh seeds.

    python tools/demo_power.py [--reruns 10] [--seeds-per-run N] [--workers 2] [--out runs/demo_power]
                               [--study studies/quickstart.yaml]

Runs the quickstart study's baseline (`masks_off`) and its known harm (`undertrained`) on `reruns x seeds-per-run`
fresh seeds (1000, 1001, ...) as one study (resumable: run the same command again), then splits the seeds into
reruns of `seeds-per-run` and gives each the verdict the demo would give (`ablate.stats.compare_to_baseline`,
Holm across the demo's three compared variants: masks_on, unapplied, undertrained; `unapplied` is identical to
`masks_off` in every seed by construction, so its p-value is 1 and masks_on's p-value is unknown; the Holm factor
for undertrained is taken as the worst case, 3). Prints the counts and writes them to --csv when given.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reruns", type=int, default=10)
    ap.add_argument("--seeds-per-run", type=int, default=None,
                    help="seeds in each rerun (default: as many as the study file has, the demo's 5)")
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="runs/demo_power")
    ap.add_argument("--study", default=str(ROOT / "studies" / "quickstart.yaml"),
                    help="the quickstart study file whose masks_off and undertrained are rerun "
                         "(default: the project's)")
    ap.add_argument("--csv", help="append one row per rerun to this CSV")
    ap.add_argument("--analyse-only", action="store_true",
                    help="no training: analyse the study already in --out (its own design, as stored there)")
    args = ap.parse_args(argv)

    from ablate.cli import main as ablate_main

    out = Path(args.out)
    raw = yaml.safe_load(Path(args.study).read_text())
    if args.seeds_per_run is None:
        args.seeds_per_run = len(raw["seeds"])
    if args.analyse_only:
        return analyse(out, args)
    n = args.reruns * args.seeds_per_run
    study = {**raw, "name": "demo_power", "seeds": list(range(args.first_seed, args.first_seed + n)),
             "variants": {k: raw["variants"][k] for k in ("masks_off", "undertrained")},
             "description": "the quickstart's baseline and known harm on fresh seeds (tools/demo_power.py)"}
    study.pop("tiny", None)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo_power.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    rc = ablate_main(["run", str(path), "--out", str(out), "--workers", str(args.workers), "--no-summary"])
    if rc:
        return rc
    return analyse(out, args)


def analyse(out: Path, args: argparse.Namespace) -> int:
    """Each rerun's verdict for the known harm, from the study in `out` (its seeds, in order, in groups)."""
    import ablate
    from ablate import stats

    s = ablate.open_study(str(out))
    frame = s.trials()
    all_seeds = sorted(frame["seed"].unique())
    if len(all_seeds) < args.reruns * args.seeds_per_run:
        raise SystemExit(f"{out}: {len(all_seeds)} seeds, fewer than {args.reruns} x {args.seeds_per_run}")
    rope = float(s.study.rope) / 100.0
    epochs = s.study.train.get("epochs")
    design = " ".join(f"{k}={v}" for k, v in sorted(s.study.model_overrides.items()))
    rows = []
    for r in range(args.reruns):
        seeds = all_seeds[r * args.seeds_per_run:(r + 1) * args.seeds_per_run]
        part = frame[frame["seed"].isin(seeds)]
        table = stats.compare_to_baseline(part, None, None, baseline="masks_off", metric="test_acc", rope=rope)
        row = table.set_index("variant").loc["undertrained"]
        # Holm across the demo's 3 compared variants: the worst case multiplies this p by 3
        p3 = min(1.0, 3 * float(row["p_value"]))
        verdict = str(row["verdict"]) if p3 < 0.05 or str(row["verdict"]) != "worse" else "not worse with 3 tests"
        base = part[part["variant"] == "masks_off"]["test_acc"].to_numpy()
        harm = part[part["variant"] == "undertrained"]["test_acc"].to_numpy()
        rows.append({"model": s.study.model, "overrides": design, "data": s.study.data,
                     "epochs": epochs, "seeds_per_rerun": args.seeds_per_run, "rerun": r + 1,
                     "seeds": " ".join(map(str, seeds)), "masks_off_mean": float(base.mean()),
                     "undertrained_mean": float(harm.mean()), "mean_diff": float(row["mean_diff"]),
                     "p": float(row["p_value"]), "p_holm3": p3, "verdict": verdict})
    found = sum(r["verdict"] == "worse" for r in rows)
    for r in rows:
        print(f"rerun {r['rerun']:2d} seeds {r['seeds']}: masks_off {100 * r['masks_off_mean']:.1f}%, undertrained "
              f"{100 * r['undertrained_mean']:.1f}%, diff {100 * r['mean_diff']:+.1f} pp, p {r['p']:.2g} "
              f"(x3 {r['p_holm3']:.2g}): {r['verdict']}")
    print(f"undertrained called worse in {found} of {len(rows)} reruns of {args.seeds_per_run} seeds")
    if args.csv:
        new = not Path(args.csv).exists()
        if not new:
            with open(args.csv, newline="") as fh:
                header = next(csv.reader(fh), [])
            if header != list(rows[0]):
                raise SystemExit(f"{args.csv}: its columns {header} are not this tool's {list(rows[0])}; "
                                 "give a new --csv")
        with open(args.csv, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
