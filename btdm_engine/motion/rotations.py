"""Rotation conversions used by motion clips, the motion library and BVH import.

All functions are vectorised over leading dimensions and work on float64 numpy arrays (float32 in
is accepted). Quaternions are scalar-last ``(x, y, z, w)``, as in ``scipy.spatial.transform``.
Axis-angle vectors are SMPL's: direction = axis, norm = angle in radians.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from btdm_engine.errors import UsageError

__all__ = [
    "align_vectors",
    "axis_angle_to_matrix",
    "axis_angle_to_quat",
    "euler_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_euler",
    "matrix_to_quat",
    "quat_to_axis_angle",
    "quat_to_matrix",
    "rotation_angle",
    "rotation_x",
    "rotation_y",
    "rotation_z",
]

_EULER_ORDERS = ("XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX")


def _flat(x: np.ndarray, tail: tuple[int, ...], what: str) -> tuple[np.ndarray, tuple[int, ...]]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape[arr.ndim - len(tail):] != tail:
        raise ValueError(f"{what} must have trailing shape {tail}, got {arr.shape}")
    lead = arr.shape[: arr.ndim - len(tail)]
    return arr.reshape((-1, *tail)), lead


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrices."""
    flat, lead = _flat(aa, (3,), "axis-angle")
    return Rotation.from_rotvec(flat).as_matrix().reshape((*lead, 3, 3))


def matrix_to_axis_angle(mat: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle with angle in [0, pi]."""
    flat, lead = _flat(mat, (3, 3), "rotation matrix")
    return Rotation.from_matrix(flat).as_rotvec().reshape((*lead, 3))


def axis_angle_to_quat(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 4) unit quaternions (x, y, z, w)."""
    flat, lead = _flat(aa, (3,), "axis-angle")
    return Rotation.from_rotvec(flat).as_quat().reshape((*lead, 4))


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (x, y, z, w), normalised here -> (..., 3) axis-angle."""
    flat, lead = _flat(quat, (4,), "quaternion")
    return Rotation.from_quat(flat).as_rotvec().reshape((*lead, 3))


def matrix_to_quat(mat: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (x, y, z, w)."""
    flat, lead = _flat(mat, (3, 3), "rotation matrix")
    return Rotation.from_matrix(flat).as_quat().reshape((*lead, 4))


def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (x, y, z, w), normalised here -> (..., 3, 3) matrices."""
    flat, lead = _flat(quat, (4,), "quaternion")
    return Rotation.from_quat(flat).as_matrix().reshape((*lead, 3, 3))


def euler_to_matrix(angles: np.ndarray, order: str) -> np.ndarray:
    """(..., 3) angles in radians -> (..., 3, 3), intrinsic rotations in ``order``.

    ``order="ZXY"`` gives ``Rz(a0) @ Rx(a1) @ Ry(a2)``: the axis named first is the outermost
    factor. This is how BVH channel lists such as ``Zrotation Xrotation Yrotation`` compose.
    """
    if order not in _EULER_ORDERS:
        raise UsageError(f"unknown Euler order {order!r}; allowed: {', '.join(_EULER_ORDERS)}")
    flat, lead = _flat(angles, (3,), "Euler angles")
    return Rotation.from_euler(order, flat).as_matrix().reshape((*lead, 3, 3))


def matrix_to_euler(mat: np.ndarray, order: str) -> np.ndarray:
    """Inverse of :func:`euler_to_matrix` (angles in radians, same intrinsic ``order``)."""
    if order not in _EULER_ORDERS:
        raise UsageError(f"unknown Euler order {order!r}; allowed: {', '.join(_EULER_ORDERS)}")
    flat, lead = _flat(mat, (3, 3), "rotation matrix")
    return Rotation.from_matrix(flat).as_euler(order).reshape((*lead, 3))


def _axis_rotation(angle: np.ndarray, axis: int) -> np.ndarray:
    angle = np.asarray(angle, dtype=np.float64)
    vec = np.zeros((*angle.shape, 3))
    vec[..., axis] = angle
    return axis_angle_to_matrix(vec)


def rotation_x(angle: np.ndarray | float) -> np.ndarray:
    """Rotation(s) about +X by ``angle`` radians, shape ``(*angle.shape, 3, 3)``."""
    return _axis_rotation(angle, 0)


def rotation_y(angle: np.ndarray | float) -> np.ndarray:
    """Rotation(s) about +Y by ``angle`` radians, shape ``(*angle.shape, 3, 3)``."""
    return _axis_rotation(angle, 1)


def rotation_z(angle: np.ndarray | float) -> np.ndarray:
    """Rotation(s) about +Z by ``angle`` radians, shape ``(*angle.shape, 3, 3)``."""
    return _axis_rotation(angle, 2)


def rotation_angle(mat: np.ndarray) -> np.ndarray:
    """Angle in radians, in [0, pi], of each rotation matrix (..., 3, 3) -> (...)."""
    mat = np.asarray(mat, dtype=np.float64)
    cos = (np.trace(mat, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))


def align_vectors(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Rotation matrix R (3, 3) that best maps direction(s) ``src`` (N, 3) onto ``dst`` (N, 3).

    One pair gives the minimal (swing-only) rotation; several pairs give the least-squares
    (Wahba / Kabsch) solution. Vectors are normalised first, so only directions matter.
    """
    src = np.atleast_2d(np.asarray(src, dtype=np.float64))
    dst = np.atleast_2d(np.asarray(dst, dtype=np.float64))
    if src.shape != dst.shape or src.shape[-1] != 3:
        raise ValueError(f"align_vectors needs two (N, 3) arrays, got {src.shape} and {dst.shape}")
    src = src / np.linalg.norm(src, axis=-1, keepdims=True)
    dst = dst / np.linalg.norm(dst, axis=-1, keepdims=True)
    if len(src) == 1:
        return _minimal_rotation(src[0], dst[0])
    rot, _ = Rotation.align_vectors(dst, src, weights=weights)
    return rot.as_matrix()


def _minimal_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The shortest-arc rotation taking unit vector ``a`` to unit vector ``b``."""
    axis = np.cross(a, b)
    sin = np.linalg.norm(axis)
    cos = float(np.clip(np.dot(a, b), -1.0, 1.0))
    if sin < 1e-12:
        if cos > 0:
            return np.eye(3)
        # Opposite vectors: any axis perpendicular to a gives a half turn.
        perp = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(perp) < 1e-6:
            perp = np.cross(a, [0.0, 1.0, 0.0])
        return axis_angle_to_matrix(perp / np.linalg.norm(perp) * np.pi)
    return axis_angle_to_matrix(axis / sin * np.arctan2(sin, cos))
