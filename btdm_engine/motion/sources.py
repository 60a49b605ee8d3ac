"""Motion files in: BVH, FBX (through Blender's importer) and skeleton-animation ``.npz``.

:func:`read_skeleton_animation` reads any of them into the skeleton-animation contract;
:func:`import_motion` retargets it with the one core (:func:`btdm_engine.motion.retarget.to_motion_clip`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from btdm_engine.errors import BtdmError
from btdm_engine.motion.bonemaps import read_bone_map
from btdm_engine.motion.skeleton_animation import SkeletonAnimation

__all__ = ["FORMATS", "MotionSourceError", "import_motion", "read_skeleton_animation"]

FORMATS = (".bvh", ".fbx", ".npz")


class MotionSourceError(BtdmError, ValueError):
    """A motion file of an unknown kind, or one that holds no usable armature."""


def read_skeleton_animation(path: str | os.PathLike[str], armature: str | None = None) -> SkeletonAnimation:
    """Read a ``.bvh``, ``.fbx`` or skeleton-animation ``.npz``; ``armature`` picks one in an FBX."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such motion file")
    suffix = path.suffix.lower()
    if suffix == ".bvh":
        from btdm_engine.motion.bvh import read_bvh, skeleton_from_bvh

        return skeleton_from_bvh(read_bvh(path), source=path.name)
    if suffix == ".fbx":
        from btdm_engine.motion.fbx import read_fbx

        return read_fbx(path, armature=armature)
    if suffix == ".npz":
        return SkeletonAnimation.load(path)
    raise MotionSourceError(f"{path.name}: unknown motion file type {path.suffix!r}; allowed: {', '.join(FORMATS)}")


def import_motion(
    path: str | os.PathLike[str], *, bone_map_file: str | os.PathLike[str] | None = None,
    armature: str | None = None, **options: Any,
) -> Any:
    """Read and retarget a motion file; ``options`` go to ``to_motion_clip``. Returns its ``Retargeted``."""
    from btdm_engine.motion.retarget import to_motion_clip

    anim = read_skeleton_animation(path, armature=armature)
    bone_map = read_bone_map(bone_map_file) if bone_map_file is not None else None
    return to_motion_clip(anim, bone_map=bone_map, **options)
