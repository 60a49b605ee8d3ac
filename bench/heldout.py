"""Held-out sequences through the Animator, scored against the ground truth: what the model benchmarks share.

``bench_ablation``, ``bench_default_model`` and ``bench_sr3_noise`` animate a dataset's test split
from each sequence's first frame and score the frames with ``btdm_engine.metrics.evaluate``. This
module reads a sequence's inputs and writes the folders ``evaluate`` compares, at the output
resolution: ``OUT/pred/<key>/<sequence>/``, ``OUT/gt/<sequence>/`` and ``OUT/iuv/<sequence>/``.
(Not a benchmark itself: ``python -m bench`` runs only the ``bench_*`` modules.)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from btdm_engine.imageio import read_image, read_rgb, resize_labels, resize_rgb
from btdm_engine.metrics.evaluate import evaluate
from btdm_engine.posemaps.encoding import read_iuv_png, write_iuv_png
from btdm_engine.posemaps.preview import write_rgb_png
from training.toy_data import write_toy_dataset


def fresh_dir(out: Path) -> None:
    """``out`` as a new, empty folder (a previous run's results removed)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def smoke_dataset(out: Path) -> Path:
    """A toy dataset with one held-out character (``OUT/toy_data``), for a benchmark's smoke run."""
    return write_toy_dataset(out / "toy_data", num_characters=3, sequences_per_character=1, num_frames=4, size=64,
                             test_characters=1)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] as uint8."""
    return np.round(rgb * 255).astype(np.uint8)


def truth_frame(path: Path, res: int) -> np.ndarray:
    """A ground-truth frame as uint8 RGB at ``res`` x ``res``."""
    return to_uint8(resize_rgb(read_rgb(path), (res, res)))


def sequence_inputs(seq: Any, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``frames`` pose maps of ``seq`` (uint8 (n, H, W, 3)) and its appearance image c (frame 0, uint8)."""
    n = min(frames, len(seq.rgb))
    poses = np.stack([read_iuv_png(p) for p in seq.iuv[:n]])
    return poses, to_uint8(read_rgb(seq.rgb[0]))


def write_frames(out: Path, key: str, seq: Any, frames: np.ndarray, poses: np.ndarray, res: int, first: int = 0) -> None:
    """``frames[first:]`` into ``OUT/pred/<key>/<sequence>/``; the truth and the pose maps, at ``res``, once per
    sequence (``first=1`` leaves out frame 0 where it is the appearance image itself). A truth frame that
    is RGBA at ``res`` (the synthetic sets) is copied with its alpha, for the ``person`` foreground."""
    for t, frame in enumerate(frames):
        if t < first:
            continue
        write_rgb_png(out / "pred" / key / seq.id / f"{t:06d}.png", frame)
        gt = out / "gt" / seq.id / f"{t:06d}.png"
        if not gt.exists():
            raw = read_image(seq.rgb[t])
            if raw.ndim == 3 and raw.shape[2] == 4 and raw.shape[:2] == (res, res):
                gt.parent.mkdir(parents=True, exist_ok=True)  # RGBA at the output size: kept, alpha and all
                shutil.copyfile(seq.rgb[t], gt)
            else:
                write_rgb_png(gt, truth_frame(seq.rgb[t], res))
            write_iuv_png(out / "iuv" / seq.id / f"{t:06d}.png", resize_labels(poses[t], (res, res)))


def score(out: Path, key: str, foreground: str = "pose", **weights: Any) -> dict[str, Any]:
    """``evaluate`` of ``OUT/pred/<key>`` against ``OUT/gt``, foreground only (``OUT/iuv``): the pose maps' body
    (``pose``) or the whole person with hair and clothes (``person``: the truth's alpha too)."""
    return evaluate(out / "pred" / key, out / "gt", out / "iuv", foreground=foreground, **weights)
