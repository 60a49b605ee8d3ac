"""PNG in the standard library only: encode 8-bit RGB/RGBA arrays, write files atomically.

Blender's own image API colour-manages and flips rows; these helpers keep plates and uploads
byte-exact. Reading images the add-on does through Blender (``bpy.data.images.load``).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from ._bridge import load

__all__ = ["atomic_write_bytes", "encode_png", "png_size"]

# The one atomic write, shared with the engine through the bridge (btdm_bridge/files.py).
atomic_write_bytes = load("files").atomic_write_bytes

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 ``(H, W, 3|4)`` (top row first) -> PNG bytes."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"expected uint8 (H, W, 3|4) pixels, got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if channels == 3 else 6, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of PNG bytes, or None when they are not a PNG."""
    if len(data) < 24 or not data.startswith(_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])
