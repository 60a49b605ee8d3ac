"""Layering: the engine (``btdm_engine``) never imports the application packages ``training`` and
``synthetic_data``; only the ``btdm`` command registers their commands, by name
(``btdm_engine.cli.APPLICATION_COMMAND_MODULES``). Inside the engine, the diffusion losses do not
depend on the samplers. Nothing but the add-on imports ``blender_addon``: what the engine and the
add-on share lives in ``btdm_bridge`` (standard library and numpy, imported relatively inside
itself, so the add-on zip can vendor it). No two modules of the source tree import each other, at
any depth (function-local imports count), and no longer loop of imports closes either."""

from __future__ import annotations

import ast
import functools
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APPLICATION_PACKAGES = ("training", "synthetic_data")
SOURCE_PACKAGES = ("btdm_engine", "btdm_bridge", "training", "synthetic_data", "blender_addon", "bench")


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
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {(*APPLICATION_PACKAGES, "blender_addon")!r})
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


def _source_modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) for every ``.py`` file of the source packages."""
    found: dict[str, tuple[Path, bool]] = {}
    for package in SOURCE_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


@functools.cache
def _import_graph() -> dict[str, set[str]]:
    """Module -> the source modules it imports anywhere in its file (relative imports resolved;
    ``from package import name`` counts as importing ``package.name`` when that is a module). Parsed
    once for this module's tests, which only read it."""
    modules = _source_modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parent + ([node.module] if node.module else []))
                named = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            for target in named:
                while target not in modules and "." in target:  # a name inside a module: the module
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def test_the_import_graph_sees_lazy_and_relative_imports() -> None:
    graph = _import_graph()
    assert "btdm_engine.commands.remote" in graph["btdm_engine.commands.animate"]  # function-local
    assert "blender_addon.jobs" in graph["blender_addon.prepare"]  # relative
    assert "btdm_bridge.files" in graph["btdm_bridge.armature"]  # relative
    assert "blender_addon.engine" in graph["blender_addon"]  # relative, function-local (unregister)


def test_no_two_modules_import_each_other() -> None:
    graph = _import_graph()
    pairs = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if a in graph[b]})
    assert pairs == []


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``, at any length: its strongly connected components of more than one
    module (Tarjan's algorithm, without recursion), each sorted; sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return sorted(cycles)


def test_the_cycle_finder_finds_loops_of_any_length() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": {"a", "c"}, "c": set(), "x": {"y"}, "y": {"z"}, "z": {"x"}}) == [
        ["a", "b"], ["x", "y", "z"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_at_any_length() -> None:
    """Not two modules importing each other, nor a longer loop (the add-on's preferences -> ui.panels ->
    prepare -> preferences was one): every import arrow of the source tree points one way."""
    graph = _import_graph()
    addon = {name: {t for t in targets if t.startswith("blender_addon")}
             for name, targets in graph.items() if name.startswith("blender_addon")}
    assert "blender_addon.ui.status" in addon["blender_addon.preferences"]  # the graph does see the add-on
    assert import_cycles(addon) == []
    assert import_cycles(graph) == []


def test_nothing_but_the_addon_imports_the_addon() -> None:
    graph = _import_graph()
    offenders = {name: sorted(t for t in targets if t.partition(".")[0] == "blender_addon")
                 for name, targets in graph.items() if not name.startswith("blender_addon")}
    assert {k: v for k, v in offenders.items() if v} == {}
    # the engine reaches the add-on only as a program (btdm previs) or a folder (btdm addon build)
    for path in (REPO / "btdm_engine").rglob("*.py"):
        assert not any(m.partition(".")[0] == "blender_addon" for m in _imported_modules(path)), path


def test_the_bridge_imports_only_the_standard_library_numpy_and_itself_relatively() -> None:
    for path in sorted((REPO / "btdm_bridge").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        absolute = {n.module.partition(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        absolute |= {a.name.partition(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert absolute - {"__future__", "numpy"} <= set(sys.stdlib_module_names), (path, absolute)


def test_the_addons_bpy_free_modules_import_without_bpy() -> None:
    code = "import sys, blender_addon.units, blender_addon.engine_client, blender_addon.armature; print('bpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.split() == ["False"]


# Function-local imports (issue 22): an import inside a function stays only where a heavy or optional
# dependency must stay lazy (``btdm --help`` and the torch-free commands must not import torch; the
# dispatcher imports the command modules by name), and says why. Importing one of these needs no
# comment: the name is the reason.
LAZY_DEPENDENCIES = frozenset({
    "torch", "cv2", "scipy", "safetensors", "imageio_ffmpeg",  # heavy
    "pyrender", "OpenGL",  # a GL context, EGL
    "fastapi", "uvicorn",  # the service stack
    "ray",  # optional (the ray extra)
    "bpy", "bpy_extras", "bmesh", "mathutils",  # Blender's own modules
})
# Every source package's function-local imports are audited.
AUDITED_PACKAGES = SOURCE_PACKAGES


def unexplained_local_imports(source: str) -> list[int]:
    """Line numbers of the function-local imports in ``source`` that import something besides
    :data:`LAZY_DEPENDENCIES` and carry no reason: a comment on the statement's lines, or a comment
    line right above it."""
    lines = source.splitlines()
    commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                 if tok.type == tokenize.COMMENT}
    found: set[int] = set()
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = ["." * node.level + (node.module or "")]
            else:
                continue
            if all(m.partition(".")[0] in LAZY_DEPENDENCIES for m in modules):
                continue
            above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
            if above.startswith("#") or commented & set(range(node.lineno, node.end_lineno + 1)):
                continue
            found.add(node.lineno)
    return sorted(found)


def test_the_local_import_check_reads_reasons() -> None:
    source = '''
import json

def f():
    import torch
    import re
    from btdm_engine.pipeline import Animator  # lazy: torch
    # lazy: cv2
    from btdm_engine.imageio import read_rgb
    from btdm_engine.posemaps.encoding import (  # lazy: torch
        read_iuv_png,
    )
    from . import sibling

    def g():
        from btdm_engine import limits
'''
    assert unexplained_local_imports(source) == [6, 13, 16]


def test_every_function_local_import_says_why() -> None:
    """Not a light module: that goes to the top of the file. A lazy one says why, e.g.
    ``from btdm_engine.pipeline import Animator  # lazy: torch stays out of `btdm --help```."""
    offenders = []
    for package in AUDITED_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = path.relative_to(REPO).as_posix()
            lines = path.read_text(encoding="utf-8").splitlines()
            offenders += [f"{name}:{n}: {lines[n - 1].strip()}"
                          for n in unexplained_local_imports(path.read_text(encoding="utf-8"))]
    assert offenders == [], "function-local imports without a reason (hoist them, or say why they stay lazy)"
