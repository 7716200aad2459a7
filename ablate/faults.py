"""Failures, classified: an infrastructure error (storage, I/O, a lost connection) is not the trial's fault
and must not use up a cell's attempts; a trial's own error (a bad value, divergence) fails the cell.

Kinds (recorded as the trial's `fail_kind` user attribute, with `fail_reason`, by `ablate.trial.run_trial`):
`infra` (no attempt used: the worker backs off and retries), `trial` (one attempt used), `killed` (interrupted
by the user or SIGTERM: no attempt used), `stale` (set by the runner: the worker vanished mid-trial; one
attempt used) and `device` (a CUDA error after which the process's GPU context is unusable, such as an
illegal memory access: no attempt used, and the worker stops with `DeviceLost`, since every later trial in
that process would fail too; a rerun retries the cell in a fresh process).

Infrastructure errors that waiting cannot fix are `fatal`: a full disk (or quota) and a read-only file system
stop the worker at the first one (`out_of_space` says how much space the study still needs), instead of
retrying for minutes.

Example:
    >>> classify(OSError(28, "No space left on device"))[0]
    'infra'
    >>> fatal(OSError(28, "No space left on device"))
    True
    >>> classify(ValueError("lr=-1 must be a number"))[0]
    'trial'
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from resmasknet.runtime import StorageError, storage_error

INFRA = "infra"
TRIAL = "trial"
KILLED = "killed"
STALE = "stale"
DEVICE = "device"

# a missing file (ENOENT) is usually a bad path in the study (missing data), which retrying cannot fix
_INFRA_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ESTALE,
                 errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EAGAIN,
                 errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPIPE}
_INFRA_TEXT = ("database is locked", "disk i/o error", "database or disk is full", "readonly database",
               "unable to open database file", "server closed the connection", "could not connect to server",
               "connection refused")


# CUDA errors that leave the process's context unusable ("sticky": every later CUDA call fails the same way)
_DEVICE_TEXT = ("illegal memory access", "device-side assert", "unspecified launch failure",
                "uncorrectable ecc error", "misaligned address", "illegal instruction was encountered",
                "hardware stack error", "the launch timed out")


# a full disk as the libraries say it: SQLite ("database or disk is full"), torch's serializer (which hides the
# errno: "unexpected pos", "file write failed"), and the OS
_FULL_TEXT = ("no space left", "database or disk is full", "disk quota exceeded", "unexpected pos",
              "file write failed")


class InfraError(RuntimeError):
    """A worker gave up after a bounded time of infrastructure errors; the message is one line."""


class DeviceLost(RuntimeError):
    """A worker stopped because its GPU context is unusable (a `device` failure); the message is one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP) arrived: handled like Ctrl-C (trials and runs marked KILLED), exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 10:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror:  # not "[Errno 28] ..."
        text = exc.strerror + (f": {exc.filename}" if exc.filename and str(exc.filename) not in exc.strerror else "")
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line reason) for an exception raised while running a trial. The exception and its causes are
    looked at: an MLflow or SQLAlchemy error caused by a full disk is infrastructure too."""
    reason = _reason(exc)
    if isinstance(exc, KeyboardInterrupt):
        return KILLED, reason
    if isinstance(exc, (StorageError, InfraError)):
        return INFRA, reason
    for e in _chain(exc):
        if isinstance(e, RuntimeError) and "cuda" in str(e).lower() and any(t in str(e).lower() for t in _DEVICE_TEXT):
            return DEVICE, reason
        if isinstance(e, OSError) and (e.errno in _INFRA_ERRNOS or (e.errno is None and type(e) is OSError)):
            return INFRA, reason
        if isinstance(e, (OSError, RuntimeError)) and storage_error(e, "") is not None:
            return INFRA, reason  # torch hides ENOSPC as "unexpected pos ..."
        name = type(e).__module__ + "." + type(e).__name__
        if name.startswith(("sqlalchemy.", "psycopg", "mlflow.exceptions")) or "OperationalError" in name:
            text = str(e).lower()
            if "OperationalError" in name or any(t in text for t in _INFRA_TEXT) or not name.startswith("mlflow"):
                return INFRA, reason
    return TRIAL, reason


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or one of its causes) is a full disk or an exceeded quota, however a library words it."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(e).lower() for t in _FULL_TEXT):
            return True
    return False


def fatal(exc: BaseException) -> bool:
    """An infrastructure error that waiting cannot fix: a full disk, an exceeded quota, a read-only file system.
    The worker stops at the first one (one line naming the path) instead of backing off and retrying."""
    if disk_full(exc):
        return True
    return any(isinstance(e, OSError) and e.errno == errno.EROFS for e in _chain(exc))


def one_line(exc: BaseException) -> str:
    """An error in one short line for a warning: "no space left on the device" for a full disk however a library
    words it (SQLAlchemy's run to 5 lines with the SQL), else the error's first line."""
    if disk_full(exc):
        return "no space left on the device"
    return _reason(exc)


def out_of_space(path: str | os.PathLike, need: str) -> StorageError:
    """The one line a worker stops with on a full disk: the path it could not write and `need`, what the study
    still needs (`ablate.runner.space_needed`)."""
    return StorageError(errno.ENOSPC, f"cannot write {os.fspath(path)}: no space left on the device; {need}",
                        os.fspath(path))


def give_up(exc: BaseException, path: str | os.PathLike, waited_s: float) -> Exception:
    """The one-line error a worker stops with after `waited_s` of infrastructure errors: a `StorageError`
    naming `path` (or the file the error names) for space / read-only / permission errors, else `InfraError`."""
    if isinstance(exc, StorageError):
        return exc
    for e in _chain(exc):
        if isinstance(e, StorageError):
            return e
        if isinstance(e, (OSError, RuntimeError)):
            err = storage_error(e, getattr(e, "filename", None) or path)
            if err is not None:
                return err
    return InfraError(f"gave up after {waited_s:.0f} s of infrastructure errors; the last one: {_reason(exc)}")


def raise_on_sigterm() -> None:
    """Turn SIGTERM and SIGHUP into `Terminated` in the main thread, so a terminated run or worker marks its
    trial and MLflow runs KILLED on the way out (like Ctrl-C)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    if not getattr(sys.unraisablehook, "_redelivers_terminated", False):
        previous = sys.unraisablehook

        def redeliver(unraisable: Any) -> None:
            # a signal that lands in a finaliser or a weakref callback (run by the garbage collector, where Python
            # ignores exceptions) would be lost and the run would go on: send it again a moment later, from another
            # thread, so that it lands in the code that runs next (not in this hook, which ignores it too)
            if isinstance(unraisable.exc_value, Terminated):
                timer = threading.Timer(0.05, os.kill, (os.getpid(), unraisable.exc_value.signum))
                timer.daemon = True
                timer.start()
                return
            previous(unraisable)

        redeliver._redelivers_terminated = True  # type: ignore[attr-defined]
        sys.unraisablehook = redeliver
