"""Sample a Blender armature (and the shot camera) as a skeleton animation.

This is the one place where Blender's bones become the engine's skeleton-animation contract
(``btdm_engine/motion/skeleton_animation.py`` documents the fields): the add-on sends what it
samples here to the engine, and the engine's FBX import (``btdm motion import take.fbx``) uses the
same function after Blender's own FBX importer has built the armature. It needs bpy, numpy and the
standard library only, so it runs inside Blender's own Python; call it on the main thread.

What is sampled, per scene frame: ``armature.matrix_world @ pose_bone.matrix`` (constraints,
drivers and NLA evaluated by ``scene.frame_set``), in Blender's world (Z up), in Blender units
(``scale`` = the scene's unit scale, metres per unit). Rest matrices use the object's transform at
the first sampled frame. The camera becomes OpenCV intrinsics and extrinsics per frame, matching
``bpy_extras.object_utils.world_to_camera_view`` pixel for pixel.
"""

from __future__ import annotations

import io
import os

import numpy as np

from .files import atomic_write_bytes  # the add-on's one safe-write path (the bridge imports no engine)

__all__ = ["ArmatureError", "camera_matrices", "sample_armature", "save_skeleton_npz"]

FORMAT_VERSION = 1
# Blender camera axes (x right, y up, looking down -z) -> OpenCV (x right, y down, z ahead).
_BLENDER_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
MAX_FRAMES = 100_000


class ArmatureError(ValueError):
    """The scene cannot be sampled (no armature, no bones, an unsupported camera); the message says why."""


def _matrix(m) -> np.ndarray:
    return np.array([list(row) for row in m], dtype=np.float64)


def _ordered_bones(armature) -> list:
    """The armature's bones with every parent before its children (Blender does not promise that order)."""
    out, seen = [], set()
    pending = [b for b in armature.data.bones if b.parent is None]
    children = {}
    for bone in armature.data.bones:
        if bone.parent is not None:
            children.setdefault(bone.parent.name, []).append(bone)
    while pending:
        bone = pending.pop(0)
        if bone.name in seen:
            continue
        seen.add(bone.name)
        out.append(bone)
        pending.extend(children.get(bone.name, []))
    return out


def render_size(scene) -> tuple[int, int]:
    """The scene's output size in pixels (resolution times percentage)."""
    r = scene.render
    return (max(1, int(round(r.resolution_x * r.resolution_percentage / 100))),
            max(1, int(round(r.resolution_y * r.resolution_percentage / 100))))


def camera_matrices(scene, camera) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The camera at the current frame: OpenCV ``K`` (3, 3), ``world_to_cam`` (4, 4), width, height.

    Follows Blender's sensor fit (auto, horizontal, vertical), lens shift and pixel aspect; pixel
    centres at integer coordinates. Orthographic and panoramic cameras are refused.
    """
    data = camera.data
    if data.type != "PERSP":
        raise ArmatureError(f"camera {camera.name!r} is {data.type.lower()}; only perspective cameras make plates")
    width, height = render_size(scene)
    aspect_x, aspect_y = scene.render.pixel_aspect_x, scene.render.pixel_aspect_y
    # Blender's sensor fit: which image side the sensor size spans (with pixel aspect applied).
    fit = data.sensor_fit
    w_eff, h_eff = width * aspect_x, height * aspect_y
    if fit == "AUTO":
        fit = "HORIZONTAL" if w_eff >= h_eff else "VERTICAL"
        sensor = data.sensor_width
    else:
        sensor = data.sensor_width if fit == "HORIZONTAL" else data.sensor_height
    span = w_eff if fit == "HORIZONTAL" else h_eff  # pixels (x-units) the sensor covers
    f = data.lens / sensor * span  # focal length in horizontal-pixel units times aspect
    fx = f / aspect_x
    fy = f / aspect_y
    # Lens shift is in units of the fitted side.
    cx = width / 2.0 - 0.5 - data.shift_x * span / aspect_x
    cy = height / 2.0 - 0.5 + data.shift_y * span / aspect_y
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    cam_to_world = _matrix(camera.matrix_world)
    # Drop any object scale: a camera's scale does not change what it sees.
    for k in range(3):
        cam_to_world[:3, k] /= np.linalg.norm(cam_to_world[:3, k])
    w2c = _BLENDER_TO_CV @ np.linalg.inv(cam_to_world)
    return K, w2c, width, height


def sample_armature(scene, armature, frame_start: int, frame_end: int, camera=None) -> dict[str, np.ndarray]:
    """The armature's bones (and the camera) over scene frames ``frame_start..frame_end`` inclusive.

    Returns the skeleton-animation fields as numpy arrays (see module docstring); the scene is left
    at the frame it was on.
    """
    if armature is None or armature.type != "ARMATURE":
        kind = "nothing" if armature is None else f"a {armature.type.lower()} object ({armature.name!r})"
        raise ArmatureError(f"select an armature: got {kind}")
    bones = _ordered_bones(armature)
    if not bones:
        raise ArmatureError(f"armature {armature.name!r} has no bones")
    if frame_end < frame_start:
        raise ArmatureError(f"frame range {frame_start}..{frame_end} is empty")
    if frame_end - frame_start + 1 > MAX_FRAMES:
        raise ArmatureError(f"frame range {frame_start}..{frame_end} is over the limit of {MAX_FRAMES} frames")
    names = [b.name for b in bones]
    index = {n: i for i, n in enumerate(names)}
    parents = np.array([index[b.parent.name] if b.parent is not None else -1 for b in bones], dtype=np.int64)
    pose_bones = [armature.pose.bones[n] for n in names]
    n_frames = frame_end - frame_start + 1
    frames = np.empty((n_frames, len(bones), 4, 4))
    cam = None
    if camera is not None:
        cam = {"K": np.empty((n_frames, 3, 3)), "w2c": np.empty((n_frames, 4, 4))}
    current = scene.frame_current
    try:
        scene.frame_set(frame_start)
        obj_rest = _matrix(armature.matrix_world)
        rest = np.stack([obj_rest @ _matrix(b.matrix_local) for b in bones])
        tails = np.stack([(obj_rest @ np.append(np.array(b.tail_local, dtype=np.float64), 1.0))[:3] for b in bones])
        for k, frame in enumerate(range(frame_start, frame_end + 1)):
            scene.frame_set(frame)
            world = _matrix(armature.matrix_world)
            frames[k] = [world @ _matrix(pb.matrix) for pb in pose_bones]
            if cam is not None:
                cam["K"][k], cam["w2c"][k], width, height = camera_matrices(scene, camera)
    finally:
        scene.frame_set(current)
    out = {
        "format_version": np.int64(FORMAT_VERSION),
        "names": np.array(names, dtype=np.str_),
        "parents": parents,
        "rest": rest,
        "tails": tails,
        "frames": frames,
        "fps": np.float64(scene.render.fps / scene.render.fps_base),
        "scale": np.float64(scene.unit_settings.scale_length if scene.unit_settings.system != "NONE" else 1.0),
        "up": np.str_("Z"),
    }
    if cam is not None:
        out.update(cam_K=cam["K"], cam_world_to_cam=cam["w2c"], cam_width=np.int64(width), cam_height=np.int64(height))
    return out


def save_skeleton_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> str:
    """Write the sampled arrays as a skeleton-animation ``.npz``, atomically (temp file, then rename)."""
    path = os.fspath(path)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    return path
