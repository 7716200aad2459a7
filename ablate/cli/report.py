"""`ablate report STUDY` (a self-contained HTML report) and `ablate explain CHECKPOINT IMAGE...`."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    from ablate.cli.study import _common

    p = sub.add_parser("report", help="self-contained HTML report of a study (reports/<study>/index.html)")
    _common(p)
    p.add_argument("--report-dir", help="where to write the report (default reports/<study-name>/)")
    p.add_argument("--n-images", type=int, default=200, help="test images for the mask analysis (default 200)")
    p.add_argument("--fast", action="store_true",
                   help="cheap mask analysis (saliency, GradCAM, mask attribution; 5 deletion steps); "
                        "implied by --tiny")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-mlflow", action="store_true", help="do not attach the report to the MLflow parent run")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("explain", help="classify single images (face detection) and show masks + attributions")
    p.add_argument("checkpoint", help="a best.pt written by training")
    p.add_argument("images", nargs="+", help="image files (photos are fine: the largest face is cropped)")
    p.add_argument("--out", default="reports/explain", help="output folder (default reports/explain)")
    p.set_defaults(func=cmd_explain)


def cmd_report(args: argparse.Namespace) -> int:
    from ablate.cli.study import session_from
    from ablate.report import build_report

    session = session_from(args)
    t = time.perf_counter()
    path = build_report(session, args.report_dir, n_images=args.n_images, tiny=args.tiny or args.fast,
                        progress=not args.no_progress, log_mlflow=not args.no_mlflow)
    print(f"report: {path}  ({time.perf_counter() - t:.0f} s)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ablate.report import explain

    path = explain(args.checkpoint, args.images, args.out)
    print(f"explanation: {path}")
    return 0
