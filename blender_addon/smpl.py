"""SMPL motions in the add-on (numpy and the standard library only; no bpy, no engine).

An AMASS-style ``.npz`` (SMPL, SMPL-H or SMPL-X: ``poses``, ``trans``, ``betas``,
``mocap_framerate`` or ``mocap_frame_rate``, ``gender``; Z-up) is read by :func:`read_amass`, the
same checks as the engine's reader (``btdm_engine/motion/amass.py``), and put on an armature with
SMPL's 24 joint names by :mod:`.operators.smpl_import` using :func:`rest_joints` and
:func:`bone_rotations`.

The body the engine draws is its bundled mannequin: :data:`REST_JOINTS` and
:data:`JOINT_SHAPE_DIRS` are its rest joints and their linear change with the 10 betas (joints =
``REST_JOINTS + JOINT_SHAPE_DIRS @ betas``), copied from ``btdm_engine.body``; ``tests/test_addon_smpl.py``
checks that the copies agree, as it checks :data:`JOINT_NAMES` and :data:`PARENTS` against
``btdm_engine.body.skeleton``.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["JOINT_NAMES", "PARENTS", "SmplError", "SmplMotion", "bone_rotations", "read_amass", "rest_joints"]

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand",
    "right_hand",
)
PARENTS: tuple[int, ...] = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
# The child a bone points at (its tail); joints without one continue their parent's direction.
TAIL_CHILD = {0: 3, 1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 9, 7: 10, 8: 11, 9: 12, 12: 15, 13: 16, 14: 17, 16: 18,
              17: 19, 18: 20, 19: 21, 20: 22, 21: 23}
NUM_BETAS = 10
# poses width -> (model, joints in the file); joints 0..21 are the same body joints in all three
MODELS = {72: ("smpl", 24), 156: ("smplh", 52), 165: ("smplx", 55)}
BODY_JOINTS = 22
FPS_FIELDS = ("mocap_framerate", "mocap_frame_rate")
MAX_FRAMES = 100_000
# SMPL's rest frame (Y up, facing +Z) -> Blender's (Z up, facing -Y): (x, y, z) -> (x, -z, y).
Y_TO_Z = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

REST_JOINTS = (  # metres, SMPL's rest frame (Y up, facing +Z)
    (0.0000000, -0.2250000, 0.0050000),
    (0.0700000, -0.3100000, 0.0050000),
    (-0.0700000, -0.3100000, 0.0050000),
    (0.0000000, -0.1050000, -0.0100000),
    (0.1000000, -0.6800000, 0.0150000),
    (-0.1000000, -0.6800000, 0.0150000),
    (-0.0000000, 0.0300000, -0.0100000),
    (0.0950000, -1.0750000, -0.0350000),
    (-0.0950000, -1.0750000, -0.0350000),
    (0.0000000, 0.0900000, -0.0050000),
    (0.1050000, -1.1350000, 0.0900000),
    (-0.1050000, -1.1350000, 0.0900000),
    (0.0000000, 0.2900000, -0.0200000),
    (0.0750000, 0.2050000, -0.0100000),
    (-0.0750000, 0.2050000, -0.0100000),
    (0.0000000, 0.3650000, 0.0100000),
    (0.1750000, 0.2250000, -0.0200000),
    (-0.1750000, 0.2250000, -0.0200000),
    (0.4300000, 0.2100000, -0.0300000),
    (-0.4300000, 0.2100000, -0.0300000),
    (0.6750000, 0.2150000, -0.0350000),
    (-0.6750000, 0.2150000, -0.0350000),
    (0.7650000, 0.2100000, -0.0400000),
    (-0.7650000, 0.2100000, -0.0400000),
)
JOINT_SHAPE_DIRS = (  # [joint][axis][beta]: d(joint position)/d(beta)
    (
        (-0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (0.0329000, 0.0020615, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000133, 0.0000000),
        (0.0001750, 0.0012413, 0.0000000, 0.0000000, 0.0000000, 0.0033326, 0.0000000, 0.0000000, 0.0000550, -0.0000053),
    ),
    (
        (0.0024500, 0.0005653, 0.0000000, 0.0000000, 0.0064560, 0.0004153, 0.0000000, 0.0000000, 0.0018315, 0.0000000),
        (0.0299250, -0.0017696, 0.0481306, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0010531, 0.0000000),
        (0.0001750, 0.0014078, 0.0000000, 0.0000000, 0.0000000, 0.0019590, 0.0000000, 0.0000000, -0.0002401, 0.0000004),
    ),
    (
        (-0.0024500, -0.0005653, 0.0000000, 0.0000000, -0.0064560, -0.0004153, 0.0000000, 0.0000000, -0.0018315, 0.0000000),
        (0.0299250, -0.0017696, 0.0481306, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0010531, 0.0000000),
        (0.0001750, 0.0014078, 0.0000000, 0.0000000, 0.0000000, 0.0019590, 0.0000000, 0.0000000, -0.0002401, 0.0000004),
    ),
    (
        (0.0000000, -0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (0.0371000, 0.0000550, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (-0.0003500, 0.0001617, 0.0000000, 0.0000000, 0.0000000, 0.0114190, 0.0000000, 0.0000000, 0.0000000, -0.0002995),
    ),
    (
        (0.0035000, 0.0000331, 0.0000000, 0.0000000, 0.0120004, 0.0000000, 0.0000000, 0.0000000, 0.0001428, 0.0000000),
        (0.0169750, -0.0001481, 0.0283626, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0001253, 0.0000000),
        (0.0005250, 0.0001647, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0002208, -0.0000000),
    ),
    (
        (-0.0035000, -0.0000331, 0.0000000, 0.0000000, -0.0120004, -0.0000000, 0.0000000, 0.0000000, -0.0001428, 0.0000000),
        (0.0169750, -0.0001481, 0.0283626, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0001253, 0.0000000),
        (0.0005250, 0.0001647, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0002208, -0.0000000),
    ),
    (
        (0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (0.0418250, -0.0010922, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (-0.0003500, -0.0006977, 0.0000000, 0.0000000, 0.0000000, 0.0082303, 0.0000000, 0.0000000, 0.0000000, -0.0022440),
    ),
    (
        (0.0033250, -0.0000018, 0.0000000, 0.0000000, 0.0120000, -0.0000000, 0.0000000, 0.0000000, 0.0000137, 0.0000000),
        (0.0031500, 0.0001906, 0.0052632, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000821, 0.0000000),
        (-0.0012250, -0.0002434, 0.0000000, 0.0000000, 0.0000000, -0.0000000, 0.0000000, 0.0000000, 0.0001069, 0.0000000),
    ),
    (
        (-0.0033250, 0.0000018, 0.0000000, 0.0000000, -0.0120000, 0.0000000, 0.0000000, 0.0000000, -0.0000137, 0.0000000),
        (0.0031500, 0.0001906, 0.0052632, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000821, 0.0000000),
        (-0.0012250, -0.0002434, 0.0000000, 0.0000000, 0.0000000, -0.0000000, 0.0000000, 0.0000000, 0.0001069, 0.0000000),
    ),
    (
        (-0.0000000, 0.0000000, 0.0000000, -0.0000000, -0.0000000, -0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (0.0439250, -0.0005440, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000000, 0.0000000),
        (-0.0001750, -0.0011051, 0.0000000, 0.0000000, 0.0000000, 0.0032406, 0.0000000, 0.0000000, -0.0000006, -0.0010831),
    ),
    (
        (0.0036750, 0.0000426, 0.0000000, 0.0000000, 0.0120000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (0.0010500, 0.0002278, 0.0017544, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (0.0031500, 0.0001905, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
    ),
    (
        (-0.0036750, -0.0000426, 0.0000000, 0.0000000, -0.0120000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (0.0010500, 0.0002278, 0.0017544, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (0.0031500, 0.0001905, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
    ),
    (
        (-0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000000, 0.0000000, -0.0000000, 0.0000000, 0.0000000),
        (0.0509250, 0.0033186, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0003316, 0.0000006, 0.0000000),
        (-0.0007000, -0.0000571, 0.0000000, 0.0000000, 0.0000000, 0.0000096, 0.0000000, -0.0000847, 0.0000003, -0.0004456),
    ),
    (
        (0.0026250, 0.0017889, 0.0000000, 0.0031865, 0.0000017, 0.0001245, 0.0000000, 0.0000119, 0.0001374, 0.0000000),
        (0.0479500, 0.0016591, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000171, -0.0000325, 0.0000000),
        (-0.0003500, -0.0006242, 0.0000000, 0.0000000, 0.0000000, 0.0000833, 0.0000000, 0.0000062, -0.0000892, -0.0027155),
    ),
    (
        (-0.0026250, -0.0017889, 0.0000000, -0.0031865, -0.0000017, -0.0001245, 0.0000000, -0.0000119, -0.0001374, 0.0000000),
        (0.0479500, 0.0016591, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000171, -0.0000325, 0.0000000),
        (-0.0003500, -0.0006242, 0.0000000, 0.0000000, 0.0000000, 0.0000833, 0.0000000, 0.0000062, -0.0000892, -0.0027155),
    ),
    (
        (-0.0000000, 0.0000000, 0.0000000, -0.0000000, 0.0000000, -0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000),
        (0.0535500, -0.0005110, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0001113, 0.0000000, 0.0000000),
        (0.0003500, 0.0004543, 0.0000000, 0.0000000, 0.0000000, 0.0000001, 0.0000000, 0.0001278, 0.0000000, -0.0000007),
    ),
    (
        (0.0061250, 0.0011597, 0.0000000, 0.0158432, 0.0000009, 0.0000706, 0.0007349, 0.0000003, 0.0005870, 0.0000000),
        (0.0486500, 0.0003104, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000002, 0.0005795, 0.0000000),
        (-0.0007000, -0.0001660, 0.0000000, 0.0000000, 0.0000000, 0.0000336, 0.0000000, -0.0000000, -0.0002531, -0.0006285),
    ),
    (
        (-0.0061250, -0.0011597, 0.0000000, -0.0158432, -0.0000009, -0.0000706, -0.0007349, -0.0000003, -0.0005870, 0.0000000),
        (0.0486500, 0.0003104, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000002, 0.0005795, 0.0000000),
        (-0.0007000, -0.0001660, 0.0000000, 0.0000000, 0.0000000, 0.0000336, 0.0000000, -0.0000000, -0.0002531, -0.0006285),
    ),
    (
        (0.0150500, 0.0000441, 0.0000000, 0.0200000, 0.0000000, 0.0000000, 0.0146763, 0.0000000, -0.0002542, 0.0000000),
        (0.0481250, -0.0000926, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000685, 0.0000000),
        (-0.0010500, -0.0000343, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000098, -0.0000000),
    ),
    (
        (-0.0150500, -0.0000441, 0.0000000, -0.0200000, -0.0000000, -0.0000000, -0.0146763, 0.0000000, 0.0002542, 0.0000000),
        (0.0481250, -0.0000926, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000685, 0.0000000),
        (-0.0010500, -0.0000343, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, -0.0000098, -0.0000000),
    ),
    (
        (0.0236250, -0.0002056, 0.0000000, 0.0200000, 0.0000000, 0.0000000, 0.0287770, 0.0000000, -0.0000934, 0.0000000),
        (0.0483000, 0.0002642, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0001600, 0.0000000),
        (-0.0012250, -0.0000193, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000165, 0.0000000),
    ),
    (
        (-0.0236250, 0.0002056, 0.0000000, -0.0200000, 0.0000000, 0.0000000, -0.0287770, 0.0000000, 0.0000934, 0.0000000),
        (0.0483000, 0.0002642, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0001600, 0.0000000),
        (-0.0012250, -0.0000193, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000165, 0.0000000),
    ),
    (
        (0.0267750, 0.0000598, 0.0000000, 0.0200000, 0.0000000, 0.0000000, 0.0339568, 0.0000000, -0.0000003, 0.0000000),
        (0.0481250, -0.0000467, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000032, 0.0000000),
        (-0.0014000, -0.0000105, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000004, -0.0000000),
    ),
    (
        (-0.0267750, -0.0000598, 0.0000000, -0.0200000, -0.0000000, -0.0000000, -0.0339568, 0.0000000, 0.0000003, 0.0000000),
        (0.0481250, -0.0000467, 0.0500000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000032, 0.0000000),
        (-0.0014000, -0.0000105, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000000, 0.0000004, -0.0000000),
    ),
)


class SmplError(ValueError):
    """A file that is not a readable AMASS-style SMPL motion; the message names the file and the field."""


@dataclass(frozen=True, eq=False)
class SmplMotion:
    poses: np.ndarray  # (T, 24, 3) axis-angle in SMPL's joint order (SMPL-H/X: the hand joints 22, 23 at rest)
    trans: np.ndarray  # (T, 3) metres, Z-up world
    betas: np.ndarray  # (10,) the first 10 of the file's
    all_betas: int  # how many the file had
    fps: float
    gender: str
    model: str  # smpl, smplh, smplx

    @property
    def num_frames(self) -> int:
        return int(self.poses.shape[0])


def rest_joints(betas=None) -> np.ndarray:
    """The body's rest joints (24, 3) for ``betas`` (10,), in SMPL's rest frame (Y up)."""
    b = np.zeros(NUM_BETAS) if betas is None else np.asarray(betas, np.float64)
    return np.asarray(REST_JOINTS) + np.asarray(JOINT_SHAPE_DIRS) @ b


def _numbers(value: np.ndarray, name: str, source: str) -> np.ndarray:
    if value.dtype.kind not in "iuf":
        raise SmplError(f"{source}: field {name!r} must hold numbers, got dtype {value.dtype}")
    value = value.astype(np.float64)
    if not np.isfinite(value).all():
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
        raise SmplError(f"{source}: field {name!r} contains NaN or inf (first at index {first})")
    return value


def read_amass(path: str) -> SmplMotion:
    """Read an AMASS-style SMPL, SMPL-H or SMPL-X motion; raises :class:`SmplError` naming the file and field."""
    source = os.path.basename(path)
    if not os.path.isfile(path):
        raise SmplError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise SmplError(f"{source}: not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            for need in ("poses", "trans"):
                if need not in names:
                    raise SmplError(f"{source}: missing field {need!r} (an AMASS-style file has poses, trans, betas, "
                                    "mocap_framerate, gender)")
            raw = {}
            for name in ("poses", "trans", "betas", *FPS_FIELDS, "gender"):
                if name in names:
                    try:
                        raw[name] = npz[name]
                    except ValueError as exc:
                        raise SmplError(f"{source}: field {name!r} is unreadable without unpickling ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise SmplError(f"{source}: unreadable .npz archive ({exc})") from None
    poses = _numbers(raw["poses"], "poses", source)
    if poses.ndim == 3 and poses.shape[2] == 3:
        poses = poses.reshape(poses.shape[0], -1)
    if poses.ndim != 2 or poses.shape[1] not in MODELS:
        raise SmplError(f"{source}: field 'poses' has shape {poses.shape}; expected (T, N) with N one of 72 (SMPL), "
                        "156 (SMPL-H), 165 (SMPL-X)")
    frames = poses.shape[0]
    if not 1 <= frames <= MAX_FRAMES:
        raise SmplError(f"{source}: field 'poses' has {frames} frames; expected 1..{MAX_FRAMES}")
    trans = _numbers(raw["trans"], "trans", source)
    if trans.shape != (frames, 3):
        raise SmplError(f"{source}: field 'trans' has shape {trans.shape}, expected ({frames}, 3)")
    betas = _numbers(raw["betas"], "betas", source) if "betas" in raw else np.zeros(0)
    if betas.ndim == 2 and len(betas) and np.allclose(betas, betas[:1]):
        betas = betas[0]
    if betas.ndim != 1:
        raise SmplError(f"{source}: field 'betas' has shape {betas.shape}, expected (K,)")
    fps_name = next((n for n in FPS_FIELDS if n in raw), None)
    if fps_name is None:
        raise SmplError(f"{source}: missing the frame rate: field 'mocap_framerate' (SMPL-H) or 'mocap_frame_rate' "
                        "(SMPL-X)")
    fps_arr = _numbers(raw[fps_name], fps_name, source)
    if fps_arr.size != 1 or not 0 < float(fps_arr.reshape(())) <= 1000:
        raise SmplError(f"{source}: field {fps_name!r} must be one frame rate in 0..1000, got {fps_arr!r}")
    gender = raw.get("gender", np.array("neutral"))
    gender = gender.reshape(()).item() if gender.size == 1 else None
    if isinstance(gender, bytes):
        gender = gender.decode("utf-8", "replace")
    if not isinstance(gender, str):
        raise SmplError(f"{source}: field 'gender' must be a string (male, female or neutral)")
    model, joints = MODELS[poses.shape[1]]
    body = np.zeros((frames, 24, 3))
    keep = 24 if model == "smpl" else BODY_JOINTS
    body[:, :keep] = poses.reshape(frames, joints, 3)[:, :keep]
    shape = np.zeros(NUM_BETAS)
    shape[:min(NUM_BETAS, len(betas))] = betas[:NUM_BETAS]
    return SmplMotion(poses=body, trans=trans, betas=shape, all_betas=len(betas), fps=float(fps_arr.reshape(())),
                      gender=gender.strip().lower() or "neutral", model=model)


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrices (Rodrigues)."""
    aa = np.asarray(aa, np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = np.divide(aa, angle, out=np.zeros_like(aa), where=angle > 0)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(*aa.shape[:-1], 3, 3)
    s, c = np.sin(angle)[..., None], np.cos(angle)[..., None]
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions (w, x, y, z), Blender's order, w >= 0.

    Shepperd's method: the largest of the four components from the diagonal, the others from the
    off-diagonal sums and differences, so no component loses precision near zero.
    """
    m = np.asarray(m, np.float64)
    lead = m.shape[:-2]
    m = m.reshape(-1, 3, 3)
    t = np.stack([m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=-1)
    pick = t.argmax(axis=-1)
    q = np.empty((len(m), 4))
    for k in range(4):
        sel = pick == k
        if not sel.any():
            continue
        r = m[sel]
        if k == 0:
            s = 2.0 * np.sqrt(1.0 + t[sel, 0])
            q[sel] = np.stack([s / 4, (r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s,
                               (r[:, 1, 0] - r[:, 0, 1]) / s], axis=-1)
        elif k == 1:
            s = 2.0 * np.sqrt(1.0 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2])
            q[sel] = np.stack([(r[:, 2, 1] - r[:, 1, 2]) / s, s / 4, (r[:, 0, 1] + r[:, 1, 0]) / s,
                               (r[:, 0, 2] + r[:, 2, 0]) / s], axis=-1)
        elif k == 2:
            s = 2.0 * np.sqrt(1.0 - r[:, 0, 0] + r[:, 1, 1] - r[:, 2, 2])
            q[sel] = np.stack([(r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 0, 1] + r[:, 1, 0]) / s, s / 4,
                               (r[:, 1, 2] + r[:, 2, 1]) / s], axis=-1)
        else:
            s = 2.0 * np.sqrt(1.0 - r[:, 0, 0] - r[:, 1, 1] + r[:, 2, 2])
            q[sel] = np.stack([(r[:, 1, 0] - r[:, 0, 1]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s,
                               (r[:, 1, 2] + r[:, 2, 1]) / s, s / 4], axis=-1)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return q.reshape(*lead, 4)


def bone_rotations(poses: np.ndarray, rest_axes: np.ndarray) -> np.ndarray:
    """Pose-bone rotations (T, 24, 3, 3) that give each bone SMPL's world rotation.

    ``rest_axes`` (24, 3, 3): each bone's rest orientation in armature space (Blender's
    ``bone.matrix_local``, whatever its roll). With the armature object unrotated, a bone's posed
    orientation is ``G_j Y_TO_Z^T C_j`` (``G_j`` SMPL's world rotation of joint j in the file's Z-up
    world, ``C_j`` its rest axes), so its rotation relative to the parent is
    ``B_j = (Y_TO_Z^T C_j)^T R_j (Y_TO_Z^T C_j)`` for j > 0 (``R_j`` the file's local rotation, exactly)
    and ``B_0 = C_0^T R_0 Y_TO_Z^T C_0`` for the root.
    """
    local = axis_angle_to_matrix(poses)
    frame = Y_TO_Z.T @ np.asarray(rest_axes, np.float64)  # (24, 3, 3): C_j in SMPL's rest frame
    out = np.swapaxes(frame, -1, -2)[None] @ local @ frame[None]
    out[:, 0] = np.swapaxes(rest_axes[0], -1, -2)[None] @ local[:, 0] @ frame[0][None]
    return out
