"""Stick-figure previews of motion clips: joints projected with the clip's own camera.

A quick way to look at a clip before rendering pose maps: the person's left side is drawn red,
the right side blue, the spine black, as the camera of the clip sees it.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from btdm_engine.body.skeleton import JOINT_NAMES, PARENTS
from btdm_engine.errors import UsageError
from btdm_engine.fileio import atomic_write_bytes
from btdm_engine.motion.camera import project
from btdm_engine.motion.clip import MotionClip
from btdm_engine.motion.library import cached_body_model

__all__ = ["clip_joints", "contact_sheet", "draw_stick_figure"]

_LEFT = (40, 40, 220)  # BGR red
_RIGHT = (220, 90, 30)  # BGR blue
_CENTRE = (30, 30, 30)


def clip_joints(clip: MotionClip, body: object | None = None) -> np.ndarray:
    """World joint positions (T, 24, 3) of ``clip`` on its body model (or ``body``)."""
    if body is None:
        body = cached_body_model(clip.body_model)
    _, joints = body.forward(clip.poses, clip.betas, clip.trans)
    return np.asarray(joints, dtype=np.float64)


def draw_stick_figure(image: np.ndarray, joints2d: np.ndarray, thickness: int = 2) -> np.ndarray:
    """Draw SMPL bones (24 joints, pixel coordinates (24, 2)) on a BGR image, in place."""
    scale = 16  # cv2 sub-pixel precision: 4 fractional bits
    pts = np.round(joints2d * scale).astype(np.int64)
    for j in range(1, len(PARENTS)):
        name = JOINT_NAMES[j]
        colour = _LEFT if name.startswith("left") else _RIGHT if name.startswith("right") else _CENTRE
        cv2.line(image, tuple(map(int, pts[PARENTS[j]])), tuple(map(int, pts[j])), colour, thickness,
                 cv2.LINE_AA, shift=4)
    head = tuple(map(int, pts[JOINT_NAMES.index("head")]))
    cv2.circle(image, head, int(max(3, thickness * 2.5) * scale), (40, 150, 40), -1, cv2.LINE_AA, shift=4)
    return image


def contact_sheet(
    clips: dict[str, MotionClip], path: str | os.PathLike[str], frames: int = 8, tile: int = 192,
    body: object | None = None,
) -> Path:
    """One row per clip, ``frames`` evenly spaced frames each, drawn with the clip's camera.

    Tiles are the clip's image scaled to ``tile`` pixels on its longer side; the floor (y = 0)
    is drawn as a grey grid line through the pelvis. Written atomically as a PNG.
    """
    rows = []
    for name, clip in clips.items():
        small = clip.resized(*_fit(clip.width, clip.height, tile))
        joints = clip_joints(clip, body)
        uv, _ = project(joints, small.K, small.world_to_cam)
        tiles = []
        for f in np.linspace(0, clip.num_frames - 1, frames).round().astype(int):
            img = np.full((small.height, small.width, 3), 255, np.uint8)
            pelvis = joints[f, 0]
            floor = np.array([[[pelvis[0] + dx, 0.0, pelvis[2]] for dx in (-0.6, 0.6)]])
            fuv, depth = project(floor, small.K[f : f + 1], small.world_to_cam[f : f + 1])
            if (depth > 0).all():
                a, b = (np.round(fuv[0] * 16).astype(np.int64))
                cv2.line(img, tuple(map(int, a)), tuple(map(int, b)), (170, 170, 170), 1, cv2.LINE_AA, shift=4)
            draw_stick_figure(img, uv[f], thickness=max(1, tile // 96))
            cv2.putText(img, f"{name} {f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.rectangle(img, (0, 0), (small.width - 1, small.height - 1), (200, 200, 200), 1)
            tiles.append(img)
        rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    sheet = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"{path}: a contact sheet is written as .png")
    ok, data = cv2.imencode(".png", sheet)
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    return atomic_write_bytes(path, data.tobytes())


def _fit(width: int, height: int, tile: int) -> tuple[int, int]:
    s = tile / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))
