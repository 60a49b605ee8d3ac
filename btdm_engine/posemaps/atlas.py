"""The DensePose-style IUV atlas of a body model: per-face parts and per-part UV charts.

An :class:`Atlas` lives on a *split* copy of the body mesh: a body vertex that lies on the seam
between parts is duplicated once per part, so that every face's three vertices carry that face's
part index and that part's chart coordinates. A renderer can then interpolate per-vertex
(I, U, V) across each face and I stays exact (constant) inside every face.

:func:`build_atlas` derives the atlas procedurally for any SMPL-layout body (the mannequin):

* segment of a face = the body segment of the bone with the largest summed skinning weight over
  its vertices (pelvis, spine and collars -> torso; neck and head -> head; ...);
* front/back (and the arms' inside/outside: inside is the side facing forward in the rest T-pose,
  the side of the elbow crease) from the side of the bone axis the face lies on in the rest pose;
  the head's right/left from the sign of x;
* charts: limbs are half-cylinders around the bone axis (V along the bone from the proximal
  joint, U around the axis from one front/back cut to the other), torso halves a planar
  projection on the frontal plane, head halves a projection on the sagittal plane, hands and
  feet planar projections along their bones; every chart is normalised to [0, 1] in its part.

Mirror consistency (what :func:`~btdm_engine.posemaps.parts.flip_iuv` relies on): the template,
joints and weights are symmetrised with the body's ``mirror_vertex_index`` first, the part of a
face on the right side is the mirror of its left twin face's part, each right part's chart is its
left twin's chart evaluated at the mirrored point, and the torso's U is an odd function of x.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from btdm_engine.body.skeleton import JOINT_NAMES, MIRROR, NUM_JOINTS
from btdm_engine.errors import BtdmError
from btdm_engine.posemaps.parts import MIRROR_PART, NUM_PARTS, PART_NAMES, part_index

if TYPE_CHECKING:
    from btdm_engine.body.model import BodyModel


class AtlasError(BtdmError, ValueError):
    """An atlas (built or read) is inconsistent; the message names the array at fault."""


@dataclass(frozen=True)
class Atlas:
    """IUV atlas on a seam-split copy of a body mesh.

    Attributes:
        vertex_index: int64 ``(V',)``: body vertex of each split vertex.
        faces: int64 ``(F, 3)``: triangles over the split vertices, the body's winding.
        part: uint8 ``(V',)``: DensePose part 1..24 of each split vertex; the three vertices of
            a face share one part.
        uv: float32 ``(V', 2)``: chart coordinates (U, V) in [0, 1] within the vertex's part.
        source: where the atlas came from (``"procedural"`` or a file path).
    """

    vertex_index: np.ndarray
    faces: np.ndarray
    part: np.ndarray
    uv: np.ndarray
    source: str = "procedural"

    @property
    def num_vertices(self) -> int:
        return int(self.vertex_index.shape[0])

    @property
    def face_part(self) -> np.ndarray:
        """uint8 ``(F,)``: the part of each face."""
        return self.part[self.faces[:, 0]]

    def vertex_colors(self) -> np.ndarray:
        """float32 ``(V', 4)`` RGBA vertex colours (I/255, U, V, 1) for the renderer."""
        colors = np.ones((self.num_vertices, 4), dtype=np.float32)
        colors[:, 0] = self.part.astype(np.float32) / 255.0
        colors[:, 1:3] = self.uv
        return colors

    def validate(self, num_body_vertices: int | None = None) -> Atlas:
        """Check shapes, ranges and that each face lies in one part; return self."""
        where = f"atlas ({self.source})"
        n = self.num_vertices
        if self.vertex_index.shape != (n,) or self.vertex_index.dtype != np.int64:
            raise AtlasError(f"{where}: vertex_index must be int64 (V',)")
        if self.part.shape != (n,) or self.part.dtype != np.uint8:
            raise AtlasError(f"{where}: part must be uint8 (V',) like vertex_index")
        if self.uv.shape != (n, 2) or self.uv.dtype != np.float32:
            raise AtlasError(f"{where}: uv must be float32 (V', 2)")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3 or self.faces.dtype != np.int64:
            raise AtlasError(f"{where}: faces must be int64 (F, 3)")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= n):
            raise AtlasError(f"{where}: faces index outside 0..{n - 1}")
        if n and (self.part.min() < 1 or self.part.max() > NUM_PARTS):
            raise AtlasError(f"{where}: part values must lie in 1..{NUM_PARTS}")
        if not np.all(np.isfinite(self.uv)) or self.uv.min() < 0.0 or self.uv.max() > 1.0:
            raise AtlasError(f"{where}: uv values must be finite and in [0, 1]")
        if num_body_vertices is not None and n and self.vertex_index.max() >= num_body_vertices:
            raise AtlasError(
                f"{where}: vertex_index reaches {int(self.vertex_index.max())}, "
                f"the body has {num_body_vertices} vertices"
            )
        corner_parts = self.part[self.faces]
        mixed = int(np.count_nonzero(corner_parts.min(axis=1) != corner_parts.max(axis=1)))
        if mixed:
            raise AtlasError(f"{where}: {mixed} faces mix vertices of different parts")
        return self


# ---------------------------------------------------------------------------------------------
# Segments: which part(s) each skinning bone's surface belongs to.

# The bone driving a region of skin -> body segment. Skinning weight on joint j moves the
# segment that hangs below j (the left hip moves the left thigh).
_SEGMENT_OF_JOINT: dict[str, str] = {
    "pelvis": "torso", "spine1": "torso", "spine2": "torso", "spine3": "torso",
    "left_collar": "torso", "right_collar": "torso",
    "neck": "head", "head": "head",
    "left_hip": "left_thigh", "right_hip": "right_thigh",
    "left_knee": "left_calf", "right_knee": "right_calf",
    "left_ankle": "left_foot", "left_foot": "left_foot",
    "right_ankle": "right_foot", "right_foot": "right_foot",
    "left_shoulder": "left_upper_arm", "right_shoulder": "right_upper_arm",
    "left_elbow": "left_forearm", "right_elbow": "right_forearm",
    "left_wrist": "left_hand", "left_hand": "left_hand",
    "right_wrist": "right_hand", "right_hand": "right_hand",
}

# Limb segments: (proximal joint, distal joint, part in front, part behind), left side only;
# the right side comes from the mirror. "Front" is the +z side of the bone in the rest pose,
# which for the arms is DensePose's "inside" (the elbow crease faces forward in a T-pose).
_LIMBS: dict[str, tuple[str, str, str, str]] = {
    "left_thigh": ("left_hip", "left_knee", "left_thigh_front", "left_thigh_back"),
    "left_calf": ("left_knee", "left_ankle", "left_calf_front", "left_calf_back"),
    "left_upper_arm": (
        "left_shoulder", "left_elbow", "left_upper_arm_inside", "left_upper_arm_outside",
    ),
    "left_forearm": ("left_elbow", "left_wrist", "left_forearm_inside", "left_forearm_outside"),
}

# Hands and feet: planar charts along the bone (proximal, distal joint) with U across it
# along the given world axis.
_EXTREMITIES: dict[str, tuple[str, str, int]] = {
    "left_hand": ("left_wrist", "left_hand", 2),
    "left_foot": ("left_ankle", "left_foot", 0),
}

_SEGMENTS: tuple[str, ...] = tuple(sorted(set(_SEGMENT_OF_JOINT.values())))
_JOINT = {name: i for i, name in enumerate(JOINT_NAMES)}
_REFLECT = np.array([-1.0, 1.0, 1.0])


def _mirror_segment(seg: str) -> str:
    return seg.replace("left_", "@").replace("right_", "left_").replace("@", "right_")


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n < 1e-9:
        raise AtlasError(f"atlas: degenerate direction {v.tolist()} (coincident joints?)")
    return v / n


def _bone_frame(joints: np.ndarray, proximal: str, distal: str) -> tuple[np.ndarray, ...]:
    """Origin, axis a, cut direction e1 and front direction e2 of a limb in the rest pose."""
    origin = joints[_JOINT[proximal]]
    axis = _unit(joints[_JOINT[distal]] - origin)
    z = np.array([0.0, 0.0, 1.0])
    front = _unit(z - (z @ axis) * axis)
    cut = np.cross(front, axis)
    return origin, axis, cut, front


# ---------------------------------------------------------------------------------------------
# Body access: the body model's arrays, symmetrised.


def _body_arrays(body: BodyModel) -> dict[str, np.ndarray]:
    def arr(name: str) -> np.ndarray:
        value = getattr(body, name, None)
        if value is None:
            raise AtlasError(
                f"body model {getattr(body, 'name', '?')!r} has no {name}; the procedural atlas "
                "needs it (for a licensed SMPL body pass DensePose's UV_Processed.mat instead)"
            )
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        if hasattr(value, "toarray"):  # scipy sparse J_regressor
            value = value.toarray()
        return np.asarray(value)

    v = arr("v_template").astype(np.float64)
    faces = arr("faces").astype(np.int64)
    weights = arr("weights").astype(np.float64)
    regressor = arr("J_regressor").astype(np.float64)
    mirror = arr("mirror_vertex_index").astype(np.int64)
    n = v.shape[0]
    if v.ndim != 2 or v.shape[1] != 3:
        raise AtlasError(f"body model: v_template must be (V, 3), got {v.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= n:
        raise AtlasError(f"body model: faces must be (F, 3) indices into {n} vertices")
    if weights.shape != (n, NUM_JOINTS):
        raise AtlasError(f"body model: weights must be ({n}, {NUM_JOINTS}), got {weights.shape}")
    if regressor.shape != (NUM_JOINTS, n):
        raise AtlasError(
            f"body model: J_regressor must be ({NUM_JOINTS}, {n}), got {regressor.shape}"
        )
    if mirror.shape != (n,) or mirror.min() < 0 or mirror.max() >= n:
        raise AtlasError(f"body model: mirror_vertex_index must be ({n},) indices")
    if not np.array_equal(mirror[mirror], np.arange(n)):
        raise AtlasError("body model: mirror_vertex_index is not an involution (m[m[i]] != i)")
    return {"v": v, "faces": faces, "weights": weights, "regressor": regressor, "mirror": mirror}


def _body_key(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha1()
    for name in ("v", "faces", "weights", "regressor", "mirror"):
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


_ATLAS_CACHE: dict[str, Atlas] = {}


def build_atlas(body: BodyModel) -> Atlas:
    """Procedural DensePose-style atlas for a body model (see the module docstring).

    The result is cached in memory by a hash of the body's template, faces, weights, joint
    regressor and mirror map, so renderers built on the same body share one atlas.

    Args:
        body: a body with ``v_template (V,3)``, ``faces (F,3)``, ``weights (V,24)``,
            ``J_regressor (24,V)`` and ``mirror_vertex_index (V,)``.
    """
    arrays = _body_arrays(body)
    key = _body_key(arrays)
    if key not in _ATLAS_CACHE:
        _ATLAS_CACHE[key] = _build(arrays)
    return _ATLAS_CACHE[key]


def _build(a: dict[str, np.ndarray]) -> Atlas:
    v, faces, mirror = a["v"], a["faces"], a["mirror"]
    # Symmetrise once so that every geometric decision below is exactly mirror-symmetric.
    v = 0.5 * (v + v[mirror] * _REFLECT)
    weights = 0.5 * (a["weights"] + a["weights"][mirror][:, list(MIRROR)])
    joints = a["regressor"] @ v
    joints = 0.5 * (joints + joints[list(MIRROR)] * _REFLECT)

    face_part = _face_parts(v, faces, weights, joints)
    face_part = _symmetrise_face_parts(v, faces, mirror, face_part)

    # Split seam vertices: one split vertex per (body vertex, part) pair used by a face.
    corner_key = faces * 32 + face_part[:, None].astype(np.int64)
    keys, inverse = np.unique(corner_key.ravel(), return_inverse=True)
    vertex_index = keys // 32
    part = (keys % 32).astype(np.uint8)
    split_faces = inverse.reshape(faces.shape).astype(np.int64)

    uv = _charts(v[vertex_index], part, joints)
    return Atlas(vertex_index, split_faces, part, uv, "procedural").validate(v.shape[0])


def _face_parts(
    v: np.ndarray, faces: np.ndarray, weights: np.ndarray, joints: np.ndarray
) -> np.ndarray:
    """Part 1..24 of every face from its dominant bone and its side of that bone."""
    bone = weights[faces].sum(axis=1).argmax(axis=1)
    segment_of_bone = np.array([_SEGMENTS.index(_SEGMENT_OF_JOINT[n]) for n in JOINT_NAMES])
    segment = segment_of_bone[bone]
    centroid = v[faces].mean(axis=1)
    part = np.zeros(faces.shape[0], dtype=np.uint8)

    def assign(seg: str, values: np.ndarray | int, mask: np.ndarray | None = None) -> None:
        sel = segment == _SEGMENTS.index(seg)
        if mask is not None:
            sel &= mask
        part[sel] = values if np.isscalar(values) else values[sel]

    # Torso: front/back of the spine line (pelvis -> neck).
    origin = joints[_JOINT["pelvis"]]
    axis = _unit(joints[_JOINT["neck"]] - origin)
    rel = centroid - origin
    radial = rel - np.outer(rel @ axis, axis)
    assign("torso", np.where(radial[:, 2] > 0, part_index("torso_front"),
                             part_index("torso_back")).astype(np.uint8))
    # Head: the person's left is +x.
    assign("head", np.where(centroid[:, 0] > 0, part_index("head_left"),
                            part_index("head_right")).astype(np.uint8))
    for seg, (prox, dist, front_part, back_part) in _LIMBS.items():
        for side in (seg, _mirror_segment(seg)):
            origin, axis, _, front = _bone_frame(joints, prox, dist)
            pts = centroid
            if side != seg:
                # A right limb is decided in its mirror image, by the left limb's frame.
                pts = centroid * _REFLECT
            in_front = (pts - origin) @ front > 0
            fp, bp = part_index(front_part), part_index(back_part)
            if side != seg:
                fp, bp = int(MIRROR_PART[fp]), int(MIRROR_PART[bp])
            assign(side, np.where(in_front, fp, bp).astype(np.uint8))
    for seg in _EXTREMITIES:
        assign(seg, part_index(seg))
        assign(_mirror_segment(seg), part_index(_mirror_segment(seg)))
    if np.any(part == 0):
        raise AtlasError("atlas: some faces got no part (unmapped skinning bone)")
    return part


def _symmetrise_face_parts(
    v: np.ndarray, faces: np.ndarray, mirror: np.ndarray, part: np.ndarray
) -> np.ndarray:
    """Give every right-side face the mirror of its left twin face's part.

    Ties in the skinning argmax (a face on the midline with equal left and right weights) would
    otherwise break the exact left/right symmetry that flip augmentation relies on.
    """
    key = np.sort(faces, axis=1)
    twin_key = np.sort(mirror[faces], axis=1)
    # Look each twin up among the faces by its sorted vertex triple.
    dtype = np.dtype([("a", np.int64), ("b", np.int64), ("c", np.int64)])
    rows = np.ascontiguousarray(key).view(dtype).ravel()
    twins = np.ascontiguousarray(twin_key).view(dtype).ravel()
    order = np.argsort(rows)
    pos = np.searchsorted(rows[order], twins).clip(0, len(rows) - 1)
    twin = order[pos]
    found = rows[twin] == twins
    right_side = v[faces].mean(axis=1)[:, 0] < 0
    take = found & right_side
    out = part.copy()
    out[take] = MIRROR_PART[part[twin[take]]]
    return out


# ---------------------------------------------------------------------------------------------
# Charts.


def _raw_chart(part_name: str, p: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Un-normalised (U, V) of points ``p`` (N, 3) on a left-side or torso part's chart."""
    if part_name.startswith("torso"):
        # Planar projection on the frontal plane; U = x is odd under the mirror (U -> 1 - U
        # once normalised symmetrically), V runs from the top down.
        return np.stack([p[:, 0], -p[:, 1]], axis=1)
    if part_name == "head_left":
        # Projection on the sagittal plane: U from the back (-z) to the face, V from the top.
        return np.stack([p[:, 2], -p[:, 1]], axis=1)
    for prox, dist, front_part, back_part in _LIMBS.values():
        if part_name in (front_part, back_part):
            origin, axis, cut, front = _bone_frame(joints, prox, dist)
            rel = p - origin
            # Half-cylinder: the angle around the bone from one front/back cut (e1) to the
            # other; |front| folds vertices that sit on the cut into this half, so the chart has
            # no wrap-around seam.
            angle = np.arctan2(np.abs(rel @ front), rel @ cut) / np.pi
            return np.stack([angle, rel @ axis], axis=1)
    for seg, (prox, dist, across_axis) in _EXTREMITIES.items():
        if part_name == seg:
            origin = joints[_JOINT[prox]]
            axis = _unit(joints[_JOINT[dist]] - origin)
            across = np.zeros(3)
            across[across_axis] = 1.0
            across = _unit(across - (across @ axis) * axis)
            rel = p - origin
            return np.stack([rel @ across, rel @ axis], axis=1)
    raise AtlasError(f"atlas: no chart for part {part_name!r}")  # unreachable for 1..24


def _charts(points: np.ndarray, part: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(U, V) in [0, 1] of each split vertex in its part's chart."""
    uv = np.zeros((points.shape[0], 2), dtype=np.float64)
    for p in range(1, NUM_PARTS + 1):
        name = PART_NAMES[p]
        if name.startswith("right_") or name == "head_right":
            continue  # filled from the left twin below
        sel = part == p
        if not np.any(sel):
            continue
        raw = _raw_chart(name, points[sel], joints)
        lo, hi = raw.min(axis=0), raw.max(axis=0)
        if name.startswith("torso"):
            # Symmetric range in x so that the mirror maps U to exactly 1 - U.
            half = np.abs(raw[:, 0]).max()
            lo[0], hi[0] = -half, half
        span = np.maximum(hi - lo, 1e-9)
        uv[sel] = (raw - lo) / span
        twin = int(MIRROR_PART[p])
        if twin != p:
            # The right twin's chart is the left chart at the mirrored point, with the left
            # part's normalisation: a mirrored body then shows identical (U, V).
            tsel = part == twin
            if np.any(tsel):
                traw = _raw_chart(name, points[tsel] * _REFLECT, joints)
                uv[tsel] = (traw - lo) / span
    return np.clip(uv, 0.0, 1.0).astype(np.float32)
