"""`ablate doctor`: the toolkit proven on one device in one command (`ablate.doctor`), one table out.

    ablate doctor --device cuda --out runs/gpu-check      # `make gpu-check`: within minutes on one GPU
    ablate doctor --device cpu --only device tests study analysis
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from ablate.doctor import STEPS

    p = sub.add_parser("doctor", help="check this device: device tests, bench of every preset, a two-worker "
                                      "study, an analysis, the FER2013 studies' cost; one table")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: $ABLATE_DEVICE, else cuda when available)")
    p.add_argument("--out", default="runs/doctor", help="where the logs, tables and doctor.md go "
                                                        "(default runs/doctor)")
    p.add_argument("--only", nargs="+", choices=STEPS, metavar="STEP",
                   help=f"run these steps only ({', '.join(STEPS)})")
    p.add_argument("--skip", nargs="+", choices=STEPS, default=[], metavar="STEP", help="leave these steps out")
    p.add_argument("--models", nargs="+", metavar="NAME", help="bench these presets (default: all on CUDA, the "
                                                               "48-px ones on CPU)")
    p.add_argument("--compile", nargs="*", metavar="NAME", dest="compile_models",
                   help="presets to also measure under torch.compile (default on CUDA: resmasknet_cpu and "
                        "resmasknet_paper; on CPU: none); give no name for none")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ablate.doctor import STEPS, format_steps, run_doctor

    only = tuple(s for s in (args.only or STEPS) if s not in args.skip)

    def show(step) -> None:
        print(f"  {step.name}: {step.status} ({step.seconds:.0f} s) {step.detail}", file=sys.stderr, flush=True)

    steps = run_doctor(args.device, args.out, only=only, progress=show, bench_models=tuple(args.models or ()) or None,
                       compile_models=None if args.compile_models is None else tuple(args.compile_models))
    bench = next((s for s in steps if s.name == "bench" and s.data.get("table")), None)
    if bench is not None:
        print(bench.data["table"] + "\n")
    print(format_steps(steps))
    print(f"\nwrote {args.out}/doctor.md and doctor.json")
    failed = [s.name for s in steps if s.status == "fail"]
    if failed:
        print(f"error: doctor: failed step(s): {', '.join(failed)} (logs in {args.out})", file=sys.stderr)
        return 1
    return 0
