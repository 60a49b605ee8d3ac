"""The retargeting core: any :class:`SkeletonAnimation` (BVH, FBX, a Blender armature) -> a MotionClip.

One function, :func:`to_motion_clip`, serves every motion source. The transfer works on world-space
bone orientations relative to each skeleton's rest pose, so it does not care how a rig's bones are
rolled, which way its rest pose faces, or whether it rests in a T- or an A-pose:

1. Units and axes. Positions become metres (``scale``, or detected from the rest skeleton's
   height) in SMPL's Y-up world (a Z-up rig, Blender's convention, is turned once by ``_Z_TO_Y``).
2. Facing. ``R_face``, a turn about the vertical, takes SMPL's rest body (facing +Z) to the rig's
   rest facing, measured from the hips' and shoulders' left-right axis. It gives every bone its
   rest twist, so a rig that rests facing +X keeps the twist of bones with a single child.
3. Rest deltas. For each mapped SMPL joint j, ``A_j = S_j R_face``: ``S_j`` is the shortest arc
   swinging SMPL's (turned) rest bone direction onto the rig's, toward the next mapped joint down
   j's chain (``_PRIMARY``: spine toward the head, limbs toward their ends; the pelvis's bone runs
   from the hips' midpoint). Zero-length bones (a lower back at its hips, a hand at its wrist) give
   no direction and are passed over to the next joint, never divided by.
4. Motion. A rig bone's world rotation from its rest, ``G_b(t) = R_b(t) R_b(rest)^T``, carries full
   orientation (twist included). SMPL's world rotation is ``W_j(t) = G_b(t) A_j``; where unmapped
   bones lie between j and a mapped child, their bend is folded in by re-aiming j along the posed
   chord. Local poses follow down SMPL's tree: ``R_j = W_parent(j)^T W_j``.
5. Placement. The body's hip midpoint follows the rig's (the thigh heads, placed alike by every
   rig, unlike a pelvis bone's head): ``trans = H_rig(t) - r_0 - W_0(t) (H_rest - r_0)``.
   Optionally (``fit_shape``) the body's betas are fitted to the rig's bone lengths first.

Rotating a whole rig about the vertical rotates the resulting clip the same way and changes
nothing else (the tests check this to well under a degree per joint).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation, Slerp

from btdm_engine import limits
from btdm_engine.body.skeleton import JOINT_NAMES, NUM_BETAS, NUM_JOINTS, PARENTS
from btdm_engine.constants import UP_AXES
from btdm_engine.errors import BtdmError
from btdm_engine.motion.bonemaps import choose_map, map_from_dict
from btdm_engine.motion.camera import framing_camera
from btdm_engine.motion.clip import MAX_DISTANCE, MotionClip
from btdm_engine.motion.kinematics import local_rotations, world_rotations
from btdm_engine.motion.library import cached_body_model
from btdm_engine.motion.rotations import align_vectors, axis_angle_to_matrix, rotation_y
from btdm_engine.motion.skeleton_animation import SkeletonAnimation

__all__ = ["UNITS", "RetargetError", "Retargeted", "detect_units", "fit_betas", "to_motion_clip"]

logger = logging.getLogger(__name__)

J = {name: j for j, name in enumerate(JOINT_NAMES)}
# Z-up (Blender: forward -Y) to Y-up (SMPL: forward +Z): (x, y, z) -> (x, z, -y).
_Z_TO_Y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
# Metres per unit of the length units that rigs and mocap files use.
UNITS: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001, "in": 0.0254}
# A rest skeleton (lowest to highest bone end) of an adult is about this tall.
_TYPICAL_HEIGHT = 1.65
_PLAUSIBLE = (0.9, 2.4)  # metres: no warning inside
_POSSIBLE = (0.45, 3.6)  # metres: detection refuses outside
_EPS = 1e-4  # metres: bones shorter than this have no direction


class RetargetError(BtdmError, ValueError):
    """A skeleton animation cannot be put on SMPL (units, axes, or a degenerate rig)."""


@dataclass
class Retargeted:
    """The clip and what the retargeting chose, for ``btdm motion inspect`` and the service."""

    clip: MotionClip
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return self.report.get("warnings", [])


# ---------------------------------------------------------------------------------- units and axes
def _rest_points(anim: SkeletonAnimation) -> np.ndarray:
    return np.concatenate([anim.rest_heads(), anim.tails])


def detect_units(anim: SkeletonAnimation, up_axis: str, source: str) -> tuple[float, str, list[str]]:
    """Metres per unit from the rest skeleton's height: (scale, unit name, warnings)."""
    axis = 1 if up_axis == "Y" else 2
    height = float(np.ptp(_rest_points(anim)[:, axis]))
    if height <= 0:
        raise RetargetError(f"{source}: the rest skeleton has no height along {up_axis}; pass --scale and --up")
    best = min(UNITS, key=lambda u: abs(np.log(height * UNITS[u] / _TYPICAL_HEIGHT)))
    metres = height * UNITS[best]
    if not _POSSIBLE[0] <= metres <= _POSSIBLE[1]:
        raise RetargetError(
            f"{source}: cannot infer units from a rest skeleton {height:g} units tall along {up_axis} "
            f"(no unit of {', '.join(UNITS)} makes a person of it); pass scale (--scale, metres per unit) "
            "or check the up axis (--up)")
    notes = []
    if not _PLAUSIBLE[0] <= metres <= _PLAUSIBLE[1]:
        notes.append(f"the rest skeleton is {height:g} units tall: assumed {best} ({metres:.2f} m), an unusual "
                     "height for a person; pass --scale if that is wrong")
    others = [u for u in UNITS if u != best and _PLAUSIBLE[0] <= height * UNITS[u] <= _PLAUSIBLE[1]]
    if others:
        notes.append(f"units are ambiguous: {height:g} units is {metres:.2f} m in {best} but "
                     f"{height * UNITS[others[0]]:.2f} m in {others[0]}; assumed {best}, pass --scale to choose")
    return UNITS[best], best, notes


def _rise(anim: SkeletonAnimation, mapping: dict[int, int]) -> np.ndarray:
    """The rest skeleton's ankles-to-head vector (3,), in the file's axes and units."""
    heads = anim.rest_heads()
    feet = heads[[mapping[J["left_ankle"]], mapping[J["right_ankle"]]]].mean(0)
    return heads[mapping[J["head"]]] - feet


def _up_from_rig(anim: SkeletonAnimation, mapping: dict[int, int]) -> str | None:
    """The axis the rest skeleton stands along (ankles to head), or None when it is not Y or Z."""
    rise = _rise(anim, mapping)
    axis = int(np.argmax(np.abs(rise)))
    if rise[axis] <= 0 or axis == 0:
        return None
    return "Y" if axis == 1 else "Z"


# A stated up axis is refused when the rest skeleton's ankles-to-head line leans more than this from it.
_MAX_LEAN_DEG = 60.0


def _check_stated_up(anim: SkeletonAnimation, mapping: dict[int, int], up: str, source: str) -> None:
    """Refuse an up axis given by the caller (``--up``) that the rest skeleton contradicts.

    A Y-up file read as Z up (or the reverse) would give a body lying on the floor, with a warning
    about its units at best; a person's rest pose stands, so the two cannot both be right.
    """
    rise = _rise(anim, mapping)
    length = float(np.linalg.norm(rise))
    extent = float(np.ptp(_rest_points(anim), axis=0).max())
    if not length > 1e-6 * max(extent, 1e-300):
        return  # no ankles-to-head line (a degenerate rig): the facing and unit checks name that
    along = rise[1 if up == "Y" else 2] / length
    if along >= np.cos(np.radians(_MAX_LEAN_DEG)):
        return
    seen = _up_from_rig(anim, mapping)
    lean = float(np.degrees(np.arccos(np.clip(along, -1.0, 1.0))))
    stands = _signed_axis(rise)
    fix = (f"pass --up {seen}, or leave --up out (the up axis is then detected)" if seen is not None
           else "check the bone map (--bone-map) or the file's rest pose")
    raise RetargetError(
        f"{source}: --up {up} contradicts the rest skeleton, which stands along {stands} (ankles to head "
        f"{_fmt_vec(rise)} in file units, {lean:.0f} degrees from +{up}): read with --up {up} the body would lie "
        f"down; {fix}")


def _check_distances(P: np.ndarray, names: tuple[str, ...], source: str) -> None:
    """Refuse bone positions (F, NB, 3), in metres, that are not finite or lie beyond :data:`MAX_DISTANCE`."""
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(P) <= MAX_DISTANCE).all(-1)
    if bad.any():
        frame, bone = (int(i) for i in np.argwhere(bad)[0])
        where = _fmt_vec(P[frame, bone])
        raise RetargetError(
            f"{source}: bone {names[bone]!r} at frame {frame} is at {where} m: not a motion (positions must be finite "
            f"and within {MAX_DISTANCE:g} m of the origin); the file is corrupt, or its scale (--scale) is wrong")


_MAX_SPEED = 100.0  # metres per second: a root faster than this between two frames is a glitch, not a person


def _root_jumps(P: np.ndarray, fps: float, names: tuple[str, ...], mapping: dict[int, int]) -> list[str]:
    """A warning when the hips jump further between two frames than a person moves (a glitch in the file)."""
    if len(P) < 2:
        return []
    hips = P[:, [mapping[J["left_hip"]], mapping[J["right_hip"]]]].mean(1)
    speed = np.linalg.norm(np.diff(hips, axis=0), axis=-1) * fps
    k = int(np.argmax(speed))
    if speed[k] <= _MAX_SPEED:
        return []
    fast = int((speed > _MAX_SPEED).sum())
    return [f"the hips jump {speed[k] / fps:.3g} m between frames {k} and {k + 1} ({speed[k]:.3g} m/s; {fast} such "
            "jump(s) in all): a glitch in the file? The camera frames the whole path, so the body may look small"]


def _signed_axis(v: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(v)))
    return ("+" if v[axis] > 0 else "-") + "XYZ"[axis]


def _fmt_vec(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


# ---------------------------------------------------------------------------------- shape
# Segments whose lengths every rig defines alike: limbs, the hip and shoulder widths, the torso
# (hip midpoint to shoulder midpoint) and the neck. Collars and a pelvis bone's head are placed
# differently by each rig, so they are left out. Each end is the mean of the listed joints.
_SEGMENTS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    *(((f"{s}_{a}",), (f"{s}_{b}",)) for s in ("left", "right") for a, b in (
        ("hip", "knee"), ("knee", "ankle"), ("ankle", "foot"), ("shoulder", "elbow"), ("elbow", "wrist"),
        ("wrist", "hand"))),
    (("left_hip",), ("right_hip",)),
    (("left_shoulder",), ("right_shoulder",)),
    (("left_hip", "right_hip"), ("left_shoulder", "right_shoulder")),
    (("neck",), ("head",)),
)


def fit_betas(body: Any, rig_joints: np.ndarray, mapping: dict[int, int] | list[int],
              regulariser: float = 0.02) -> tuple[np.ndarray, float, float]:
    """Betas whose rest joints have the rig's segment lengths: (betas (10,), RMS mm, max mm).

    ``rig_joints`` (24, 3) in metres holds the rig's rest positions of the mapped joints. Least
    squares over the lengths of :data:`_SEGMENTS` whose joints are all mapped (the body's joints
    are linear in betas); a small ridge term keeps unobserved directions at 0.
    """
    mapped = set(mapping)
    segs = [([J[n] for n in a], [J[n] for n in b]) for a, b in _SEGMENTS
            if all(J[n] in mapped for n in (*a, *b))]
    target = np.array([np.linalg.norm(rig_joints[b].mean(0) - rig_joints[a].mean(0)) for a, b in segs])
    keep = target > 1e-3  # zero-length in the rig: no information
    segs = [seg for seg, k in zip(segs, keep) if k]
    target = target[keep]
    if not segs:
        return np.zeros(NUM_BETAS), 0.0, 0.0
    base = body.rest_joints(np.zeros(NUM_BETAS)).astype(np.float64)
    basis = np.stack([body.rest_joints(np.eye(NUM_BETAS)[k]).astype(np.float64) - base
                      for k in range(NUM_BETAS)], axis=-1)  # (24, 3, 10): joints are linear in betas

    def lengths(beta: np.ndarray) -> np.ndarray:
        joints = base + basis @ beta
        return np.array([np.linalg.norm(joints[b].mean(0) - joints[a].mean(0)) for a, b in segs])

    def residual(beta: np.ndarray) -> np.ndarray:
        return np.concatenate([lengths(beta) - target, regulariser * beta])

    fit = least_squares(residual, np.zeros(NUM_BETAS), bounds=(-5.0, 5.0))
    err = np.abs(lengths(fit.x) - target)
    return fit.x, float(np.sqrt(np.mean(err ** 2)) * 1000.0), float(err.max() * 1000.0)


# ---------------------------------------------------------------------------------- rotations
# Each SMPL joint's bone direction is taken toward one child along its chain (the spine toward the
# neck, a limb toward its end); further children (a pelvis's hips, a chest's collars) sit where each
# rig likes and would only bend the estimate. Twist comes from the facing turn.
_PRIMARY: dict[str, str] = {
    "pelvis": "spine1", "spine1": "spine2", "spine2": "spine3", "spine3": "neck", "neck": "head",
    **{f"{s}_{a}": f"{s}_{b}" for s in ("left", "right") for a, b in (
        ("hip", "knee"), ("knee", "ankle"), ("ankle", "foot"), ("collar", "shoulder"), ("shoulder", "elbow"),
        ("elbow", "wrist"), ("wrist", "hand"))},
}


def _chain_target(j: int, mapping: dict[int, int], P_rest: np.ndarray) -> int | None:
    """The first mapped joint down j's primary chain whose rig position differs from j's (zero-length bones skipped)."""
    name = JOINT_NAMES[j]
    origin = P_rest[mapping[j]]
    while name in _PRIMARY:
        name = _PRIMARY[name]
        c = J[name]
        if c in mapping and np.linalg.norm(P_rest[mapping[c]] - origin) > _EPS:
            return c
    return None


def _facing(rest_smpl: np.ndarray, rest_rig: np.ndarray, mapping: dict[int, int], source: str) -> np.ndarray:
    """The turn about +Y taking SMPL's rest facing to the rig's (from the hips' and shoulders' axes)."""
    def lateral(points: np.ndarray, index: Any) -> np.ndarray:
        v = np.zeros(3)
        for left, right in (("left_hip", "right_hip"), ("left_shoulder", "right_shoulder")):
            v += points[index(J[left])] - points[index(J[right])]
        return np.array([v[0], 0.0, v[2]])

    a = lateral(rest_smpl, lambda j: j)
    b = lateral(rest_rig, lambda j: mapping[j])
    if np.linalg.norm(b) < 1e-6:
        raise RetargetError(f"{source}: the rig's left and right hips and shoulders coincide: cannot tell which "
                            "way it faces (check the bone map)")
    angle = np.arctan2(a[2] * b[0] - a[0] * b[2], a[0] * b[0] + a[2] * b[2])  # about +Y, a -> b
    return rotation_y(angle)


def _swing(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The rotation taking directions src (K, 3) onto dst (K, 3), ignoring pairs with a zero-length side."""
    ok = (np.linalg.norm(src, axis=-1) > _EPS) & (np.linalg.norm(dst, axis=-1) > _EPS)
    if not ok.any():
        return np.eye(3)
    with warnings.catch_warnings():  # scipy warns when two directions pin a rotation poorly
        warnings.simplefilter("ignore", UserWarning)
        return align_vectors(src[ok], dst[ok])


def _batch_reaim(current: np.ndarray, posed: np.ndarray) -> np.ndarray:
    """Per-frame rotations (F, 3, 3) swinging directions ``current`` (F, K, 3) onto ``posed``."""
    norm_c = np.linalg.norm(current, axis=-1)
    norm_p = np.linalg.norm(posed, axis=-1)
    ok = (norm_c > _EPS) & (norm_p > _EPS)
    out = np.broadcast_to(np.eye(3), (len(current), 3, 3)).copy()
    k = current.shape[1]
    c = current / np.maximum(norm_c, _EPS)[..., None]
    p = posed / np.maximum(norm_p, _EPS)[..., None]
    if k == 1:
        good = ok[:, 0]
        a, b = c[good, 0], p[good, 0]
        axis = np.cross(a, b)
        sin = np.linalg.norm(axis, axis=-1, keepdims=True)
        cos = np.sum(a * b, axis=-1, keepdims=True)
        out[good] = axis_angle_to_matrix(axis / np.maximum(sin, 1e-12) * np.arctan2(sin, cos))
        return out
    # Kabsch with per-pair weights (0 for a zero-length chord): R = V diag(1, 1, det) U^T.
    H = np.einsum("fk,fki,fkj->fij", ok.astype(np.float64), c, p)
    good = ok.sum(1) >= 2
    if good.any():
        U, _, Vt = np.linalg.svd(H[good])
        V, Ut = np.swapaxes(Vt, 1, 2), np.swapaxes(U, 1, 2)
        D = np.broadcast_to(np.eye(3), (int(good.sum()), 3, 3)).copy()
        D[:, 2, 2] = np.sign(np.linalg.det(V @ Ut))
        out[good] = V @ D @ Ut
    return out


def _smpl_world_rotations(
    R: np.ndarray, R_rest: np.ndarray, P: np.ndarray, P_rest: np.ndarray, tails: np.ndarray,
    parents: np.ndarray, mapping: dict[int, int], rest: np.ndarray, face: np.ndarray,
) -> np.ndarray:
    """SMPL world rotations W (F, 24, 3, 3) from the rig's world orientations and positions (Y up, metres),
    given the facing turn ``face`` (:func:`_facing`)."""
    G = R @ np.swapaxes(R_rest, -1, -2)[None]  # (F, NB, 3, 3): each bone's world rotation from rest
    F = len(R)
    hips = [J["left_hip"], J["right_hip"]]

    def start(j: int, points: np.ndarray, index: Any) -> np.ndarray:
        # The pelvis's bone starts at the hips' midpoint: a pelvis bone's own head is placed differently by each rig.
        if j == 0:
            return points[..., [index(h) for h in hips], :].mean(-2)
        return points[..., index(j), :]

    W = np.empty((F, NUM_JOINTS, 3, 3))
    A: dict[int, np.ndarray] = {}
    for j in range(NUM_JOINTS):  # parents come first in SMPL's joint order
        if j not in mapping:
            W[:, j] = W[:, PARENTS[j]]  # no bone: no rotation of its own
            continue
        b = mapping[j]
        c = _chain_target(j, mapping, P_rest)
        tail = tails[b] - P_rest[b]
        if c is not None:
            smpl_dir = rest[c] - start(j, rest, lambda i: i)
            rig_dir = P_rest[mapping[c]] - start(j, P_rest, lambda i: mapping[i])
            A[j] = _swing((face @ smpl_dir)[None], rig_dir[None]) @ face
        elif JOINT_NAMES[j] in _PRIMARY and np.linalg.norm(tail) > _EPS:
            # e.g. a wrist without a mapped hand: its own tail points where the hand would be
            smpl_dir = rest[J[_PRIMARY[JOINT_NAMES[j]]]] - rest[j]
            A[j] = _swing((face @ smpl_dir)[None], tail[None]) @ face
        else:  # an SMPL leaf (head, hands, feet): the nearest mapped ancestor's rest delta
            a = PARENTS[j]
            while a >= 0 and a not in A:
                a = PARENTS[a]
            A[j] = A[a] if a >= 0 else face
        W[:, j] = G[:, b] @ A[j]
        if c is not None and parents[mapping[c]] != b:
            # Unmapped bones between j and its chain child bend the chord: re-aim SMPL's bone along it.
            posed = (P[:, mapping[c]] - start(j, P, lambda i: mapping[i]))[:, None]
            current = np.einsum("fij,j->fi", W[:, j], rest[c] - start(j, rest, lambda i: i))[:, None]
            W[:, j] = _batch_reaim(current, posed) @ W[:, j]
    return W


def _resample(poses: np.ndarray, trans: np.ndarray, src_fps: float, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample to ``fps``: slerp for joint rotations, linear for translation."""
    T = len(poses)
    if T == 1:
        return poses.copy(), trans.copy()
    t_src = np.arange(T) / src_fps
    n = int(np.floor(t_src[-1] * fps + 1e-9)) + 1
    t_dst = np.arange(n) / fps
    out = np.empty((n, NUM_JOINTS, 3))
    for j in range(NUM_JOINTS):
        out[:, j] = Slerp(t_src, Rotation.from_rotvec(poses[:, j]))(t_dst).as_rotvec()
    moved = np.stack([np.interp(t_dst, t_src, trans[:, k]) for k in range(3)], axis=-1)
    return out, moved


# ---------------------------------------------------------------------------------- the one function
def to_motion_clip(
    anim: SkeletonAnimation,
    *,
    skeleton: str = "auto",
    bone_map: dict[str, Any] | None = None,
    scale: float | None = None,
    up: str | None = None,
    fit_shape: bool = False,
    fps: float | None = None,
    width: int = 256,
    height: int = 256,
    body_model: str = "mannequin",
    betas: np.ndarray | None = None,
) -> Retargeted:
    """Retarget ``anim`` onto the SMPL body (module docstring).

    Args:
        skeleton: bone-map preset (:data:`btdm_engine.motion.bonemaps.SKELETONS`), ignored with ``bone_map``.
        bone_map: a custom map ``{smpl_joint_name: bone_name | None}`` (see ``bonemaps.map_from_dict``).
        scale: metres per unit; None uses the animation's own (when it states one) or detects it.
        up: "Y" or "Z"; None uses the animation's, or what the rest skeleton stands along when that differs.
        fit_shape: fit the body's betas to the rig's bone lengths (reported residual in mm).
        fps: resample to this rate (slerp); None keeps the animation's.
        width, height: image size of the default camera, used when ``anim`` has no shot camera.
        body_model, betas: the body the motion is put on (``betas`` is ignored with ``fit_shape``).

    Returns the clip and a report: ``skeleton`` (the scheme used), ``map`` ({smpl joint: bone}),
    ``units``, ``scale``, ``up``, ``facing_deg``, ``betas``, ``fit_rms_mm``/``fit_max_mm`` (with
    ``fit_shape``), ``camera`` ("shot" or "default") and ``warnings`` (one line each).
    """
    source = anim.source
    notes: list[str] = []
    if up is not None and up not in UP_AXES:
        raise RetargetError(f"unknown up axis {up!r}; allowed: {', '.join(UP_AXES)}")
    if scale is not None and not (np.isfinite(scale) and 1e-6 <= scale <= 1e3):
        raise RetargetError(f"scale must be metres per unit between 1e-6 and 1000, got {scale}")
    if fps is not None:
        limits.check_fps(fps, "fps (the rate to resample to)")  # the one fps limit of every command
    custom = map_from_dict(bone_map, anim.names, "bone map") if bone_map is not None else None
    mapping, scheme = choose_map(anim.names, tuple(anim.parents.tolist()), skeleton, custom, source)

    if up is None:
        up = anim.up
        seen = _up_from_rig(anim, mapping)
        if seen is None:
            raise RetargetError(f"{source}: the rest skeleton does not stand along Y or Z (head above ankles); "
                                "pass --up or check the bone map")
        if seen != up:
            notes.append(f"the file says {up} is up but the rest skeleton stands along {seen}: assumed {seen} "
                         "up; pass --up to override")
            up = seen
    else:
        _check_stated_up(anim, mapping, up, source)
    if scale is not None:
        unit = "given"
    elif anim.scale > 0:
        scale, unit = anim.scale, "stated"
    else:
        scale, unit, more = detect_units(anim, up, source)
        notes += more

    axes = _Z_TO_Y if up == "Z" else np.eye(3)
    R_rest = axes @ anim.rest_rotations()
    P_rest = scale * anim.rest_heads() @ axes.T
    tails = scale * anim.tails @ axes.T
    R = axes @ anim.rotations()
    P = scale * anim.heads() @ axes.T
    _check_distances(P, anim.names, source)
    notes += _root_jumps(P, anim.fps, anim.names, mapping)

    body = cached_body_model(body_model)
    bones = {JOINT_NAMES[j]: anim.names[b] for j, b in sorted(mapping.items())}
    report: dict[str, Any] = {"skeleton": scheme, "map": bones, "units": unit, "scale": float(scale), "up": up}
    if fit_shape:
        rig_joints = np.zeros((NUM_JOINTS, 3))
        for j, b in mapping.items():
            rig_joints[j] = P_rest[b]
        betas, rms, worst = fit_betas(body, rig_joints, mapping)
        report.update(fit_rms_mm=rms, fit_max_mm=worst)
        if worst > 30.0:
            notes.append(f"the body fits the rig's bone lengths to {rms:.0f} mm RMS, {worst:.0f} mm at worst: "
                         "the rig's proportions are outside the body model's shape space")
    betas = np.zeros(NUM_BETAS) if betas is None else np.asarray(betas, dtype=np.float64)
    rest = body.rest_joints(betas).astype(np.float64)

    face = _facing(rest, P_rest, mapping, source)
    W = _smpl_world_rotations(R, R_rest, P, P_rest, tails, anim.parents, mapping, rest, face)
    poses = local_rotations(W)
    # Place the body by the hips' midpoint, which every rig puts at the thigh heads (a pelvis bone's
    # head sits at different heights: Rigify's between the thighs, SMPL's and Mixamo's above them).
    hips = [J["left_hip"], J["right_hip"]]
    rig_hips = P[:, [mapping[j] for j in hips]].mean(1)
    trans = rig_hips - rest[0] - np.einsum("fij,j->fi", W[:, 0], rest[hips].mean(0) - rest[0])
    out_fps = anim.fps
    if fps is not None:
        poses, trans = _resample(poses, trans, anim.fps, fps)
        out_fps = float(fps)
    report.update(facing_deg=float(np.degrees(np.arctan2(face[0, 2], face[0, 0]))), betas=[float(b) for b in betas])

    if anim.has_camera:
        if fps is not None:
            raise RetargetError(f"{source}: cannot resample an animation that carries a shot camera (fps {fps}); "
                                "the plate must keep the shot's frames")
        # p_rig = axes^T p / scale; camera coordinates scaled by `scale` project to the same pixels.
        w2c = anim.cam_world_to_cam.copy()
        w2c[:, :3, :3] = w2c[:, :3, :3] @ axes.T
        w2c[:, :3, 3] *= scale
        K, cam_w, cam_h = anim.cam_K, anim.cam_width, anim.cam_height
        report["camera"] = "shot"
    else:
        facing = world_rotations(poses[:1])[0, 0][:, 2] * np.array([1.0, 0.0, 1.0])
        if np.linalg.norm(facing) < 1e-6:  # lying along the vertical: fall back to the world front
            facing = np.array([0.0, 0.0, 1.0])
        # A chunk of frames at a time (memory flat in the clip's length), from exact vertex positions.
        K, w2c = framing_camera(body, poses, betas, trans, width, height, direction=-facing)
        cam_w, cam_h = width, height
        report["camera"] = "default"
    clip = MotionClip(fps=out_fps, poses=poses, trans=trans, betas=betas, body_model=body_model,
                      K=K, width=int(cam_w), height=int(cam_h), world_to_cam=w2c)
    report["warnings"] = notes
    for line in notes:  # callers show or record report["warnings"] (btdm motion prints them once)
        logger.debug("%s: %s", source, line)
    return Retargeted(clip=clip, report=report)
