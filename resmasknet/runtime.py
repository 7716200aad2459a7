"""Where and how code runs: device choice and atomic writes, in one place for the whole project.

Atomic writes go to a temporary sibling and are renamed onto the destination only when complete, so an
interrupted or failed write (disk full, read-only folder, a kill) never leaves a file or folder that looks
finished. A write that fails for lack of space or permission raises `StorageError`, whose message is one
line naming the path and what to do.

Example:
    >>> dev = resolve_device(None)                      # cuda when available, else cpu
    >>> atomic_write_text("runs/x/result.json", "{}")   # never half-written
    >>> with atomic_dir("reports/quickstart") as tmp:   # a whole folder, renamed into place at the end
    ...     (tmp / "index.html").write_text("...")
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["StorageError", "atomic_dir", "atomic_write", "atomic_write_json", "atomic_write_text",
           "resolve_device", "storage_error"]


class StorageError(OSError):
    """A write failed for a reason outside the program (no space, read-only, no permission)."""


_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space and run the command again",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again",
    errno.EROFS: "the file system is read-only; choose a writable folder (--out) and run again",
    errno.EACCES: "permission denied; choose a writable folder (--out) or fix its permissions",
    errno.EPERM: "operation not permitted; choose a writable folder (--out) or fix its permissions",
}


def storage_error(exc: BaseException, path: str | os.PathLike) -> StorageError | None:
    """The one-line `StorageError` for an OSError caused by the storage (space, read-only, permission),
    or None for any other error. Also recognises torch's serializer failures, which hide the errno."""
    code = getattr(exc, "errno", None)
    if code in _HINTS:
        return StorageError(code, f"cannot write {os.fspath(path)}: {_HINTS[code]}")
    text = str(exc)
    if "unexpected pos" in text or "file write failed" in text or "No space left" in text:
        return StorageError(errno.ENOSPC, f"cannot write {os.fspath(path)}: {_HINTS[errno.ENOSPC]}")
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(tmp_path)` for a temporary sibling of `path`, then rename it onto `path`."""
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{dest.name}-", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise (storage_error(exc, dest) or exc) from exc
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        err = storage_error(exc, dest) if isinstance(exc, (OSError, RuntimeError)) else None
        if err is not None:
            raise err from exc
        raise
    return dest


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `dest` (the old one is removed)."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as exc:
        raise (storage_error(exc, dest) or exc) from exc
    try:
        yield tmp
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{int(time.time() * 1000)}")
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = storage_error(exc, dest) if isinstance(exc, OSError) else None
        if err is not None:
            raise err from exc
        raise


def resolve_device(device: Any = None) -> Any:
    """None -> CUDA when available, else CPU; a name ("cpu", "cuda:1") is checked up front."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here; use --device cpu")
    return dev
