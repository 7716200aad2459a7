"""Failures, classified: an infrastructure error (storage, I/O, a lost connection) is not the trial's fault
and must not use up a cell's attempts; a trial's own error (a bad value, divergence) fails the cell.

Example:
    >>> classify(OSError(28, "No space left on device"))[0]
    'infra'
    >>> classify(ValueError("lr=-1 must be a number"))[0]
    'trial'
"""

from __future__ import annotations

import errno

INFRA = "infra"
TRIAL = "trial"
KILLED = "killed"

_INFRA_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT,
                 errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT, errno.EAGAIN}


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line reason) for an exception raised while running a trial."""
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return KILLED, reason
    if isinstance(exc, OSError) and (exc.errno in _INFRA_ERRNOS or exc.errno is None):
        return INFRA, reason
    name = type(exc).__module__ + "." + type(exc).__name__
    if name.startswith(("sqlalchemy.", "psycopg", "mlflow.exceptions")) or "OperationalError" in name:
        return INFRA, reason
    return TRIAL, reason
