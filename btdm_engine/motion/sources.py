"""Motion files in: BVH, FBX (through Blender's importer), skeleton-animation ``.npz`` and AMASS-style SMPL ``.npz``.

:func:`read_skeleton_animation` reads any of them into the skeleton-animation contract;
:func:`import_motion` retargets it with the one core (:func:`btdm_engine.motion.retarget.to_motion_clip`),
except an AMASS-style SMPL motion (:mod:`btdm_engine.motion.amass`), which is SMPL already and is
copied into the clip with its body joints' rotations and shape kept exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from btdm_engine.motion.amass import amass_skeleton_animation, amass_to_clip, is_amass, read_amass
from btdm_engine.motion.bonemaps import read_bone_map
from btdm_engine.motion.bvh import read_bvh, skeleton_from_bvh
from btdm_engine.motion.fbx import read_fbx
from btdm_engine.motion.retarget import to_motion_clip
from btdm_engine.motion.skeleton_animation import MotionSourceError, SkeletonAnimation

__all__ = ["FORMATS", "MotionSourceError", "import_motion", "read_skeleton_animation"]

FORMATS = (".bvh", ".fbx", ".npz")


def read_skeleton_animation(path: str | os.PathLike[str], armature: str | None = None) -> SkeletonAnimation:
    """Read a ``.bvh``, ``.fbx`` or skeleton-animation ``.npz``; ``armature`` picks one in an FBX."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such motion file")
    suffix = path.suffix.lower()
    if suffix == ".bvh":
        return skeleton_from_bvh(read_bvh(path), source=path.name)
    if suffix == ".fbx":
        return read_fbx(path, armature=armature)
    if suffix == ".npz":
        if is_amass(path):
            return amass_skeleton_animation(read_amass(path))
        return SkeletonAnimation.load(path)
    raise MotionSourceError(f"{path.name}: unknown motion file type {path.suffix!r}; allowed: {', '.join(FORMATS)}")


def import_motion(
    path: str | os.PathLike[str], *, bone_map_file: str | os.PathLike[str] | None = None,
    armature: str | None = None, **options: Any,
) -> Any:
    """Read and retarget a motion file; ``options`` go to ``to_motion_clip``. Returns its ``Retargeted``."""
    path = Path(path)
    if path.suffix.lower() == ".npz" and path.is_file() and is_amass(path):
        return _import_amass(path, bone_map_file, options, amass_to_clip, read_amass)
    anim = read_skeleton_animation(path, armature=armature)
    bone_map = read_bone_map(bone_map_file) if bone_map_file is not None else None
    return to_motion_clip(anim, bone_map=bone_map, **options)


def _import_amass(path: Path, bone_map_file, options: dict[str, Any], amass_to_clip, read_amass) -> Any:
    """An AMASS-style SMPL motion: no bone map, units or rig options apply; a shape fit would replace its betas."""
    wrong = []
    if bone_map_file is not None:
        wrong.append("--bone-map")
    if options.get("skeleton") not in (None, "auto", "smpl"):
        wrong.append(f"--skeleton {options['skeleton']}")
    if options.get("scale") is not None:
        wrong.append("--scale")
    if wrong:
        raise MotionSourceError(f"{path.name}: an AMASS-style SMPL motion (poses, trans, betas) is SMPL already, in "
                                f"metres: {', '.join(wrong)} cannot apply to it")
    done = amass_to_clip(read_amass(path), body_model=options.get("body_model", "mannequin"),
                         width=options.get("width", 256), height=options.get("height", 256), fps=options.get("fps"),
                         up=options.get("up"))
    if options.get("fit_shape"):
        done.report["warnings"].append("--fit-shape ignored: the file's own betas are kept")
    return done
