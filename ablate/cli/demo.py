"""`ablate demo`: the main job on the built-in generated data (what `make demo` runs)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the quickstart job on the built-in generated data")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ablate.cli import models

    return models.run(argparse.Namespace(name=None, set=None))
