"""Garment meshes fitted around a body in its rest (T) pose: skirts and dresses, tops, legwear.

Every garment is a quad mesh made of rings. A ring is a cross-section of the body (the body
vertices in a thin slab) wrapped by its convex hull and pushed out by the garment's ease: cloth
bridges concavities the way a hull does, and a hull plus ease is outside the body, so the
simulation starts without intersections. Rings are sampled at shared angles, so consecutive rings
join into quads; junctions are built from the same rings:

* skirt / dress: one tube from the waist (skirt) or the chest (dress) down, flaring below the hips.
* trousers / shorts: a hip tube that splits at the crotch into two leg tubes; the crotch seam is a
  row of vertices shared by both legs, so the mesh stays one manifold piece.
* shirt / jacket: a horizontal tube from cuff to cuff over the shoulders, with a neck hole on top
  and a hole underneath where the torso tube hangs down to the hem; a jacket is open at the front.

Vertices carry pin weights (waistbands and shoulders hold the garment on the body) and skinning
weights copied from the nearest body vertices (for the pinned band and the simulation's start).
Pure numpy/scipy; the Blender layer only copies these arrays.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, cKDTree

from btdm_engine.body.skeleton import JOINT_NAMES, NUM_BETAS
from btdm_engine.errors import BtdmError
from synthetic_data.spec import GARMENT_FAMILIES, GarmentSpec

__all__ = ["BodyRest", "GarmentError", "GarmentMesh", "build_garment", "inside_body"]

J = {name: i for i, name in enumerate(JOINT_NAMES)}
_ARM_JOINTS = {side: [J[f"{side}_{n}"] for n in ("shoulder", "elbow", "wrist", "hand")] for side in ("left", "right")}


# Weak goal weights that keep close-fitting cloth near its skinned position (tight garments move
# with the body; a coarse cloth mesh would otherwise let limbs slip through between vertices).
SOFT_PIN: dict[str, float] = {"skirt": 0.0, "legwear": 0.2, "sleeve": 0.12, "top": 0.04}


class GarmentError(BtdmError, ValueError):
    """A garment cannot be built around this body with these parameters (the message says why)."""


@dataclass(frozen=True)
class BodyRest:
    """The body a garment is fitted to: rest-pose (T-pose) vertices for one shape, in SMPL's world.

    ``vertices`` (V,3), ``faces`` (F,3), ``joints`` (24,3), ``weights`` (V,24), ``normals`` (V,3).
    """

    vertices: np.ndarray
    faces: np.ndarray
    joints: np.ndarray
    weights: np.ndarray
    normals: np.ndarray

    @classmethod
    def from_body_model(cls, body: object, betas: np.ndarray) -> BodyRest:
        """Shape the body model's template with ``betas`` (SMPL's shape blend, no pose)."""
        betas = np.asarray(betas, dtype=np.float64)
        if betas.shape != (NUM_BETAS,):
            raise ValueError(f"betas: expected shape ({NUM_BETAS},), got {betas.shape}")
        shapedirs = np.asarray(body.shapedirs, dtype=np.float64)[:, :, :NUM_BETAS]
        v = np.asarray(body.v_template, dtype=np.float64) + np.einsum("vck,k->vc", shapedirs, betas)
        joints = np.asarray(body.J_regressor, dtype=np.float64) @ v
        faces = np.asarray(body.faces, dtype=np.int64)
        return cls(v, faces, joints, np.asarray(body.weights, dtype=np.float64), _vertex_normals(v, faces))

    def landmarks(self) -> dict[str, float]:
        """Heights and widths (metres) that garments are cut to."""
        v, j = self.vertices, self.joints
        near_mid = np.abs(v[:, 0]) < 0.02
        below_pelvis = v[:, 1] < j[J["pelvis"], 1]
        below = near_mid & below_pelvis
        crotch = float(v[below, 1].min()) if np.any(below) else float(j[J["left_hip"], 1] - 0.07)
        arm = np.isin(self.weights.argmax(1), _ARM_JOINTS["left"])
        shoulder_x = j[J["left_shoulder"], 0]
        upper_arm = arm & (v[:, 0] > shoulder_x) & (v[:, 0] < 0.5 * (shoulder_x + j[J["left_elbow"], 0]))
        arm_bottom = float(v[upper_arm, 1].min())
        torso_slab = np.abs(v[:, 1] - (arm_bottom - 0.04)) < 0.02
        torso_half_width = float(np.abs(v[torso_slab, 0]).max())
        neck = np.isin(self.weights.argmax(1), [J["neck"], J["head"]])
        neck_slab = neck & (np.abs(v[:, 1] - j[J["neck"], 1]) < 0.03)
        neck_radius = float(np.abs(v[neck_slab, 0]).max()) if np.any(neck_slab) else 0.06
        return {
            "crotch": crotch,
            "waist": float(0.5 * (j[J["pelvis"], 1] + j[J["spine1"], 1])),
            "hip": float(j[J["left_hip"], 1]),
            "armpit": arm_bottom - 0.025,
            "shoulder": float(j[J["left_shoulder"], 1]),
            "shoulder_x": float(shoulder_x),
            "elbow_x": float(j[J["left_elbow"], 0]),
            "wrist_x": float(j[J["left_wrist"], 0]),
            "torso_half_width": torso_half_width,
            "neck": float(j[J["neck"], 1]),
            "neck_radius": neck_radius,
            "knee": float(j[J["left_knee"], 1]),
            "ankle": float(j[J["left_ankle"], 1]),
            "sole": float(v[:, 1].min()),
        }


@dataclass(frozen=True)
class GarmentMesh:
    """A garment in the body's rest pose (SMPL world, metres).

    ``vertices`` (N,3); ``faces`` (F,4) quads; ``pin`` (N,) in [0,1] (1 = held by the body);
    ``skin_weights`` (N,24) rows summing to 1; ``logo_anchor`` (3,) the point a logo is centred on
    (its print is projected along +Z onto the garment's front); ``front_z`` the depth that
    separates front from back for that projection.
    """

    kind: str
    vertices: np.ndarray
    faces: np.ndarray
    pin: np.ndarray
    skin_weights: np.ndarray
    logo_anchor: np.ndarray
    front_z: float

    def edges(self) -> np.ndarray:
        """Unique undirected edges (E,2)."""
        f = self.faces
        e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 3]], f[:, [3, 0]]])
        return np.unique(np.sort(e, axis=1), axis=0)


# ------------------------------------------------------------------------------ geometry helpers
def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for c in range(3):
        np.add.at(n, f[:, c], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def _ray_polygon(centre: np.ndarray, dirs: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance along each unit direction (n,2) from ``centre`` to the convex polygon's boundary."""
    a = poly
    b = np.roll(poly, -1, axis=0)
    e = b - a  # (m,2)
    # Solve centre + t d = a + s e for every (direction, edge) pair.
    ac = a[None] - centre[None, None]  # (1,m,2)
    d = dirs[:, None, :]  # (n,1,2)
    den = d[..., 0] * e[None, :, 1] - d[..., 1] * e[None, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ac[..., 0] * e[None, :, 1] - ac[..., 1] * e[None, :, 0]) / den
        s = (ac[..., 0] * d[..., 1] - ac[..., 1] * d[..., 0]) / den
    ok = (np.abs(den) > 1e-12) & (s >= -1e-9) & (s <= 1 + 1e-9) & (t > 0)
    t = np.where(ok, t, -np.inf).max(axis=1)
    if not np.all(np.isfinite(t)):
        raise GarmentError("a garment ring's centre lies outside its body cross-section")
    return t


def _hull(points2d: np.ndarray) -> np.ndarray:
    if len(points2d) < 3:
        raise GarmentError(f"a body cross-section has only {len(points2d)} vertices; the slab is too thin")
    return points2d[ConvexHull(points2d).vertices]


def _ring(points2d: np.ndarray, centre: np.ndarray, dirs: np.ndarray, offset: np.ndarray | float) -> np.ndarray:
    """Points where rays from ``centre`` leave the hull of ``points2d``, pushed out by ``offset``."""
    t = _ray_polygon(centre, dirs, _hull(points2d))
    return centre + dirs * (t + offset)[..., None] if np.ndim(offset) else centre + dirs * (t + offset)[:, None]


def _slab(v: np.ndarray, axis: int, value: float, half: float, mask: np.ndarray | None = None) -> np.ndarray:
    sel = np.abs(v[:, axis] - value) < half
    if mask is not None:
        sel &= mask
    return v[sel]


def _even(n: float, minimum: int = 8) -> int:
    n = max(int(np.ceil(n)), minimum)
    return n + (n % 2)


def _quads_between(a: np.ndarray, b: np.ndarray, cyclic: bool = True) -> np.ndarray:
    """Quads joining two vertex rows of equal length (a[k], a[k+1], b[k+1], b[k])."""
    k = np.arange(len(a) if cyclic else len(a) - 1)
    k1 = (k + 1) % len(a)
    return np.stack([a[k], a[k1], b[k1], b[k]], axis=1)


def _angles_xz(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Angle of points about a vertical axis through ``centre``: 0 at +Z (front), pi/2 at +X."""
    return np.arctan2(points[:, 0] - centre[0], points[:, 2] - centre[2])


def _dirs_xz(theta: np.ndarray) -> np.ndarray:
    """Unit directions in (z, x) order for angles about the vertical axis (see _angles_xz)."""
    return np.stack([np.cos(theta), np.sin(theta)], axis=-1)


class _Builder:
    """Accumulates vertices and quads."""

    def __init__(self) -> None:
        self.verts: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.count = 0

    def add(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        ids = np.arange(self.count, self.count + len(points))
        self.verts.append(points)
        self.count += len(points)
        return ids

    def quads(self, q: np.ndarray) -> None:
        self.faces.append(np.asarray(q, dtype=np.int64).reshape(-1, 4))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        faces = np.concatenate(self.faces) if self.faces else np.zeros((0, 4), dtype=np.int64)
        return np.concatenate(self.verts), faces


def _vertical_ring(body: BodyRest, y: float, theta: np.ndarray, centre_xz: np.ndarray, offset: float | np.ndarray,
                   half: float, mask: np.ndarray | None = None) -> np.ndarray:
    """A ring at height ``y`` around the body points of the slab (optionally masked)."""
    pts = _slab(body.vertices, 1, y, half, mask)
    pts2 = pts[:, [2, 0]]  # (z, x)
    ring2 = _ring(pts2, centre_xz[[1, 0]], _dirs_xz(theta), offset)
    return np.stack([ring2[:, 1], np.full(len(theta), y), ring2[:, 0]], axis=1)


# ------------------------------------------------------------------------------ families
def _skirt(body: BodyRest, g: GarmentSpec, spacing: float, lm: dict[str, float]) -> tuple[_Builder, np.ndarray, np.ndarray]:
    p = g.params
    half = max(0.6 * spacing, 0.02)
    top = lm["waist"] if g.kind == "skirt" else lm["armpit"] - 0.03
    bottom = top - p["length"]
    if bottom < lm["sole"] + 0.15:
        raise GarmentError(f"{g.kind}: length {p['length']} m reaches below the calves of this body")
    centre = np.array([0.0, 0.0, float(np.median(_slab(body.vertices, 1, lm["hip"], half)[:, 2]))])
    top_pts = _slab(body.vertices, 1, top, half)
    girth = 2 * np.pi * (0.5 * np.ptp(top_pts[:, 0]) + p["ease"])
    n = _even(girth / spacing * 1.5)  # the hem flares: more columns than the waist needs
    theta = 2 * np.pi * np.arange(n) / n
    rows = max(int(np.ceil((top - bottom) / spacing)), 2)
    ys = np.linspace(top, bottom, rows + 1)
    b = _Builder()
    ids = []
    for y in ys:
        flare = p["flare"] * max(0.0, lm["hip"] - y)
        ids.append(b.add(_vertical_ring(body, y, theta, centre, p["ease"] + flare, half)))
    for a, c in itertools.pairwise(ids):
        b.quads(_quads_between(a, c))
    pin = np.zeros(b.count)
    pin[ids[0]] = 1.0
    pin[ids[1]] = 0.4
    anchor = np.array([0.0, top - 0.12, 0.0]) if g.kind == "dress" else np.array([0.09, top - 0.14, 0.0])
    return b, pin, anchor


def _legwear(body: BodyRest, g: GarmentSpec, spacing: float, lm: dict[str, float]) -> tuple[_Builder, np.ndarray, np.ndarray]:
    p = g.params
    v = body.vertices
    half = max(0.6 * spacing, 0.02)
    top = lm["waist"]
    crotch = lm["crotch"]
    centre = np.array([0.0, 0.0, float(np.median(_slab(v, 1, lm["hip"], half)[:, 2]))])
    girth = 2 * np.pi * (0.5 * np.ptp(_slab(v, 1, lm["hip"], half)[:, 0]) + p["ease"])
    m = max(int(np.ceil(girth / spacing / 2)), 5)  # columns per half
    theta = np.pi * np.arange(2 * m) / m  # 0 = front centre, m = back centre
    b = _Builder()
    # 1. Hip tube from the waist down to just above the crotch.
    last = crotch + 0.25 * spacing
    rows = max(int(np.ceil((top - last) / spacing)), 1)
    hip_rows = [b.add(_vertical_ring(body, y, theta, centre, p["ease"], half)) for y in np.linspace(top, last, rows + 1)]
    for a, c in itertools.pairwise(hip_rows):
        b.quads(_quads_between(a, c))
    ring = hip_rows[-1]
    verts, _ = b.arrays()
    front, back = verts[ring[0]], verts[ring[m]]
    # 2. The crotch seam: a U under the crotch from the front centre to the back centre.
    s = np.arange(1, m) / m
    depth = (last - crotch) + p["ease"] + 0.01
    seam_pts = front[None] * (1 - s)[:, None] + back[None] * s[:, None]
    seam_pts[:, 0] = 0.0
    seam_pts[:, 1] -= depth * np.sin(np.pi * s)
    seam = b.add(seam_pts)
    # 3. Leg rings; ring 0 of each leg is half the hip ring plus the shared seam.
    legs = {
        "left": np.concatenate([ring[: m + 1], seam[::-1]]),
        "right": np.concatenate([ring[[0]], seam, ring[m:]]),
    }
    leg_top = float(seam_pts[:, 1].min()) - 0.5 * spacing
    length = p["leg"] * (crotch - lm["sole"])
    leg_bottom = max(crotch - length, lm["ankle"] + 0.03)
    if leg_bottom >= leg_top - spacing:
        raise GarmentError(f"{g.kind}: leg {p['leg']} is too short for this body")
    rows = max(int(np.ceil((leg_top - leg_bottom) / spacing)), 1)
    ys = np.linspace(leg_top, leg_bottom, rows + 1)
    verts, _ = b.arrays()
    for side, row0 in legs.items():
        sign = 1.0 if side == "left" else -1.0
        leg_mask = sign * v[:, 0] > 0
        pts0 = verts[row0]
        slab0 = _slab(v, 1, leg_top, half, leg_mask)
        leg_centre = np.array([np.median(slab0[:, 0]), 0.0, np.median(slab0[:, 2])])
        phi = np.unwrap(_angles_xz(pts0, leg_centre))
        prev = row0
        for y in ys:
            slab = _slab(v, 1, y, half, leg_mask)
            c = np.array([np.median(slab[:, 0]), 0.0, np.median(slab[:, 2])])
            flare = p["cuff_flare"] * max(0.0, (lm["knee"] - y) / max(lm["knee"] - lm["sole"], 1e-6))
            cur = b.add(_vertical_ring(body, y, phi, c, p["ease"] + flare, half, leg_mask))
            b.quads(_quads_between(prev, cur))
            prev = cur
    # Tight legwear follows the legs softly (a weak goal spring); the waistband is held.
    pin = np.full(b.count, SOFT_PIN["legwear"])
    pin[hip_rows[0]] = 1.0
    if len(hip_rows) > 1:
        pin[hip_rows[1]] = 0.3
    anchor = np.array([0.1, top - 0.12, 0.0])
    return b, pin, anchor


def _top(body: BodyRest, g: GarmentSpec, spacing: float, lm: dict[str, float]) -> tuple[_Builder, np.ndarray, np.ndarray]:
    p = g.params
    v = body.vertices
    half = max(0.6 * spacing, 0.02)
    ease = p["ease"]
    owner = body.weights.argmax(1)
    arm_mask = np.isin(owner, _ARM_JOINTS["left"] + _ARM_JOINTS["right"])
    head_mask = np.isin(owner, [J["head"]])
    # The torso hole's rim; below the armpit so the bust's widest part is inside the chest hull.
    y_cut = lm["armpit"] - 0.04
    neck_cut = lm["neck"] - 0.02  # the collar height
    x_side = lm["torso_half_width"] + ease + 0.01
    x_end = lm["shoulder_x"] + p["sleeve"] * (lm["wrist_x"] - lm["shoulder_x"])
    x_neck = lm["neck_radius"] + ease + 0.015
    # Stations along X, symmetric, an even count so a face column straddles x = 0.
    n_half = max(int(np.ceil(x_end / spacing)), 4)
    xs = (np.arange(2 * n_half) - (n_half - 0.5)) * (x_end / (n_half - 0.5))
    # Ring columns: psi from +Y (up) towards +Z (front); directions in (y, z).
    chest = _slab(v, 1, y_cut + 0.02, half)
    z_mid = float(np.median(chest[:, 2]))
    girth = 2 * np.pi * (0.5 * (lm["shoulder"] + 0.08 - y_cut) + ease)
    ncol = _even(girth / spacing, 12)
    ncol += (ncol // 2) % 2 * 2  # a multiple of 4, so top, front, bottom and back are columns
    psi = 2 * np.pi * np.arange(ncol) / ncol
    dirs = np.stack([np.cos(psi), np.sin(psi)], axis=1)
    b = _Builder()
    rows = []
    for x in xs:
        ax = abs(x)
        if ax >= x_side:
            side = "left" if x > 0 else "right"
            mask = np.isin(owner, _ARM_JOINTS[side] + [J[f"{side}_collar"]])
            pts = _slab(v, 0, x, half, mask)
            if len(pts) < 3:
                raise GarmentError(f"{g.kind}: no arm cross-section at x = {x:.3f}")
            hull = _hull(pts[:, [1, 2]])
            centre = hull.mean(axis=0)
            ring2 = _ring(pts[:, [1, 2]], centre, dirs, ease)
        else:
            pts = _slab(v, 0, x, half, ~head_mask)
            pts = pts[(pts[:, 1] >= y_cut) & (pts[:, 1] <= neck_cut)]
            # The flat rims of the clipped section are where the holes go.
            extra = np.array([[y_cut, pts[:, 2].min()], [y_cut, pts[:, 2].max()]])
            pts2 = np.concatenate([pts[:, [1, 2]], extra])
            centre = np.array([0.5 * (y_cut + pts2[:, 0].max()), z_mid])
            ring2 = _ring(pts2, centre, dirs, ease)
        rows.append(b.add(np.stack([np.full(ncol, x), ring2[:, 0], ring2[:, 1]], axis=1)))
    verts, _ = b.arrays()
    # Holes: the torso hole (bottom columns, |x| < x_side) and the neck hole (top, |x| < x_neck).
    centre_row = verts[rows[n_half]]
    bottom_cols = np.where(centre_row[:, 1] < y_cut - ease + 0.25 * spacing)[0]
    if len(bottom_cols) < 2:
        raise GarmentError(f"{g.kind}: the torso hole is empty (spacing {spacing} m too coarse)")
    k0, k1 = int(bottom_cols.min()), int(bottom_cols.max())  # front and back rim columns
    i0 = int(np.searchsorted(xs, -x_side))
    i1 = int(np.searchsorted(xs, x_side)) - 1
    kn = max(1, int(np.ceil(ncol / 12)))
    neck_rows = np.where(np.abs(xs) < x_neck)[0]
    for i in range(len(xs) - 1):
        for k in range(ncol):
            k_next = (k + 1) % ncol
            in_torso_hole = i0 <= i < i1 and k0 <= k < k1
            in_neck_hole = (i in neck_rows and i + 1 in neck_rows) and (k < kn or k >= ncol - kn)
            if in_torso_hole or in_neck_hole:
                continue
            b.quads([[rows[i][k], rows[i + 1][k], rows[i + 1][k_next], rows[i][k_next]]])
    # The torso hole's rim, in order around the vertical axis: front rim (k0) from right to left,
    # left side (i1) front to back, back rim (k1) left to right, right side (i0) back to front.
    loop = np.concatenate([
        [rows[i][k0] for i in range(i0, i1)],
        [rows[i1][k] for k in range(k0, k1)],
        [rows[i][k1] for i in range(i1, i0, -1)],
        [rows[i0][k] for k in range(k1, k0, -1)],
    ]).astype(np.int64)
    verts, _ = b.arrays()
    torso_centre = np.array([0.0, 0.0, z_mid])
    phi = np.unwrap(_angles_xz(verts[loop], torso_centre))
    hem = lm["waist"] - p["hem"]
    top_y = float(verts[loop, 1].max())
    n_rows = max(int(np.ceil((top_y - hem) / spacing)), 2)
    prev = loop
    for y in np.linspace(top_y - (top_y - hem) / n_rows, hem, n_rows):
        slab = _slab(v, 1, y, half, ~arm_mask)
        c = np.array([0.0, 0.0, float(np.median(slab[:, 2]))])
        cur = b.add(_vertical_ring(body, y, phi, c, ease, half, ~arm_mask))
        b.quads(_quads_between(prev, cur))
        prev = cur
    verts, faces = b.arrays()
    if g.kind == "jacket":
        centroid = verts[faces].mean(axis=1)
        keep = ~((np.abs(centroid[:, 0]) < 0.5 * p["opening"]) & (centroid[:, 2] > z_mid))
        b.faces = [faces[keep]]
    pin = np.full(b.count, SOFT_PIN["top"])
    sleeve_ids = np.concatenate([r for r, x in zip(rows, xs) if abs(x) >= x_side])
    pin[sleeve_ids] = SOFT_PIN["sleeve"]
    shoulders = np.concatenate([r for r, x in zip(rows, xs) if abs(x) <= lm["shoulder_x"]])
    up = verts[shoulders, 1] > lm["shoulder"] - 0.02
    pin[shoulders[up]] = 1.0
    anchor = np.array([0.0, y_cut - 0.06, 0.0])
    return b, pin, anchor


_FAMILY_BUILDERS = {"skirt": _skirt, "legwear": _legwear, "top": _top}


def build_garment(body: BodyRest, garment: GarmentSpec, spacing: float = 0.035) -> GarmentMesh:
    """Fit ``garment`` around ``body`` with rings about ``spacing`` metres apart.

    Raises:
        GarmentError: the parameters do not fit this body (named in the message).
    """
    if not 0.005 <= spacing <= 0.2:
        raise GarmentError(f"spacing: {spacing} m is outside [0.005, 0.2]")
    lm = body.landmarks()
    b, pin, anchor = _FAMILY_BUILDERS[GARMENT_FAMILIES[garment.kind]](body, garment, spacing, lm)
    verts, faces = b.arrays()
    used = np.unique(faces)
    if len(used) != len(verts):
        # Hole cutting can orphan vertices: drop them and renumber.
        remap = -np.ones(len(verts), dtype=np.int64)
        remap[used] = np.arange(len(used))
        verts, faces, pin = verts[used], remap[faces], pin[used]
    verts = _push_out(body, verts, 0.5 * garment.params["ease"])
    weights = _transfer_weights(body, verts)
    front = verts[np.abs(verts[:, 0] - anchor[0]) < 0.1]
    anchor = anchor.copy()
    anchor[2] = float(front[:, 2].max()) if len(front) else float(verts[:, 2].max())
    front_z = float(np.median(verts[:, 2]))
    return GarmentMesh(garment.kind, verts, faces, np.clip(pin, 0.0, 1.0), weights, anchor, front_z)


def _transfer_weights(body: BodyRest, points: np.ndarray, k: int = 4) -> np.ndarray:
    """Skinning weights for points: inverse-distance blend of the k nearest body vertices."""
    dist, idx = cKDTree(body.vertices).query(points, k=k)
    w = 1.0 / np.maximum(dist, 1e-6)
    w /= w.sum(1, keepdims=True)
    out = np.einsum("nk,nkj->nj", w, body.weights[idx])
    out[out < 1e-4] = 0.0
    return out / out.sum(1, keepdims=True)


def _push_out(body: BodyRest, points: np.ndarray, clearance: float) -> np.ndarray:
    """Move points that are inside the body, or closer than ``clearance`` to it, out along the
    nearest body vertex's normal (a safety net where a ring cuts a bulge between two slabs)."""
    tree = cKDTree(body.vertices)
    out = points.copy()
    for _ in range(3):
        _, idx = tree.query(out)
        height = np.einsum("ij,ij->i", out - body.vertices[idx], body.normals[idx])
        low = height < clearance
        if not np.any(low):
            break
        out[low] += body.normals[idx[low]] * (clearance - height[low])[:, None]
    return out


def inside_body(body: BodyRest, points: np.ndarray) -> np.ndarray:
    """Which points lie inside the body: behind the surface at their nearest body vertex (N,) bool."""
    _, idx = cKDTree(body.vertices).query(points)
    return np.einsum("ij,ij->i", points - body.vertices[idx], body.normals[idx]) < 0.0
