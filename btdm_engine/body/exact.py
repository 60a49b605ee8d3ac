"""SMPL's forward pass in float64 with a fixed order of operations: the same bits on any machine.

:meth:`BodyModel.forward <btdm_engine.body.model.BodyModel.forward>` runs in float32 torch: fast,
but its matmuls go through MKL, whose kernel and split of each sum depend on the CPU and on the
number of threads. The same poses then give vertices that differ in their last bits from one
process to another (the tiny synthetic set: up to 1.2e-7 m between ``OMP_NUM_THREADS=1`` and 2),
and so did everything computed from them: the default camera, the height that puts the feet on
the floor. Rest joints from numpy's float32 ``J_regressor @ vertices`` (OpenBLAS, threaded for a
sum over every vertex) varied the same way.

This module computes what feeds values a dataset stores: rest joints, rest vertices and posed
positions of chosen vertices, in float64, every sum an explicit loop of numpy element-wise
operations (:mod:`btdm_engine.fixed_order`): the same inputs give the same bits whatever the
machine, BLAS or thread count. It is the same model as ``forward`` (same equations, same float32
inputs), agreeing with it to float32 precision; it is slower, so the camera uses it only for the
few vertices that can touch the image border (:func:`btdm_engine.motion.camera.framing_camera`).
"""

from __future__ import annotations

import weakref

import numpy as np

from btdm_engine import fixed_order as fx
from btdm_engine.body.skeleton import NUM_JOINTS, PARENTS

__all__ = ["posed_points", "rest_joints", "rest_vertices"]

_SPARSE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sparse_rows(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's non-zero columns (ascending) and values, padded with (column 0, value 0)."""
    nz = mat != 0
    width = max(1, int(nz.sum(1).max()))
    idx = np.zeros((len(mat), width), dtype=np.int64)
    val = np.zeros((len(mat), width), dtype=np.float64)
    for r in range(len(mat)):
        cols = np.flatnonzero(nz[r])
        idx[r, : len(cols)] = cols
        val[r, : len(cols)] = mat[r, cols]
    return idx, val


def _model_arrays(body) -> dict[str, np.ndarray]:
    arrays = _SPARSE.get(body)
    if arrays is None:
        j_idx, j_val = _sparse_rows(np.asarray(body.J_regressor))
        w_idx, w_val = _sparse_rows(np.asarray(body.weights))
        arrays = {"j_idx": j_idx, "j_val": j_val, "w_idx": w_idx, "w_val": w_val}
        _SPARSE[body] = arrays
    return arrays


def _betas(body, betas) -> np.ndarray:
    b = np.zeros(0) if betas is None else np.asarray(betas, dtype=np.float32).astype(np.float64)
    if b.ndim != 1 or len(b) > body.num_betas:
        raise ValueError(f"betas has shape {b.shape}, expected (K,) with K <= {body.num_betas}")
    return b


def rest_vertices(body, betas=None) -> np.ndarray:
    """Shaped rest-pose vertices (V, 3) float64: template plus shape blend shapes (SMPL eq. 8)."""
    b = _betas(body, betas)
    v = np.asarray(body.v_template, dtype=np.float64)
    for k in range(len(b)):
        v = v + b[k] * body.shapedirs[:, :, k].astype(np.float64)
    return v


def rest_joints(body, betas=None, shaped: np.ndarray | None = None) -> np.ndarray:
    """Rest joints (24, 3) float64 regressed from the shaped vertices (SMPL eq. 10)."""
    v = rest_vertices(body, betas) if shaped is None else shaped
    a = _model_arrays(body)
    joints = np.zeros((NUM_JOINTS, 3))
    for s in range(a["j_idx"].shape[1]):  # one term of every joint's sum at a time, in order
        joints = joints + a["j_val"][:, s, None] * v[a["j_idx"][:, s]]
    return joints


def _rotations(poses: np.ndarray) -> np.ndarray:
    """Rodrigues' formula as in the torch model (same Taylor limits near zero), (..., 3) -> (..., 3, 3)."""
    x, y, z = poses[..., 0], poses[..., 1], poses[..., 2]
    theta2 = x * x + y * y + z * z
    theta = np.sqrt(np.maximum(theta2, 1e-24))
    small = theta2 < 1e-12
    a = np.where(small, 1.0 - theta2 / 6.0, fx.sin(theta) / theta)
    b = np.where(small, 0.5 - theta2 / 24.0, (1.0 - fx.cos(theta)) / np.maximum(theta2, 1e-24))
    zero = np.zeros_like(x)
    k = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(*poses.shape[:-1], 3, 3)
    return np.eye(3) + a[..., None, None] * k + b[..., None, None] * fx.matmul(k, k)


def _skinning(poses: np.ndarray, joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint rotations (T, 24, 3, 3) and skinning transforms (T, 24, 3, 4) (SMPL eq. 2-4)."""
    frames = len(poses)
    rot = _rotations(poses)
    rel = joints.copy()
    rel[1:] = joints[1:] - joints[list(PARENTS[1:])]
    local = np.zeros((frames, NUM_JOINTS, 4, 4))
    local[..., :3, :3] = rot
    local[..., :3, 3] = rel
    local[..., 3, 3] = 1.0
    world = np.empty_like(local)
    world[:, 0] = local[:, 0]
    for j in range(1, NUM_JOINTS):
        world[:, j] = fx.matmul(world[:, PARENTS[j]], local[:, j])
    skin = world[..., :3, :].copy()
    skin[..., 3] = world[..., :3, 3] - fx.matvec(world[..., :3, :3], joints)
    return rot, skin


def posed_points(body, poses, betas, trans, frames, vertices, chunk: int = 8192) -> np.ndarray:
    """Posed positions (n, 3) float64 of vertex ``vertices[i]`` in frame ``frames[i]``.

    ``poses`` (T, 24, 3), ``betas`` (K,), ``trans`` (T, 3); like ``forward``, inputs are taken as
    float32 first, so both pose the same body. Bit-identical on any machine (module docstring).
    """
    poses = np.asarray(poses, dtype=np.float32).astype(np.float64)
    trans = np.asarray(trans, dtype=np.float32).astype(np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (NUM_JOINTS, 3) or trans.shape != (len(poses), 3):
        raise ValueError(f"poses {poses.shape} / trans {trans.shape}: expected (T, {NUM_JOINTS}, 3) and (T, 3)")
    frames = np.asarray(frames, dtype=np.int64).ravel()
    vertices = np.asarray(vertices, dtype=np.int64).ravel()
    if frames.shape != vertices.shape:
        raise ValueError(f"frames {frames.shape} and vertices {vertices.shape} must pair up")
    shaped = rest_vertices(body, betas)
    joints = rest_joints(body, shaped=shaped)
    used, frame_of = np.unique(frames, return_inverse=True)  # pose only the frames asked for
    rot, skin = _skinning(poses[used], joints)
    feature = (rot[:, 1:] - np.eye(3)).reshape(len(used), -1)  # (t, 207): SMPL eq. 9's R - I
    a = _model_arrays(body)
    out = np.empty((len(frames), 3))
    for start in range(0, len(frames), chunk):
        t, v, tf = frame_of[start: start + chunk], vertices[start: start + chunk], frames[start: start + chunk]
        dirs = body.posedirs[v].astype(np.float64)  # (n, 3, 207)
        feat = feature[t]
        posed = shaped[v]
        for p in range(feature.shape[1]):
            posed = posed + feat[:, p, None] * dirs[:, :, p]
        w_idx, w_val = a["w_idx"][v], a["w_val"][v]
        blend = np.zeros((len(v), 3, 4))
        for s in range(w_idx.shape[1]):
            blend = blend + w_val[:, s, None, None] * skin[t, w_idx[:, s]]
        out[start: start + len(v)] = fx.matvec(blend[:, :, :3], posed) + blend[:, :, 3] + trans[tf]
    return out
