"""BTDM Pre-vis, the Blender add-on: a plate of a person performing an armature's motion, on the timeline.

A thin client of the engine service (``btdm serve``, local or remote): it samples the armature
and the shot camera on the main thread (:mod:`.armature`), sends them as a skeleton animation
(:mod:`.engine_client`), follows the job in a worker thread (:mod:`.jobs`), and places the plates
as an image strip on the Video Sequencer (:mod:`.sequencer`) from ``bpy.app.timers``
(:mod:`.runs`). It needs bpy, numpy and the standard library only; nothing heavy and nothing on
the network happens at register time.

Headless::

    blender -b shot.blend --python-expr "import bpy; bpy.ops.btdm.generate_previs()"
"""

from __future__ import annotations

import bpy

from . import operators, preferences, properties, runs
from .engine import MANAGER
from .ui import panels

# Every class, once, in registration order (property groups before what points at them).
CLASSES = (*properties.CLASSES, *preferences.CLASSES, *operators.CLASSES, *panels.CLASSES)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register()
    panels.register()
    runs.register()


def unregister() -> None:
    runs.unregister()
    operators.unregister()
    MANAGER.stop()
    panels.unregister()
    properties.unregister()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
