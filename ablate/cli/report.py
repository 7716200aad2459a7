"""`ablate report STUDY` (a self-contained HTML report) and `ablate explain CHECKPOINT IMAGE...`."""

from __future__ import annotations

import argparse
import time

PROFILES = ("fast", "standard", "full")  # ablate.report.ANALYSIS_PROFILES, named here to keep --help import-light


def register(sub: argparse._SubParsersAction) -> None:
    from ablate.cli.study import _common

    p = _common(sub, "report", "self-contained HTML report of a study (reports/<study>/index.html)")
    p.add_argument("--report-dir", help="where to write the report (default reports/<study-name>/)")
    p.add_argument("--n-images", type=int, default=200, help="test images for the mask analysis (default 200)")
    p.add_argument("--analysis", choices=PROFILES, default="standard",
                   help="mask-analysis profile: fast (saliency, GradCAM, mask attribution; 5 deletion steps), "
                        "standard (every method at coarser settings; default), full (IG 32 steps, 20 deletion "
                        "steps, fine occlusion)")
    p.add_argument("--fast", action="store_true", help="same as --analysis fast; implied by --tiny")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-mlflow", action="store_true", help="do not attach the report to the MLflow parent run")
    p.add_argument("--device", dest="report_device", metavar="DEVICE",
                   help="where the mask analysis runs: cpu, cuda, cuda:1 (default: $ABLATE_DEVICE, else cuda when "
                        "available)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("analyse", help="mask analysis of one checkpoint on a data split, as an HTML report")
    p.add_argument("checkpoint", help="a best.pt written by training or a study trial")
    p.add_argument("--data", required=True, help="'generated[:...]', a fer2013.csv or a folder")
    p.add_argument("--split", default="test", help="train, val or test (default: test, i.e. PrivateTest)")
    p.add_argument("--n-images", type=int, default=500, help="faces analysed, a seeded subset (default 500)")
    p.add_argument("--analysis", choices=PROFILES, default="standard",
                   help="analysis profile (see `ablate report --help`; default standard)")
    p.add_argument("--skip-bad-rows", action="store_true", help="drop malformed rows instead of stopping")
    p.add_argument("--out", help="output folder (default reports/analyse/<checkpoint folder name>)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: $ABLATE_DEVICE, else cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_analyse)
    p = sub.add_parser("explain", help="classify single images (face detection) and show masks + attributions")
    p.add_argument("checkpoint", help="a best.pt written by training")
    p.add_argument("images", nargs="+", help="image files (photos are fine: the largest face is cropped)")
    p.add_argument("--out", default="reports/explain", help="output folder (default reports/explain)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: $ABLATE_DEVICE, else cuda when available)")
    p.set_defaults(func=cmd_explain)


def cmd_report(args: argparse.Namespace) -> int:
    from ablate.cli.study import session_from
    from ablate.report import build_report
    from resmasknet.runtime import check_device

    device = check_device(args.report_device)  # a device that cannot be used: exit 2 before any work
    session = session_from(args)
    t = time.perf_counter()
    analysis = "fast" if args.tiny or args.fast else args.analysis
    path = build_report(session, args.report_dir, n_images=args.n_images, analysis=analysis,
                        progress=not args.no_progress, log_mlflow=not args.no_mlflow, device=device)
    print(f"report: {path}  ({time.perf_counter() - t:.0f} s)")
    return 0


def cmd_analyse(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import pandas as pd

    from ablate.report import build_checkpoint_report
    from resmasknet.runtime import check_device

    args.device = check_device(args.device)
    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint file")
    out = args.out or str(Path("reports") / "analyse" / (ckpt.resolve().parent.name or "model"))
    t = time.perf_counter()
    path = build_checkpoint_report(ckpt, args.data, out, split=args.split, n_images=args.n_images,
                                   analysis=args.analysis, skip_bad_rows=args.skip_bad_rows,
                                   progress=not args.no_progress, device=args.device)
    info = json.loads((path.parent / "report.json").read_text())
    interventions = path.parent / "analysis" / "model" / "tables" / "interventions.csv"
    if interventions.exists():
        print(pd.read_csv(interventions).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in info["analysis_seconds"].items())
    print(f"analysis of {info['n_images']} images on {info['device']}: {secs}")
    print(f"report: {path}  ({time.perf_counter() - t:.0f} s)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import pandas as pd

    from ablate.report import explain
    from resmasknet.runtime import check_device

    path = explain(args.checkpoint, args.images, args.out, device=check_device(args.device))
    probs = pd.read_csv(path.parent / "probabilities.csv")
    classes = [c for c in probs.columns if c not in ("image", "prediction")]
    for _, row in probs.iterrows():  # most likely class first
        ranked = sorted(((c, float(row[c])) for c in classes), key=lambda t: -t[1])
        print(f"{row['image']}: " + ", ".join(f"{c} {v:.3f}" for c, v in ranked))
    print(f"explanation: {path}")
    return 0
