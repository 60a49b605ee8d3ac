"""SMPL skeleton kinematics in numpy: local <-> world rotations and joint forward kinematics.

SMPL's joint frames are all aligned with the world in the rest pose, so a joint's local
rotation is expressed in its parent's frame and its world rotation is the product down the
kinematic tree. Posed joints are the rest joints carried by those rotations (the same joints
SMPL's LBS returns), which lets the motion library and BVH import work on joints alone.

Products go through :mod:`btdm_engine.fixed_order`, not ``@`` (BLAS, whose kernel depends on the
CPU): the motion library's poses and root translation are stored data and must have the same bits
wherever they are computed.
"""

from __future__ import annotations

import numpy as np

from btdm_engine import fixed_order as fx
from btdm_engine.body.skeleton import NUM_JOINTS, PARENTS
from btdm_engine.motion.rotations import axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["forward_kinematics", "local_rotations", "world_rotations"]


def world_rotations(poses: np.ndarray) -> np.ndarray:
    """SMPL axis-angle poses (T, 24, 3) -> world rotation of every joint (T, 24, 3, 3)."""
    local = axis_angle_to_matrix(poses)
    world = np.empty_like(local)
    for j in range(NUM_JOINTS):
        p = PARENTS[j]
        world[:, j] = local[:, j] if p < 0 else fx.matmul(world[:, p], local[:, j])
    return world


def local_rotations(world: np.ndarray) -> np.ndarray:
    """World joint rotations (T, 24, 3, 3) -> SMPL axis-angle poses (T, 24, 3)."""
    local = np.empty_like(world)
    for j in range(NUM_JOINTS):
        p = PARENTS[j]
        local[:, j] = world[:, j] if p < 0 else fx.matmul(np.swapaxes(world[:, p], -1, -2), world[:, j])
    return matrix_to_axis_angle(local)


def forward_kinematics(
    poses: np.ndarray, rest: np.ndarray, trans: np.ndarray | None = None
) -> np.ndarray:
    """Posed joint positions (T, 24, 3) from poses (T, 24, 3), rest joints (24, 3), trans (T, 3).

    Joint 0 rotates about its rest position and is then translated by ``trans``, as in SMPL.
    """
    poses = np.asarray(poses, dtype=np.float64)
    rest = np.asarray(rest, dtype=np.float64)
    world = world_rotations(poses)
    joints = np.empty(poses.shape[:-2] + (NUM_JOINTS, 3))
    joints[:, 0] = rest[0]
    for j in range(1, NUM_JOINTS):
        p = PARENTS[j]
        joints[:, j] = joints[:, p] + fx.matvec(world[:, p], rest[j] - rest[p])
    if trans is not None:
        joints += np.asarray(trans, dtype=np.float64)[:, None, :]
    return joints

