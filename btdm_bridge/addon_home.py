"""The add-on's folder on a user's machine: its configuration, the remote token and the local engine's jobs.

Blender gives every extension a user folder that survives updates (``bpy.utils.extension_path_user``:
``<Blender's extensions folder>/.user/<repository>/<extension id>/``); a legacy add-on install, or the
bpy module, gets ``<Blender's config folder>/btdm_previs/`` instead (the add-on's ``preferences.user_folder``
picks). Both sides use this module: ``btdm addon install`` writes the configuration there, the add-on
reads it. Standard library only (it is vendored into the zip with the rest of ``btdm_bridge``)::

    config.json   {"btdm_executable": "/path/to/btdm"}: the engine the add-on starts (btdm addon install)
    token         the remote engine's bearer token, its first line; mode 0600 (the preferences' Set Token)
    engine/       the local engine's job folder (``btdm serve --data``) when the preferences name none
    logs/         the local engine's output, the newest few runs

Before this folder, ``btdm addon install`` wrote ``$XDG_CONFIG_HOME/btdm/blender_addon.json``: a user
folder without ``config.json`` takes that file's contents once (:func:`read_config` copies them in and
notes where from); the old file is read, never changed nor deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

__all__ = ["CONFIG_NAME", "EXTENSION_ID", "JOBS_DIR", "LOGS_DIR", "TOKEN_NAME", "configured_executable",
           "forget_token", "legacy_config_path", "new_log_path", "read_config", "read_token", "token_path",
           "user_dir_of_repository", "write_config", "write_token"]

EXTENSION_ID = "btdm_previs"
CONFIG_NAME = "config.json"
TOKEN_NAME = "token"
JOBS_DIR = "engine"
LOGS_DIR = "logs"
KEEP_LOGS = 5
MAX_CONFIG_BYTES = 64 * 1024


def user_dir_of_repository(repository_dir: str, extension_id: str = EXTENSION_ID) -> str:
    """The user folder Blender gives extension ``extension_id`` installed in ``repository_dir`` (a repository
    folder inside Blender's extensions folder, e.g. ``.../extensions/user_default``), as
    ``bpy.utils.extension_path_user`` computes it: ``<extensions>/.user/<repository>/<id>``."""
    repository_dir = os.path.abspath(repository_dir)
    return os.path.join(os.path.dirname(repository_dir), ".user", os.path.basename(repository_dir), extension_id)


def legacy_config_path() -> str:
    """Where ``btdm addon install`` recorded the engine before the user folder (read once, for migration)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "btdm", "blender_addon.json")


def _load(path: str) -> dict | None:
    try:
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            return None
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write(path: str, data: bytes, mode: int) -> None:
    """Write ``data`` to a temporary file in ``path``'s folder with ``mode``, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".btdm.", suffix=".tmp", dir=folder)  # created 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_config(user_dir: str) -> dict:
    """``user_dir/config.json`` ({} when there is none or it is unreadable).

    A user folder without one takes the legacy file's contents (:func:`legacy_config_path`) once: they
    are written to ``config.json`` with ``"migrated_from"``, and the legacy file is left as it is.
    """
    if not user_dir:
        return {}
    path = os.path.join(user_dir, CONFIG_NAME)
    if os.path.exists(path):
        return _load(path) or {}
    legacy = legacy_config_path()
    values = _load(legacy) if os.path.isfile(legacy) else None
    if values is None:
        return {}
    values = {**values, "migrated_from": legacy}
    with contextlib.suppress(OSError):  # a read-only folder: the legacy file is read again next time
        write_config(user_dir, values)
    return values


def write_config(user_dir: str, values: dict) -> str:
    """Merge ``values`` into ``user_dir/config.json`` (created with the folder); returns its path."""
    path = os.path.join(user_dir, CONFIG_NAME)
    current = (_load(path) or {}) if os.path.exists(path) else {}
    mask = os.umask(0)
    os.umask(mask)
    _write(path, (json.dumps({**current, **values}, indent=1) + "\n").encode("utf-8"), 0o666 & ~mask)
    return path


def configured_executable(user_dir: str) -> str:
    """The ``btdm`` executable ``btdm addon install`` recorded ("" when none)."""
    value = read_config(user_dir).get("btdm_executable", "")
    return value if isinstance(value, str) else ""


def token_path(user_dir: str) -> str:
    return os.path.join(user_dir, TOKEN_NAME)


def read_token(user_dir: str) -> str | None:
    """The stored remote token (the file's first line), None when there is none."""
    if not user_dir:
        return None
    try:
        with open(token_path(user_dir), encoding="utf-8") as fh:
            line = fh.readline(4096).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return line or None


def write_token(user_dir: str, token: str) -> str:
    """Store ``token`` in ``user_dir/token``, readable and writable by this user only (0600); returns the path."""
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError("a token is one word without spaces")
    path = token_path(user_dir)
    _write(path, (token + "\n").encode("utf-8"), 0o600)
    return path


def forget_token(user_dir: str) -> bool:
    """Remove the stored token; whether there was one."""
    try:
        os.unlink(token_path(user_dir))
    except FileNotFoundError:
        return False
    return True


def new_log_path(user_dir: str, stamp: str) -> str:
    """``user_dir/logs/serve-<stamp>.log`` for a local engine's output; older logs beyond the newest few go."""
    folder = os.path.join(user_dir, LOGS_DIR)
    os.makedirs(folder, exist_ok=True)
    try:
        logs = sorted((e for e in os.scandir(folder) if e.name.startswith("serve-") and e.name.endswith(".log")
                       and e.is_file(follow_symlinks=False)), key=lambda e: e.stat().st_mtime)
    except OSError:
        logs = []
    for entry in logs[:max(0, len(logs) - (KEEP_LOGS - 1))]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
    return os.path.join(folder, f"serve-{stamp}.log")
