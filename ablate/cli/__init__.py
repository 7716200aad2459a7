"""The `ablate` console command. Each subcommand lives in its own module in this package and
exposes `register(subparsers)`; the module list below is the only place that names them."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each entry: a module of ablate.cli that defines register(subparsers).
COMMAND_MODULES = [
    "models",
    "demo",
    "study",
    "train",
    "evaluate",
    "bench",
    "report",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablate",
        description="ResMaskingNet ablation toolkit: models, training, studies, reports.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"ablate.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # Errors raised for bad input carry a message naming the file/row/key: show it plainly.
        if getattr(args, "traceback", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
