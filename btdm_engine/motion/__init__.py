"""Motion clips: the MotionClip contract, the procedural library, motion import (BVH, FBX, armatures) and cameras.

``MotionClip`` (``.npz``) is what every entry point hands to the body model and the pose-map
renderer; see docs/architecture.md for the contract.
"""

from __future__ import annotations

from btdm_engine.motion.bvh import BvhError, load_bvh, read_bvh, save_bvh, skeleton_from_bvh, write_bvh
from btdm_engine.motion.camera import default_camera, intrinsics, look_at, orbit, project
from btdm_engine.motion.clip import FORMAT_VERSION, MotionClip, MotionClipError
from btdm_engine.motion.library import MOTIONS, make_motion

__all__ = [
    "FORMAT_VERSION", "MOTIONS", "BvhError", "MotionClip", "MotionClipError", "default_camera",
    "intrinsics", "load_bvh", "look_at", "make_motion", "orbit", "project", "read_bvh", "save_bvh",
    "skeleton_from_bvh", "write_bvh",
]
