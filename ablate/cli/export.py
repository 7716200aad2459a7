"""`ablate export STUDY [--to results/STUDY]`: a finished study's results as data (`ablate.export`): the summary
table (CSV and Markdown), one row per trial, the per-image test predictions, and what produced them."""

from __future__ import annotations

import argparse
import re


def register(sub: argparse._SubParsersAction) -> None:
    from ablate.cli.study import _common

    p = _common(sub, "export", "write a study's summary table, trials and provenance as files (default "
                               "results/<study>)")
    p.add_argument("--to", metavar="DIR", help="the folder to write (default results/<study>)")
    p.add_argument("--metric", default="test_acc", help="the trial metric the table compares (default test_acc)")
    p.add_argument("--test", choices=("t", "sign-flip"), default="t",
                   help="the paired test over seeds: t (default) or the exact sign-flip permutation test")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ablate.cli.study import session_from
    from ablate.export import export_study

    session = session_from(args)
    dest = Path(args.to) if args.to else Path("results") / session.study.name
    written = export_study(session, dest, metric=args.metric, test=args.test, command=_command_of(args))
    print(f"exported {session.study.name} to {dest}:")
    for path in written.values():
        print(f"  {path}")
    return 0


def _command_of(args: argparse.Namespace) -> str:
    """The command line these arguments stand for, without one machine's folders or a database password."""
    from ablate.export import scrub_argv

    argv = ["ablate", "export", args.study]
    defaults = {"metric": "test_acc", "test": "t"}
    for flag in ("out", "storage", "tracking_uri", "to", "metric", "test"):
        value = getattr(args, flag, None)
        if value is not None and value != defaults.get(flag):
            value = re.sub(r"(://[^:/@]+):[^@/]*@", r"\1@", str(value))  # user:password@host -> user@host
            argv += [f"--{flag.replace('_', '-')}", value]
    if getattr(args, "tiny", False):
        argv.append("--tiny")
    return scrub_argv(argv)
