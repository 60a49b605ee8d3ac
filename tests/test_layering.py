"""Layering: the engine (``btdm_engine``) never imports the application packages ``training`` and
``synthetic_data``; only the ``btdm`` command registers their commands, by name
(``btdm_engine.cli.APPLICATION_COMMAND_MODULES``). Inside the engine, the diffusion losses do not
depend on the samplers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APPLICATION_PACKAGES = ("training", "synthetic_data")


def test_importing_every_engine_module_loads_no_application_package() -> None:
    code = f"""
import importlib, json, pkgutil, sys
import btdm_engine
names, failed = [], {{}}
for info in pkgutil.walk_packages(btdm_engine.__path__, "btdm_engine."):
    names.append(info.name)
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        failed[info.name] = repr(exc)
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {APPLICATION_PACKAGES!r})
print(json.dumps({{"names": names, "failed": failed, "loaded": loaded}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    result = json.loads(out.splitlines()[-1])
    assert not result["failed"], result["failed"]  # bpy, pyrender and fastapi are installed: every module imports
    assert {"btdm_engine.cli", "btdm_engine.pipeline", "btdm_engine.service.app"} <= set(result["names"])
    assert result["loaded"] == []


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` statement in the file names, at any depth (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_engine_file_imports_an_application_package_even_lazily() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(m for m in _imported_modules(path) if m.partition(".")[0] in APPLICATION_PACKAGES)
        for path in sorted((REPO / "btdm_engine").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_application_commands_are_registered_by_name() -> None:
    from btdm_engine import cli

    assert cli.APPLICATION_COMMAND_MODULES == ("training.command", "synthetic_data.command")
    assert set(cli.APPLICATION_COMMAND_MODULES) <= set(cli.COMMAND_MODULES)
    assert not any(m.partition(".")[0] in APPLICATION_PACKAGES for m in cli.ENGINE_COMMAND_MODULES)


def test_diffusion_losses_do_not_import_the_samplers() -> None:
    imported = _imported_modules(REPO / "btdm_engine" / "diffusion" / "losses.py")
    assert not any(m.startswith("btdm_engine.diffusion.samplers") for m in imported), sorted(imported)
