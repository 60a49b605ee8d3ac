"""Cameras for motion clips: the default framing camera, ``look_at`` and ``orbit``.

All cameras follow OpenCV: camera x right, y down, z forward; ``world_to_cam`` maps world points
(Y up, metres) to camera coordinates; ``K`` has square pixels and the principal point at the image
centre, with pixel centres at integer coordinates (so the centre is ``((W-1)/2, (H-1)/2)``).
"""

from __future__ import annotations

import contextlib

import numpy as np

from btdm_engine.errors import BtdmError


class CameraError(BtdmError, ValueError):
    """A camera cannot be built from these values (size, field of view, points out of range)."""

__all__ = ["default_camera", "intrinsics", "look_at", "orbit", "project"]

_WORLD_UP = np.array([0.0, 1.0, 0.0])


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """(3, 3) pinhole intrinsics with vertical field of view ``fov_deg`` and square pixels."""
    if width <= 0 or height <= 0:
        raise CameraError(f"image size must be positive, got {width}x{height}")
    if not 0.0 < fov_deg < 180.0:
        raise CameraError(f"fov_deg must be in (0, 180), got {fov_deg}")
    f = (height / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def _rotation_from_forward(forward: np.ndarray, up: np.ndarray = _WORLD_UP) -> np.ndarray:
    """World-to-camera rotation whose rows are the camera x (right), y (down), z (forward) axes."""
    z = np.asarray(forward, dtype=np.float64)
    norm = np.linalg.norm(z)
    if norm < 1e-12:
        raise CameraError("camera viewing direction must be non-zero")
    z = z / norm
    x = np.cross(-np.asarray(up, dtype=np.float64), z)  # right = down x forward
    if np.linalg.norm(x) < 1e-9:
        raise CameraError(f"camera viewing direction {tuple(z)} is parallel to the up vector")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = _WORLD_UP) -> np.ndarray:
    """(4, 4) ``world_to_cam`` for a camera at ``eye`` looking at ``target`` (image up ~ ``up``)."""
    eye = np.asarray(eye, dtype=np.float64)
    rot = _rotation_from_forward(np.asarray(target, dtype=np.float64) - eye, up)
    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ eye
    return w2c


def orbit(
    target: np.ndarray,
    radius: float,
    num_frames: int,
    start_deg: float = 0.0,
    degrees: float = 360.0,
    elevation_deg: float = 0.0,
) -> np.ndarray:
    """(T, 4, 4) cameras circling ``target`` at ``radius`` metres, all looking at it.

    Azimuth 0 puts the camera on the +Z side (in front of a body in its rest orientation);
    positive azimuth turns counter-clockwise seen from above (towards +X). The sweep covers
    ``degrees`` over the clip, the last frame at ``start_deg + degrees * (T-1)/T`` so a full
    orbit loops without a repeated frame.
    """
    if num_frames <= 0:
        raise CameraError(f"num_frames must be positive, got {num_frames}")
    if radius <= 0:
        raise CameraError(f"radius must be positive, got {radius}")
    target = np.asarray(target, dtype=np.float64)
    az = np.radians(start_deg + degrees * np.arange(num_frames) / num_frames)
    el = np.radians(elevation_deg)
    offsets = radius * np.stack(
        [np.cos(el) * np.sin(az), np.full_like(az, np.sin(el)), np.cos(el) * np.cos(az)], axis=-1
    )
    return np.stack([look_at(target + off, target) for off in offsets])


def project(points: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (T, N, 3) with per-frame cameras -> pixels (T, N, 2) and depth (T, N)."""
    points = np.asarray(points, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    w2c = np.asarray(world_to_cam, dtype=np.float64)
    cam = np.einsum("tij,tnj->tni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
    pix = np.einsum("tij,tnj->tni", K, cam)
    return pix[..., :2] / pix[..., 2:3], cam[..., 2]


def default_camera(
    points: np.ndarray,
    width: int,
    height: int,
    fov_deg: float = 40.0,
    margin: float = 0.05,
    direction: np.ndarray | None = None,
    elevation_deg: float = 0.0,
    min_depth: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """A static camera that frames every point of every frame, as tightly as the margin allows.

    Args:
        points: (T, N, 3) world points, e.g. all posed mesh vertices of the clip.
        width, height: image size in pixels.
        fov_deg: vertical field of view.
        margin: free border on each side, as a fraction of the image size (0 <= margin < 0.5).
        direction: horizontal viewing direction in the world; default (0, 0, -1), i.e. a camera
            on the +Z side looking at the front of a body in its rest orientation.
        elevation_deg: tilt of the camera above the horizon (positive looks down on the body).
        min_depth: no point may be closer to the camera than this (metres).

    Returns:
        ``K`` (T, 3, 3) and ``world_to_cam`` (T, 4, 4), identical for every frame.

    For a fixed orientation, each image border is a half-space constraint linear in the camera
    centre, and only the extreme point along one direction per border matters. The closest camera
    that satisfies all four is then found in closed form.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] == 0 or points.shape[1] == 0:
        raise CameraError(f"points must have shape (T, N, 3) with T, N > 0, got {points.shape}")
    if not np.isfinite(points).all():
        raise CameraError("points contain NaN or inf")
    if not 0.0 <= margin < 0.5:
        raise CameraError(f"margin must be in [0, 0.5), got {margin}")
    K = intrinsics(width, height, fov_deg)
    f = K[0, 0]
    forward = np.array([0.0, 0.0, -1.0]) if direction is None else np.asarray(direction, float)
    forward = forward - forward @ _WORLD_UP * _WORLD_UP
    if np.linalg.norm(forward) < 1e-9:
        raise CameraError(f"direction {tuple(direction)} has no horizontal component")
    forward /= np.linalg.norm(forward)
    el = np.radians(elevation_deg)
    forward = np.cos(el) * forward - np.sin(el) * _WORLD_UP
    rot = _rotation_from_forward(forward)

    # points in camera axes, before translating; element-wise in a fixed order rather than a BLAS
    # matmul, whose kernel (and so the last bits) may differ with the thread count
    flat = points.reshape(-1, 3)
    P = np.stack([flat[:, 0] * r[0] + flat[:, 1] * r[1] + flat[:, 2] * r[2] for r in rot], axis=-1)
    # Allowed half extent of the image in pixels around the principal point.
    half_w = (width - 1) / 2.0 - margin * width
    half_h = (height - 1) / 2.0 - margin * height
    if half_w <= 0 or half_h <= 0:
        raise CameraError(f"margin {margin} leaves no room in a {width}x{height} image")
    # Camera centre C (camera axes): a point q = P - C must satisfy f*|q_x| <= half_w*q_z.
    # Right border: f*P_x - half_w*P_z <= f*C_x - half_w*C_z, similarly for the other three.
    m_right = np.max(f * P[:, 0] - half_w * P[:, 2])
    m_left = np.max(-f * P[:, 0] - half_w * P[:, 2])
    m_down = np.max(f * P[:, 1] - half_h * P[:, 2])
    m_up = np.max(-f * P[:, 1] - half_h * P[:, 2])
    cz_x = -(m_right + m_left) / (2.0 * half_w)
    cz_y = -(m_down + m_up) / (2.0 * half_h)
    cz = min(cz_x, cz_y, P[:, 2].min() - min_depth)
    # Any C_x between the two borders' limits works; the middle centres the motion.
    cx = 0.5 * ((m_right + half_w * cz) + (-m_left - half_w * cz)) / f
    cy = 0.5 * ((m_down + half_h * cz) + (-m_up - half_h * cz)) / f
    centre_cam = np.array([cx, cy, cz])

    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -centre_cam
    T = points.shape[0]
    return np.repeat(K[None], T, axis=0), np.repeat(w2c[None], T, axis=0)


def posed_hull_points(body, poses: np.ndarray, betas: np.ndarray, trans: np.ndarray, chunk: int = 256) -> np.ndarray:
    """The posed mesh's extreme points over all frames, (M, 3), posing ``chunk`` frames at a time.

    :func:`default_camera` only takes maxima of linear functions of the points, which the convex
    hull's vertices attain, so ``default_camera(posed_hull_points(...)[None], ...)`` frames a clip
    exactly as all of its vertices would, with memory flat in the number of frames.
    """
    from scipy.spatial import ConvexHull, QhullError

    betas = np.asarray(betas, dtype=np.float32)
    kept: list[np.ndarray] = []
    for start in range(0, len(poses), chunk):
        sl = slice(start, start + chunk)
        verts, _ = body.forward(np.asarray(poses[sl], np.float32), betas, np.asarray(trans[sl], np.float32))
        pts = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
        if not np.isfinite(pts).all():
            raise CameraError("points contain NaN or inf")
        with contextlib.suppress(QhullError):  # flat or degenerate: keep every point
            pts = pts[ConvexHull(pts).vertices]
        kept.append(pts)
        if len(kept) > 8:  # fold the hulls gathered so far into one
            merged = np.concatenate(kept)
            with contextlib.suppress(QhullError):
                merged = merged[ConvexHull(merged).vertices]
            kept = [merged]
    return np.concatenate(kept)
