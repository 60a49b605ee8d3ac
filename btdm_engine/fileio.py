"""Atomic file writes: a result file is either absent, the old one, or complete.

Every writer goes through :func:`atomic_path`: it hands out a temporary name in the target's own
folder (so ``os.replace`` is an atomic rename on one filesystem), and on success gives the file
the permissions an ordinary ``open(path, "w")`` would (``0666 & ~umask``; ``mkstemp`` alone makes
it private), optionally flushes it to disk, and renames it into place. On any error the temporary
file is removed and the old ``path``, if any, is untouched. :func:`atomic_write_bytes`,
:func:`atomic_write_text` and :func:`write_json_atomic` are the one-call forms.

A whole folder goes through :func:`atomic_dir` the same way: it is filled under a temporary name
beside its target (folder permissions ``0777 & ~umask``) and renamed into place when complete.
Temporary names are hidden and carry the writer's pid (``.NAME.<pid>.XXXX.tmp``), so
:func:`btdm_engine.procs.clean_stale_temps` can tell a killed writer's leftovers.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from btdm_engine.errors import BtdmError
from btdm_engine.procs import clean_stale_temps


class NpzFormatError(BtdmError, ValueError):
    """An ``.npz`` member that is not a readable ``.npy`` array; names the member."""


class OutputPathError(BtdmError, OSError):
    """A folder to write into that cannot be made (a file in its way, no permission); names the path and the fix."""


def describe_os_error(exc: OSError) -> str:
    """A file-system error as one line naming the path and what to do, never a bare ``[Errno 17] File exists``."""
    if exc.filename is None:
        return exc.strerror if exc.errno is not None and exc.strerror else str(exc)
    path = Path(os.fsdecode(exc.filename))
    other = "" if exc.filename2 is None else f" -> {os.fsdecode(exc.filename2)}"
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        blocker = _blocking_file(path)
        if blocker == path:
            return f"{path}: is a file, not a folder; move it away or choose another path"
        if blocker is not None:
            return f"{blocker}: is a file, not a folder, so {path} cannot be made under it; move the file away or " \
                   "choose another path"
        if isinstance(exc, FileExistsError):
            return f"{path}{other}: already exists; move it away or choose another path"
    if isinstance(exc, IsADirectoryError):
        return f"{path}: is a folder, where a file was expected"
    if isinstance(exc, FileNotFoundError):
        return f"{path}{other}: no such file or folder"
    if isinstance(exc, PermissionError):
        return f"{path}{other}: permission denied; check its permissions or choose another path"
    if exc.errno == errno.ENOSPC:
        return f"{path}: no space left on the device; free some space or write elsewhere"
    return f"{path}{other}: {exc.strerror or exc}"


def _blocking_file(path: Path) -> Path | None:
    """The nearest of ``path`` and its ancestors that exists; None unless it is something other than a folder."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return None if candidate.is_dir() else candidate
    return None


def make_folder(path: str | os.PathLike[str], purpose: str | None = None) -> Path:
    """Create the folder ``path`` (and its parents) if missing; a file in the way is an :class:`OutputPathError`.

    ``purpose`` starts the message (e.g. "cannot write OUT/x.png"); the default names the folder.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError, PermissionError) as exc:
        raise OutputPathError(f"{purpose or f'cannot make the folder {path}'}: {describe_os_error(exc)}") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()
FILE_MODE = 0o666 & ~_UMASK  # what open(path, "w") gives
DIR_MODE = 0o777 & ~_UMASK  # what mkdir gives


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (its folder is created); on success publish it as ``path``."""
    path = Path(path)
    make_folder(path.parent, f"cannot write {path}")
    # The writer's pid is in the name, so btdm_engine.procs.clean_stale_temps can tell a killed writer's leftovers.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent)
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


def write_json_atomic(path: str | os.PathLike[str], obj: Any, fsync: bool = False) -> Path:
    """Write ``obj`` as standard JSON (indent 2, no NaN or inf, a final newline) to ``path`` atomically.

    A value JSON cannot hold raises before anything is written.
    """
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n", fsync=fsync)


@contextmanager
def atomic_dir(path: str | os.PathLike[str], replace: bool = False, fsync: bool = False) -> Iterator[Path]:
    """Yield a new empty folder next to ``path`` (its parent is created); on success publish it as ``path``.

    The caller fills the folder; when the ``with`` block ends without error the folder gets ordinary
    permissions (``0777 & ~umask``; ``mkdtemp`` alone makes it private) and is renamed to ``path``.
    On any error the temporary folder, which holds only what the caller wrote into it, is removed
    and ``path`` is untouched. An existing ``path`` is refused with ``FileExistsError`` unless
    ``replace``: then the old folder is renamed aside, the new one renamed in, and the old one
    deleted, so pass ``replace`` only for a folder the project wrote. ``fsync`` flushes every file
    and folder in the new tree to disk before the rename, and the parent folder after it.
    """
    path = Path(path)
    make_folder(path.parent, f"cannot write the folder {path}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        if fsync:
            _fsync_tree(tmp)
        aside = _rename_into_place(tmp, path, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside)
    if fsync:
        _fsync_folder(path.parent)


def _rename_into_place(tmp: Path, path: Path, replace: bool) -> Path | None:
    """Rename the folder ``tmp`` to ``path``; returns where a replaced old folder now is (to delete)."""
    if path.is_symlink() or (path.exists() and not (replace and path.is_dir())):
        what = "a folder" if path.is_dir() and not path.is_symlink() else "not a folder"
        raise FileExistsError(f"{path}: already exists ({what}); not replaced: move it away or choose another path")
    if not path.exists():
        os.rename(tmp, path)
        return None
    aside = tmp.with_name(tmp.name[: -len(".tmp")] + ".old.tmp")  # mkdtemp's names hold no dot: unique
    os.rename(path, aside)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(aside, path)
        raise
    return aside


def _fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every regular file, then every folder (deepest first), under ``root`` to disk."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            file = os.path.join(folder, name)
            if os.path.isfile(file) and not os.path.islink(file):
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_folder(Path(folder))


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
    refused by its reader before any allocation. Raises :class:`NpzFormatError` (a ``ValueError``)
    naming the member for a member that is not an ``.npy`` array.
    """
    out: dict[str, tuple[tuple[int, ...], Any]] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise NpzFormatError(f"member {info.filename!r} is not an .npy array")
            with archive.open(info) as fh:
                try:
                    out[info.filename[: -len(".npy")]] = read_npy_header(fh)
                except (ValueError, EOFError) as exc:
                    raise NpzFormatError(f"member {info.filename!r}: bad .npy header ({exc})") from exc
    return out


def read_npy_header(fh: Any) -> tuple[tuple[int, ...], Any]:
    """``(shape, dtype)`` from the header of an open ``.npy`` stream (format 1.0 or 2.0), reading
    nothing past it; ``ValueError`` for a bad or unknown header."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return tuple(int(n) for n in shape), dtype


class StagedRun:
    """A run's outputs are written to ``OUT/incomplete/`` and published into ``OUT`` only when complete.

    ``OUT/incomplete/`` (with a ``.btdm-staging`` marker) plainly marks a run that was interrupted;
    the next run removes it. Until :meth:`publish`, ``OUT`` keeps the previous complete run untouched.
    :meth:`publish` moves the new ``NNNNNN.png`` files and files over (renames on one file system),
    deletes only what the previous run's record (``OUT/run.json``) or the frame-name pattern says
    btdm wrote, and writes the new record last.
    """

    STAGING = "incomplete"
    MARKER = ".btdm-staging"
    RECORD = "run.json"

    def __init__(self, out: str | os.PathLike[str], subdirs: tuple[str, ...], files: tuple[str, ...]) -> None:
        self.out = Path(out)
        self.subdirs = subdirs
        self.files = files
        self.staging = self.out / self.STAGING

    def begin(self) -> tuple[Path, bool]:
        """Create a fresh staging folder; returns it and whether an interrupted run's was removed."""
        self._created = _missing_folders(self.out)  # what abandon() may remove again, deepest first
        make_folder(self.out, "cannot write the output")
        removed = False
        if self.staging.exists():
            if not (self.staging / self.MARKER).is_file():
                raise StagingError(f"{self.staging}: exists and was not made by btdm; move it away or choose another --out")
            shutil.rmtree(self.staging)
            removed = True
        clean_stale_temps(self.out)
        self.staging.mkdir(parents=True)
        (self.staging / self.MARKER).write_text("an interrupted or running btdm run; removed by the next run\n")
        return self.staging, removed

    def publish(self, count: int, info: dict[str, Any] | None = None) -> None:
        """Move the staged outputs of ``count`` frames into ``OUT`` and record them."""
        frame_name = re.compile(r"^\d{6}\.png$")
        record_path = self.out / self.RECORD
        old = read_json(record_path, StagingError) if record_path.is_file() else {}
        old = old if isinstance(old, dict) else {}
        record_path.unlink(missing_ok=True)  # from here until the new record, OUT is being replaced
        published: dict[str, Any] = {"frames": count, "subdirs": [], "files": [], **(info or {})}
        for sub in self.subdirs:
            staged, target = self.staging / sub, self.out / sub
            had = staged.is_dir()
            if had:
                target.mkdir(parents=True, exist_ok=True)
                for f in staged.iterdir():
                    os.replace(f, target / f.name)
                published["subdirs"].append(sub)
            if target.is_dir() and (had or sub in old.get("subdirs", ())):
                first_stale = count if had else 0  # frames of an older, longer run never survive
                for f in target.iterdir():
                    if frame_name.match(f.name) and int(f.name[:6]) >= first_stale:
                        f.unlink()
        for name in self.files:
            staged, target = self.staging / name, self.out / name
            if staged.is_file():
                os.replace(staged, target)
                published["files"].append(name)
            elif name in old.get("files", ()):
                target.unlink(missing_ok=True)
        atomic_write_text(record_path, json.dumps(published, indent=2) + "\n")
        shutil.rmtree(self.staging)

    def abandon(self) -> None:
        """After a failed run: remove its staging folder and the folders :meth:`begin` created, if empty.

        Only what this run made goes: the staging folder (it carries the marker), then ``OUT`` and
        its parents that did not exist before :meth:`begin`, each only while empty. An earlier
        complete run in ``OUT`` is untouched.
        """
        if (self.staging / self.MARKER).is_file():
            shutil.rmtree(self.staging, ignore_errors=True)
        for folder in getattr(self, "_created", ()):
            try:
                folder.rmdir()  # only an empty folder: never anything else
            except OSError:
                break


class StagingError(BtdmError, ValueError):
    """A staging folder or run record that btdm cannot use; names the path."""


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    return missing
