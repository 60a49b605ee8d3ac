"""Image files in and out of the engine: every image the project reads goes through :func:`decode_image`.

**Size before pixels.** A PNG's width and height sit in its ``IHDR`` chunk and a JPEG's in its
``SOFn`` segment, so a 20000 x 20000 file of 1 MB is refused from its first bytes instead of
decoding to 11 GB. JPEGs are turned upright by their EXIF orientation (cameras and phones store
sideways pixels plus a tag); PNGs are taken as stored. Other formats are refused: the project's
frames are PNG, and appearance photographs PNG or JPEG. A caller that has the bytes already (an
upload, a zip member) decodes them with :func:`decode_image`; :func:`read_image` reads a file once.

**Frames as float RGB.** :func:`read_rgb` gives float32 (H, W, 3) RGB in [0, 1]; RGBA frames (the
synthetic set renders with alpha) are composited onto a solid background colour,
``rgb * a + background * (1 - a)``; the default background is white (1, 1, 1), the backdrop of UBC
Fashion and of the paper's figures. Resizing RGB uses ``cv2.INTER_AREA`` when shrinking (no
aliasing) and ``cv2.INTER_CUBIC`` when enlarging; label images (IUV) are resized with
``cv2.INTER_NEAREST`` only, so part labels never blend. Frame folders hold ``<digits>.png`` files
(:func:`list_frames`).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import cv2
import numpy as np

from btdm_engine import limits
from btdm_engine.errors import BtdmError, UsageError

__all__ = [
    "MIN_APPEARANCE_SIDE",
    "WHITE",
    "FrameError",
    "ImageReadError",
    "decode_image",
    "decode_rgb",
    "frame_index",
    "image_size",
    "list_frames",
    "parse_colour",
    "read_image",
    "read_rgb",
    "resize_labels",
    "resize_rgb",
]

# An appearance image smaller than this holds no person to copy (the networks work at 32 px and up).
MIN_APPEARANCE_SIDE = 16

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# SOF markers carrying the frame size (baseline, progressive, lossless, ...), not DHT/JPG/DAC.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}

WHITE: tuple[float, float, float] = (1.0, 1.0, 1.0)

_FRAME_NAME = re.compile(r"^(\d+)\.png$")


class ImageReadError(BtdmError, ValueError):
    """An image file that cannot be read: not PNG/JPEG, truncated, or too small; names the file."""


class FrameError(BtdmError, ValueError):
    """A frame file is missing, unreadable or has an unexpected format."""


def image_size(data: bytes, where: str) -> tuple[str, int, int]:
    """``(format, width, height)`` of PNG or JPEG bytes, from the header alone."""
    if data.startswith(_PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageReadError(f"{where}: truncated PNG (no IHDR header)")
        width, height = struct.unpack(">II", data[16:24])
        return "png", int(width), int(height)
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                raise ImageReadError(f"{where}: corrupt JPEG (bad marker at byte {i})")
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker in _SOF:
                if i + 9 > len(data):
                    break
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return "jpeg", int(width), int(height)
            i += 2 + length
        raise ImageReadError(f"{where}: truncated JPEG (no frame header)")
    raise ImageReadError(f"{where}: not a readable image (neither PNG nor JPEG)")


def read_image(
    path: str | os.PathLike[str], flags: int = cv2.IMREAD_UNCHANGED, min_side: int = 1,
    formats: tuple[str, ...] = ("png", "jpeg"),
) -> np.ndarray:
    """Read a PNG or JPEG file once and decode it with :func:`decode_image` (``FileNotFoundError`` if missing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    return decode_image(path.read_bytes(), str(path), flags, min_side, formats)


def decode_image(
    data: bytes, where: str, flags: int = cv2.IMREAD_UNCHANGED, min_side: int = 1,
    formats: tuple[str, ...] = ("png", "jpeg"),
) -> np.ndarray:
    """Decode PNG or JPEG bytes as OpenCV does (BGR[A] or grey), after checking their declared size.

    Raises :class:`~btdm_engine.errors.LimitError` when width x height is over the ``pixels``
    limit, and :class:`ImageReadError` for anything that is not a readable PNG/JPEG or is smaller
    than ``min_side`` on a side; messages start with ``where`` (the file). A JPEG is rotated
    upright by its EXIF orientation.
    """
    fmt, width, height = image_size(data, where)
    if fmt not in formats:
        raise ImageReadError(f"{where}: a {fmt.upper()} image; expected {' or '.join(f.upper() for f in formats)}")
    if width < 1 or height < 1:
        raise ImageReadError(f"{where}: declares an empty {width}x{height} image")
    limits.check("pixels", width * height, f"{where}: {width}x{height} px")
    if min(width, height) < min_side:
        raise ImageReadError(f"{where}: {width}x{height} px is too small (at least {min_side} px a side)")
    raw = np.frombuffer(data, dtype=np.uint8)
    if fmt == "jpeg":
        # IMREAD_UNCHANGED would ignore EXIF; colour/grey decoding applies the orientation tag.
        grey = flags == cv2.IMREAD_GRAYSCALE
        pixels = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    else:
        pixels = cv2.imdecode(raw, flags)
    if pixels is None:
        raise ImageReadError(f"{where}: not a readable {fmt.upper()} image (corrupt or truncated)")
    return pixels


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
    premultiplied), as PNG defines it. The size is checked before decoding (:func:`read_image`).
    """
    return _as_rgb(read_image(path, min_side=min_side), str(path), background)


def decode_rgb(data: bytes, where: str, background: tuple[float, float, float] = WHITE, min_side: int = 1) -> np.ndarray:
    """:func:`read_rgb` for bytes already in memory (``where`` names them in errors)."""
    return _as_rgb(decode_image(data, where, min_side=min_side), where, background)


def _as_rgb(raw: np.ndarray, where: str, background: tuple[float, float, float]) -> np.ndarray:
    if raw.dtype == np.uint8:
        img = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16:
        img = raw.astype(np.float32) / 65535.0
    else:
        raise FrameError(f"{where}: unsupported pixel type {raw.dtype} (8- or 16-bit PNG expected)")
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
    raise FrameError(f"{where}: {channels} channels; expected grey, RGB or RGBA")


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
