"""`ablate demo`: the main job on the built-in generated data (what `make demo` runs): the quickstart
study (masks on / off / unapplied / a known harm x 5 seeds), its summary table, and its report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the quickstart study on generated data, summarise it, write its report")
    p.add_argument("--workers", type=int, default=None,
                   help="training processes (default: 2 where 2 cores are usable, else 1; each gets its share of "
                        "the cores: two one-thread workers train the small quickstart network faster than one "
                        "with two threads)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long version (for trying the pipeline)")
    p.add_argument("--no-report", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ablate.cli import main

    t0 = time.time()
    if args.workers is None:
        from resmasknet.runtime import usable_cores

        args.workers = min(2, usable_cores())
    common = ["quickstart"] + (["--tiny"] if args.tiny else [])
    rc = main(["run", *common, "--workers", str(args.workers)])
    if rc:
        return rc
    report_path = None
    if not args.no_report:
        from ablate.cli.study import session_from
        from ablate.report import build_report

        session = session_from(argparse.Namespace(study="quickstart", out=None, storage=None, tracking_uri=None,
                                                  tiny=args.tiny, device="auto", no_progress=False))
        # the fast analysis on 64 test images keeps the demo within minutes on a CPU
        report_path = build_report(session, n_images=64, analysis="fast")
    print(f"\ndemo finished in {(time.time() - t0) / 60:.1f} min.")
    print("Where to look next:")
    if report_path:
        print(f"  report        {report_path}  (open it in a browser)")
    tiny = " --tiny" if args.tiny else ""
    print(f"  MLflow UI     ablate ui quickstart{tiny}   (http://127.0.0.1:5000)")
    print(f"  the table     ablate summarize quickstart{tiny} --markdown")
    print(f"  in Python     s = ablate.open_study(\"quickstart\"{', tiny=True' if args.tiny else ''}); s.summary()")
    if Path("notebooks", "mask_explorer.ipynb").is_file():  # a checkout: its notebooks open this study by name
        print("  the masks     jupyter lab notebooks/   (mask_explorer.ipynb: ablate.explore on this study)")
    else:
        print("  the masks     in Jupyter: ablate.explore(s)")
    print("  your data     FER2013=/path/to/fer2013.csv ablate run fer_per_stage_cpu --workers 2  (1.5-3 h on 2 cores)")
    print("  on a GPU      FER2013=/path/to/fer2013.csv ablate run fer_per_stage --workers-per-gpu 4")
    return 0
