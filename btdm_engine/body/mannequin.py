"""The procedural mannequin: an SMPL-compatible body that ships with no licence strings attached.

The surface is the zero level set of a signed-distance body (smooth unions of round cones,
ellipsoids, boxes and a lofted torso, each owned by one SMPL bone), meshed left-right symmetric
(``meshing``), then given SMPL's model-file contents: skinning weights, a joint regressor,
shape blend shapes and pose-corrective blend shapes. The result is written in SMPL's own pickle
layout so that ``smplx.SMPL`` loads it, and cached under ``$BTDM_CACHE_DIR``.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator

from btdm_engine.body import sdf as S
from btdm_engine.body.meshing import mesh_symmetric_sdf, vertex_adjacency, vertex_normals
from btdm_engine.body.skeleton import JOINT_NAMES, MIRROR, NUM_BETAS, NUM_JOINTS, NUM_POSE_BASIS, PARENTS
from btdm_engine.fileio import atomic_path

# Bump whenever the built arrays change; it is part of the cached file's name.
VERSION = 8
MESH_SPACING = 0.0175  # metres between SDF samples; sets V (~7.7k)
BOUNDS = ((-0.95, 0.95), (-1.2, 0.62), (-0.17, 0.23))  # meshing box (x, y, z ranges), metres
SOLE_Y = -1.165  # the soles' height in the rest pose, for every shape (see shape_directions)

J = {name: i for i, name in enumerate(JOINT_NAMES)}

# Rest joint positions of the left side and the centre line (x >= 0), SMPL-like proportions for a
# 1.75 m adult: pelvis near the origin as in SMPL's template, soles at y = -1.165.
_LEFT_AND_CENTRE = {
    "pelvis": (0.0, -0.225, 0.005),
    "left_hip": (0.07, -0.31, 0.005),
    "spine1": (0.0, -0.105, -0.01),
    "left_knee": (0.1, -0.68, 0.015),
    "spine2": (0.0, 0.03, -0.01),
    "left_ankle": (0.095, -1.075, -0.035),
    "spine3": (0.0, 0.09, -0.005),
    "left_foot": (0.105, -1.135, 0.09),
    "neck": (0.0, 0.29, -0.02),
    "left_collar": (0.075, 0.205, -0.01),
    "head": (0.0, 0.365, 0.01),
    "left_shoulder": (0.175, 0.225, -0.02),
    "left_elbow": (0.43, 0.21, -0.03),
    "left_wrist": (0.675, 0.215, -0.035),
    "left_hand": (0.765, 0.21, -0.04),
}


def rest_joint_positions() -> np.ndarray:
    """Design joint positions (24,3) float64 of the template (the regressor reproduces them)."""
    out = np.zeros((NUM_JOINTS, 3))
    for name, p in _LEFT_AND_CENTRE.items():
        out[J[name]] = p
        out[MIRROR[J[name]]] = (-p[0], p[1], p[2])
    return out


# --------------------------------------------------------------------------------------------
# Body shape: parts, each owned by one SMPL joint (the joint whose rotation moves it).
# --------------------------------------------------------------------------------------------


def _torso(p: np.ndarray) -> np.ndarray:
    """Lofted superelliptic cross-sections from the hips to the neck base."""
    knots = np.array([-0.30, -0.22, -0.12, -0.02, 0.08, 0.16, 0.22, 0.27, 0.31])
    half_w = np.array([0.142, 0.142, 0.134, 0.136, 0.152, 0.165, 0.160, 0.115, 0.065])
    half_d = np.array([0.100, 0.095, 0.092, 0.095, 0.105, 0.106, 0.096, 0.075, 0.055])
    centre_z = np.array([-0.010, -0.002, 0.008, 0.012, 0.014, 0.008, -0.004, -0.018, -0.025])
    y = np.clip(p[:, 1], knots[0], knots[-1])
    a = PchipInterpolator(knots, half_w)(y)
    b = PchipInterpolator(knots, half_d)(y)
    cz = PchipInterpolator(knots, centre_z)(y)
    n = 2.6
    u = np.abs(p[:, 0]) / a
    v = np.abs(p[:, 2] - cz) / b
    q = (u**n + v**n) ** (1.0 / n)
    d_r = (q - 1.0) * np.minimum(a, b)
    d_y = np.maximum(knots[0] - p[:, 1], p[:, 1] - knots[-1])
    outside = np.sqrt(np.maximum(d_r, 0.0) ** 2 + np.maximum(d_y, 0.0) ** 2)
    return outside + np.minimum(np.maximum(d_r, d_y), 0.0)


def _left_parts() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Signed distances of the left-side limbs (the right side mirrors them)."""

    def thigh(p):
        return S.round_cone(p, (0.09, -0.3, 0.0), (0.1, -0.68, 0.015), 0.08, 0.052)

    def calf(p):
        shin = S.round_cone(p, (0.1, -0.68, 0.015), (0.095, -1.075, -0.03), 0.052, 0.033)
        muscle = S.ellipsoid(p, (0.101, -0.82, -0.012), (0.047, 0.12, 0.05))
        return S.smooth_min(shin, muscle, 0.03)

    def foot(p):
        ankle = S.round_cone(p, (0.095, -1.075, -0.03), (0.1, -1.12, 0.06), 0.036, 0.03)
        heel = S.ellipsoid(p, (0.095, -1.128, -0.045), (0.034, 0.038, 0.045))
        arch = S.round_cone(p, (0.093, -1.13, -0.03), (0.105, -1.137, 0.09), 0.034, 0.03)
        d = S.smooth_min(S.smooth_min(ankle, heel, 0.03), arch, 0.03)
        return S.smooth_max(d, SOLE_Y - p[:, 1], 0.01)

    def toes(p):
        box = S.rounded_box(p, (0.11, -1.147, 0.13), (0.028, 0.004, 0.035), 0.013)
        return S.smooth_max(box, SOLE_Y - p[:, 1], 0.01)

    def collar(p):
        return S.round_cone(p, (0.02, 0.265, -0.03), (0.17, 0.245, -0.02), 0.05, 0.045)

    def upper_arm(p):
        bone = S.round_cone(p, (0.175, 0.225, -0.02), (0.43, 0.21, -0.03), 0.052, 0.038)
        deltoid = S.ellipsoid(p, (0.19, 0.23, -0.02), (0.075, 0.064, 0.064))
        muscle = S.ellipsoid(p, (0.31, 0.214, -0.025), (0.11, 0.046, 0.046))
        return S.smooth_min(S.smooth_min(bone, deltoid, 0.03), muscle, 0.03)

    def forearm(p):
        bone = S.round_cone(p, (0.43, 0.21, -0.03), (0.675, 0.215, -0.035), 0.039, 0.025)
        muscle = S.ellipsoid(p, (0.51, 0.212, -0.031), (0.1, 0.037, 0.044))
        return S.smooth_min(bone, muscle, 0.03)

    def palm(p):
        box = S.rounded_box(p, (0.722, 0.212, -0.036), (0.04, 0.003, 0.026), 0.015)
        thumb = S.round_cone(p, (0.695, 0.205, 0.0), (0.765, 0.195, 0.045), 0.016, 0.0125)
        return S.smooth_min(box, thumb, 0.015)

    def fingers(p):
        return S.rounded_box(p, (0.815, 0.208, -0.04), (0.042, 0.001, 0.025), 0.0125)

    return {
        "left_hip": thigh,
        "left_knee": calf,
        "left_ankle": foot,
        "left_foot": toes,
        "left_collar": collar,
        "left_shoulder": upper_arm,
        "left_elbow": forearm,
        "left_wrist": palm,
        "left_hand": fingers,
    }


def _centre_parts() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Signed distances of the parts on the centre line."""

    def pelvis(p):
        hips = S.ellipsoid(p, (0.0, -0.29, -0.005), (0.14, 0.09, 0.1))
        glute_l = S.ellipsoid(p, (0.065, -0.3, -0.05), (0.08, 0.085, 0.072))
        glute_r = S.ellipsoid(p, (-0.065, -0.3, -0.05), (0.08, 0.085, 0.072))
        return S.smooth_min(S.smooth_min(hips, glute_l, 0.04), glute_r, 0.04)

    def neck(p):
        return S.round_cone(p, (0.0, 0.25, -0.025), (0.0, 0.385, -0.005), 0.058, 0.05)

    def head(p):
        cranium = S.ellipsoid(p, (0.0, 0.475, 0.005), (0.077, 0.105, 0.095))
        face = S.ellipsoid(p, (0.0, 0.43, 0.03), (0.06, 0.075, 0.078))
        nose = S.ellipsoid(p, (0.0, 0.445, 0.105), (0.014, 0.026, 0.022))
        return S.smooth_min(S.smooth_min(cranium, face, 0.03), nose, 0.015)

    return {"pelvis": pelvis, "spine1": _torso, "neck": neck, "head": head}


def _parts() -> list[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """(owning joint, signed distance function) of every part, right side mirrored."""
    parts = list(_centre_parts().items())
    flip = np.array([-1.0, 1.0, 1.0])
    for name, fn in _left_parts().items():
        parts.append((name, fn))
        parts.append((JOINT_NAMES[MIRROR[J[name]]], lambda p, fn=fn: fn(p * flip)))
    return parts


_FAR = 0.2  # value given to points outside a part's bounding box (well beyond every fillet)


@functools.lru_cache(maxsize=1)
def _part_boxes() -> np.ndarray:
    """(P,2,3) boxes holding each part's 10 cm neighbourhood, found on a coarse grid.

    Points outside a part's box get the value _FAR instead of an exact evaluation: every
    fillet is narrower than that, so values near the surface are unchanged and meshing is fast.
    """
    axes = [np.arange(lo - 0.1, hi + 0.1, 0.03) for lo, hi in BOUNDS]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    boxes = []
    for _, fn in _parts():
        near = grid[fn(grid) < 0.09]
        boxes.append([near.min(0) - 0.04, near.max(0) + 0.04])
    return np.array(boxes)


def _part_distances(p: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distances (P, N) of every part, with the owning joint name of each."""
    names, dists = [], []
    px, py, pz = p.T
    for (name, fn), (lo, hi) in zip(_parts(), _part_boxes()):
        inside = np.flatnonzero(
            (px >= lo[0]) & (px <= hi[0]) & (py >= lo[1]) & (py <= hi[1]) & (pz >= lo[2]) & (pz <= hi[2])
        )
        d = np.full(len(p), _FAR)
        d[inside] = fn(p[inside])
        names.append(name)
        dists.append(d)
    return names, np.stack(dists)


# Fillet width between a part and the body built so far.
_BLEND = {
    "pelvis": 0.0, "spine1": 0.07, "neck": 0.04, "head": 0.03,
    "left_hip": 0.05, "left_knee": 0.03, "left_ankle": 0.025, "left_foot": 0.02,
    "left_collar": 0.05, "left_shoulder": 0.04, "left_elbow": 0.03, "left_wrist": 0.025,
    "left_hand": 0.015,
}


def body_sdf(p: np.ndarray) -> np.ndarray:
    """Signed distance (N,) of the template body at points (N,3)."""
    names, dists = _part_distances(p)
    d = dists[0]
    for name, dist in zip(names[1:], dists[1:]):
        key = name.replace("right_", "left_")
        d = S.smooth_min(d, dist, _BLEND[key])
    # Flat soles on the floor plane, after every fillet (fillets would push them below it).
    return S.smooth_max(d, SOLE_Y - p[:, 1], 0.01)


# --------------------------------------------------------------------------------------------
# Skinning weights
# --------------------------------------------------------------------------------------------

# Torso (lofted part) labels by height: a vertex between two spine joints moves with the lower
# one's rotation, as in SMPL.
_TORSO_BANDS = (("pelvis", -0.105), ("spine1", 0.03), ("spine2", 0.09), ("spine3", np.inf))


def _owner_labels(v: np.ndarray) -> np.ndarray:
    """The joint (V,) that owns each surface point: the part nearest to it, split by height."""
    names, dists = _part_distances(v)
    owner = np.array([J[n] for n in names])[np.argmin(dists, axis=0)]
    torso = owner == J["spine1"]
    for name, top in reversed(_TORSO_BANDS):
        owner[torso & (v[:, 1] < top)] = J[name]
    # Upper-chest flanks above the armpits follow the collar bones.
    high = torso & (v[:, 1] > 0.16) & (np.abs(v[:, 0]) > 0.09)
    owner[high] = np.where(v[high, 0] > 0, J["left_collar"], J["right_collar"])
    return owner


def _diffuse(values: np.ndarray, edges: np.ndarray, degree: np.ndarray, iterations: int) -> np.ndarray:
    """Heat diffusion over the mesh graph (explicit umbrella steps), per column."""
    for _ in range(iterations):
        nb = np.zeros_like(values)
        np.add.at(nb, edges[:, 0], values[edges[:, 1]])
        np.add.at(nb, edges[:, 1], values[edges[:, 0]])
        values = 0.5 * values + 0.5 * nb / degree[:, None]
    return values


def skinning_weights(v: np.ndarray, edges: np.ndarray, degree: np.ndarray, mirror: np.ndarray,
                     iterations: int = 10) -> np.ndarray:
    """Smooth, normalised, mirror-symmetric LBS weights (V,24) from the part ownership."""
    owner = _owner_labels(v)
    onehot = np.zeros((len(v), NUM_JOINTS))
    onehot[np.arange(len(v)), owner] = 1.0
    # Nearest-part ownership is noisy where parts meet in a fillet; a majority vote over a few
    # cm (argmax after a short diffusion) straightens the region borders before blending.
    owner = np.argmax(_diffuse(onehot, edges, degree, 8), axis=1)
    onehot = np.zeros((len(v), NUM_JOINTS))
    onehot[np.arange(len(v)), owner] = 1.0
    w = _diffuse(onehot, edges, degree, iterations)
    w = 0.5 * (w + w[mirror][:, list(MIRROR)])
    w[w < 1e-4] = 0.0
    return w / w.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Joint regressor
# --------------------------------------------------------------------------------------------


def _convex_weights(points: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """Maximum-entropy convex weights: w_i ~ exp(lam . (p_i - target)) with sum_i w_i p_i = target.

    The dual (log-sum-exp in lam, 3 unknowns) is convex; Newton's method solves it to machine
    precision when ``target`` lies strictly inside the points' convex hull, else returns None.
    """
    d = points - target
    lam = np.zeros(3)
    for _ in range(100):
        s = d @ lam
        p = np.exp(s - s.max())
        p /= p.sum()
        grad = p @ d
        if np.abs(grad).max() < 1e-13:
            return p
        hess = (d * p[:, None]).T @ d - np.outer(grad, grad)
        try:
            step = np.linalg.solve(hess + 1e-12 * np.eye(3), grad)
        except np.linalg.LinAlgError:
            return None
        # Backtracking on the dual objective keeps Newton stable far from the optimum.
        f0 = s.max() + np.log(np.exp(s - s.max()).sum())
        t = 1.0
        while t > 1e-6:
            s1 = d @ (lam - t * step)
            if s1.max() + np.log(np.exp(s1 - s1.max()).sum()) <= f0 - 1e-4 * t * (grad @ step):
                break
            t *= 0.5
        lam = lam - t * step
        if np.abs(lam).max() > 1e6:
            return None
    return None


def joint_regressor(v: np.ndarray, joints: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """(24,V) rows of convex vertex weights around each joint that reproduce ``joints`` exactly.

    Rows are mirror symmetric (right joints mirror the left ones), so regressed joints stay
    symmetric for symmetric shapes.
    """
    reg = np.zeros((NUM_JOINTS, len(v)))
    for j in range(NUM_JOINTS):
        if joints[j, 0] < -1e-9:
            continue  # filled from its left twin below
        d = np.linalg.norm(v - joints[j], axis=1)
        radius = 1.3 * d.min()
        for _ in range(20):
            sel = np.flatnonzero(d < radius)
            w = _convex_weights(v[sel], joints[j]) if len(sel) >= 8 else None
            if w is not None:
                break
            radius *= 1.15
        else:
            raise RuntimeError(f"no convex vertex combination reproduces joint {JOINT_NAMES[j]}")
        reg[j, sel] = w
        if abs(joints[j, 0]) <= 1e-9:  # centre joint: symmetrise (still convex and exact)
            reg[j] = 0.5 * (reg[j] + reg[j, mirror])
    for j in range(NUM_JOINTS):
        if joints[j, 0] < -1e-9:
            reg[j, mirror] = reg[MIRROR[j]]
    return reg


# --------------------------------------------------------------------------------------------
# Shape blend shapes
# --------------------------------------------------------------------------------------------

# Each joint's bone segment (joint -> child or end point): the axis that "girth" grows from.
def _bone_segments(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ends = np.zeros_like(joints)
    child = {0: 3, 1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 9, 9: 12, 12: 15, 13: 16, 14: 17,
             16: 18, 17: 19, 18: 20, 19: 21, 20: 22, 21: 23}
    for j in range(NUM_JOINTS):
        if j in child:
            ends[j] = joints[child[j]]
    ends[J["left_foot"]] = joints[J["left_foot"]] + (0.0, 0.0, 0.07)
    ends[J["right_foot"]] = joints[J["right_foot"]] + (0.0, 0.0, 0.07)
    ends[J["head"]] = joints[J["head"]] + (0.0, 0.2, 0.0)
    ends[J["left_hand"]] = joints[J["left_hand"]] + (0.09, 0.0, 0.0)
    ends[J["right_hand"]] = joints[J["right_hand"]] + (-0.09, 0.0, 0.0)
    return joints, ends


def _radial(v: np.ndarray, weights: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Offset (V,3) of each vertex from its bones' axes, blended by the skinning weights."""
    a, b = _bone_segments(joints)
    ab = b - a
    t = np.einsum("vjc,jc->vj", v[:, None] - a[None], ab) / np.maximum(np.sum(ab * ab, 1), 1e-12)
    closest = a[None] + np.clip(t, 0.0, 1.0)[..., None] * ab[None]
    return v - np.einsum("vj,vjc->vc", weights, closest)


# Named shape directions, in beta order. Units: metres of displacement per unit beta.
SHAPE_NAMES: tuple[str, ...] = (
    "height", "weight", "leg_length", "shoulder_width", "hip_width",
    "belly", "arm_length", "head_size", "limb_thickness", "chest_depth",
)


def shape_directions(v: np.ndarray, weights: np.ndarray, joints: np.ndarray,
                     normals: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """(V,3,10) smooth, mirror-symmetric displacement fields that keep the soles at SOLE_Y."""
    x, y, z = v.T
    sign = np.where(x >= 0, 1.0, -1.0)
    sign[np.abs(x) < 1e-9] = 0.0
    w = weights
    legs = w[:, [1, 2, 4, 5]].sum(1)
    feet = w[:, [7, 8, 10, 11]].sum(1)
    arms = w[:, 16:24].sum(1)
    collars = w[:, [13, 14]].sum(1)
    head = w[:, 15] + 0.5 * w[:, 12]
    torso = 1.0 - legs - feet - arms - head
    radial = _radial(v, weights, joints)
    # Below the ankles nothing moves vertically, so the soles stay on the floor.
    sole_lock = np.clip((y - SOLE_Y) / 0.08, 0.0, 1.0)
    hip_y = joints[J["left_hip"], 1]
    dirs = np.zeros((len(v), 3, NUM_BETAS))

    # 0 height: uniform scale about the floor point under the pelvis (6 cm per unit).
    dirs[:, :, 0] = 0.035 * (v - np.array([0.0, SOLE_Y, 0.0]))
    # 1 weight: soft tissue thickens along the normal, the torso and belly most.
    belly = np.exp(-(((y + 0.07) / 0.13) ** 2)) * torso
    hands = w[:, 20:24].sum(1)
    thickness = 0.004 + 0.005 * torso + 0.006 * belly * np.clip(normals[:, 2], 0.0, None) - 0.003 * (feet + head + hands)
    dirs[:, :, 1] = thickness[:, None] * normals
    dirs[:, 1, 1] *= sole_lock
    # 2 leg length: legs stretch, everything above the hips rises 5 cm.
    dirs[:, 1, 2] = 0.05 * np.clip((y - SOLE_Y) / (hip_y - SOLE_Y), 0.0, 1.0)
    # 3 shoulder width: arms and shoulder caps move out 2 cm each.
    dirs[:, 0, 3] = 0.02 * sign * (arms + 0.6 * collars)
    # 4 hip width: the pelvis widens and the legs move apart.
    pelvis_zone = np.exp(-(((y - joints[0, 1]) / 0.14) ** 2)) * (torso + legs)
    dirs[:, 0, 4] = 0.07 * x * pelvis_zone + 0.012 * sign * (legs + feet)
    # 5 belly: the front of the abdomen pushes forward, the sides out a little.
    dirs[:, 2, 5] = 0.035 * belly * np.clip(normals[:, 2], 0.0, None) ** 1.5
    dirs[:, 0, 5] = 0.01 * belly * x / 0.15
    # 6 arm length: the arm stretches along its axis (4 cm per unit at the fingertips).
    reach = np.clip((np.abs(x) - 0.175) / (0.87 - 0.175), 0.0, 1.0)
    dirs[:, 0, 6] = 0.04 * sign * reach * arms
    # 7 head size: the head scales 8% about its joint.
    dirs[:, :, 7] = 0.08 * (v - joints[J["head"]]) * np.clip(head, 0.0, 1.0)[:, None]
    # 8 limb thickness: arms and legs thicken (not hands and feet).
    limb = legs + w[:, [16, 17, 18, 19]].sum(1)
    dirs[:, :, 8] = 0.12 * radial * limb[:, None]
    # 9 chest depth: the rib cage deepens front to back.
    chest = np.exp(-(((y - 0.12) / 0.12) ** 2)) * torso
    dirs[:, 2, 9] = 0.12 * (z - 0.01) * chest
    # Exact mirror symmetry: average each field with its twin's reflection.
    flip = np.array([-1.0, 1.0, 1.0])[None, :, None]
    return 0.5 * (dirs + dirs[mirror] * flip)


# --------------------------------------------------------------------------------------------
# Pose-corrective blend shapes
# --------------------------------------------------------------------------------------------


def _descendants(j: int) -> list[int]:
    out = [j]
    for k in range(j + 1, NUM_JOINTS):
        if PARENTS[k] in out:
            out.append(k)
    return out


def pose_directions(v: np.ndarray, weights: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(V,3,207) twist correctives: SMPL's pose blend shapes P(theta) (eq. 9), used here only
    against linear blend skinning's "candy wrapper" loss when a joint twists about its bone.

    For a rotation R about the bone axis a by theta, the functional L(R - I) = tr((R - I)(I - 2aa^T))
    equals -2(1 - cos theta), while it is zero for any bend about an axis perpendicular to a. A vertex
    whose weight on the twisting side is w shrinks radially by f = sqrt(w^2 + (1-w)^2) at 90 degrees;
    pushing it out by (1/f - 1)(1 - cos theta) of its radial offset restores its section there.
    """
    start, end = _bone_segments(joints)
    dirs = np.zeros((len(v), 3, NUM_POSE_BASIS))
    for j in range(1, NUM_JOINTS):
        axis = end[j] - start[j]
        axis /= np.linalg.norm(axis)
        w_twist = weights[:, _descendants(j)].sum(1)
        gain = 1.0 / np.sqrt(w_twist**2 + (1.0 - w_twist) ** 2) - 1.0
        offset = v - joints[j]
        radial = offset - np.outer(offset @ axis, axis)
        probe = np.eye(3) - 2.0 * np.outer(axis, axis)
        # Feature index 9(j-1) + 3r + c holds (R_j - I)[r, c] (smplx's row-major flattening).
        dirs[:, :, 9 * (j - 1): 9 * j] = -0.5 * (gain[:, None] * radial)[:, :, None] * probe.reshape(1, 1, 9)
    return dirs


# --------------------------------------------------------------------------------------------
# Build, write, cache
# --------------------------------------------------------------------------------------------


def build_mannequin() -> dict[str, np.ndarray]:
    """Build the mannequin's model-file dict in SMPL's layout (deterministic).

    Keys as in SMPL's ``.pkl``: v_template, shapedirs, posedirs, J_regressor (dense), weights,
    kintree_table, f, J; plus mirror_vertex_index, joint_names, shape_names, version.
    """
    mesh = mesh_symmetric_sdf(body_sdf, BOUNDS, MESH_SPACING)
    v, f, mirror = mesh.vertices, mesh.faces, mesh.mirror
    joints = rest_joint_positions()
    edges, degree = vertex_adjacency(len(v), f)
    weights = skinning_weights(v, edges, degree, mirror)
    regressor = joint_regressor(v, joints, mirror)
    shapedirs = shape_directions(v, weights, joints, vertex_normals(v, f), mirror)
    posedirs = pose_directions(v, weights, joints)
    kintree = np.array([PARENTS, list(range(NUM_JOINTS))], dtype=np.int64)
    kintree[0, 0] = 4294967295  # SMPL stores the root's parent as uint32 -1
    return {
        "v_template": v,
        "shapedirs": shapedirs,
        "posedirs": posedirs.astype(np.float32),  # 38 MB as float64; float32 loses nothing here
        "J_regressor": regressor,
        "weights": weights,
        "kintree_table": kintree,
        "f": f.astype(np.uint32),
        "J": regressor @ v,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "mirror_vertex_index": mirror.astype(np.int64),
        "joint_names": list(JOINT_NAMES),
        "shape_names": list(SHAPE_NAMES),
        "version": VERSION,
    }


def write_model_file(data: dict, path: Path) -> None:
    """Write a model dict as an SMPL-layout pickle, atomically (:func:`btdm_engine.fileio.atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(data, fh, protocol=4)


def cache_dir() -> Path:
    """``$BTDM_CACHE_DIR``, default ``~/.cache/btdm``."""
    env = os.environ.get("BTDM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "btdm"


def mannequin_path(build: bool = True) -> Path:
    """Path of the cached mannequin model file, built and written on first use."""
    path = cache_dir() / f"mannequin-v{VERSION}.pkl"
    if build and not path.exists():
        write_model_file(build_mannequin(), path)
    return path
