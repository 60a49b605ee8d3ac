"""BTDM Pre-vis, the Blender add-on: a plate of a person performing an armature's motion, on the timeline.

A thin client of the engine service (``btdm serve``, local or remote): it samples the armature
and the shot camera on the main thread (:mod:`.armature`), sends them as a skeleton animation
(:mod:`.engine_client`), follows the job in a worker thread (:mod:`.jobs`), and from
``bpy.app.timers`` (:mod:`.runs`) shows the plates over the set in the shot camera's view and in a
pre-vis scene, keeping them as a muted strip in the shot's sequencer (:mod:`.display`). It needs
bpy, numpy and the standard library only; nothing heavy and nothing on the network happens at
register time.

Headless (``--addons``: a background Blender enables only the add-ons its saved preferences name)::

    blender -b shot.blend --addons bl_ext.user_default.btdm_previs \
            --python-expr "import bpy; bpy.ops.btdm.generate_previs()"
"""

from __future__ import annotations

from typing import Any

# bpy and the modules that use it are imported by register() (Blender calls it), not here: so the
# package's bpy-free modules (units, engine, jobs, pngio, engine_client) import without Blender,
# as the engine's tests and a plain Python do.


def _classes() -> tuple[type, ...]:
    """Every class, once, in registration order (property groups before what points at them)."""
    from . import operators, preferences, properties  # lazy: bpy modules; the package imports none at load
    from .ui import panels  # lazy: a bpy module; the package imports none at load

    return (*properties.CLASSES, *preferences.CLASSES, *operators.CLASSES, *panels.CLASSES)


def __getattr__(name: str) -> Any:
    if name == "CLASSES":
        return _classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    import bpy  # lazy: bpy exists only inside Blender; the package's bpy-free modules import without it

    from . import properties, runs  # lazy: bpy modules; the package imports none at load
    from .ui import panels  # lazy: a bpy module; the package imports none at load

    for cls in _classes():
        bpy.utils.register_class(cls)
    properties.register()
    panels.register()
    runs.register()


def unregister() -> None:
    import bpy  # lazy: bpy exists only inside Blender; the package's bpy-free modules import without it

    from . import operators, properties, runs  # lazy: bpy modules; the package imports none at load
    from .engine import MANAGER  # lazy: importing .engine makes the manager and its atexit hook
    from .ui import panels  # lazy: a bpy module; the package imports none at load

    runs.unregister()
    operators.unregister()
    MANAGER.stop()
    panels.unregister()
    properties.unregister()
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
