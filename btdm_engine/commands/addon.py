"""``btdm addon``: build the Blender extension zip and install it into a user's Blender.

``btdm addon build --out DIR`` writes ``DIR/<id>-<version>.zip`` with ``blender_manifest.toml`` at
the zip's root (the layout Blender's extension installer wants) and the ``btdm_bridge`` package it
shares with the engine vendored as ``_vendor/btdm_bridge``, and validates it with Blender's
own extension tool when the bpy module ships it. ``btdm addon install --blender PATH`` installs
that zip with ``PATH --background --command extension install-file -r user_default -e ZIP``
(``--extensions-dir DIR`` unpacks it into a user extensions repository folder instead), then points the
add-on at this machine's engine by writing ``btdm_executable`` to ``config.json`` in the extension's user
folder (``btdm_bridge/addon_home.py``: ``<extensions>/.user/user_default/btdm_previs/``, the folder
``bpy.utils.extension_path_user`` gives the add-on; that Blender is asked where it is), which the add-on
reads when its preferences leave the executable empty. Nothing is written to ``~/.config/btdm`` any more
(the add-on still reads a file an earlier ``btdm addon install`` left there, once).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

from btdm_bridge import addon_home
from btdm_engine.cli import CliError
from btdm_engine.fileio import atomic_dir, atomic_path

__all__ = ["USER_DIR_MARK", "addon_source_dir", "blender_user_dir", "bridge_source_dir", "build_zip", "register"]

REPOSITORY = "user_default"
USER_DIR_MARK = "BTDM-USER-DIR="
"""The line the Blender that ``--blender`` names prints with the extension's user folder."""
_SKIP_DIRS = {"__pycache__", "_vendor"}
# The package the add-on shares with the engine (HTTP client, armature sampler), vendored into the zip
# where blender_addon/_bridge.py finds it: an installed extension imports nothing outside itself.
BRIDGE_PACKAGE = "btdm_bridge"
VENDOR_DIR = "_vendor"
_SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp")
REQUIRED_MANIFEST_KEYS = ("schema_version", "id", "version", "name", "tagline", "maintainer", "type",
                          "blender_version_min", "license")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "addon", help="build or install the Blender add-on (extension)",
        description="Build the Blender extension zip, or install it into a Blender and point it at this machine's "
        "engine (the btdm executable it starts).")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    b = sub.add_parser("build", help="write the installable extension zip",
                       description="Write DIR/<id>-<version>.zip (manifest at the zip root), validated with Blender's "
                       "extension tool when the bpy module provides it.")
    b.add_argument("--out", required=True, metavar="DIR", help="folder for the zip")
    b.set_defaults(func=_build)
    i = sub.add_parser("install", help="install the add-on into a Blender and point it at this engine",
                       description="Install the extension into Blender 4.2+ (its user_default repository) and record "
                       "this machine's btdm executable for the add-on's local engine, in the extension's user folder "
                       "(<extensions>/.user/user_default/btdm_previs/config.json).")
    where = i.add_mutually_exclusive_group(required=True)
    where.add_argument("--blender", metavar="PATH", help="the Blender executable (4.2 or later)")
    where.add_argument("--extensions-dir", metavar="DIR",
                       help="unpack into this user extensions repository folder instead (e.g. "
                       "~/.config/blender/4.2/extensions/user_default; the record goes to its ../.user/<repository>/"
                       "btdm_previs/)")
    i.add_argument("--btdm", default=None, metavar="PATH",
                   help="the btdm executable the add-on starts (default: the one running this command)")
    i.set_defaults(func=_install)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CliError(f"the {name} package is not installed with this btdm")
    return Path(next(iter(spec.submodule_search_locations)))


def addon_source_dir() -> Path:
    """The ``blender_addon`` package folder (found without importing it: the engine never imports the add-on)."""
    return _package_dir("blender_addon")


def bridge_source_dir() -> Path:
    """The ``btdm_bridge`` package folder, which the zip vendors as ``_vendor/btdm_bridge``."""
    return _package_dir(BRIDGE_PACKAGE)


def read_manifest(source: Path) -> dict:
    path = source / "blender_manifest.toml"
    try:
        manifest = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"{path}: {exc}") from None
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise CliError(f"{path}: missing {', '.join(missing)}")
    return manifest


def _files(source: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
                continue
            out.append(Path(root) / name)
    return out


def blender_ext_tool() -> Path | None:
    """Blender's own extension command-line tool (``bl_pkg/cli/blender_ext.py``) from the bpy module, if any."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or spec.origin is None:
        return None
    base = Path(spec.origin).parent
    found = sorted(base.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    return found[-1] if found else None


def validate(path: Path) -> str | None:
    """Validate a zip or folder with Blender's tool; None when valid, else its message. Skipped without the tool."""
    tool = blender_ext_tool()
    if tool is None:
        return None
    proc = subprocess.run([sys.executable, str(tool), "validate", str(path)], capture_output=True, text=True)
    if proc.returncode != 0 or "Error" in proc.stdout:
        return (proc.stdout + proc.stderr).strip()
    return None


def build_zip(out_dir: Path) -> Path:
    """Write the extension zip into ``out_dir`` (atomically); returns its path."""
    source = addon_source_dir()
    manifest = read_manifest(source)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    with atomic_path(target, suffix=".zip.tmp") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in _files(source):
                zf.write(path, path.relative_to(source).as_posix())
            bridge = bridge_source_dir()
            zf.writestr(f"{VENDOR_DIR}/__init__.py", '"""Packages vendored by `btdm addon build`."""\n')
            for path in _files(bridge):
                zf.write(path, f"{VENDOR_DIR}/{BRIDGE_PACKAGE}/{path.relative_to(bridge).as_posix()}")
        problem = validate(Path(tmp))
        if problem:
            raise CliError(f"Blender's extension tool refuses the package: {problem}")
    return target


def blender_user_dir(blender: Path, extension_id: str, repository: str = REPOSITORY) -> Path:
    """The user folder that ``blender`` gives extension ``extension_id`` of ``repository``
    (``bpy.utils.extension_path_user``, made if missing); asked of that Blender, which knows its own folders."""
    expr = ("import bpy; print(" + repr(USER_DIR_MARK) + " + bpy.utils.extension_path_user("
            + repr(f"bl_ext.{repository}.{extension_id}") + ", create=True))")
    proc = subprocess.run([str(blender), "--background", "--factory-startup", "--python-expr", expr],
                          capture_output=True, text=True)
    found = [line[len(USER_DIR_MARK):].strip() for line in proc.stdout.splitlines() if line.startswith(USER_DIR_MARK)]
    if proc.returncode != 0 or not found or not found[-1]:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise CliError(f"{blender} did not say where the add-on's user folder is: " + " / ".join(tail))
    return Path(found[-1])


def _build(args: argparse.Namespace) -> int:
    path = build_zip(Path(args.out))
    checked = "validated with Blender's extension tool" if blender_ext_tool() else "manifest checked (no bpy module)"
    print(f"{path} ({checked})")
    return 0


def _install(args: argparse.Namespace) -> int:
    btdm = Path(args.btdm) if args.btdm else Path(sys.executable).with_name("btdm")
    if not btdm.is_file():
        found = shutil.which("btdm")
        if found is None:
            raise CliError("cannot find the btdm executable to record; pass --btdm PATH")
        btdm = Path(found)
    with tempfile.TemporaryDirectory(prefix="btdm-addon-") as tmp:
        zip_path = build_zip(Path(tmp))
        manifest = read_manifest(addon_source_dir())
        if args.blender:
            blender = Path(args.blender)
            if not blender.is_file():
                raise CliError(f"--blender {blender}: no such file")
            # `--command` implies background mode; `--enable` enables it and saves the preferences.
            cmd = [str(blender), "--command", "extension", "install-file", "--repo", REPOSITORY, "--enable",
                   str(zip_path)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
                raise CliError(f"{blender} could not install the extension (Blender 4.2 or later is needed): "
                               + " / ".join(tail))
            where = f"{blender} (repository {REPOSITORY})"
            user_dir = blender_user_dir(blender, manifest["id"])
        else:
            dest = Path(args.extensions_dir) / manifest["id"]
            # The folder named by the add-on's own id: an earlier install of it is replaced whole.
            with atomic_dir(dest, replace=True) as staging, zipfile.ZipFile(zip_path) as zf:
                zf.extractall(staging)
            where = str(dest)
            user_dir = Path(addon_home.user_dir_of_repository(args.extensions_dir, manifest["id"]))
    try:
        config = addon_home.write_config(str(user_dir), {"btdm_executable": str(btdm.resolve())})
    except OSError as exc:
        raise CliError(f"installed into {where}, but could not record the engine in {user_dir}: {exc}") from None
    print(f"installed {manifest['name']} {manifest['version']} into {where}; the add-on starts {btdm} "
          f"(recorded in {config}). In Blender: Preferences > Add-ons > {manifest['name']}.")
    return 0
