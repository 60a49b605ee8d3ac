"""The project's one error base class.

Every error the project raises on purpose for bad input (a malformed file, an unknown option, a
value out of range) derives from :class:`BtdmError`, so the CLI, the engine service and the add-on
catch exactly these (plus ``OSError``) and let real bugs show their traceback. Most subclasses also
derive from ``ValueError`` for callers that catch that.
"""

from __future__ import annotations

__all__ = ["BtdmError", "LimitError", "NonFiniteError", "UsageError"]


class BtdmError(Exception):
    """Base of the project's own errors: the message names the file, field or value at fault."""


class UsageError(BtdmError, ValueError):
    """An argument or option value the command cannot use (unknown name, out of range, conflicting)."""


class LimitError(BtdmError, ValueError):
    """A size that came from input (frames, pixels, steps, channels, batch) is over a documented limit.

    ``limit`` names the entry of :data:`btdm_engine.limits.LIMITS` that was hit.
    """

    def __init__(self, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class NonFiniteError(BtdmError, ValueError):
    """NaN or inf where only finite numbers make sense (weights, a training loss, a frame rate)."""
