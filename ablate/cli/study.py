"""`ablate run | worker | status | summarize | ui`: studies as Optuna sweeps tracked in MLflow.

Exit codes: 0 done (with `--first-seeds N`: every cell of the first N seeds done); 1 grid cells remain
unfinished (each exhausted cell is listed with its reason), a storage error (disk full, read-only,
permission: one line naming the path) or, for `summarize`, complete trials whose records cannot be read (named);
a failed or killed worker gives the highest worker status (128 + signal when killed); 2 bad input (the study
file, a duplicate key in it, its data: checked before anything is created; a flag); 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from resmasknet.runtime import SESSIONS  # no torch: resmasknet.runtime loads without it

log = logging.getLogger(__name__)


def _common(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """The sub-command's parser with the arguments every study command takes."""
    p = sub.add_parser(name, help=help)
    p.add_argument("study", help="a study file, or a name in studies/ (e.g. quickstart)")
    p.add_argument("--out", help="output folder (default: runs/<study>)")
    p.add_argument("--storage", help="Optuna storage: a journal file path (default runs/<study>/optuna.journal) "
                                     "or postgresql://user@host/db for many machines")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///runs/<study>/mlflow.db)")
    p.add_argument("--tiny", action="store_true", help="run the study shrunk to seconds (for trying it out)")
    return p


def _first_seeds(p: argparse.ArgumentParser) -> None:
    p.add_argument("--first-seeds", type=int, metavar="N",
                   help="grid studies: run only the cells of the study's first N seeds (every variant of each), "
                        "so a run that must fit a time limit ends with whole paired seeds; a later run without "
                        "it adds the other seeds to the same study")


def register(sub: argparse._SubParsersAction) -> None:
    p = _common(sub, "run", "run a study (creates storage, MLflow parent run, local workers)")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes (default 1: in this process; 0: only prepare the study)")
    p.add_argument("--workers-per-gpu", type=int, metavar="N",
                   help="with CUDA: N worker processes per GPU (N x GPUs in all, devices assigned round-robin; N "
                        "on the GPU --device cuda:K names); overrides --workers. --device wins: with --device "
                        "cpu, or without CUDA, ignored (--workers on the CPU)")
    p.add_argument("--worker-sessions", choices=SESSIONS, default="own",
                   help="with several workers: start each in a session of its own (own, the default) or in this "
                        "one (same). Where the kernel shares the CPU between sessions first (autogroup), the "
                        "workers of one session get one session's share together: beside a program of another "
                        "session that keeps a core busy, they then share the free core. Results are the same "
                        "either way; Ctrl-C, Ctrl-Z and fg work either way")
    p.add_argument("--retry-failed", action="store_true",
                   help="give cells that used all their attempts new ones (after fixing the cause)")
    _first_seeds(p)
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:1, ... (default: $ABLATE_DEVICE, else cuda if present)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-summary", action="store_true")
    p.set_defaults(func=cmd_run)
    p = _common(sub, "worker", "join a running study from this machine / GPU")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-trials", type=int)
    _first_seeds(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_worker)
    p = _common(sub, "status", "trials and MLflow runs of a study, and the grid cells still missing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = _common(sub, "summarize", "the ablation table: seed-level intervals, paired tests over seeds, verdicts")
    p.add_argument("--metric", default="test_acc", help="the trial metric to compare (default test_acc)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="print the table as Markdown (for a README)")
    fmt.add_argument("--latex", action="store_true", help="print the table as a LaTeX booktabs table (for a paper)")
    p.add_argument("--test", choices=("t", "sign-flip"), default="t",
                   help="the paired test over seeds: t (default) or the exact sign-flip permutation test")
    p.add_argument("--baseline", metavar="VARIANT",
                   help="compare against this variant instead of the study's baseline (the CSV is then "
                        "summary-vs-VARIANT.csv)")
    p.set_defaults(func=cmd_summarize)
    p = _common(sub, "ui", "open the MLflow UI for a study's store (127.0.0.1)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)


# the commands that read a study's results find its output folder the way `ablate.open_study` does
_READING = ("status", "summarize", "ui", "report", "export")


def session_from(args: argparse.Namespace):
    """The study session the command's arguments name (`ablate.session.open_session`)."""
    from ablate.session import configure_optuna_logging, open_session

    configure_optuna_logging()
    device = getattr(args, "device", "cpu")
    if device == "auto":
        from resmasknet.runtime import resolve_device

        device = str(resolve_device(None))  # $ABLATE_DEVICE, else cuda when available
    threads = os.environ.get("ABLATE_TORCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    session = open_session(args.study, args.out, storage=args.storage, tracking_uri=args.tracking_uri,
                           device=device, tiny=getattr(args, "tiny", False),
                           progress=not getattr(args, "no_progress", False),
                           first_seeds=getattr(args, "first_seeds", None),
                           must_exist=getattr(args, "command", None) in _READING)
    args.storage_path = session.storage_url  # main() names it when the journal cannot be read
    return session


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM / SIGHUP raise `ablate.faults.Terminated` (a KeyboardInterrupt) while the block runs, so trials
    and runs are marked KILLED on the way out; the previous handlers come back afterwards."""
    from ablate.faults import raise_on_sigterm

    if not _main_thread():
        yield
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    raise_on_sigterm()
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _end_parent(session, outcome: str) -> None:
    from ablate.runner import finish_study

    try:
        finish_study(session, outcome)
    except Exception as exc:  # noqa: BLE001 - the run's own error (if any) matters more
        from ablate.faults import one_line

        log.warning("could not mark the study's MLflow run %s: %s", outcome, one_line(exc))


def cmd_run(args: argparse.Namespace) -> int:
    from ablate.runner import prepare, spawn_workers, study_outcome, work
    from ablate.trial import check_data
    from resmasknet.runtime import check_device

    args.device = check_device(args.device)  # a device that cannot be used: exit 2 before anything is created
    session = session_from(args)
    check_data(session.study)  # bad data is refused before any file is created (exit 2)
    study = session.study
    print(f"study {study.name}: {study.mode}, "
          + (f"{len(study.variants)} variants x {len(study.seeds)} seeds = {len(study.cells)} cells"
             if study.mode == "grid" else f"{study.search['n_trials']} trials")
          + f"\n  output   {session.paths.root}\n  optuna   {session.storage_url}\n  mlflow   {session.tracking_uri}")
    workers_per_gpu = getattr(args, "workers_per_gpu", None)
    prepare(session, retry_failed=getattr(args, "retry_failed", False))
    if session.device == "cpu" and args.workers > 0:
        from ablate.cli import say_if_busy

        say_if_busy("ablate run", 1, "study")
    if args.workers == 0 and not workers_per_gpu:
        print(f"study prepared; add workers with: ablate worker {args.study} --storage {session.storage_url} "
              f"--tracking-uri {session.tracking_uri}")
        return 0
    worker_rc = 0
    try:
        with _terminate_as_interrupt():
            if args.workers > 1 or workers_per_gpu:
                worker_rc = spawn_workers(args.study, max(1, args.workers), session, workers_per_gpu,
                                          sessions=getattr(args, "worker_sessions", "own"))
            else:
                work(session)
    except KeyboardInterrupt:
        _end_parent(session, "KILLED")
        raise
    except BaseException:
        _end_parent(session, "FAILED")
        raise
    st = _print_status(session)
    outcome = study_outcome(st)
    _end_parent(session, outcome)
    limited_done = outcome == "KILLED"  # every cell of the first seeds complete, as --first-seeds asked
    if limited_done:
        seeds = list(study.seeds)
        print(f"seeds {seeds[:session.first_seeds]} complete ({session.first_seeds} of {len(seeds)}, as "
              f"--first-seeds asked); `ablate run {args.study}` without it adds seeds {seeds[session.first_seeds:]}")
    if not args.no_summary:
        if outcome == "FINISHED" or limited_done:
            cmd_summarize(argparse.Namespace(**{**vars(args), "metric": "test_acc", "markdown": False}))
        else:
            print(f"no summary while the study is unfinished (`ablate summarize {args.study}` summarises the "
                  f"finished trials)")
    if worker_rc:
        print(f"error: a worker failed (exit status {worker_rc}; see above)", file=sys.stderr)
        return worker_rc
    if outcome != "FINISHED" and not limited_done:
        print(f"error: study {study.name} is not finished (see above)", file=sys.stderr)
        return 1
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from ablate.runner import die_with_parent, work

    if os.environ.get("ABLATE_PARENT_PID"):  # started by `ablate run`: stop when it stops
        die_with_parent(int(os.environ.pop("ABLATE_PARENT_PID")))
    from ablate.trial import check_data
    from resmasknet.runtime import check_device

    args.device = check_device(args.device)  # a device that cannot be used: exit 2 before the worker joins
    session = session_from(args)
    check_data(session.study)  # bad data is refused before this worker takes a trial (exit 2)
    with _terminate_as_interrupt():
        n = work(session, max_trials=args.max_trials)
    print(f"worker done: {n} trial(s) run")
    return 0


def _print_status(session) -> dict:
    from ablate.runner import MAX_ATTEMPTS, status

    st = status(session)
    line = f"trials: {st['trials']}"
    if "cells" in st:
        line += (f"; grid cells complete {st['cells_complete']}/{st['cells']}; whole seeds complete "
                 f"{st['seeds_complete']} of {len(session.study.seeds)}")
    if "mlflow_runs" in st:
        line += f"; MLflow trial runs: {st['mlflow_runs']}"
    print(line)
    if st.get("mlflow_runs_orphaned"):
        print(f"{st['mlflow_runs_orphaned']} MLflow trial run(s) RUNNING with no live worker (a worker died, or a full "
              f"disk stopped it): the next `ablate run` closes them")
    if st.get("infra_failures"):
        n = sum(st["infra_failures"].values())
        print(f"infrastructure failures (no attempt used): {n}")
    for cell in st.get("cells_exhausted", []):
        print(f"failed cell {cell['cell']}: all {cell['attempts']} attempts failed; last: {cell['reason']}")
    if st.get("cells_exhausted"):
        print(f"  (fix the cause, then `ablate run --retry-failed` gives them {MAX_ATTEMPTS} new attempts)")
    if "first_seeds" in st:
        print(f"cells of the first {st['first_seeds']} seeds complete {st['cells_in_scope_complete']}/"
              f"{st['cells_in_scope']}")
    if st.get("cells_missing"):
        print(f"missing cells: {', '.join(st['cells_missing'])}  (rerun `ablate run` to finish them)")
    return st


def cmd_status(args: argparse.Namespace) -> int:
    session = session_from(args)
    if args.json:
        from ablate.runner import status

        print(json.dumps(status(session), indent=2))
    else:
        _print_status(session)
    return 0


def cmd_summarize(args: argparse.Namespace) -> int:
    from ablate import stats
    from ablate.summary import format_summary, summarize

    session = session_from(args)
    baseline = getattr(args, "baseline", None)
    if baseline and baseline != session.study.baseline:
        import dataclasses

        session.study.variant(baseline)  # a KeyError naming the variants when there is none of that name
        session = dataclasses.replace(session, study=dataclasses.replace(session.study, baseline=baseline))
    else:
        baseline = None
    result = summarize(session, metric=args.metric, test=getattr(args, "test", "t"))
    label = args.metric.replace("_", " ")
    if getattr(args, "markdown", False) and "table" in result:
        print(stats.to_markdown(result["table"], metric_label=label))
    elif getattr(args, "latex", False) and "table" in result:
        caption = f"{session.study.name}: {label}, seed-level comparison with {session.study.baseline}"
        print(stats.to_latex(result["table"], metric_label=label, caption=caption))
    else:
        print(format_summary(session.study.name, result, args.metric))
    out = session.paths.root / ("summary.csv" if baseline is None else f"summary-vs-{baseline}.csv")
    if "table" in result:
        from resmasknet.runtime import StorageError, atomic_write

        try:
            atomic_write(out, lambda tmp: result["table"].to_csv(tmp, index=False))
            print(f"\nsummary table: {out}")
        except StorageError as exc:  # a study folder mounted read-only is read all the same
            why = (exc.strerror or str(exc)).split(";")[0]
            print(f"\nsummary table not saved: {why} (the table above is complete)")
    problems = result["records"].problems
    if problems:  # a summary of some of the trials must not pass for the study's
        print(f"error: {len(problems)} complete trial(s) of {session.study.name} could not be read, so the summary "
              f"leaves them out: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


def _repoint(session) -> None:
    """A moved or copied study folder: its MLflow store names this folder for its artifacts (best effort)."""
    from ablate.runner import repoint

    repoint(session)


def cmd_ui(args: argparse.Namespace) -> int:
    session = session_from(args)
    if not Path(session.paths.root).exists() and session.tracking_uri.startswith("sqlite"):
        raise FileNotFoundError(f"no study output at {session.paths.root}; run `ablate run {args.study}` first")
    _repoint(session)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", session.tracking_uri,
           "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI for {session.study.name}: http://{args.host}:{args.port}  (Ctrl-C to stop)")
    os.execv(sys.executable, cmd)
    return 0
