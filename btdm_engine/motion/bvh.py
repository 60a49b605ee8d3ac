"""BVH motion files: reading, writing, and retargeting onto SMPL as a MotionClip.

Reading (:func:`read_bvh`) keeps the file's own skeleton (:class:`Bvh`). Retargeting
(:func:`load_bvh`) maps named bones to SMPL joints (SMPL-style or Mixamo names) and transfers
*world-space* rotations relative to each skeleton's rest pose, so rigs whose rest bones point
elsewhere than SMPL's T-pose (a Mixamo A-pose, say) come out right:

1. BVH forward kinematics gives each bone's world rotation ``G_b(t)`` (identity at rest).
2. For every mapped SMPL joint j, a rest delta ``A_j`` rotates SMPL's rest bone directions (to its
   nearest mapped children) onto the BVH's rest bone directions (Kabsch / shortest arc).
3. SMPL's world rotation is ``W_j(t) = G_b(t) A_j``: it moves SMPL's bones as the BVH moves its
   own. Unmapped BVH bones in between are composed in: their rotations are part of the child's
   ``G``, and the parent's SMPL bone is re-aimed along the posed BVH chord.
4. Local SMPL rotations follow down SMPL's tree: ``R_j = W_parent(j)^T W_j``.

BVH conventions: angles in degrees; a joint's rotation channels compose in the order listed
(``Zrotation Xrotation Yrotation`` is ``Rz @ Rx @ Ry``); position channels replace the matching
OFFSET component (so a root's position channels are its absolute position, as Blender reads them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from btdm_engine.body.skeleton import JOINT_NAMES, MIXAMO_NAMES, NUM_BETAS, NUM_JOINTS, PARENTS
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_write_text
from btdm_engine.motion.camera import default_camera
from btdm_engine.motion.clip import MotionClip
from btdm_engine.motion.kinematics import local_rotations, world_rotations
from btdm_engine.motion.rotations import align_vectors, axis_angle_to_matrix, matrix_to_euler

__all__ = [
    "Bvh", "BvhError", "BvhJoint", "SKELETONS", "load_bvh", "read_bvh", "retarget", "save_bvh",
    "smpl_joint_map", "write_bvh",
]

SKELETONS = ("auto", "smpl", "mixamo")
UP_AXES = ("Y", "Z")
_POS = ("Xposition", "Yposition", "Zposition")
_ROT = ("Xrotation", "Yrotation", "Zrotation")
# Z-up (Blender: forward -Y) to Y-up (SMPL: forward +Z): (x, y, z) -> (x, z, -y).
_Z_TO_Y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
# Without these an import is not a body motion.
REQUIRED = tuple(JOINT_NAMES.index(n) for n in (
    "pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "head",
))


class BvhError(BtdmError, ValueError):
    """A malformed BVH file (the message names file and line) or one that cannot be mapped to SMPL."""


@dataclass
class BvhJoint:
    """One BVH joint; ``parent`` indexes the joint list (-1 for the root)."""

    name: str
    parent: int
    offset: np.ndarray  # (3,)
    channels: tuple[str, ...]
    end_site: np.ndarray | None = None  # offset of the End Site child, if any


@dataclass
class Bvh:
    """A BVH file's skeleton (joints in file order, parents first) and motion (frames, channels)."""

    joints: list[BvhJoint]
    frame_time: float
    motion: np.ndarray  # (F, total channels), angles in degrees
    channel_start: list[int] = field(init=False)

    def __post_init__(self) -> None:
        starts, n = [], 0
        for joint in self.joints:
            starts.append(n)
            n += len(joint.channels)
        self.channel_start = starts
        self.motion = np.asarray(self.motion, dtype=np.float64).reshape(-1, n)

    @property
    def num_frames(self) -> int:
        return int(self.motion.shape[0])

    def names(self) -> list[str]:
        return [joint.name for joint in self.joints]

    def forward(self) -> tuple[np.ndarray, np.ndarray]:
        """World rotations (F, NB, 3, 3) and positions (F, NB, 3), in the file's units and axes."""
        F = self.num_frames
        rots = np.empty((F, len(self.joints), 3, 3))
        pos = np.empty((F, len(self.joints), 3))
        for i, joint in enumerate(self.joints):
            local_t = np.broadcast_to(joint.offset, (F, 3)).copy()
            local_r = np.broadcast_to(np.eye(3), (F, 3, 3)).copy()
            for k, channel in enumerate(joint.channels):
                values = self.motion[:, self.channel_start[i] + k]
                if channel in _POS:
                    local_t[:, _POS.index(channel)] = values
                else:
                    aa = np.zeros((F, 3))
                    aa[:, _ROT.index(channel)] = np.radians(values)
                    local_r = local_r @ axis_angle_to_matrix(aa)
            if joint.parent < 0:
                rots[:, i], pos[:, i] = local_r, local_t
            else:
                rots[:, i] = rots[:, joint.parent] @ local_r
                pos[:, i] = pos[:, joint.parent] + np.einsum("fij,fj->fi", rots[:, joint.parent], local_t)
        return rots, pos

    def rest_positions(self) -> np.ndarray:
        """Joint positions (NB, 3) with every channel at zero (the skeleton's rest pose)."""
        pos = np.zeros((len(self.joints), 3))
        for i, joint in enumerate(self.joints):
            pos[i] = joint.offset if joint.parent < 0 else pos[joint.parent] + joint.offset
        return pos


# ---------------------------------------------------------------------------------- reading
class _Tokens:
    def __init__(self, lines: list[str], source: str):
        self.source = source
        self.items: list[tuple[str, int]] = []
        self.pos = 0
        for number, line in enumerate(lines, start=1):
            if line.strip().upper() == "MOTION":
                self.items.append(("MOTION", number))
                self.motion_line = number
                return
            self.items.extend((tok, number) for tok in line.split())
        self.motion_line = None

    def error(self, message: str, line: int | None = None) -> BvhError:
        if line is None:
            line = self.items[min(self.pos, len(self.items) - 1)][1] if self.items else 1
        return BvhError(f"{self.source}:{line}: {message}")

    def peek(self) -> str | None:
        return self.items[self.pos][0] if self.pos < len(self.items) else None

    def next(self, what: str) -> tuple[str, int]:
        if self.pos >= len(self.items):
            last = self.items[-1][1] if self.items else 1
            raise BvhError(f"{self.source}:{last}: unexpected end of file, expected {what}")
        item = self.items[self.pos]
        self.pos += 1
        return item

    def expect(self, word: str) -> int:
        tok, line = self.next(repr(word))
        if tok != word:
            raise BvhError(f"{self.source}:{line}: expected {word!r}, got {tok!r}")
        return line

    def number(self, what: str) -> float:
        tok, line = self.next(what)
        try:
            value = float(tok)
        except ValueError:
            raise BvhError(f"{self.source}:{line}: expected a number for {what}, got {tok!r}") from None
        if not np.isfinite(value):
            raise BvhError(f"{self.source}:{line}: {what} is not finite ({tok})")
        return value


def _parse_joint(tokens: _Tokens, joints: list[BvhJoint], parent: int, name: str, line: int) -> None:
    if not name:
        raise tokens.error("joint without a name", line)
    if any(j.name == name for j in joints):
        raise tokens.error(f"duplicate joint name {name!r}", line)
    tokens.expect("{")
    tokens.expect("OFFSET")
    offset = np.array([tokens.number(f"OFFSET {axis} of {name!r}") for axis in "xyz"])
    index = len(joints)
    joint = BvhJoint(name=name, parent=parent, offset=offset, channels=())
    joints.append(joint)
    if tokens.peek() == "CHANNELS":
        tokens.next("CHANNELS")
        tok, cline = tokens.next("channel count")
        if not tok.isdigit() or not 0 <= int(tok) <= 6:
            raise tokens.error(f"channel count of {name!r} must be 0..6, got {tok!r}", cline)
        channels = []
        for _ in range(int(tok)):
            ch, chline = tokens.next(f"a channel name of {name!r}")
            if ch not in _POS + _ROT:
                raise tokens.error(
                    f"unknown channel {ch!r} of {name!r}; allowed: {', '.join(_POS + _ROT)}", chline)
            if ch in channels:
                raise tokens.error(f"channel {ch!r} repeated in {name!r}", chline)
            channels.append(ch)
        joint.channels = tuple(channels)
    while True:
        tok, tline = tokens.next(f"'}}' closing {name!r}")
        if tok == "}":
            return
        if tok == "JOINT":
            child, cline = tokens.next("a joint name")
            _parse_joint(tokens, joints, index, child, cline)
        elif tok == "End":
            site, sline = tokens.next("'Site'")
            if site != "Site":
                raise tokens.error(f"expected 'End Site', got 'End {site}'", sline)
            tokens.expect("{")
            tokens.expect("OFFSET")
            end = np.array([tokens.number(f"End Site OFFSET {axis} of {name!r}") for axis in "xyz"])
            tokens.expect("}")
            joint.end_site = end
        else:
            raise tokens.error(f"expected JOINT, End Site or '}}' inside {name!r}, got {tok!r}", tline)


def read_bvh(path: str | os.PathLike[str]) -> Bvh:
    """Parse a BVH file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such BVH file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BvhError(f"{path.name}: not a text file ({exc.reason} at byte {exc.start})") from None
    lines = text.splitlines()
    src = path.name
    tokens = _Tokens(lines, src)
    if tokens.peek() != "HIERARCHY":
        got = repr(tokens.peek()) if tokens.peek() is not None else "end of file"
        line = tokens.items[0][1] if tokens.items else 1
        raise tokens.error(f"expected 'HIERARCHY' at the start of a BVH file, got {got}", line)
    tokens.next("HIERARCHY")
    root_line = tokens.expect("ROOT")
    name, _ = tokens.next("the root joint's name")
    joints: list[BvhJoint] = []
    _parse_joint(tokens, joints, -1, name, root_line)
    if tokens.peek() != "MOTION":
        tok, line = tokens.next("'MOTION'") if tokens.peek() else ("end of file", max(1, len(lines)))
        raise BvhError(f"{src}:{line}: expected 'MOTION' after the hierarchy, got {tok}")
    n_channels = sum(len(j.channels) for j in joints)

    # MOTION section: "Frames: N", "Frame Time: dt", then N lines of n_channels numbers.
    body = [(i + 1, line.strip()) for i, line in enumerate(lines) if i + 1 > tokens.motion_line]
    body = [(n, s) for n, s in body if s]
    if len(body) < 2:
        raise BvhError(f"{src}:{tokens.motion_line}: MOTION needs 'Frames:' and 'Frame Time:' lines")
    (fl, frames_line), (tl, time_line) = body[0], body[1]
    m = re.fullmatch(r"Frames:\s*(\d+)", frames_line)
    if not m:
        raise BvhError(f"{src}:{fl}: expected 'Frames: N', got {frames_line!r}")
    num_frames = int(m.group(1))
    m = re.fullmatch(r"Frame\s+Time:\s*(\S+)", time_line)
    try:
        frame_time = float(m.group(1)) if m else float("nan")
    except ValueError:
        frame_time = float("nan")
    if not (np.isfinite(frame_time) and frame_time > 0):
        raise BvhError(f"{src}:{tl}: expected 'Frame Time: seconds' (positive), got {time_line!r}")
    if num_frames == 0:
        raise BvhError(f"{src}:{fl}: the file has no frames")
    rows = body[2:]
    if len(rows) != num_frames:
        where = rows[-1][0] if rows else tl
        raise BvhError(f"{src}:{where}: 'Frames: {num_frames}' but {len(rows)} frame line(s) follow")
    motion = np.empty((num_frames, n_channels))
    for k, (number, row) in enumerate(rows):
        parts = row.split()
        if len(parts) != n_channels:
            raise BvhError(f"{src}:{number}: frame has {len(parts)} values, expected {n_channels} (one per channel)")
        try:
            motion[k] = [float(p) for p in parts]
        except ValueError:
            bad = next(p for p in parts if not _is_float(p))
            raise BvhError(f"{src}:{number}: {bad!r} is not a number") from None
        if not np.isfinite(motion[k]).all():
            raise BvhError(f"{src}:{number}: frame contains NaN or inf")
    return Bvh(joints=joints, frame_time=frame_time, motion=motion)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------- writing
def write_bvh(bvh: Bvh, path: str | os.PathLike[str]) -> Path:
    """Write ``bvh`` as a BVH text file, atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    children: dict[int, list[int]] = {i: [] for i in range(len(bvh.joints))}
    for i, joint in enumerate(bvh.joints):
        if joint.parent >= 0:
            children[joint.parent].append(i)
    out = ["HIERARCHY"]
    order: list[int] = []  # file order (depth first); the motion columns must follow it

    def emit(i: int, depth: int) -> None:
        joint, pad = bvh.joints[i], "  " * depth
        order.append(i)
        out.append(f"{pad}{'ROOT' if joint.parent < 0 else 'JOINT'} {joint.name}")
        out.append(f"{pad}{{")
        out.append(f"{pad}  OFFSET {_fmt(joint.offset)}")
        out.append(f"{pad}  CHANNELS {len(joint.channels)} {' '.join(joint.channels)}".rstrip())
        for c in children[i]:
            emit(c, depth + 1)
        if joint.end_site is not None:
            out.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {_fmt(joint.end_site)}",
                        f"{pad}  }}"])
        out.append(f"{pad}}}")

    roots = [i for i, joint in enumerate(bvh.joints) if joint.parent < 0]
    if len(roots) != 1:
        raise ValueError(f"a BVH skeleton needs exactly one root joint, got {len(roots)}")
    emit(roots[0], 0)
    columns = np.concatenate(
        [np.arange(bvh.channel_start[i], bvh.channel_start[i] + len(bvh.joints[i].channels)) for i in order]
    ).astype(np.int64)
    out += ["MOTION", f"Frames: {bvh.num_frames}", f"Frame Time: {bvh.frame_time:.8f}"]
    out += [_fmt(row) for row in bvh.motion[:, columns]]
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, "\n".join(out) + "\n")


def _fmt(values: np.ndarray) -> str:
    return " ".join(f"{v:.6f}" for v in np.asarray(values, dtype=np.float64))


def save_bvh(
    clip: MotionClip, path: str | os.PathLike[str], *, units: str = "cm", body_model: str | None = None
) -> Path:
    """Write ``clip`` as a BVH with SMPL joint names and SMPL's rest skeleton (a T-pose).

    Offsets come from the body model's rest joints for ``clip.betas``; the root's position
    channels hold the pelvis position ``rest pelvis + trans``. ``units``: "cm" or "m"; Y up.
    """
    if units not in ("cm", "m"):
        raise ValueError(f"unknown units {units!r}; allowed: cm, m")
    scale = 100.0 if units == "cm" else 1.0
    from btdm_engine.motion.library import cached_body_model

    rest = cached_body_model(body_model or clip.body_model).rest_joints(clip.betas).astype(np.float64)
    has_child = {p for p in PARENTS if p >= 0}
    joints = []
    for j, name in enumerate(JOINT_NAMES):
        p = PARENTS[j]
        offset = rest[j] if p < 0 else rest[j] - rest[p]
        channels = (*_POS, "Zrotation", "Xrotation", "Yrotation") if p < 0 else ("Zrotation", "Xrotation", "Yrotation")
        end = None if j in has_child else 0.5 * (rest[j] - rest[p]) * scale
        joints.append(BvhJoint(name=name, parent=p, offset=offset * scale, channels=channels, end_site=end))
    local = axis_angle_to_matrix(clip.poses)
    angles = np.degrees(matrix_to_euler(local, "ZXY"))  # (T, 24, 3) in channel order
    root_pos = (rest[0] + clip.trans.astype(np.float64)) * scale
    motion = np.concatenate([root_pos, angles.reshape(clip.num_frames, -1)], axis=1)
    return write_bvh(Bvh(joints=joints, frame_time=1.0 / clip.fps, motion=motion), path)


# ---------------------------------------------------------------------------------- mapping
def _normalise(name: str) -> str:
    name = name.split(":")[-1].lower()  # "mixamorig:LeftArm", "mixamorig1:LeftArm"
    for prefix in ("m_avg_", "f_avg_", "smpl_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return re.sub(r"[^a-z0-9]", "", name)


def _smpl_aliases() -> dict[str, int]:
    aliases: dict[str, int] = {}
    for j, name in enumerate(JOINT_NAMES):
        if name.startswith(("left_", "right_")):
            side, part = name.split("_", 1)
            s = side[0]
            for variant in (f"{side}{part}", f"{s}{part}", f"{part}{side}", f"{part}{s}"):
                aliases[_normalise(variant)] = j
        else:
            aliases[_normalise(name)] = j
    return aliases


_ALIASES = {
    "smpl": _smpl_aliases(),
    "mixamo": {_normalise(n): j for j, n in enumerate(MIXAMO_NAMES)},
}


def smpl_joint_map(names: list[str], skeleton: str = "auto", source: str = "BVH") -> tuple[dict[int, int], str]:
    """Map BVH bone names to SMPL joints: ``{smpl_joint: bvh_index}`` and the naming scheme used.

    ``skeleton``: "smpl" (SMPL joint names and variants such as ``L_Hip``, ``Pelvis``, ``m_avg_``
    prefixes), "mixamo" (``Hips``, ``LeftUpLeg`` ... with or without a ``mixamorig:`` prefix), or
    "auto" (whichever matches more bones).
    """
    if skeleton not in SKELETONS:
        raise ValueError(f"unknown skeleton {skeleton!r}; allowed: {', '.join(SKELETONS)}")
    schemes = ("smpl", "mixamo") if skeleton == "auto" else (skeleton,)
    found: dict[str, dict[int, int]] = {}
    for scheme in schemes:
        mapping: dict[int, int] = {}
        for i, name in enumerate(names):
            j = _ALIASES[scheme].get(_normalise(name))
            if j is None:
                continue
            if j in mapping:
                raise BvhError(
                    f"{source}: bones {names[mapping[j]]!r} and {name!r} both name SMPL joint "
                    f"{JOINT_NAMES[j]!r} ({scheme} skeleton)")
            mapping[j] = i
        found[scheme] = mapping
    scheme = max(schemes, key=lambda s: len(found[s]))
    if skeleton == "auto" and len(found["smpl"]) == len(found["mixamo"]):
        raise BvhError(
            f"{source}: cannot tell the skeleton from its bone names ({len(found['smpl'])} SMPL-style, "
            f"{len(found['mixamo'])} Mixamo-style matches); pass skeleton='smpl' or 'mixamo'")
    mapping = found[scheme]
    table = JOINT_NAMES if scheme == "smpl" else MIXAMO_NAMES
    missing = [j for j in REQUIRED if j not in mapping]
    if missing:
        listed = ", ".join(f"{table[j]} ({JOINT_NAMES[j]})" for j in missing)
        raise BvhError(f"{source}: missing required bone(s) for the {scheme} skeleton: {listed}")
    return mapping, scheme


def _mapped_children(mapping: dict[int, int]) -> dict[int, list[int]]:
    """For each mapped SMPL joint, its nearest mapped descendants in SMPL's tree."""
    out: dict[int, list[int]] = {j: [] for j in mapping}
    for j in mapping:
        a = PARENTS[j]
        while a >= 0 and a not in mapping:
            a = PARENTS[a]
        if a >= 0:
            out[a].append(j)
    return out


def _is_ancestor(joints: list[BvhJoint], anc: int, node: int) -> bool:
    while node >= 0:
        if node == anc:
            return True
        node = joints[node].parent
    return False


# ---------------------------------------------------------------------------------- retargeting
def retarget(
    bvh: Bvh, rest: np.ndarray, skeleton: str = "auto", scale: float | None = None,
    up_axis: str = "Y", source: str = "BVH",
) -> tuple[np.ndarray, np.ndarray]:
    """SMPL poses (F, 24, 3) and trans (F, 3) reproducing ``bvh`` on SMPL rest joints ``rest`` (24, 3)."""
    if up_axis not in UP_AXES:
        raise ValueError(f"unknown up axis {up_axis!r}; allowed: {', '.join(UP_AXES)}")
    mapping, scheme = smpl_joint_map(bvh.names(), skeleton, source)
    names = bvh.names()
    children = _mapped_children(mapping)
    for j, kids in children.items():
        for c in kids:
            if not _is_ancestor(bvh.joints, mapping[j], mapping[c]):
                raise BvhError(
                    f"{source}: bone {names[mapping[c]]!r} ({JOINT_NAMES[c]}) is not below "
                    f"{names[mapping[j]]!r} ({JOINT_NAMES[j]}) as SMPL's skeleton requires")

    rest_bvh = bvh.rest_positions()
    if scale is None:
        scale = _auto_scale(bvh, rest_bvh, up_axis, source)
    elif not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale}")
    axes = _Z_TO_Y if up_axis == "Z" else np.eye(3)
    G, P = bvh.forward()
    G = axes @ G @ axes.T
    P = scale * P @ axes.T
    rest_bvh = scale * rest_bvh @ axes.T

    F = bvh.num_frames
    W = np.empty((F, NUM_JOINTS, 3, 3))
    deltas: dict[int, np.ndarray] = {}
    for j in range(NUM_JOINTS):  # parents come first in SMPL's joint order
        if j not in mapping:
            W[:, j] = W[:, PARENTS[j]]  # missing optional joint: no rotation of its own
            continue
        b, kids = mapping[j], children[j]
        if kids:
            smpl_dirs = np.stack([rest[c] - rest[j] for c in kids])
            bvh_dirs = np.stack([rest_bvh[mapping[c]] - rest_bvh[b] for c in kids])
            deltas[j] = align_vectors(smpl_dirs, bvh_dirs)
        else:  # a leaf: keep the rest delta of the nearest mapped ancestor
            a = PARENTS[j]
            while a >= 0 and a not in deltas:
                a = PARENTS[a]
            deltas[j] = deltas[a] if a >= 0 else np.eye(3)
        W[:, j] = G[:, b] @ deltas[j]
        if any(bvh.joints[mapping[c]].parent != b for c in kids):
            # Unmapped bones between j and a child bend the chord: re-aim SMPL's bones along it.
            posed = np.stack([P[:, mapping[c]] - P[:, b] for c in kids], axis=1)
            current = np.einsum("fij,kj->fki", W[:, j], np.stack([rest[c] - rest[j] for c in kids]))
            W[:, j] = _batch_align(current, posed) @ W[:, j]
    poses = local_rotations(W)
    trans = P[:, mapping[0]] - rest[0]
    return poses, trans


def _auto_scale(bvh: Bvh, rest_bvh: np.ndarray, up_axis: str, source: str) -> float:
    """Metres per file unit from the rest skeleton's height: metres or centimetres."""
    points = [rest_bvh] + [
        (rest_bvh[i] + j.end_site)[None] for i, j in enumerate(bvh.joints) if j.end_site is not None
    ]
    points = np.concatenate(points)
    height = float(np.ptp(points[:, 1 if up_axis == "Y" else 2]))
    if 0.3 <= height <= 3.5:
        return 1.0
    if 30.0 <= height <= 350.0:
        return 0.01
    raise BvhError(
        f"{source}: cannot infer units from a rest skeleton {height:g} units tall along {up_axis} "
        "(expected metres or centimetres); pass scale (metres per file unit) or check up_axis")


def _batch_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Per-frame rotations (F, 3, 3) taking directions src (F, K, 3) onto dst (F, K, 3)."""
    src = src / np.linalg.norm(src, axis=-1, keepdims=True)
    dst = dst / np.linalg.norm(dst, axis=-1, keepdims=True)
    if src.shape[1] == 1:
        a, b = src[:, 0], dst[:, 0]
        axis = np.cross(a, b)
        sin = np.linalg.norm(axis, axis=-1, keepdims=True)
        cos = np.sum(a * b, axis=-1, keepdims=True)
        rotvec = axis / np.maximum(sin, 1e-12) * np.arctan2(sin, cos)
        return axis_angle_to_matrix(rotvec)
    # Kabsch: R = V diag(1, 1, det) U^T from the SVD of sum src dst^T.
    H = np.einsum("fki,fkj->fij", src, dst)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, 1, 2) @ np.swapaxes(U, 1, 2)))
    D = np.broadcast_to(np.eye(3), H.shape).copy()
    D[:, 2, 2] = d
    return np.swapaxes(Vt, 1, 2) @ D @ np.swapaxes(U, 1, 2)


def _resample(poses: np.ndarray, trans: np.ndarray, src_fps: float, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample to ``fps``: slerp for joint rotations, linear for translation."""
    T = len(poses)
    t_src = np.arange(T) / src_fps
    n = int(np.floor(t_src[-1] * fps + 1e-9)) + 1
    t_dst = np.arange(n) / fps
    if T == 1:
        return poses.copy(), trans.copy()
    out = np.empty((n, NUM_JOINTS, 3))
    for j in range(NUM_JOINTS):
        out[:, j] = Slerp(t_src, Rotation.from_rotvec(poses[:, j]))(t_dst).as_rotvec()
    moved = np.stack([np.interp(t_dst, t_src, trans[:, k]) for k in range(3)], axis=-1)
    return out, moved


def load_bvh(
    path: str | os.PathLike[str],
    skeleton: str = "auto",
    fps: float | None = None,
    scale: float | None = None,
    up_axis: str = "Y",
    *,
    width: int = 256,
    height: int = 256,
    body_model: str = "mannequin",
    betas: np.ndarray | None = None,
) -> MotionClip:
    """Import a BVH motion onto SMPL as a MotionClip framed by the default camera.

    Args:
        path: the .bvh file.
        skeleton: bone naming, one of :data:`SKELETONS` (see :func:`smpl_joint_map`).
        fps: resample to this frame rate (slerp); None keeps the file's ``1 / Frame Time``.
        scale: metres per file unit; None infers metres or centimetres from the skeleton height.
        up_axis: "Y" (as SMPL) or "Z" (Blender-style, forward -Y), converted to SMPL's Y-up.
        width, height: image size of the attached camera.
        body_model, betas: the SMPL body the motion is put on (its rest joints set bone lengths).

    The SMPL pelvis follows the BVH's pelvis/hips bone: ``trans = hips position - rest pelvis``.
    """
    from btdm_engine.motion.library import cached_body_model

    path = Path(path)
    if skeleton not in SKELETONS:
        raise ValueError(f"unknown skeleton {skeleton!r}; allowed: {', '.join(SKELETONS)}")
    if up_axis not in UP_AXES:
        raise ValueError(f"unknown up axis {up_axis!r}; allowed: {', '.join(UP_AXES)}")
    if fps is not None and not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    bvh = read_bvh(path)
    betas = np.zeros(NUM_BETAS) if betas is None else np.asarray(betas, dtype=np.float64)
    body = cached_body_model(body_model)
    rest = body.rest_joints(betas).astype(np.float64)
    poses, trans = retarget(bvh, rest, skeleton, scale, up_axis, source=path.name)
    src_fps = 1.0 / bvh.frame_time
    if fps is not None:
        poses, trans = _resample(poses, trans, src_fps, fps)
    out_fps = float(fps) if fps is not None else src_fps
    verts, _ = body.forward(poses.astype(np.float32), betas.astype(np.float32), trans.astype(np.float32))
    root = world_rotations(poses[:1])[0, 0]
    facing = root[:, 2] * np.array([1.0, 0.0, 1.0])
    if np.linalg.norm(facing) < 1e-6:  # lying along the vertical: fall back to the world front
        facing = np.array([0.0, 0.0, 1.0])
    K, w2c = default_camera(np.asarray(verts), width, height, direction=-facing)
    return MotionClip(
        fps=out_fps, poses=poses, trans=trans, betas=betas, body_model=body_model,
        K=K, width=width, height=height, world_to_cam=w2c,
    )
