"""The Optuna storage of a study, opened safely: a journal whose last write was cut off is repaired first.

A process that dies mid-write (disk full, a kill) leaves the journal's last line cut off. Optuna's
`JournalFileBackend.read_logs` reads the file line by line and silently skips a last line without a newline,
but the next append lands on the same line, and from then on every read fails with a JSON error
("Expecting ',' delimiter"). So before a journal is opened, `repair_journal` checks every line the way Optuna
parses it (ends with b"\\n", is valid JSON): a cut-off last line is truncated; a line where a cut-off write was
followed by a complete one (the symptom above) keeps only the complete log that follows the cut. The bytes cut
are kept in a side file `optuna.journal.broken-<timestamp>` and the repair is logged (WARNING, logger
`ablate.storage`) with both paths. The repair runs under the study lock and Optuna's own journal lock, so two
workers never repair at once and no append lands mid-repair. A journal opened here also cuts back its own
failed appends at once (`SafeJournalFileBackend`), and names the file in every storage error.

Example:
    >>> storage = open_storage("runs/quickstart/optuna.journal")       # repaired first when needed
    >>> with study_lock("runs/quickstart/optuna.journal", "quickstart"):
    ...     ...                                                          # one process at a time
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.storages.journal import JournalFileBackend

from resmasknet.runtime import StorageError, storage_error

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

__all__ = ["JournalError", "JournalRepair", "SafeJournalFileBackend", "check_journal", "file_lock", "open_storage",
           "repair_journal", "study_lock"]

# every log Optuna's JournalStorage writes is json.dumps({"op_code": ..., ...}, separators=(",", ":"))
_LOG_START = b'{"op_code":'


class JournalError(StorageError):
    """The journal cannot be read and cannot be repaired safely; the message names the file and the line."""


@dataclass(frozen=True)
class JournalRepair:
    journal: Path
    side_file: Path
    bytes_cut: int
    lines: tuple[int, ...]  # 1-based line numbers that were cut or shortened

    def describe(self) -> str:
        where = ", ".join(map(str, self.lines))
        return (f"repaired {self.journal}: cut {self.bytes_cut} byte(s) of an interrupted write "
                f"(line {where}); the cut bytes are kept in {self.side_file}")


def _valid(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    return True


def _salvage(line: bytes) -> int | None:
    """For a line made of a cut-off write followed by a complete log: the offset where the complete log starts."""
    if not line.endswith(b"\n"):
        return None
    start = line.find(_LOG_START, 1)
    while start != -1:
        if _valid(line[start:]):
            return start
        start = line.find(_LOG_START, start + 1)
    return None


def _split_lines(data: bytes) -> list[bytes]:
    """Lines as Optuna's `for line in f` yields them (split on b"\\n" only)."""
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def check_journal(path: str | os.PathLike) -> tuple[bytes, list[tuple[int, int, int]]] | None:
    """None when every line parses the way Optuna reads it; else (content, [(line_no, offset, cut_len)]): the
    damaged lines and how many of their leading bytes must go. Raises JournalError when a line in the middle
    is damaged beyond a cut-off write (nothing can be repaired safely)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from exc
    if not data:
        return None
    lines = _split_lines(data)
    damaged: list[tuple[int, int, int]] = []
    offset = 0
    for i, line in enumerate(lines, start=1):
        if not _valid(line):
            keep_from = _salvage(line)
            if keep_from is not None:
                damaged.append((i, offset, keep_from))
            elif i == len(lines):
                damaged.append((i, offset, len(line)))
            else:
                raise JournalError(errno.EIO, f"{path}: line {i} is not a complete Optuna log and no complete "
                                              f"log follows the damage, so the study cannot be read; move the "
                                              f"file aside (or restore a backup) and run again")
        offset += len(line)
    return (data, damaged) if damaged else None


def repair_journal(path: str | os.PathLike, study_name: str | None = None) -> JournalRepair | None:
    """Check the journal and, when a write was cut off, repair it (see the module docstring). Returns what was
    done, or None when the journal was fine. A journal that is fine is only read: this works on a read-only
    disk."""
    p = Path(path)
    if check_journal(p) is None:  # the common case: nothing to do, no lock, no write
        return None
    from optuna.storages.journal import JournalFileSymlinkLock

    with study_lock(os.fspath(p), study_name or p.parent.name):
        lock = JournalFileSymlinkLock(os.fspath(p))
        try:
            lock.acquire()  # an append in flight finishes first: only then is a short last line really cut off
        except OSError as exc:
            raise (storage_error(exc, os.fspath(p) + ".lock") or exc) from exc
        try:
            found = check_journal(p)
            if found is None:
                return None
            data, damaged = found
            side = p.with_name(f"{p.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            cut = b"".join(data[off:off + n] + (b"" if data[off:off + n].endswith(b"\n") else b"\n")
                           for _, off, n in damaged)
            try:
                side.write_bytes(cut)
            except OSError as exc:
                side.unlink(missing_ok=True)
                raise (storage_error(exc, side) or exc) from exc
            only_tail = len(damaged) == 1 and damaged[0][1] + damaged[0][2] == len(data)
            try:
                if only_tail:
                    os.truncate(p, damaged[0][1])  # earlier offsets stay valid for readers that cached them
                else:
                    out, pos = bytearray(), 0
                    for _, off, n in damaged:
                        out += data[pos:off]
                        pos = off + n
                    out += data[pos:]
                    tmp = p.with_name(f".{p.name}.repair-{os.getpid()}")
                    try:
                        with open(tmp, "wb") as fh:
                            fh.write(out)
                            fh.flush()
                            os.fsync(fh.fileno())
                        os.replace(tmp, p)
                    finally:
                        tmp.unlink(missing_ok=True)
            except OSError as exc:
                raise (storage_error(exc, p) or exc) from exc
            repair = JournalRepair(p, side, sum(n for _, _, n in damaged), tuple(i for i, _, _ in damaged))
            log.warning("%s", repair.describe())
            return repair
        finally:
            with contextlib.suppress(Exception):
                lock.release()


def open_storage(url: str, study_name: str | None = None) -> optuna.storages.BaseStorage:
    """An Optuna storage: PostgreSQL/MySQL `RDBStorage` for many machines, else a journal file (repaired
    first when its last write was cut off). SQLite is refused (it locks under parallel workers)."""
    import optuna

    if url.startswith(("postgresql", "mysql", "sqlite")):
        if url.startswith("sqlite"):
            raise ValueError("SQLite Optuna storage locks under parallel workers; use the default journal "
                             "file on one machine or postgresql:// across machines")
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    from optuna.storages.journal import JournalStorage

    path = Path(url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (storage_error(exc, path.parent) or exc) from exc
    repair_journal(path, study_name)
    try:
        return JournalStorage(SafeJournalFileBackend(url))
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from exc
    except ValueError as exc:  # a line Optuna cannot parse (the repair above should have left none)
        raise JournalError(errno.EIO, f"{path}: the Optuna journal cannot be read ({exc}); move the file "
                                      f"aside (or restore a backup) and run again") from exc


def _write(fh: Any, data: bytes) -> None:
    fh.write(data)
    fh.flush()
    os.fsync(fh.fileno())


def _cut_partial_tail(path: Path) -> int:
    """Under the journal lock, before an append: a last line without a newline (a writer died mid-write) is
    cut off into a side file, so the append does not land on it. Returns the file's size."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return size
        fh.seek(0)
        data = fh.read()
    keep = data.rfind(b"\n") + 1
    side = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    try:
        side.write_bytes(data[keep:] + b"\n")
        os.truncate(path, keep)
    except OSError as exc:
        raise (storage_error(exc, side) or exc) from exc
    log.warning("%s", JournalRepair(path, side, len(data) - keep, (data.count(b"\n") + 1,)).describe())
    return keep


class SafeJournalFileBackend(JournalFileBackend):
    """Optuna's journal file, with failures that name the file: an append that fails (disk full) is cut
    back off under the journal lock, so this process never leaves a partial line for the next append to
    land on; a line that cannot be parsed raises `JournalError` naming the file."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        try:
            self._lock.acquire()
        except OSError as exc:
            raise (storage_error(exc, self._file_path + ".lock") or exc) from exc
        try:
            size = _cut_partial_tail(Path(self._file_path))
            try:
                with open(self._file_path, "ab") as fh:
                    _write(fh, data)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.truncate(self._file_path, size)
                raise (storage_error(exc, self._file_path) or exc) from exc
        finally:
            self._lock.release()

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except OSError as exc:
            raise (storage_error(exc, self._file_path) or exc) from exc
        except ValueError as exc:
            raise JournalError(errno.EIO, f"{self._file_path}: the Optuna journal has a line that cannot be "
                                          f"read ({exc}); move the file aside (or restore a backup) and run "
                                          f"again") from exc


# ---- the study-wide lock ---------------------------------------------------------------------------------
_held = threading.local()  # lock key -> depth: re-entrant within a thread (flock is per open file, not per process)


@contextlib.contextmanager
def study_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """A study-wide lock: enqueueing, failing stale trials and repairing the journal happen one process at a
    time. A file lock beside the journal; a PostgreSQL advisory lock for postgresql:// storages."""
    if storage_url.startswith("postgresql"):
        with _reentrant(f"{storage_url}\0{study_name}", lambda: _pg_lock(storage_url, study_name)):
            yield
        return
    # not ".lock": the journal backend owns that name
    with file_lock(storage_url):
        yield


@contextlib.contextmanager
def _reentrant(key: str, acquire: Any) -> Iterator[None]:
    """Hold the lock `acquire()` makes, once per key and thread: an inner holder of the same key just passes
    (flock does not nest within a process: it would deadlock)."""
    depth: dict[str, int] = _held.__dict__.setdefault("depth", {})
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    depth[key] = 1
    try:
        with acquire():
            yield
    finally:
        depth.pop(key, None)


@contextlib.contextmanager
def _pg_lock(storage_url: str, study_name: str) -> Iterator[None]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(storage_url, poolclass=sqlalchemy.pool.NullPool)
    lock_id = zlib.crc32(f"ablate:{study_name}".encode()) & 0x7FFFFFFF
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": lock_id})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
    finally:
        engine.dispose()


@contextlib.contextmanager
def _flock(lock_path: Path) -> Iterator[None]:
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path, "a")  # noqa: SIM115 - held across the yield
    except OSError as exc:
        raise (storage_error(exc, lock_path) or exc) from exc
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on `path` + ".ablate-lock" (a file lock beside it), re-entrant within a thread: one
    process at a time creates or repairs that file (a journal, an MLflow store)."""
    lock_path = Path(os.fspath(path) + ".ablate-lock")
    with _reentrant(os.path.abspath(lock_path), lambda: _flock(lock_path)):
        yield
