"""A small procedural dataset in the real layout, for tests, smoke runs and documentation.

Each "character" is a flat figure (torso with its own colour and stripes, two arms, a head) that
sways and swings its arms over the sequence; frames are RGBA (transparent background, like the
synthetic renders) and the pose maps label the torso front (2), the person's left and right upper
arms (17 outside-left on the image's right side, 18 on its left: the figure faces the camera) and
the head (23/24), with U across and V along each part. It is written through
:func:`training.dataset_format.write_manifest` like any dataset, so it exercises the same reader.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from btdm_engine.errors import UsageError
from btdm_engine.fileio import atomic_write_bytes
from btdm_engine.motion.clip import MotionClip
from btdm_engine.posemaps.encoding import write_iuv_png
from training.dataset_format import SEQUENCES_DIR, SequenceRecord, frame_name, write_manifest

TORSO, LEFT_ARM, RIGHT_ARM, HEAD_RIGHT, HEAD_LEFT = 2, 17, 18, 23, 24


def _write_png_atomic(path: Path, bgra: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", bgra)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the PNG")
    atomic_write_bytes(path, buf.tobytes())


def _part(iuv: np.ndarray, rgba: np.ndarray, label: int, x0: float, y0: float, x1: float, y1: float, colour: np.ndarray) -> None:
    """Fill an axis-aligned part with a label, a U/V gradient and a colour modulated by V."""
    h, w = iuv.shape[:2]
    xa, xb = int(round(max(0, min(x0, x1)))), int(round(min(w, max(x0, x1))))
    ya, yb = int(round(max(0, y0))), int(round(min(h, y1)))
    if xb <= xa or yb <= ya:
        return
    uu = np.linspace(0.05, 0.95, xb - xa)[None, :].repeat(yb - ya, 0)
    vv = np.linspace(0.05, 0.95, yb - ya)[:, None].repeat(xb - xa, 1)
    if x1 < x0:  # a mirrored chart runs right to left
        uu = uu[:, ::-1]
    iuv[ya:yb, xa:xb, 0] = label
    iuv[ya:yb, xa:xb, 1] = np.round(uu * 255)
    iuv[ya:yb, xa:xb, 2] = np.round(vv * 255)
    shade = (0.75 + 0.25 * np.cos(vv * 6 * math.pi))[..., None]
    rgba[ya:yb, xa:xb, :3] = np.clip(colour[None, None] * shade * 255, 0, 255)
    rgba[ya:yb, xa:xb, 3] = 255


def toy_frame(size: int, t: int, character: int, phase: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One frame: (RGBA uint8 (size, size, 4), IUV uint8 (size, size, 3))."""
    rng = np.random.default_rng(1000 + character)
    torso_c, arm_c, head_c = rng.uniform(0.15, 0.95, (3, 3))
    s = size / 64.0
    cx = size / 2 + 8 * s * math.sin(0.35 * t + phase)
    swing = 6 * s * math.sin(0.5 * t + phase)
    iuv = np.zeros((size, size, 3), np.uint8)
    rgba = np.zeros((size, size, 4), np.uint8)
    _part(iuv, rgba, TORSO, cx - 7 * s, 20 * s, cx + 7 * s, 46 * s, torso_c)
    # The figure faces the camera: its right arm is on the image's left.
    _part(iuv, rgba, RIGHT_ARM, cx - 7 * s, 21 * s + swing, cx - 12 * s, 38 * s + swing, arm_c)
    _part(iuv, rgba, LEFT_ARM, cx + 7 * s, 21 * s - swing, cx + 12 * s, 38 * s - swing, arm_c * 0.8)
    _part(iuv, rgba, HEAD_RIGHT, cx - 5 * s, 8 * s, cx, 19 * s, head_c)
    _part(iuv, rgba, HEAD_LEFT, cx + 5 * s, 8 * s, cx, 19 * s, head_c)
    return rgba, iuv


def _toy_clip(num_frames: int, size: int, fps: float):
    k = np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], np.float32)
    w2c = np.eye(4, dtype=np.float32)
    w2c[2, 3] = 3.0
    return MotionClip(
        fps=fps,
        poses=np.zeros((num_frames, 24, 3), np.float32),
        trans=np.zeros((num_frames, 3), np.float32),
        betas=np.zeros(10, np.float32),
        body_model="mannequin",
        K=np.repeat(k[None], num_frames, 0),
        width=size,
        height=size,
        world_to_cam=np.repeat(w2c[None], num_frames, 0),
    )


def write_toy_dataset(
    root: str | Path,
    num_characters: int = 4,
    sequences_per_character: int = 1,
    num_frames: int = 8,
    size: int = 64,
    test_characters: int = 1,
    fps: float = 30.0,
) -> Path:
    """Write a toy dataset under ``root``; the last ``test_characters`` characters form the test split."""
    if not 0 < test_characters < num_characters:
        raise UsageError(f"test_characters must be in 1..{num_characters - 1}, got {test_characters}")
    root = Path(root)
    records: list[SequenceRecord] = []
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for c in range(num_characters):
        for j in range(sequences_per_character):
            seq_id = f"c{c:02d}_s{j:02d}"
            folder = root / SEQUENCES_DIR / seq_id
            (folder / "rgb").mkdir(parents=True, exist_ok=True)
            (folder / "iuv").mkdir(parents=True, exist_ok=True)
            for t in range(num_frames):
                rgba, iuv = toy_frame(size, t, c, phase=0.9 * j)
                _write_png_atomic(folder / "rgb" / frame_name(t), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
                write_iuv_png(folder / "iuv" / frame_name(t), iuv)
            _toy_clip(num_frames, size, fps).save(folder / "clip.npz")
            meta = {"character": f"char{c:02d}", "generator": "toy"}
            atomic_write_bytes(folder / "meta.json", (json.dumps(meta) + "\n").encode())
            records.append(SequenceRecord.from_folder(root, seq_id, character=f"char{c:02d}", motion=f"sway{j}"))
            splits["test" if c >= num_characters - test_characters else "train"].append(seq_id)
    write_manifest(root, records, splits, size, fps, info={"generator": "training.toy_data"})
    return root
