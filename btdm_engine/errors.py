"""The project's one error base class.

Every error the project raises on purpose for bad input (a malformed file, an unknown option, a
value out of range) derives from :class:`BtdmError`, so the CLI, the engine service and the add-on
catch exactly these (plus ``OSError``) and let real bugs show their traceback. Most subclasses also
derive from ``ValueError`` for callers that catch that.
"""

from __future__ import annotations

__all__ = ["BtdmError"]


class BtdmError(Exception):
    """Base of the project's own errors: the message names the file, field or value at fault."""
