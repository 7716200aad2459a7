"""The `ablate` console command. Each subcommand lives in its own module in this package and
exposes `register(subparsers)`; the module list below is the only place that names them."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
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
    "export",
    "doctor",
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


class _Stderr(logging.StreamHandler):
    """Writes to the current sys.stderr (which tests and notebooks replace), one message a line."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def say_if_busy(command: str, threads: int, purpose: str) -> None:
    """Print `runtime.busy_machine_note`'s one line to stderr when other processes keep a core busy."""
    from resmasknet.runtime import busy_machine_note

    note = busy_machine_note(command, threads, purpose)
    if note:
        print(note, file=sys.stderr, flush=True)


def setup_logging(level: int = logging.INFO) -> None:
    """Library code logs; the CLI shows `ablate` and `resmasknet` messages (INFO and up) on stderr."""
    for name in ("ablate", "resmasknet"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _Stderr) for h in logger.handlers):
            handler = _Stderr()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        logger.setLevel(level)


def describe_error(exc: BaseException, args: argparse.Namespace) -> tuple[str, int] | None:
    """(one line, exit code) for an error the user can act on: 1 for storage and infrastructure errors (disk
    full, read-only, permission, an unreadable journal), 2 for bad input; None for anything else (a bug: the
    traceback is shown)."""
    from ablate.faults import INFRA, DeviceLost, InfraError, classify
    from resmasknet.runtime import StorageError, storage_error

    journal = getattr(args, "storage_path", None)
    if isinstance(exc, (StorageError, InfraError, DeviceLost)):
        return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)), 1
    if isinstance(exc, json.JSONDecodeError) or (isinstance(exc, ValueError) and str(exc) == "Invalid log format."):
        where = journal or "the Optuna journal"
        return (f"{where}: the Optuna journal has a line that cannot be read ({exc}); move the file aside (or "
                f"restore a backup) and run again"), 1
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        err = storage_error(exc, exc.filename or journal or "?")
        if err is None:
            return str(exc), 1
        # a raw OSError may come from a read as well as a write
        return str(err.strerror).replace("cannot write ", "cannot access ", 1), 1
    if isinstance(exc, KeyError):
        return str(exc.args[0] if exc.args else exc), 2
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return str(exc), 2
    if isinstance(exc, Exception):
        kind, reason = classify(exc)
        if kind == INFRA:
            return reason, 1
    return None


def main(argv: list[str] | None = None) -> int:
    __import__("resmasknet.runtime").runtime.configure_threads()  # before torch loads: OMP_WAIT_POLICY=PASSIVE
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    __import__("ablate.tracking").tracking.configure_environment()
    try:
        rc = args.func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (ablate.faults.Terminated)
        signum = getattr(exc, "signum", None)
        print(str(exc) if signum else "interrupted", file=sys.stderr)
        return 128 + signum if signum else 130
    except Exception as exc:
        # Errors raised for bad input carry a message naming the file/row/key; storage errors name the path
        # and what to do: show them plainly, on one line.
        described = None if getattr(args, "traceback", False) else describe_error(exc, args)
        if described is None:
            raise
        line, code = described
        print(f"error: {line}", file=sys.stderr)
        return code
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
