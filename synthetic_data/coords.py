"""SMPL's world and cameras in Blender's terms: the one place where the two conventions meet.

SMPL's world (the project's, docs/architecture.md) is Y up, metres, the body facing +Z; cameras
are OpenCV pinholes (x right, y down, z forward, pixel centres at integer coordinates). Blender's
world is Z up with the front view looking along +Y (a character faces -Y); its cameras look down
their local -Z with +Y up, and a pixel's centre sits at half-integer raster coordinates.

Everything that crosses from one world to the other goes through :func:`smpl_to_blender` (points
and directions) or :data:`SMPL_TO_BLENDER` (4x4 transforms); :func:`blender_camera` turns an
OpenCV camera into Blender camera settings. Pure numpy: the tests check it without Blender.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BLENDER_TO_SMPL",
    "SENSOR_WIDTH_MM",
    "SMPL_TO_BLENDER",
    "BlenderCamera",
    "blender_camera",
    "blender_to_smpl",
    "project_blender",
    "smpl_to_blender",
]

# A +90 degree turn about X: SMPL (x, y, z) -> Blender (x, -z, y). Y up becomes Z up and the
# body's front (+Z) becomes Blender's -Y, so Blender's front view sees the person's face.
SMPL_TO_BLENDER = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
BLENDER_TO_SMPL = SMPL_TO_BLENDER.T.copy()

# OpenCV camera axes (x right, y down, z forward) -> Blender camera axes (x right, y up, -z forward).
_CV_TO_BLENDER_CAM = np.diag([1.0, -1.0, -1.0, 1.0])

# Any sensor width gives the same image; 36 mm (Blender's default) keeps lens values familiar.
SENSOR_WIDTH_MM = 36.0


def smpl_to_blender(points: np.ndarray) -> np.ndarray:
    """Points or directions (..., 3) in SMPL's world -> Blender's world (the only conversion)."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"smpl_to_blender: expected (..., 3) points, got shape {p.shape}")
    return p @ SMPL_TO_BLENDER[:3, :3].T


def blender_to_smpl(points: np.ndarray) -> np.ndarray:
    """Inverse of :func:`smpl_to_blender`."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"blender_to_smpl: expected (..., 3) points, got shape {p.shape}")
    return p @ BLENDER_TO_SMPL[:3, :3].T


@dataclass(frozen=True)
class BlenderCamera:
    """Blender camera settings equal to one OpenCV camera.

    ``matrix_world`` (4, 4) is the camera object's transform in Blender's world; ``lens`` (mm)
    with ``sensor_width`` (mm) and ``sensor_fit = 'HORIZONTAL'``; ``shift_x``/``shift_y`` in
    fractions of the image width (Blender's unit for a horizontal sensor fit); the render size
    is ``width`` x ``height`` at 100 %, square pixels.
    """

    matrix_world: np.ndarray
    lens: float
    sensor_width: float
    shift_x: float
    shift_y: float
    width: int
    height: int
    clip_start: float
    clip_end: float


def blender_camera(
    K: np.ndarray, world_to_cam: np.ndarray, width: int, height: int, clip_start: float = 0.05, clip_end: float = 100.0
) -> BlenderCamera:
    """Blender camera settings that reproduce the OpenCV camera ``K``, ``world_to_cam`` exactly.

    Focal length: Blender's horizontal focal in pixels is ``lens / sensor_width * width``.
    Principal point: Blender's optical axis meets the image at raster ``width/2 - shift_x*width``
    (x from the left) and ``height/2 + shift_y*width`` (y from the top); OpenCV's ``cx`` is a
    pixel-centre coordinate, i.e. raster ``cx + 0.5``. Only square pixels without skew map onto a
    Blender camera; anything else raises ``ValueError``.
    """
    K = np.asarray(K, dtype=np.float64)
    w2c = np.asarray(world_to_cam, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f"K: expected a finite (3, 3) matrix, got shape {K.shape}")
    if w2c.shape != (4, 4) or not np.isfinite(w2c).all():
        raise ValueError(f"world_to_cam: expected a finite (4, 4) matrix, got shape {w2c.shape}")
    fx, fy, skew = K[0, 0], K[1, 1], K[0, 1]
    if fx <= 0 or abs(fx - fy) > 1e-6 * fx or abs(skew) > 1e-9 * fx or K[1, 0] != 0 or not np.allclose(K[2], [0, 0, 1]):
        raise ValueError(f"K: a Blender camera needs square pixels without skew (fx == fy > 0, K[0,1] == 0), got {K.tolist()}")
    rot = w2c[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-5) or np.linalg.det(rot) <= 0:
        raise ValueError("world_to_cam: the rotation part is not a proper rotation")
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    cam_to_world = np.linalg.inv(w2c)
    matrix_world = SMPL_TO_BLENDER @ cam_to_world @ _CV_TO_BLENDER_CAM
    return BlenderCamera(
        matrix_world=matrix_world,
        lens=float(fx * SENSOR_WIDTH_MM / width),
        sensor_width=SENSOR_WIDTH_MM,
        shift_x=float((width / 2.0 - (K[0, 2] + 0.5)) / width),
        shift_y=float(((K[1, 2] + 0.5) - height / 2.0) / width),
        width=int(width),
        height=int(height),
        clip_start=float(clip_start),
        clip_end=float(clip_end),
    )


def project_blender(cam: BlenderCamera, points_blender: np.ndarray) -> np.ndarray:
    """Project Blender-world points with Blender's camera model -> OpenCV pixel coordinates (N, 2).

    Written from Blender's definitions (camera looks down -Z, lens/sensor width, shift in
    image widths, raster pixel centres at half-integers), independently of :func:`blender_camera`,
    so a test can check the round trip.
    """
    p = np.asarray(points_blender, dtype=np.float64)
    world_to_bcam = np.linalg.inv(cam.matrix_world)
    q = p @ world_to_bcam[:3, :3].T + world_to_bcam[:3, 3]
    f_px = cam.lens / cam.sensor_width * cam.width
    depth = -q[:, 2]
    x_raster = cam.width / 2.0 - cam.shift_x * cam.width + f_px * q[:, 0] / depth
    y_raster_top = cam.height / 2.0 + cam.shift_y * cam.width - f_px * q[:, 1] / depth
    return np.stack([x_raster - 0.5, y_raster_top - 0.5], axis=-1)
