"""Left-right symmetric iso-surface meshing of a signed-distance function.

Naive surface nets (one vertex per grid cell that the surface crosses, one quad per crossed grid
edge) give a closed surface with the triangle/vertex ratio of SMPL (F ~ 2V). The grid places no
sample on the plane x = 0, so no quad is its own mirror image; grid values are mirrored exactly and
vertex positions are symmetrised after every step, which makes the mesh exactly symmetric and gives
every vertex a mirror twin. Vertices are then relaxed tangentially and projected onto the exact
zero level set with Newton steps along the SDF gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from btdm_engine.errors import BtdmError

SDF = Callable[[np.ndarray], np.ndarray]


class MeshingError(BtdmError, ValueError):
    """The iso-surface is not a single closed manifold at the requested resolution."""


@dataclass(frozen=True)
class SymmetricMesh:
    """Vertices (V,3) float64, faces (F,3) int64 (counter-clockwise seen from outside), and
    ``mirror`` (V,) int64: the index of each vertex's twin under x -> -x."""

    vertices: np.ndarray
    faces: np.ndarray
    mirror: np.ndarray


def _grid_axis(lo: float, hi: float, h: float) -> np.ndarray:
    n = int(np.ceil((hi - lo) / h)) + 1
    return lo + h * np.arange(n)


def _symmetrise(p: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Average each point with its twin's reflection; exact in floating point (see module doc)."""
    q = p[mirror].copy()
    q[:, 0] = -q[:, 0]
    return (p + q) * 0.5


def sdf_gradient(sdf: SDF, p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Central-difference gradient of ``sdf`` at points (N,3)."""
    offsets = np.eye(3) * eps
    stacked = np.concatenate([p + o for o in offsets] + [p - o for o in offsets], axis=0)
    vals = sdf(stacked).reshape(6, len(p))
    return (vals[:3] - vals[3:]).T / (2.0 * eps)


def project_to_surface(sdf: SDF, p: np.ndarray, steps: int = 3) -> np.ndarray:
    """Newton steps p <- p - f(p) grad f / |grad f|^2 onto the zero level set."""
    for _ in range(steps):
        f = sdf(p)
        g = sdf_gradient(sdf, p)
        g2 = np.maximum(np.einsum("ij,ij->i", g, g), 1e-12)
        p = p - (f / g2)[:, None] * g
    return p


def vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for c in range(3):
        np.add.at(n, f[:, c], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def vertex_adjacency(num_vertices: int, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges (E,2) and vertex degrees (V,)."""
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], axis=0)
    e = np.unique(np.sort(e, axis=1), axis=0)
    deg = np.bincount(e.ravel(), minlength=num_vertices)
    return e, deg


def _surface_nets(vals: np.ndarray, axes: tuple[np.ndarray, np.ndarray, np.ndarray]):
    """Quads of the surface net of grid values ``vals`` (negative inside)."""
    nx, ny, nz = vals.shape
    h = np.array([a[1] - a[0] for a in axes])
    origin = np.array([a[0] for a in axes])
    inside = vals < 0.0
    if inside[[0, -1]].any() or inside[:, [0, -1]].any() or inside[:, :, [0, -1]].any():
        raise MeshingError("the body touches the meshing grid's border")
    cell_sum = np.zeros((nx - 1, ny - 1, nz - 1, 3))
    cell_cnt = np.zeros((nx - 1, ny - 1, nz - 1))
    quads = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        v0, v1 = vals[tuple(lo)], vals[tuple(hi)]
        crossing = inside[tuple(lo)] != inside[tuple(hi)]
        idx = np.argwhere(crossing)  # grid index of the edge's lower end
        t = v0[crossing] / (v0[crossing] - v1[crossing])
        point = origin + idx * h
        point[:, axis] += t * h[axis]
        # The four cells around the edge, ordered counter-clockwise about +axis.
        a1, a2 = (axis + 1) % 3, (axis + 2) % 3
        ring = []
        for d1, d2 in ((-1, -1), (0, -1), (0, 0), (-1, 0)):
            c = idx.copy()
            c[:, a1] += d1
            c[:, a2] += d2
            ring.append(c)
        for c in ring:
            np.add.at(cell_sum, (c[:, 0], c[:, 1], c[:, 2]), point)
            np.add.at(cell_cnt, (c[:, 0], c[:, 1], c[:, 2]), 1.0)
        ring = np.stack(ring, axis=1)  # (E, 4, 3)
        # Outward normal is +axis when the lower end is inside; otherwise reverse the winding.
        flip = ~inside[tuple(lo)][crossing]
        ring[flip] = ring[flip][:, ::-1]
        quads.append(ring)
    return np.concatenate(quads, axis=0), cell_sum, cell_cnt


def mesh_symmetric_sdf(
    sdf: SDF,
    bounds: tuple[tuple[float, float], tuple[float, float], tuple[float, float]],
    spacing: float,
    relax_iterations: int = 10,
) -> SymmetricMesh:
    """Mesh the zero level set of ``sdf`` (symmetric under x -> -x) inside ``bounds``.

    ``bounds`` gives (lo, hi) per axis; the x range is made symmetric. Raises MeshingError when
    the result is not one closed manifold.
    """
    half_x = max(abs(bounds[0][0]), abs(bounds[0][1]))
    n_half = int(np.ceil(half_x / spacing))
    xs = (np.arange(2 * n_half) - (2 * n_half - 1) / 2.0) * spacing  # no sample on x = 0
    ys = _grid_axis(bounds[1][0], bounds[1][1], spacing)
    zs = _grid_axis(bounds[2][0], bounds[2][1], spacing)
    nx = len(xs)
    gx, gy, gz = np.meshgrid(xs[n_half:], ys, zs, indexing="ij")
    half_vals = sdf(np.stack([gx, gy, gz], axis=-1).reshape(-1, 3)).reshape(gx.shape)
    vals = np.concatenate([half_vals[::-1], half_vals], axis=0)

    quads, cell_sum, cell_cnt = _surface_nets(vals, (xs, ys, zs))
    cells = np.argwhere(cell_cnt > 0)  # deterministic (lexicographic) vertex order
    vid = -np.ones(cell_cnt.shape, dtype=np.int64)
    vid[cells[:, 0], cells[:, 1], cells[:, 2]] = np.arange(len(cells))
    verts = cell_sum[cells[:, 0], cells[:, 1], cells[:, 2]] / cell_cnt[
        cells[:, 0], cells[:, 1], cells[:, 2], None
    ]
    mirror = vid[(nx - 2) - cells[:, 0], cells[:, 1], cells[:, 2]]
    if (mirror < 0).any():
        raise MeshingError("grid values are not mirror symmetric")
    verts = _symmetrise(verts, mirror)
    q = vid[quads[..., 0], quads[..., 1], quads[..., 2]]  # (Q, 4) vertex ids

    faces = _split_quads(verts, q, mirror)
    _check_manifold(len(verts), faces)

    e, deg = vertex_adjacency(len(verts), faces)
    for _ in range(relax_iterations):
        nb_sum = np.zeros_like(verts)
        np.add.at(nb_sum, e[:, 0], verts[e[:, 1]])
        np.add.at(nb_sum, e[:, 1], verts[e[:, 0]])
        lap = nb_sum / deg[:, None] - verts
        n = vertex_normals(verts, faces)
        lap -= np.einsum("ij,ij->i", lap, n)[:, None] * n
        # One Newton step per relaxation keeps vertices near the surface; the final steps land them.
        verts = _symmetrise(project_to_surface(sdf, verts + 0.6 * lap, steps=1), mirror)
    verts = _symmetrise(project_to_surface(sdf, verts, steps=3), mirror)
    return SymmetricMesh(vertices=verts, faces=faces, mirror=mirror)


def _split_quads(v: np.ndarray, q: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Split each quad along its shorter diagonal; ties go by a mirror-invariant key."""
    d_ac = np.sum((v[q[:, 0]] - v[q[:, 2]]) ** 2, axis=1)
    d_bd = np.sum((v[q[:, 1]] - v[q[:, 3]]) ** 2, axis=1)
    key = np.minimum(np.arange(len(v)), mirror)
    tie_ac = np.minimum(key[q[:, 0]], key[q[:, 2]]) < np.minimum(key[q[:, 1]], key[q[:, 3]])
    use_ac = (d_ac < d_bd) | ((d_ac == d_bd) & tie_ac)
    t_ac = np.concatenate([q[:, [0, 1, 2]], q[:, [0, 2, 3]]], axis=1).reshape(-1, 2, 3)
    t_bd = np.concatenate([q[:, [0, 1, 3]], q[:, [1, 2, 3]]], axis=1).reshape(-1, 2, 3)
    return np.where(use_ac[:, None, None], t_ac, t_bd).reshape(-1, 3).astype(np.int64)


def _check_manifold(num_vertices: int, faces: np.ndarray) -> None:
    """Every edge in exactly two faces with opposite directions, one component, one vertex fan."""
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], axis=0)
    uniq, counts = np.unique(directed, axis=0, return_counts=True)
    if (counts != 1).any():
        raise MeshingError(f"{int((counts != 1).sum())} directed edges appear more than once")
    code = uniq[:, 0] * num_vertices + uniq[:, 1]
    missing = int((~np.isin(uniq[:, 1] * num_vertices + uniq[:, 0], code)).sum())
    if missing:
        raise MeshingError(f"{missing} edges have no opposite half-edge (surface not closed)")
    degenerate = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    if degenerate.any():
        raise MeshingError(f"{int(degenerate.sum())} degenerate faces")
    # Euler characteristic of one closed genus-0 surface: V - E + F = 2.
    n_edges = len(uniq) // 2
    adj = sp.coo_matrix(
        (np.ones(len(uniq)), (uniq[:, 0], uniq[:, 1])), shape=(num_vertices, num_vertices)
    )
    n_comp, _ = connected_components(adj, directed=False)
    if n_comp != 1:
        raise MeshingError(f"surface has {n_comp} connected components, expected 1")
    euler = num_vertices - n_edges + len(faces)
    if euler != 2:
        raise MeshingError(f"Euler characteristic {euler} (expected 2: non-manifold vertices or handles)")
