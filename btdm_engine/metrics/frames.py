"""Reading frame PNGs for evaluation and training: RGB(A) compositing and resizing.

RGBA frames (the synthetic set renders with alpha) are composited onto a solid background
colour, ``rgb * a + background * (1 - a)``; the default background is white (1, 1, 1), the
backdrop of UBC Fashion and of the paper's figures. Resizing RGB uses ``cv2.INTER_AREA`` when
shrinking (no aliasing) and ``cv2.INTER_CUBIC`` when enlarging; label images (IUV) are resized
with ``cv2.INTER_NEAREST`` only, so part labels never blend.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from btdm_engine.errors import BtdmError, UsageError
from btdm_engine.imageio import read_image

WHITE: tuple[float, float, float] = (1.0, 1.0, 1.0)

_FRAME_NAME = re.compile(r"^(\d+)\.png$")


class FrameError(BtdmError, ValueError):
    """A frame file is missing, unreadable or has an unexpected format."""


def parse_colour(text: str) -> tuple[float, float, float]:
    """Parse a background colour: ``white``, ``black``, ``grey`` or ``R,G,B`` in 0..255."""
    named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "grey": (0.5, 0.5, 0.5)}
    if text in named:
        return named[text]
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise UsageError(f"background colour {text!r}: use one of {', '.join(named)} or R,G,B with values in 0..255")
    return (values[0] / 255, values[1] / 255, values[2] / 255)


def read_rgb(path: str | Path, background: tuple[float, float, float] = WHITE, min_side: int = 1) -> np.ndarray:
    """Read an 8- or 16-bit RGB/RGBA/grey PNG (or a JPEG, turned upright) as float32 (H, W, 3) RGB in [0, 1].

    Alpha is composited onto ``background`` (RGB in [0, 1]); the alpha is straight (not
    premultiplied), as PNG defines it. The size is checked before decoding
    (:func:`btdm_engine.imageio.read_image`).
    """
    path = Path(path)
    raw = read_image(path, min_side=min_side)
    if raw.dtype == np.uint8:
        img = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16:
        img = raw.astype(np.float32) / 65535.0
    else:
        raise FrameError(f"{path}: unsupported pixel type {raw.dtype} (8- or 16-bit PNG expected)")
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[-1]
    if channels == 1:
        return np.repeat(img, 3, axis=-1)
    if channels == 3:
        return img[..., ::-1].copy()
    if channels == 4:
        rgb, alpha = img[..., 2::-1], img[..., 3:]
        bg = np.asarray(background, dtype=np.float32)
        return (rgb * alpha + bg * (1.0 - alpha)).astype(np.float32)
    raise FrameError(f"{path}: {channels} channels; expected grey, RGB or RGBA")


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float (H, W, 3) to ``size`` = (height, width): area when shrinking, bicubic when enlarging."""
    h, w = img.shape[:2]
    if (h, w) == tuple(size):
        return img
    shrinking = size[0] * size[1] < h * w
    out = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0)


def resize_labels(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a label image (H, W[, C]) to ``size`` = (height, width) with nearest neighbour only."""
    if img.shape[:2] == tuple(size):
        return img
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def frame_index(path: str | Path) -> int:
    """The integer index of a frame file named ``<digits>.png``."""
    m = _FRAME_NAME.match(Path(path).name)
    if m is None:
        raise FrameError(f"{path}: frame files must be named <digits>.png, e.g. 000000.png")
    return int(m.group(1))


def list_frames(folder: str | Path) -> list[Path]:
    """The ``<digits>.png`` frames of a folder in index order; other files are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FrameError(f"{folder}: not a folder")
    pngs = [p for p in folder.iterdir() if p.suffix.lower() == ".png"]
    bad = [p.name for p in pngs if _FRAME_NAME.match(p.name) is None]
    if bad:
        raise FrameError(f"{folder}: frame files must be named <digits>.png; found {', '.join(sorted(bad)[:3])}")
    return sorted(pngs, key=frame_index)
