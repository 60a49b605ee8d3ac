"""Float64 arithmetic whose bits do not depend on the machine, the BLAS library or the thread count.

Values that a dataset stores (a clip's camera, root translation and joint rotations) must come out
bit-identical wherever they are computed: a shard run as a Ray task (``OMP_NUM_THREADS=1``) and one
run by a local worker with every core must write the same ``clip.npz``. Matrix products do not
give that: ``np.matmul``, ``@`` and ``np.dot`` hand even a 3x3 product to BLAS (OpenBLAS picks its
kernel by CPU model, and splits large sums across threads), and torch's float32 matmuls do the same
through MKL. Each such sum may be added in a different order, or with fused multiply-adds, so its
last bits vary from one process to the next.

The functions here add their terms one by one, in the order the code gives, with numpy
element-wise operations: each product and each sum is one IEEE operation rounded once (numpy does
not fuse ``a * b + c``), and element-wise ufuncs neither thread nor call BLAS. Sines, cosines and
exponentials come from the C library (``math``), not from numpy's SIMD loops, which are chosen by
CPU feature (AVX-512 machines take other code paths). Same inputs, same bits.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["cos", "exp", "matmul", "matvec", "norm", "sin"]


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for (..., n, m) and (..., m, p), broadcast over leading axes, summed over m in order."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not chain")
    out = a[..., :, 0, None] * b[..., None, 0, :]
    for k in range(1, a.shape[-1]):
        out = out + a[..., :, k, None] * b[..., None, k, :]
    return out


def matvec(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``m @ v`` for (..., n, k) and (..., k), broadcast over leading axes, summed over k in order."""
    m = np.asarray(m, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if m.shape[-1] != v.shape[-1]:
        raise ValueError(f"matvec: shapes {m.shape} and {v.shape} do not chain")
    out = m[..., :, 0] * v[..., None, 0]
    for k in range(1, m.shape[-1]):
        out = out + m[..., :, k] * v[..., None, k]
    return out


def norm(v: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis (``np.linalg.norm`` of a vector is a BLAS dot product)."""
    v = np.asarray(v, dtype=np.float64)
    acc = v[..., 0] * v[..., 0]
    for k in range(1, v.shape[-1]):
        acc = acc + v[..., k] * v[..., k]
    return np.sqrt(acc)  # correctly rounded in IEEE arithmetic, SIMD or not


def _libm(fn, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    flat = np.fromiter((fn(t) for t in x.ravel().tolist()), dtype=np.float64, count=x.size)
    return flat.reshape(x.shape)


def sin(x) -> np.ndarray:
    """Element-wise sine from the C library."""
    return _libm(math.sin, x)


def cos(x) -> np.ndarray:
    """Element-wise cosine from the C library."""
    return _libm(math.cos, x)


def exp(x) -> np.ndarray:
    """Element-wise exponential from the C library."""
    return _libm(math.exp, x)
