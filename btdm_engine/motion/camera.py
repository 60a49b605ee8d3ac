"""Cameras for motion clips: the default framing camera, ``look_at`` and ``orbit``.

All cameras follow OpenCV: camera x right, y down, z forward; ``world_to_cam`` maps world points
(Y up, metres) to camera coordinates; ``K`` has square pixels and the principal point at the image
centre, with pixel centres at integer coordinates (so the centre is ``((W-1)/2, (H-1)/2)``).

A clip stores its camera, so the arithmetic here is float64 in a fixed order
(:mod:`btdm_engine.fixed_order`): the same inputs give the same bits on any machine.
"""

from __future__ import annotations

import math

import numpy as np

from btdm_engine import fixed_order as fx
from btdm_engine.body.exact import posed_points
from btdm_engine.errors import BtdmError


class CameraError(BtdmError, ValueError):
    """A camera cannot be built from these values (size, field of view, points out of range)."""

__all__ = ["default_camera", "framing_camera", "intrinsics", "look_at", "orbit", "project"]

_WORLD_UP = np.array([0.0, 1.0, 0.0])


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """(3, 3) pinhole intrinsics with vertical field of view ``fov_deg`` and square pixels."""
    if width <= 0 or height <= 0:
        raise CameraError(f"image size must be positive, got {width}x{height}")
    if not 0.0 < fov_deg < 180.0:
        raise CameraError(f"fov_deg must be in (0, 180), got {fov_deg}")
    f = (height / 2.0) / math.tan(math.radians(fov_deg) / 2.0)  # libm, as everywhere a camera is stored
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def _rotation_from_forward(forward: np.ndarray, up: np.ndarray = _WORLD_UP) -> np.ndarray:
    """World-to-camera rotation whose rows are the camera x (right), y (down), z (forward) axes."""
    z = np.asarray(forward, dtype=np.float64)
    norm = fx.norm(z)
    if norm < 1e-12:
        raise CameraError("camera viewing direction must be non-zero")
    z = z / norm
    x = np.cross(-np.asarray(up, dtype=np.float64), z)  # right = down x forward (element-wise)
    if fx.norm(x) < 1e-9:
        raise CameraError(f"camera viewing direction {tuple(z)} is parallel to the up vector")
    x /= fx.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = _WORLD_UP) -> np.ndarray:
    """(4, 4) ``world_to_cam`` for a camera at ``eye`` looking at ``target`` (image up ~ ``up``)."""
    eye = np.asarray(eye, dtype=np.float64)
    rot = _rotation_from_forward(np.asarray(target, dtype=np.float64) - eye, up)
    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -fx.matvec(rot, eye)
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
    el = math.radians(elevation_deg)
    offsets = radius * np.stack(
        [math.cos(el) * fx.sin(az), np.full_like(az, math.sin(el)), math.cos(el) * fx.cos(az)], axis=-1
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


def _framing(
    width: int, height: int, fov_deg: float, margin: float, direction: np.ndarray | None, elevation_deg: float
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``K``, the world-to-camera rotation and the half extents (pixels) a framed point may use."""
    if not 0.0 <= margin < 0.5:
        raise CameraError(f"margin must be in [0, 0.5), got {margin}")
    K = intrinsics(width, height, fov_deg)
    forward = np.array([0.0, 0.0, -1.0]) if direction is None else np.asarray(direction, float)
    forward = forward - forward[1] * _WORLD_UP
    norm = fx.norm(forward)
    if norm < 1e-9:
        raise CameraError(f"direction {tuple(direction)} has no horizontal component")
    forward = forward / norm
    el = math.radians(elevation_deg)
    forward = math.cos(el) * forward - math.sin(el) * _WORLD_UP
    rot = _rotation_from_forward(forward)
    # Allowed half extent of the image in pixels around the principal point.
    half_w = (width - 1) / 2.0 - margin * width
    half_h = (height - 1) / 2.0 - margin * height
    if half_w <= 0 or half_h <= 0:
        raise CameraError(f"margin {margin} leaves no room in a {width}x{height} image")
    return K, rot, half_w, half_h


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

    Everything is float64 in a fixed order (:mod:`btdm_engine.fixed_order`: no BLAS, no threads,
    libm's trigonometry), so the same points give the same bits on any machine; a clip stores the
    result as float32, rounded once. Points that themselves vary in their last bits (vertices from
    torch's float32 ``BodyModel.forward``) still move the camera: :func:`framing_camera` frames a
    posed body from exact vertex positions.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] == 0 or points.shape[1] == 0:
        raise CameraError(f"points must have shape (T, N, 3) with T, N > 0, got {points.shape}")
    if not np.isfinite(points).all():
        raise CameraError("points contain NaN or inf")
    K, rot, half_w, half_h = _framing(width, height, fov_deg, margin, direction, elevation_deg)
    f = K[0, 0]

    P = fx.matvec(rot, points.reshape(-1, 3))  # points in camera axes, before translating
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


# A vertex whose float32 position is within this many metres (times 2 m plus the largest root
# translation) of an extreme of the clip is a candidate for it: over a thousand times the error of
# the float32 forward pass at that size, so every exact extreme is among the candidates.
_SLACK_M = 1e-3


def _near_extremes(points: np.ndarray, dirs: np.ndarray, slack: np.ndarray) -> np.ndarray:
    """Mask of the points within ``slack`` of the largest value of ``points @ dir``, for any dir."""
    values = points @ dirs.T  # approximate on purpose: only which points to keep depends on it
    return (values >= values.max(axis=0) - slack).any(axis=1)


def framing_camera(
    body,
    poses: np.ndarray,
    betas: np.ndarray,
    trans: np.ndarray,
    width: int,
    height: int,
    fov_deg: float = 40.0,
    margin: float = 0.05,
    direction: np.ndarray | None = None,
    elevation_deg: float = 0.0,
    min_depth: float = 0.3,
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`default_camera` framing every vertex of ``body`` posed by ``poses``, ``betas``, ``trans``.

    Returns ``K`` (T, 3, 3) and ``world_to_cam`` (T, 4, 4), identical for every frame, and
    bit-identical whatever the machine, BLAS library or thread count: a clip's camera is data
    (a synthetic set's ``clip.npz`` stores it), so two builds must agree to the last bit.

    The camera depends on five extremes only: over all vertices of all frames, the largest value
    of one linear function per image border and of the negated depth. Torch's float32 forward
    pass (fast, but its last bits depend on the CPU and the thread count: up to 1.2e-7 m between
    one thread and two) poses ``chunk`` frames at a time, and the vertices near an extreme are
    kept as candidates (:data:`_SLACK_M`), so memory stays flat in the number of frames. Their
    exact positions come from :func:`btdm_engine.body.exact.posed_points` (float64, fixed order)
    and :func:`default_camera` runs on those. Extra candidates change no maximum, so whichever
    candidates a machine keeps, the camera is the one all exact vertices give; should a
    candidate's float32 position ever be off by more than the slack allows for, every vertex is
    posed exactly instead.
    """
    poses = np.asarray(poses, dtype=np.float32)
    trans = np.asarray(trans, dtype=np.float32)
    frames = len(poses)
    if frames == 0:
        raise CameraError("a camera needs at least one frame")
    if not (np.isfinite(poses).all() and np.isfinite(trans).all()):
        raise CameraError("points contain NaN or inf")
    K, rot, half_w, half_h = _framing(width, height, fov_deg, margin, direction, elevation_deg)
    f = K[0, 0]
    dirs = np.stack([f * rot[0] - half_w * rot[2], -f * rot[0] - half_w * rot[2],
                     f * rot[1] - half_h * rot[2], -f * rot[1] - half_h * rot[2], -rot[2]])
    slack_m = _SLACK_M * (2.0 + float(np.abs(trans).max(initial=0.0)))
    slack = slack_m * np.sqrt((dirs * dirs).sum(axis=1))
    nv = body.num_vertices
    betas32 = np.asarray(betas, dtype=np.float32)
    approx, where_t, where_v = np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    for start in range(0, frames, chunk):
        verts, _ = body.forward(poses[start: start + chunk], betas32, trans[start: start + chunk])
        pts = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
        if not np.isfinite(pts).all():
            raise CameraError("points contain NaN or inf")
        n = len(pts) // nv
        approx = np.concatenate([approx, pts])
        where_t = np.concatenate([where_t, np.repeat(np.arange(start, start + n), nv)])
        where_v = np.concatenate([where_v, np.tile(np.arange(nv), n)])
        keep = _near_extremes(approx, dirs, slack)
        approx, where_t, where_v = approx[keep], where_t[keep], where_v[keep]
    exact = posed_points(body, poses, betas32, trans, where_t, where_v)
    if np.abs(exact - approx).max() > slack_m / 8:  # the float32 pass is off more than assumed
        where_t, where_v = np.repeat(np.arange(frames), nv), np.tile(np.arange(nv), frames)
        exact = posed_points(body, poses, betas32, trans, where_t, where_v)
    K1, w2c1 = default_camera(exact[None], width, height, fov_deg=fov_deg, margin=margin, direction=direction,
                              elevation_deg=elevation_deg, min_depth=min_depth)
    return np.repeat(K1, frames, axis=0), np.repeat(w2c1, frames, axis=0)
