"""Signed-distance primitives (numpy, vectorised over points) for the procedural mannequin.

Negative inside, positive outside, metres. Formulas follow Inigo Quilez's well-known exact
(round cone, rounded box) and bound (ellipsoid) distance functions; the smooth minimum is his
polynomial smin, which blends two surfaces with a fillet of width ``k``.
"""

from __future__ import annotations

import numpy as np


def round_cone(p: np.ndarray, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Exact distance to the convex hull of a sphere (centre ``a``, radius ``ra``) and one at ``b``.

    ``p`` is (..., 3); returns (...,).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ba = b - a
    l2 = float(ba @ ba)
    rr = ra - rb
    a2 = l2 - rr * rr
    il2 = 1.0 / l2
    pa = p - a
    y = pa @ ba
    z = y - l2
    t = pa * l2 - y[..., None] * ba
    x2 = np.einsum("...i,...i->...", t, t)
    y2 = y * y * l2
    z2 = z * z * l2
    k = np.sign(rr) * rr * rr * x2
    d_side = (np.sqrt(np.maximum(x2 * a2 * il2, 0.0)) + y * rr) * il2 - ra
    d_b = np.sqrt(x2 + z2) * il2 - rb
    d_a = np.sqrt(x2 + y2) * il2 - ra
    return np.where(np.sign(z) * a2 * z2 > k, d_b, np.where(np.sign(y) * a2 * y2 < k, d_a, d_side))


def ellipsoid(p: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Distance bound to an axis-aligned ellipsoid (exact on the surface, smooth elsewhere)."""
    radii = np.asarray(radii, dtype=np.float64)
    q = p - np.asarray(centre, dtype=np.float64)
    k0 = np.linalg.norm(q / radii, axis=-1)
    k1 = np.linalg.norm(q / (radii * radii), axis=-1)
    # At the centre both norms vanish; the distance there is minus the smallest radius.
    safe = k1 > 1e-12
    return np.where(safe, k0 * (k0 - 1.0) / np.where(safe, k1, 1.0), -radii.min())


def rounded_box(p: np.ndarray, centre: np.ndarray, half: np.ndarray, radius: float) -> np.ndarray:
    """Exact distance to an axis-aligned box with half extents ``half`` grown by ``radius``."""
    q = np.abs(p - np.asarray(centre, dtype=np.float64)) - np.asarray(half, dtype=np.float64)
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
    inside = np.minimum(q.max(axis=-1), 0.0)
    return outside + inside - radius


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: the union of two shapes with a fillet of width ``k``."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth maximum: the intersection counterpart of :func:`smooth_min`."""
    return -smooth_min(-a, -b, k)
