"""`ablate bench`: images/s of a training step, evaluation and the augmented data pipeline, optimised
(channels_last, inference_mode, bf16 on CUDA) next to plain (contiguous, no_grad, fp32), and peak memory.

    ablate bench --model resnet_cpu resmasknet_cpu --batch-size 32 --json bench.json
    ablate bench --all --device cuda
    ablate bench --contended --model resmasknet_cpu --threads 2     # idle vs one busy core, and the ratio
    ablate bench --contended --model resmasknet_cpu --threads 2 3 4 # thread counts compared in one run
    ablate bench --contended --model resmasknet_cpu --threads 2 1 --workers 1 2  # a study's 2 workers too
    ablate bench --contended --model resmasknet_cpu --threads 1 --workers 2 --busy-session own same \
        --worker-sessions own same                                    # where the busy process and workers run
    ablate bench --study fer_per_stage --device cuda                 # the study's projected cost (ablate.cost)
    ablate bench --study paper_scale --data-sizes 28709,3589,3589 --epochs 50
    ablate bench --study fer_stage_left_out_cpu --threads 1 --fit 120 --workers 2   # whole seeds in 2 hours
"""

from __future__ import annotations

import argparse
import sys

from resmasknet.runtime import SESSIONS  # no torch: resmasknet.runtime loads without it


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
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: $ABLATE_DEVICE, else cuda when available)")
    p.add_argument("--bf16-cpu", action="store_true",
                   help="optimised path: bf16 autocast on CPU too, where the CPU has bf16 units (else fp32, logged); "
                        "with --study: project every cell as if its recipe set train.cpu_bf16")
    p.add_argument("--threads", type=int, nargs="+", metavar="N",
                   help="torch CPU threads (default: torch's choice); with --contended several counts may be "
                        "given, each measured in the same run (more threads than cores included)")
    p.add_argument("--contended", action="store_true",
                   help="training throughput idle, while another process keeps one core busy, and on one thread "
                        "(what one free core gives); shows what OMP_WAIT_POLICY=PASSIVE, set by `ablate`, buys")
    p.add_argument("--busy-core", type=int, metavar="N",
                   help="with --contended: the core the busy process is pinned to (default: the last one)")
    p.add_argument("--busy-session", nargs="+", choices=SESSIONS, default=["own"], metavar="WHERE",
                   help="with --contended: start the busy process in a session of its own (own, the default: as a "
                        "program from another terminal, ssh login or cron runs) or in this one (same: as a job "
                        "started with & from this shell); both may be given, each measured in the same run. They "
                        "differ where the kernel shares the CPU between sessions first (autogroup)")
    p.add_argument("--worker-sessions", nargs="+", choices=SESSIONS, default=["own"], metavar="WHERE",
                   help="with --contended --workers N (N > 1): start the training processes each in a session of "
                        "its own (own, the default, as `ablate run` starts its workers) or in this one (same); "
                        "both may be given")
    p.add_argument("--study", metavar="STUDY",
                   help="project a grid study's cost here instead: time each of its networks once, then "
                        "epochs x splits / throughput per cell")
    p.add_argument("--data-sizes", metavar="TRAIN,VAL,TEST",
                   help="with --study: split sizes instead of loading the study's data (FER2013: 28709,3589,3589)")
    p.add_argument("--epochs", type=int, help="with --study: project this many epochs instead of the study's")
    p.add_argument("--fit", type=float, metavar="MINUTES",
                   help="with --study: how many whole seeds fit this many minutes (`ablate run --first-seeds`)")
    p.add_argument("--workers", type=int, nargs="+", default=[1], metavar="N",
                   help="with --study: the workers `ablate run --workers` (or --workers-per-gpu) will use; each "
                        "network is measured beside that many other training processes less one, and --fit "
                        "deals the cells to them (default 1). With --contended: N training processes of "
                        "--threads threads each measured together, as a study's workers train (their img/s "
                        "summed, over one --seconds window); several counts may be given")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ablate.cli.models import _parse_sets
    from resmasknet.bench import bench, bench_contended, format_contended, format_table
    from resmasknet.registry import get_config, list_models
    from resmasknet.runtime import check_device

    dev = torch.device(check_device(args.device))  # a device that cannot be used: exit 2 before measuring
    threads = list(dict.fromkeys(args.threads or [torch.get_num_threads()]))
    workers = list(dict.fromkeys(args.workers))
    for flag, counts in (("--threads", threads), ("--workers", workers)):
        if min(counts) < 1 or (len(counts) > 1 and not args.contended):
            print(f"ablate bench: {flag} {' '.join(map(str, counts))}: counts must be positive; one count, or "
                  f"several with --contended", file=sys.stderr)
            return 2
    sessions = list(dict.fromkeys(args.busy_session))
    team_sessions = list(dict.fromkeys(args.worker_sessions))
    args.workers = workers[0]  # --study takes one count
    torch.set_num_threads(threads[0])
    if dev.type == "cpu":
        from ablate.cli import say_if_busy

        say_if_busy("ablate bench", threads[0], "bench")
    if args.study:
        return _study_cost(args, dev)
    overrides = _parse_sets(args.set)
    if args.all:
        names = list_models()
    elif args.model:
        names = list(dict.fromkeys(args.model))
    else:
        names = list_models() if dev.type == "cuda" else [n for n in list_models() if get_config(n).input_size <= 64]
    for n in names:  # fail on a bad name or --set key before any measurement starts
        get_config(n, **overrides)

    if args.contended:
        rows = []
        for n in names:
            cases = [(b, t, w, ws) for b in sessions for w in workers for ws in (team_sessions if w > 1 else ["own"])
                     for t in threads]
            for b, t, w, ws in cases:
                torch.set_num_threads(t)
                row = bench_contended(n, batch_size=args.batch_size, device=dev, steps=args.steps,
                                      warmup=args.warmup, seconds=args.seconds, rounds=args.rounds,
                                      cpu_bf16=args.bf16_cpu, overrides=overrides, core=args.busy_core,
                                      workers=w, busy_session=b, worker_sessions=ws)
                print(f"  {n}, {t} threads" + (f" x {w} workers" if w > 1 else "")
                      + (f" in {ws} sessions" if w > 1 and len(team_sessions) > 1 else "")
                      + (f", busy process in {b} session" if len(sessions) > 1 else "") + ": train "
                      f"{row['train_idle_img_s']:.1f} img/s idle, "
                      f"{row['train_contended_img_s']:.1f} with a busy core ({row['contended_ratio']:.2f}x)"
                      + (f", {row['train_one_thread_img_s']:.1f} on one thread ({row['one_thread_ratio']:.2f}x)"
                         if row["train_one_thread_img_s"] else ""), file=sys.stderr, flush=True)
                rows.append(row)
        print(format_contended(rows))
        _write_json(args.json, rows)
        return 0

    def show(row: dict) -> None:
        print(f"  {row['model']}: train {row['train_img_s']:.1f} img/s, eval {row['eval_img_s']:.1f} img/s, "
              f"data {row['data_img_s']:.0f} img/s", file=sys.stderr, flush=True)

    rows = bench(names, batch_size=args.batch_size, device=dev, steps=args.steps, warmup=args.warmup,
                 seconds=args.seconds, rounds=args.rounds, plain=not args.no_plain, cpu_bf16=args.bf16_cpu,
                 overrides=overrides, progress=show)
    print(format_table(rows))
    _write_json(args.json, rows)
    return 0


def _study_cost(args: argparse.Namespace, dev: object) -> int:
    import dataclasses

    from ablate.cost import project_study, split_sizes
    from ablate.study import load_study

    if args.workers < 1 or (args.fit is not None and args.fit <= 0):
        print(f"ablate bench: --workers {args.workers} and --fit {args.fit} must be positive", file=sys.stderr)
        return 2
    study = load_study(args.study)
    if args.data_sizes:
        try:
            sizes = tuple(int(x) for x in args.data_sizes.split(","))
            if len(sizes) != 3 or min(sizes) < 1:
                raise ValueError
        except ValueError:
            print(f"ablate bench: --data-sizes {args.data_sizes!r} must be three positive integers "
                  f"TRAIN,VAL,TEST (e.g. 28709,3589,3589)", file=sys.stderr)
            return 2
    else:
        sizes = split_sizes(study)

    def show(variant: str, row: dict) -> None:
        print(f"  {variant}: train {row['train_img_s']:.1f} img/s, eval {row['eval_img_s']:.1f} img/s"
              + (f" ({row['eval_fp32_img_s']:.1f} in fp32)" if "eval_fp32_img_s" in row else ""),
              file=sys.stderr, flush=True)

    cost = project_study(study, sizes, device=str(dev), epochs=args.epochs, cpu_bf16=args.bf16_cpu,
                         workers=args.workers, progress=show, steps=args.steps,
                         warmup=args.warmup, seconds=args.seconds, rounds=args.rounds)
    print(cost.format())
    if args.fit is not None:
        print(cost.fit(args.fit, args.workers))
    _write_json(args.json, {"study": cost.study, "device": cost.device, "sizes": cost.sizes,
                            "workers": cost.workers, "total_s": cost.total_s,
                            "rows": [dataclasses.asdict(r) for r in cost.rows]})
    return 0


def _write_json(path: str | None, rows: object) -> None:
    if path:
        from resmasknet.runtime import atomic_write_json

        atomic_write_json(path, rows)
        print(f"wrote {path}")
