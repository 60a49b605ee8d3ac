"""AMASS-style SMPL motions in: SMPL, SMPL-H and SMPL-X parameter files (``.npz``).

An AMASS file holds the body's parameters, not a rig: ``poses`` (T, 3 x joints) axis-angle with
joint 0 the global orientation, ``trans`` (T, 3) metres, ``betas`` (K,) the shape,
``mocap_framerate`` (SMPL-H releases) or ``mocap_frame_rate`` (SMPL-X releases), ``gender``; the
world is Z-up. The width of ``poses`` says the model: 72 (SMPL, 24 joints), 156 (SMPL-H: 22 body
joints + 2 x 15 finger joints), 165 (SMPL-X: 22 body joints, jaw, 2 eyes, 2 x 15 finger joints).

Such a motion is already SMPL's, so nothing is retargeted: :func:`amass_to_clip` copies the body
joints' local rotations (joints 1..21, and SMPL's hand joints 22, 23 where the file is SMPL)
bit for bit into the clip (as float32, the clip's type), turns only the global orientation and
the translation from the file's Z-up world into the clip's Y-up one (``_Z_TO_Y``, the same turn
every Z-up source gets), and keeps the first 10 betas. SMPL-H/X finger, jaw and eye rotations have
no joint in the 24-joint body and are left out (SMPL's hand joints 22, 23 stay at rest).

The translation is SMPL's: a posed pelvis lies at ``rest_pelvis(betas) + trans``, so the turn is
``trans' = Z_TO_Y (j0 + trans) - j0`` with ``j0`` the body's rest pelvis for the clip's betas.

:func:`is_amass` tells such a file from a skeleton-animation or MotionClip ``.npz``;
:func:`amass_skeleton_animation` gives the same motion as a :class:`SkeletonAnimation` with SMPL
joint names (``btdm motion inspect``).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from btdm_engine import limits
from btdm_engine.body.skeleton import JOINT_NAMES, NUM_BETAS, NUM_JOINTS, PARENTS
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import npz_headers
from btdm_engine.motion.camera import framing_camera
from btdm_engine.motion.clip import MotionClip
from btdm_engine.motion.kinematics import forward_kinematics, world_rotations
from btdm_engine.motion.library import cached_body_model
from btdm_engine.motion.retarget import Retargeted, _resample
from btdm_engine.motion.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from btdm_engine.motion.skeleton_animation import SkeletonAnimation

__all__ = ["MODELS", "AmassError", "AmassMotion", "amass_skeleton_animation", "amass_to_clip", "is_amass",
           "read_amass"]

# poses width -> (model, joints in the file)
MODELS = {72: ("smpl", 24), 156: ("smplh", 52), 165: ("smplx", 55)}
BODY_JOINTS = 22  # joints 0..21 are the same body joints in SMPL, SMPL-H and SMPL-X
FPS_FIELDS = ("mocap_framerate", "mocap_frame_rate")
MAX_BETAS = 400  # SMPL-X files carry up to 300
# Z-up (AMASS, Blender: forward -Y) to Y-up (SMPL, the clip's world: forward +Z): (x, y, z) -> (x, z, -y).
Z_TO_Y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


class AmassError(BtdmError, ValueError):
    """An AMASS-style file that cannot be read; the message names the file and the field."""


@dataclass(frozen=True, eq=False)
class AmassMotion:
    """The file's parameters as read (float64), before any change of axes."""

    poses: np.ndarray  # (T, joints, 3) axis-angle, joint 0 = global orientation
    trans: np.ndarray  # (T, 3)
    betas: np.ndarray  # (K,), K may be 0
    fps: float
    gender: str
    model: str  # smpl, smplh or smplx
    source: str  # the file's name, for messages

    @property
    def num_frames(self) -> int:
        return int(self.poses.shape[0])

    def body_poses(self) -> np.ndarray:
        """(T, 24, 3): the file's body joints in SMPL's order; SMPL's hand joints at rest for SMPL-H/X."""
        out = np.zeros((self.num_frames, NUM_JOINTS, 3))
        joints = NUM_JOINTS if self.model == "smpl" else BODY_JOINTS
        out[:, :joints] = self.poses[:, :joints]
        return out

    def clip_betas(self) -> np.ndarray:
        out = np.zeros(NUM_BETAS)
        n = min(NUM_BETAS, len(self.betas))
        out[:n] = self.betas[:n]
        return out


def is_amass(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an AMASS-style ``.npz`` (``poses`` and ``trans``, not a clip or a skeleton file)."""
    try:
        names = set(npz_headers(path))
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):
        return False
    return {"poses", "trans"} <= names and not names & {"world_to_cam", "names", "format_version"}


def _field(npz: Any, name: str, source: str) -> np.ndarray:
    try:
        return npz[name]
    except KeyError:
        raise AmassError(f"{source}: missing field {name!r}") from None
    except ValueError as exc:  # an object array: would need pickle
        raise AmassError(f"{source}: field {name!r} is unreadable without unpickling ({exc}); btdm never "
                         "unpickles") from None


def _finite(arr: np.ndarray, name: str, source: str) -> np.ndarray:
    if arr.dtype.kind not in "iuf":
        raise AmassError(f"{source}: field {name!r} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AmassError(f"{source}: field {name!r} contains {'NaN' if np.isnan(arr[first]) else 'inf'} "
                         f"(first at index {first})")
    return arr


def read_amass(path: str | os.PathLike[str]) -> AmassMotion:
    """Read and check an AMASS-style file (module docstring); raises :class:`AmassError` naming the field."""
    path = Path(path)
    source = path.name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such motion file")
    try:
        headers = npz_headers(path)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise AmassError(f"{source}: not a readable .npz archive ({exc})") from None
    shape = headers.get("poses", ((), None))[0]
    if shape and len(shape) >= 1:
        limits.check("frames", shape[0], f"{source}: field 'poses' declares {shape[0]} frames")
    for name, (dims, _dtype) in headers.items():
        if name not in ("poses", "trans") and int(np.prod(dims, dtype=np.int64)) > 100_000:
            raise AmassError(f"{source}: field {name!r} declares shape {dims}, far more than a motion's parameters")
    try:
        with np.load(path, allow_pickle=False) as npz:
            poses = _finite(_field(npz, "poses", source), "poses", source)
            trans = _finite(_field(npz, "trans", source), "trans", source)
            betas = (_finite(_field(npz, "betas", source), "betas", source) if "betas" in npz.files
                     else np.zeros(0))
            fps_name = next((n for n in FPS_FIELDS if n in npz.files), None)
            if fps_name is None:
                raise AmassError(f"{source}: missing the frame rate: field 'mocap_framerate' (SMPL-H) or "
                                 "'mocap_frame_rate' (SMPL-X)")
            fps_arr = _finite(_field(npz, fps_name, source), fps_name, source)
            gender_arr = _field(npz, "gender", source) if "gender" in npz.files else np.array("neutral")
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise AmassError(f"{source}: unreadable .npz archive ({exc})") from None
    if poses.ndim == 3 and poses.shape[2] == 3:
        poses = poses.reshape(poses.shape[0], -1)
    if poses.ndim != 2 or poses.shape[1] not in MODELS:
        widths = ", ".join(f"{w} ({m.upper().replace('H', '-H').replace('X', '-X')})" for w, (m, _) in MODELS.items())
        raise AmassError(f"{source}: field 'poses' has shape {poses.shape}; expected (T, N) with N one of {widths}")
    frames = poses.shape[0]
    if frames == 0:
        raise AmassError(f"{source}: field 'poses' has no frames")
    if trans.shape != (frames, 3):
        raise AmassError(f"{source}: field 'trans' has shape {trans.shape}, expected ({frames}, 3) (one row per "
                         "frame of 'poses')")
    if betas.ndim == 2 and len(betas) >= 1 and np.allclose(betas, betas[:1]):
        betas = betas[0]  # a per-frame copy of one shape
    if betas.ndim != 1 or len(betas) > MAX_BETAS:
        raise AmassError(f"{source}: field 'betas' has shape {betas.shape}, expected (K,) with K <= {MAX_BETAS}")
    if fps_arr.size != 1:
        raise AmassError(f"{source}: field {fps_name!r} must be one number, got shape {fps_arr.shape}")
    fps = float(fps_arr.reshape(()))
    if fps <= 0:
        raise AmassError(f"{source}: field {fps_name!r} must be a positive frame rate, got {fps:g}")
    try:
        fps = limits.check_fps(fps, f"{source}: field {fps_name!r}")
    except limits.LimitError as exc:
        raise AmassError(str(exc)) from None
    gender = gender_arr.reshape(()).item() if gender_arr.size == 1 else None
    if isinstance(gender, bytes):
        gender = gender.decode("utf-8", "replace")
    if not isinstance(gender, str):
        raise AmassError(f"{source}: field 'gender' must be a string (male, female or neutral), got {gender_arr!r}")
    if np.abs(trans).max() > 1e5 or np.abs(poses).max() > 1e4:
        raise AmassError(f"{source}: field {'trans' if np.abs(trans).max() > 1e5 else 'poses'} holds values no "
                         "motion has (over 100 km or 10000 rad)")
    model, joints = MODELS[poses.shape[1]]
    return AmassMotion(poses=poses.reshape(frames, joints, 3), trans=trans, betas=betas, fps=fps,
                       gender=gender.strip().lower() or "neutral", model=model, source=source)


def _turn(poses: np.ndarray, trans: np.ndarray, rest_pelvis: np.ndarray, up: str) -> tuple[np.ndarray, np.ndarray]:
    """The file's global orientation and translation in the clip's Y-up world (body joints untouched)."""
    if up == "Y":
        return poses, trans
    poses = poses.copy()
    poses[:, 0] = matrix_to_axis_angle(np.einsum("ij,tjk->tik", Z_TO_Y, axis_angle_to_matrix(poses[:, 0])))
    trans = (rest_pelvis + trans) @ Z_TO_Y.T - rest_pelvis
    return poses, trans


def amass_to_clip(motion: AmassMotion, *, body_model: str = "mannequin", width: int = 256, height: int = 256,
                  fps: float | None = None, up: str | None = None):
    """The motion as a MotionClip on ``body_model`` framed by the default camera; returns a ``Retargeted``.

    ``up``: the file's up axis (default Z, AMASS's). ``fps`` resamples (slerp). The report says what
    was kept: ``skeleton`` (the model), ``map`` (SMPL joint -> itself), ``betas``, ``gender``, ``warnings``.
    """
    up = up or "Z"
    if up not in ("Y", "Z"):
        raise AmassError(f"{motion.source}: unknown up axis {up!r}; allowed: Y, Z")
    notes: list[str] = []
    betas = motion.clip_betas()
    dropped = motion.betas[NUM_BETAS:]
    if dropped.size and np.abs(dropped).max() > 1e-6:
        notes.append(f"the file has {len(motion.betas)} betas; the body takes the first {NUM_BETAS} (the others, up "
                     f"to {np.abs(dropped).max():.3g}, are left out)")
    if motion.model != "smpl":
        notes.append(f"{motion.model.upper()} finger, jaw and eye rotations have no joint in the 24-joint body: "
                     "left out (the body joints are kept exactly)")
    body = cached_body_model(body_model)
    rest_pelvis = body.rest_joints(betas).astype(np.float64)[0]
    poses, trans = _turn(motion.body_poses(), motion.trans, rest_pelvis, up)
    out_fps = motion.fps
    if fps is not None:
        limits.check_fps(fps, "fps (the rate to resample to)")
        poses, trans = _resample(poses, trans, motion.fps, fps)
        out_fps = float(fps)
    facing = world_rotations(poses[:1])[0, 0][:, 2] * np.array([1.0, 0.0, 1.0])
    if np.linalg.norm(facing) < 1e-6:
        facing = np.array([0.0, 0.0, 1.0])
    K, w2c = framing_camera(body, poses, betas, trans, width, height, direction=-facing)
    clip = MotionClip(fps=out_fps, poses=poses, trans=trans, betas=betas, body_model=body_model, K=K,
                      width=int(width), height=int(height), world_to_cam=w2c)
    report = {"skeleton": f"amass {motion.model}", "map": {name: name for name in JOINT_NAMES},
              "units": "metres", "scale": 1.0, "up": up, "gender": motion.gender,
              "facing_deg": float(np.degrees(np.arctan2(facing[2], facing[0]))),
              "betas": [float(b) for b in betas], "camera": "default", "warnings": notes}
    return Retargeted(clip=clip, report=report)


def amass_skeleton_animation(motion: AmassMotion, *, body_model: str = "mannequin"):
    """The motion as a Z-up :class:`SkeletonAnimation` of the body's 24 joints with SMPL names (metres).

    Every bone rests with the same axes (SMPL's rest frame turned Z-up) at the body's rest joint for
    the file's betas; a frame's bone matrix is the joint's world rotation (SMPL's, in the file's
    world) and its posed position.
    """
    rest = cached_body_model(body_model).rest_joints(motion.clip_betas()).astype(np.float64)
    poses = motion.body_poses()
    world = world_rotations(poses)  # SMPL's canonical frame -> the file's world
    heads = forward_kinematics(poses, rest, motion.trans)
    y_to_z = Z_TO_Y.T
    rest_m = np.tile(np.eye(4), (NUM_JOINTS, 1, 1))
    rest_m[:, :3, :3] = y_to_z
    rest_m[:, :3, 3] = rest @ y_to_z.T
    frames = np.tile(np.eye(4), (motion.num_frames, NUM_JOINTS, 1, 1))
    frames[:, :, :3, :3] = world
    frames[:, :, :3, 3] = heads
    children = {p: j for j, p in reversed(list(enumerate(PARENTS))) if p >= 0}
    tails = np.array([rest_m[children[j], :3, 3] if j in children else rest_m[j, :3, 3] for j in range(NUM_JOINTS)])
    return SkeletonAnimation(names=JOINT_NAMES, parents=np.array(PARENTS, np.int64), rest=rest_m, tails=tails,
                             frames=frames, fps=motion.fps, scale=1.0, up="Z", source=motion.source)
