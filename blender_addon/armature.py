"""The armature sampler, for the add-on's modules: its home is ``btdm_bridge/armature.py``, shared
with the engine's FBX import (see :mod:`._bridge`)."""

from __future__ import annotations

from ._bridge import load

__all__ = ["ArmatureError", "camera_matrices", "sample_armature", "save_skeleton_npz"]

_armature = load("armature")
ArmatureError = _armature.ArmatureError
camera_matrices = _armature.camera_matrices
sample_armature = _armature.sample_armature
save_skeleton_npz = _armature.save_skeleton_npz
