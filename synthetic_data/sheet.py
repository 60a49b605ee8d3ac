"""Contact sheets of a built dataset: several characters, the same frames of the same motion.

Each character gets two rows: its rendered frames (composited on grey) and their pose maps
(colour-coded with :func:`btdm_engine.posemaps.colorize_iuv`), so cloth, prints and the agreement
between the render and the pose map can be checked by eye.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from btdm_engine.errors import UsageError
from training.dataset_format import DatasetFormatError, DatasetManifest

__all__ = ["composite_rgba", "dataset_contact_sheet"]


def composite_rgba(rgba: np.ndarray, background: int = 128) -> np.ndarray:
    """uint8 RGBA (H,W,4) -> RGB on a flat grey."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.round(rgba[..., :3] * a + background * (1.0 - a)).astype(np.uint8)


def dataset_contact_sheet(root: str | os.PathLike[str], out: str | os.PathLike[str], motion: str | None = None,
                          frames: Sequence[int] | None = None, characters: int = 4, scale: int = 1) -> Path:
    """Write a PNG sheet of ``characters`` people performing ``motion`` (default: the first).

    ``frames`` default to five evenly spaced ones; ``scale`` enlarges cells (nearest neighbour).
    """
    from btdm_engine.posemaps import colorize_iuv, contact_sheet, read_iuv_png, write_rgb_png  # lazy: loads torch

    manifest = DatasetManifest.load(root)
    seqs = list(manifest.sequences.values())
    motions = sorted({s.motion for s in seqs if s.motion})
    motion = motion or (motions[0] if motions else None)
    chosen = [s for s in seqs if s.motion == motion][:characters]
    if not chosen:
        raise DatasetFormatError(f"{root}: no sequence of motion {motion!r}; motions: {', '.join(motions)}")
    n = min(s.num_frames for s in chosen)
    frames = list(frames) if frames is not None else sorted({int(round(x)) for x in np.linspace(0, n - 1, min(5, n))})
    bad = [f for f in frames if not 0 <= f < n]
    if bad:
        raise UsageError(f"frames {bad} are outside 0..{n - 1}")
    images, labels = [], []
    for s in chosen:
        folder = manifest.sequence_dir(s.id)
        row_rgb, row_iuv = [], []
        for f in frames:
            rgba = cv2.imread(str(folder / "rgb" / f"{f:06d}.png"), cv2.IMREAD_UNCHANGED)
            if rgba is None:
                raise DatasetFormatError(f"{folder / 'rgb' / f'{f:06d}.png'}: unreadable")
            rgb = rgba[..., [2, 1, 0, 3]] if rgba.shape[2] == 4 else rgba[..., ::-1]
            rgb = composite_rgba(rgb) if rgb.shape[2] == 4 else rgb
            iuv = colorize_iuv(read_iuv_png(folder / "iuv" / f"{f:06d}.png"))
            row_rgb.append(rgb)
            row_iuv.append(iuv)
        images += row_rgb + row_iuv
        labels += [f"{s.character} {f}" for f in frames] + ["" for _ in frames]
    if scale > 1:
        images = [cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) for im in images]
    sheet = contact_sheet(images, cols=len(frames), labels=labels)
    return write_rgb_png(out, sheet)
