"""`ablate evaluate CHECKPOINT --data PATH`: accuracy, per-class table and confusion matrix of a checkpoint
on one split; `--out DIR` saves metrics.json and per-image predictions.csv / predictions.npz.

    ablate evaluate runs/x/best.pt --data data/fer2013.csv --split test --tta authors --out runs/x/test_tta
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a split (accuracy, per-class, confusion)")
    p.add_argument("checkpoint", help="a checkpoint written by `ablate train` (best.pt / last.pt)")
    p.add_argument("--data", required=True, help="'generated[:...]', a fer2013.csv or a folder")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="drop malformed rows / unreadable images (their count is reported) instead of stopping")
    p.add_argument("--split", default="test", help="train, val or test (default: test)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="a source with no validation split holds out this stratified, seeded fraction of train "
                        "as val, as `ablate train` does (default 0.1; 0: none)")
    p.add_argument("--tta", choices=("none", "flip", "authors"), default="none",
                   help="test-time augmentation: flip (plain + mirrored) or authors (10 random flip/rotations)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=1234, help="seed of the authors' TTA draws")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: $ABLATE_DEVICE, else cuda when available)")
    p.add_argument("--out", help="folder for metrics.json, predictions.csv, predictions.npz")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resmasknet.runtime import check_device

    args.device = check_device(args.device)  # a device that cannot be used: exit 2 before any work
    from resmasknet.checkpoint import load_checkpoint
    from resmasknet.data import load_data
    from resmasknet.evaluate import evaluate

    model, ckpt = load_checkpoint(args.checkpoint)
    data = load_data(args.data, skip_bad_rows=args.skip_bad_rows, val_fraction=args.val_fraction)
    split = data.select(args.split)
    if len(split) == 0:
        raise ValueError(f"{args.data}: split {args.split!r} holds no images")
    stored = tuple(ckpt.get("classes") or ())
    if stored and stored != tuple(data.classes):
        raise ValueError(f"{args.checkpoint} was trained on classes {stored}, the data has {tuple(data.classes)}")
    tta = None if args.tta == "none" else args.tta
    res = evaluate(model, split, tta=tta, batch_size=args.batch_size, device=args.device, seed=args.seed)
    meta = ckpt.get("metadata") or {}
    res.info.update({"checkpoint": str(args.checkpoint), "split": args.split,
                     **({"epoch": meta["epoch"]} if "epoch" in meta else {})})
    print(f"{args.checkpoint} on {args.data} [{args.split}]")
    print(f"data: {data!r}")
    print(res.report())
    if args.out:
        folder = res.save(args.out)
        print(f"\nsaved metrics.json, predictions.csv, predictions.npz in {folder}/")
    return 0
