"""Every image the project reads goes through :func:`read_image`: size checked before decoding.

A PNG's width and height sit in its ``IHDR`` chunk and a JPEG's in its ``SOFn`` segment, so a
20000 x 20000 file of 1 MB is refused from its first bytes instead of decoding to 11 GB. JPEGs are
turned upright by their EXIF orientation (cameras and phones store sideways pixels plus a tag);
PNGs are taken as stored. Other formats are refused: the project's frames are PNG, and appearance
photographs PNG or JPEG.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from btdm_engine import limits
from btdm_engine.errors import BtdmError

__all__ = ["ImageReadError", "MIN_APPEARANCE_SIDE", "image_size", "read_image"]

# An appearance image smaller than this holds no person to copy (the networks work at 32 px and up).
MIN_APPEARANCE_SIDE = 16

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# SOF markers carrying the frame size (baseline, progressive, lossless, ...), not DHT/JPG/DAC.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageReadError(BtdmError, ValueError):
    """An image file that cannot be read: not PNG/JPEG, truncated, or too small; names the file."""


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
    """Decode a PNG or JPEG as OpenCV does (BGR[A] or grey), after checking its declared size.

    Raises ``FileNotFoundError`` for a missing file, :class:`~btdm_engine.errors.LimitError` when
    width x height is over the ``pixels`` limit, and :class:`ImageReadError` for anything that is
    not a readable PNG/JPEG or is smaller than ``min_side`` on a side. A JPEG is rotated upright by
    its EXIF orientation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    data = path.read_bytes()
    fmt, width, height = image_size(data, str(path))
    if fmt not in formats:
        raise ImageReadError(f"{path}: a {fmt.upper()} image; expected {' or '.join(f.upper() for f in formats)}")
    if width < 1 or height < 1:
        raise ImageReadError(f"{path}: declares an empty {width}x{height} image")
    limits.check("pixels", width * height, f"{path}: {width}x{height} px")
    if min(width, height) < min_side:
        raise ImageReadError(f"{path}: {width}x{height} px is too small (at least {min_side} px a side)")
    raw = np.frombuffer(data, dtype=np.uint8)
    if fmt == "jpeg":
        # IMREAD_UNCHANGED would ignore EXIF; colour/grey decoding applies the orientation tag.
        grey = flags == cv2.IMREAD_GRAYSCALE
        pixels = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    else:
        pixels = cv2.imdecode(raw, flags)
    if pixels is None:
        raise ImageReadError(f"{path}: not a readable {fmt.upper()} image (corrupt or truncated)")
    return pixels


