"""`ablate bench`: images/s of a training step, evaluation and the augmented data pipeline, optimised
(channels_last, inference_mode, bf16 on CUDA) next to plain (contiguous, no_grad, fp32), and peak memory.

    ablate bench --model resnet_cpu resmasknet_cpu --batch-size 32 --json bench.json
    ablate bench --all --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput (train, eval, data pipeline) and peak memory per preset")
    p.add_argument("--model", nargs="+", action="extend", metavar="NAME",
                   help="presets to measure (default: the CPU presets on CPU, all presets on CUDA)")
    p.add_argument("--all", action="store_true", help="every preset (the 224-px ones are slow on CPU)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="network config override (repeatable)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (at most)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2,
                   help="repeat each measurement, alternating which path goes first; the best counts (default 2)")
    p.add_argument("--seconds", type=float, default=10.0, help="stop a measurement after this long")
    p.add_argument("--no-plain", action="store_true", help="skip the plain (authors' way) measurements")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--bf16-cpu", action="store_true", help="optimised path: bf16 autocast on CPU too")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ablate.cli.models import _parse_sets
    from resmasknet.bench import bench, format_table
    from resmasknet.evaluate import resolve_device
    from resmasknet.registry import get_config, list_models

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    overrides = _parse_sets(args.set)
    if args.all:
        names = list_models()
    elif args.model:
        names = list(dict.fromkeys(args.model))
    else:
        names = list_models() if dev.type == "cuda" else [n for n in list_models() if get_config(n).input_size <= 64]
    for n in names:  # fail on a bad name or --set key before any measurement starts
        get_config(n, **overrides)

    def show(row: dict) -> None:
        print(f"  {row['model']}: train {row['train_img_s']:.1f} img/s, eval {row['eval_img_s']:.1f} img/s, "
              f"data {row['data_img_s']:.0f} img/s", file=sys.stderr, flush=True)

    rows = bench(names, batch_size=args.batch_size, device=dev, steps=args.steps, warmup=args.warmup,
                 seconds=args.seconds, rounds=args.rounds, plain=not args.no_plain, cpu_bf16=args.bf16_cpu,
                 overrides=overrides, progress=show)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
            fh.write("\n")
        print(f"wrote {args.json}")
    return 0
