"""`ablate train`: train one network on a dataset, print a line per epoch and a summary; after training
the best checkpoint is evaluated on the test split (and with TTA when asked).

    ablate train --model resmasknet_cpu --data generated --out runs/x --epochs 5 --set mask2.enabled=false
    ablate train --model resnet_cpu --data data/fer2013.csv --out runs/fer_1h --minutes 60 --no-progress
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a network (default recipe: the paper's, or a measured CPU recipe)",
                       description="Train one network; writes best.pt, last.pt, history.json, result.json and "
                                   "test/ (metrics.json, predictions.csv/.npz) into --out.")
    p.add_argument("--model", default="resmasknet_cpu", help="preset name (see `ablate models`)")
    p.add_argument("--data", default="generated",
                   help="'generated[:n=...,seed=...]', a fer2013.csv, a folder (default: generated)")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="drop malformed rows / unreadable images (their count is reported) instead of stopping")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="a source with no validation split (Kaggle's train/ + test/ folders) holds out this "
                        "stratified, seeded fraction of train as val (default 0.1; 0: none)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, history, test metrics)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="network config override (repeatable)")
    p.add_argument("--recipe", choices=("auto", "paper", "cpu"), default="auto",
                   help="base training recipe: auto = paper for 224-px presets, cpu for 48-px presets")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE",
                   help="any TrainConfig field, e.g. warmup_pct=0.2 (repeatable)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=("radam", "adamw", "sgd"))
    p.add_argument("--scheduler", choices=("plateau", "onecycle", "cosine", "none"))
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--soft-labels", action="store_true", help="train on FER+ vote distributions when the data has them")
    p.add_argument("--seed", type=int)
    p.add_argument("--minutes", type=float, help="training-time budget (summed over resumptions)")
    p.add_argument("--budget-schedule", action="store_true",
                   help="stretch the onecycle/cosine lr schedule over --minutes rather than over the epochs, so "
                        "it always anneals within the budget on a busy machine (--epochs becomes an upper bound)")
    p.add_argument("--bf16-cpu", action="store_true",
                   help="bf16 autocast when training on CPU too, used only where the CPU has bf16 units "
                        "(AVX512-BF16, AMX-BF16, Arm BF16); elsewhere one logged line and fp32 (it would be slower)")
    p.add_argument("--threads", type=int, help="torch CPU threads (on a crowded machine 1 can beat 2)")
    p.add_argument("--max-train-batches", type=int, help="per epoch (tiny test runs)")
    p.add_argument("--limit", type=int, help="use a random LIMIT images of train and of val (tiny test runs)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: $ABLATE_DEVICE, else cuda when available)")
    p.add_argument("--pretrained", help="a local torchvision ResNet weights file for the backbone")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from OUT/last.pt when it exists (default: yes)")
    p.add_argument("--tta", nargs="+", choices=("flip", "authors"), default=[],
                   help="also evaluate the best checkpoint on test with these TTAs")
    p.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=run)


def _train_config(args: argparse.Namespace, model: Any) -> Any:
    from ablate.cli.models import _parse_sets
    from resmasknet.train import CPU_RECIPE, PAPER_RECIPE, recipe_for

    cfg = {"auto": recipe_for(model), "paper": PAPER_RECIPE, "cpu": CPU_RECIPE}[args.recipe]
    changes: dict[str, Any] = dict(_parse_sets(args.train_set))
    for field in ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "scheduler", "label_smoothing",
                  "seed", "max_train_batches", "limit"):
        value = getattr(args, field)
        if value is not None:
            changes[field] = value
    if args.minutes is not None:
        changes["max_minutes"] = args.minutes
    if args.soft_labels:
        changes["soft_labels"] = True
    if args.bf16_cpu:
        changes["cpu_bf16"] = True
    if args.budget_schedule:
        changes["budget_schedule"] = True
        changes.setdefault("epochs", 1000)
    return cfg.replace(**changes)


def run(args: argparse.Namespace) -> int:
    from resmasknet.runtime import check_device

    args.device = check_device(args.device)  # a device that cannot be used: exit 2 before anything is created
    from ablate.cli.models import _parse_sets
    from resmasknet.data import load_data
    from resmasknet.evaluate import evaluate
    from resmasknet.model import count_parameters
    from resmasknet.registry import create_model
    from resmasknet.train import train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from resmasknet.registry import get_config

    net_cfg = get_config(args.model, **_parse_sets(args.set))
    cfg = _train_config(args, net_cfg)
    # the seed decides the initial weights too (each module's from (seed, module name)): same seed, same run
    model = create_model(net_cfg, pretrained=args.pretrained, seed=cfg.seed)
    t0 = time.perf_counter()
    data = load_data(args.data, skip_bad_rows=args.skip_bad_rows, val_fraction=args.val_fraction)
    print(f"data: {data!r} loaded in {time.perf_counter() - t0:.1f}s; "
          f"train {int((data.split == 0).sum())}, val {int((data.split == 1).sum())}, "
          f"test {int((data.split == 2).sum())}" + (f"; {data.skipped} skipped (bad)" if data.skipped else ""),
          flush=True)
    print(f"model: {args.model} ({count_parameters(model):,} params)  recipe: {json.dumps(cfg.to_dict())}",
          flush=True)
    out = Path(args.out)

    from tqdm.auto import tqdm

    def log(epoch: int, m: dict[str, Any]) -> None:
        tqdm.write(f"epoch {epoch:3d}  train loss {m['train_loss']:.4f} acc {m['train_acc'] * 100:5.2f}%  "
                   f"val loss {m['val_loss']:.4f} acc {m['val_acc'] * 100:5.2f}%{' *' if m['is_best'] else '  '}  "
                   f"lr {m['lr']:.2e}  {m['train_img_s']:.0f} img/s  {m['epoch_s']:.0f}s  "
                   f"total {m['elapsed_min']:.1f} min", file=sys.stdout)
        sys.stdout.flush()

    import torch

    from ablate.cli import say_if_busy

    if args.device == "cpu":
        say_if_busy("ablate train", torch.get_num_threads(), "train")
    res = train(model, data, cfg, out_dir=out, callback=log, resume=args.resume, device=args.device,
                progress=not args.no_progress)
    fp32_note = "  (--bf16-cpu asked for; trained in fp32: no bf16 units)" if cfg.cpu_bf16 and not res.bf16 else ""
    print(f"\n{res.status}: {res.message}{fp32_note}")
    print(f"best val acc {res.best_val_acc * 100:.2f}% at epoch {res.best_epoch} of {res.epochs}; "
          f"{res.seconds / 60:.1f} min of training; checkpoints in {out}/ (best.pt, last.pt), history.json",
          flush=True)
    test = data.select("test")
    if args.no_test or len(test) == 0 or res.best_epoch == 0:
        return 0 if res.status != "diverged" else 1
    for tta in (None, *dict.fromkeys(args.tta)):
        ev = evaluate(model, test, tta=tta, batch_size=cfg.eval_batch_size, device=args.device, seed=cfg.seed)
        folder = out / ("test" if tta is None else f"test_tta_{tta}")
        ev.save(folder)
        print(f"test ({len(test)} images, tta={tta or 'none'}): accuracy {ev.accuracy * 100:.2f}%, "
              f"macro F1 {ev.macro_f1 * 100:.2f}%  -> {folder}/", flush=True)
    return 0 if res.status != "diverged" else 1
