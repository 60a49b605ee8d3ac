"""FBX motion through Blender's own FBX importer (the bpy module, headless).

The importer builds an armature in an empty scene; :func:`btdm_bridge.armature.sample_armature`,
the same sampler the add-on uses on live armatures, turns it into a skeleton animation. Needs the
``blender`` extra (``bpy``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from btdm_bridge.armature import ArmatureError, sample_armature
from btdm_engine.motion.skeleton_animation import MotionSourceError, SkeletonAnimation, from_arrays

__all__ = ["read_fbx"]

logger = logging.getLogger(__name__)
MAX_BYTES = 512 * 1024 * 1024


def read_fbx(path: str | os.PathLike[str], armature: str | None = None) -> SkeletonAnimation:
    """Import ``path`` with Blender's FBX importer and sample its armature over its action's frames.

    ``armature`` names the armature object when the file holds several; with one it is optional.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such FBX file")
    if path.stat().st_size > MAX_BYTES:
        raise MotionSourceError(f"{path.name}: larger than the {MAX_BYTES >> 20} MiB limit for FBX files")
    try:
        import bpy  # lazy: optional (Blender as a Python module)
    except ImportError as exc:
        raise MotionSourceError(
            f"{path.name}: FBX import needs Blender as a Python module (pip install -e '.[blender]')") from exc

    bpy.ops.wm.read_factory_settings(use_empty=True)
    try:
        result = bpy.ops.import_scene.fbx(filepath=str(path.resolve()))
    except RuntimeError as exc:  # the importer reports a bad file as a RuntimeError
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise MotionSourceError(f"{path.name}: Blender's FBX importer failed: {message}") from None
    if "FINISHED" not in result:
        raise MotionSourceError(f"{path.name}: Blender's FBX importer did not finish ({', '.join(result)})")
    scene = bpy.context.scene
    arms = [o for o in scene.objects if o.type == "ARMATURE"]
    if armature is not None:
        arms = [o for o in arms if o.name == armature]
        if not arms:
            names = ", ".join(o.name for o in scene.objects if o.type == "ARMATURE") or "none"
            raise MotionSourceError(f"{path.name}: no armature named {armature!r}; armatures in the file: {names}")
    if not arms:
        raise MotionSourceError(f"{path.name}: the file holds no armature (objects: "
                                f"{', '.join(o.name for o in scene.objects) or 'none'})")
    if len(arms) > 1:
        raise MotionSourceError(f"{path.name}: the file holds {len(arms)} armatures "
                                f"({', '.join(o.name for o in arms)}); pick one with --armature")
    arm = arms[0]
    action = arm.animation_data.action if arm.animation_data else None
    if action is not None:
        start, end = (int(round(f)) for f in action.frame_range)
    else:
        start = end = scene.frame_start
    logger.info("%s: armature %r, frames %d..%d at %g fps", path.name, arm.name, start, end,
                scene.render.fps / scene.render.fps_base)
    try:
        arrays = sample_armature(scene, arm, start, end)
    except ArmatureError as exc:
        raise MotionSourceError(f"{path.name}: {exc}") from None
    return from_arrays(arrays, source=path.name)
