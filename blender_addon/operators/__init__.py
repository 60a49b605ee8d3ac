"""The add-on's operators, by task; ``CLASSES`` lists them once for register/unregister."""

from __future__ import annotations

from . import appearance, bone_map, engine_ops, generate, smpl_import, takes, view

CLASSES = (*generate.CLASSES, *engine_ops.CLASSES, *bone_map.CLASSES, *appearance.CLASSES, *takes.CLASSES,
           *smpl_import.CLASSES, *view.CLASSES)


def unregister() -> None:
    engine_ops.unregister()
