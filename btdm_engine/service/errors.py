"""The service's own errors: a :class:`~btdm_engine.errors.BtdmError` that carries its HTTP status.

The app's one exception handler turns any ``BtdmError`` into ``{"error": {"code", "message",
"field"}}``: a :class:`ServiceError` with its own status and code, any other ``BtdmError`` (a
MotionClip, skeleton, IUV or Animator input error) as 400 ``invalid_input``. Anything else is a
500 and a bug.
"""

from __future__ import annotations

import errno
import re
import sqlite3

from btdm_engine.errors import BtdmError

NO_SPACE = "no space left on device"
_PATH = re.compile(r"""(?:(?<=^)|(?<=[\s'"(=]))(?:/|[A-Za-z]:[\\/]|\\\\)[^\s'"]*?([^\s'"/\\]*)(?=$|[\s'"),;])""")


def public(message: str) -> str:
    """A message for clients: every absolute path (POSIX, Windows) cut to its last part."""
    return _PATH.sub(lambda m: m.group(1) or "<path>", message)


def disk_full(exc: BaseException) -> bool:
    """An OSError ENOSPC / EDQUOT, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)
    return False


class ServiceError(BtdmError):
    """A request the service refuses: ``status`` (4xx), a machine-readable ``code``, the ``field`` at fault."""

    status = 400
    code = "invalid_input"

    def __init__(self, message: str, *, field: str | None = None, status: int | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidParams(ServiceError):
    """A ``params`` key that is unknown or a value out of range."""

    status = 422
    code = "invalid_params"


class NotFound(ServiceError):
    """No such job, or the requested file does not exist (yet)."""

    status = 404
    code = "not_found"


class Conflict(ServiceError):
    """The job is in a state that does not allow the operation (deleting a running job, ...)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    """An upload beyond :mod:`btdm_engine.service.limits`."""

    status = 413
    code = "too_large"


class QueueFull(ServiceError):
    """``--max-queued`` jobs are already waiting."""

    status = 429
    code = "queue_full"


class Unauthorized(ServiceError):
    """A missing or wrong bearer token."""

    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """A valid token whose role does not allow the operation (a read-only token submitting, ...)."""

    status = 403
    code = "forbidden"


class NoSpace(ServiceError):
    """The server's disk is full: nothing of the request was kept."""

    status = 507
    code = "no_space"


class NotSupported(ServiceError):
    """A valid request for something this build cannot do yet."""

    status = 422
    code = "not_supported"
