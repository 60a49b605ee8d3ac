"""Raster parts of the garment prints: the logo-like mark, drawn with OpenCV.

The repeating patterns (stripes, checks, dots, print) are Blender shader nodes evaluated on each
garment's rest-pose coordinates (see :mod:`synthetic_data.blender_scene`), so they are sharp at any
resolution and stick to the cloth as it moves. The logo is a small RGBA image made here from its
:class:`~synthetic_data.spec.LogoSpec`: deterministic, and checkable without Blender.
"""

from __future__ import annotations

import cv2
import numpy as np

from synthetic_data.spec import LogoSpec

__all__ = ["logo_image"]


def _shape_polygon(shape: str, n: int) -> np.ndarray | None:
    c = n / 2.0
    r = 0.46 * n
    if shape == "diamond":
        return np.array([[c, c - r], [c + r, c], [c, c + r], [c - r, c]])
    if shape == "shield":
        return np.array([[c - r, c - r], [c + r, c - r], [c + r, c + 0.1 * r], [c, c + r], [c - r, c + 0.1 * r]])
    if shape == "star":
        a = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.5 * r)
        return np.stack([c + rad * np.cos(a), c + rad * np.sin(a)], axis=1)
    return None


def logo_image(logo: LogoSpec, size: int = 128) -> np.ndarray:
    """The mark as a float32 (size, size, 4) sRGB + alpha image, row 0 at the top.

    A filled shape in ``logo.colour`` with a ring inside it and the glyph in ``glyph_colour``;
    edges are antialiased, the background is transparent.
    """
    if size < 16:
        raise ValueError(f"logo size must be at least 16 px, got {size}")
    scale = 4  # draw large and shrink: antialiased edges without relying on cv2's LINE_AA
    n = size * scale
    canvas = np.zeros((n, n, 4), dtype=np.float32)
    shape_colour = (*logo.colour, 1.0)
    glyph_colour = (*logo.glyph_colour, 1.0)
    poly = _shape_polygon(logo.shape, n)
    if poly is None:
        cv2.circle(canvas, (n // 2, n // 2), int(0.46 * n), shape_colour, thickness=-1)
    else:
        cv2.fillPoly(canvas, [np.round(poly).astype(np.int32)], shape_colour)
    inner = int(0.3 * n) if logo.shape != "star" else int(0.2 * n)
    cv2.circle(canvas, (n // 2, n // 2), inner, glyph_colour, thickness=max(1, n // 40))
    font = cv2.FONT_HERSHEY_DUPLEX
    font_scale = 0.011 * n
    thick = max(1, n // 28)
    (tw, th), _ = cv2.getTextSize(logo.glyph, font, font_scale, thick)
    org = (int(n / 2 - tw / 2), int(n / 2 + th / 2))
    cv2.putText(canvas, logo.glyph, org, font, font_scale, glyph_colour, thick, cv2.LINE_8)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
