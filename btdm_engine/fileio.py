"""Atomic file writes: a result file is either absent, the old one, or complete.

Every writer goes through :func:`atomic_path`: it hands out a temporary name in the target's own
folder (so ``os.replace`` is an atomic rename on one filesystem), and on success gives the file
the permissions an ordinary ``open(path, "w")`` would (``0666 & ~umask``; ``mkstemp`` alone makes
it private), optionally flushes it to disk, and renames it into place. On any error the temporary
file is removed and the old ``path``, if any, is untouched.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (its folder is created); on success publish it as ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (module docstring)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, fsync: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (module docstring)."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def read_json(path: Path, error: type[Exception]) -> Any:
    """Parse a UTF-8 JSON file, raising ``error`` with the path and the place of the fault."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise error(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc


def npz_headers(path: str | os.PathLike[str]) -> dict[str, tuple[tuple[int, ...], Any]]:
    """``{name: (shape, dtype)}`` of every array in an ``.npz``, read from the headers alone.

    Nothing is decompressed beyond each member's header, so a file that declares 10^10 frames is
    refused by its reader before any allocation. Raises ``ValueError`` naming the member for a
    member that is not an ``.npy`` array.
    """
    import zipfile

    import numpy as np

    out: dict[str, tuple[tuple[int, ...], Any]] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"member {info.filename!r} is not an .npy array")
            with archive.open(info) as fh:
                try:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"unsupported .npy version {version}")
                except ValueError as exc:
                    raise ValueError(f"member {info.filename!r}: bad .npy header ({exc})") from exc
            out[info.filename[: -len(".npy")]] = (tuple(int(s) for s in shape), dtype)
    return out
