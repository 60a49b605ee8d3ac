"""BVH motion files: reading, writing, and import onto SMPL as a MotionClip.

Reading (:func:`read_bvh`) keeps the file's own skeleton (:class:`Bvh`);
:func:`skeleton_from_bvh` states it under the skeleton-animation contract, and :func:`load_bvh`
hands that to the one retargeting core (:mod:`btdm_engine.motion.retarget`), which BVH, FBX and
Blender armatures share.

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

from btdm_engine import limits
from btdm_engine.body.skeleton import JOINT_NAMES, PARENTS
from btdm_engine.constants import UP_AXES
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_write_text
from btdm_engine.motion.bonemaps import SKELETONS
from btdm_engine.motion.clip import MotionClip
from btdm_engine.motion.library import cached_body_model
from btdm_engine.motion.retarget import to_motion_clip
from btdm_engine.motion.rotations import axis_angle_to_matrix, matrix_to_euler
from btdm_engine.motion.skeleton_animation import SkeletonAnimation

__all__ = [
    "MAX_ANGLE",
    "MAX_DEPTH",
    "MAX_FRAMES",
    "MAX_JOINTS",
    "MAX_POSITION",
    "SKELETONS",
    "Bvh",
    "BvhError",
    "BvhJoint",
    "load_bvh",
    "read_bvh",
    "save_bvh",
    "skeleton_from_bvh",
    "write_bvh",
]

# Limits on what a file may declare (a named error, never a RecursionError or a huge allocation).
MAX_DEPTH = 256
MAX_JOINTS = 1024
MAX_FRAMES = 100_000
# Channel values no motion holds (a corrupt or hostile file): positions in file units (100 km in mm),
# angles in degrees. Beyond them float precision is gone and the body leaves any camera.
MAX_POSITION = 1e8
MAX_ANGLE = 1e6
_POS = ("Xposition", "Yposition", "Zposition")
_ROT = ("Xrotation", "Yrotation", "Zrotation")


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


def _parse_joint(tokens: _Tokens, joints: list[BvhJoint], parent: int, name: str, line: int, depth: int = 0) -> None:
    if depth >= MAX_DEPTH:
        raise tokens.error(f"joints nested more than {MAX_DEPTH} levels deep (at {name!r})", line)
    if len(joints) >= MAX_JOINTS:
        raise tokens.error(f"more than {MAX_JOINTS} joints", line)
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
            _parse_joint(tokens, joints, index, child, cline, depth + 1)
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
    if num_frames > MAX_FRAMES:
        raise BvhError(f"{src}:{fl}: 'Frames: {num_frames}' is over the limit of {MAX_FRAMES} frames")
    rows = body[2:]
    if len(rows) != num_frames:
        where = rows[-1][0] if rows else tl
        raise BvhError(f"{src}:{where}: 'Frames: {num_frames}' but {len(rows)} frame line(s) follow")
    fps = 1.0 / frame_time
    lo, hi = limits.FPS_RANGE
    if not lo <= fps <= hi:
        raise BvhError(f"{src}:{tl}: 'Frame Time: {m.group(1) if m else time_line}' is {fps:g} fps, outside the "
                       f"{lo:g}..{hi:g} fps that btdm accepts")
    columns = [(j.name, ch) for j in joints for ch in j.channels]
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
    _check_motion(motion, columns, src, [number for number, _ in rows])
    return Bvh(joints=joints, frame_time=frame_time, motion=motion)


def _check_motion(motion: np.ndarray, columns: list[tuple[str, str]], src: str, lines: list[int]) -> None:
    """Refuse a value that is NaN, inf, or a position or angle no motion holds; names line, frame and channel."""
    is_pos = np.array([ch in _POS for _, ch in columns], dtype=bool)
    bound = np.where(is_pos, MAX_POSITION, MAX_ANGLE)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(motion) <= bound)  # NaN compares False: caught too
    if bad.any():
        frame, c = (int(i) for i in np.argwhere(bad)[0])
        value = float(motion[frame, c])
        joint, channel = columns[c]
        where = f"{src}:{lines[frame]}: frame {frame}, channel {channel} of {joint!r}"
        if not np.isfinite(value):
            raise BvhError(f"{where} is {value} (not a finite number)")
        if channel in _POS:
            raise BvhError(f"{where} is {value:g}: a position over {MAX_POSITION:g} file units from the origin "
                           "(100 km in millimetres) is not a motion; the file is corrupt")
        raise BvhError(f"{where} is {value:g} degrees: angles over {MAX_ANGLE:g} degrees "
                       f"({MAX_ANGLE / 360:.0f} turns) are not a motion; the file is corrupt")


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
        raise BvhError(f"a BVH skeleton needs exactly one root joint, got {len(roots)}")
    emit(roots[0], 0)
    columns = np.concatenate(
        [np.arange(bvh.channel_start[i], bvh.channel_start[i] + len(bvh.joints[i].channels)) for i in order]
    ).astype(np.int64)
    out += ["MOTION", f"Frames: {bvh.num_frames}", f"Frame Time: {bvh.frame_time:.8f}"]
    out += [_fmt(row) for row in bvh.motion[:, columns]]
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
        raise BvhError(f"unknown units {units!r}; allowed: cm, m")
    scale = 100.0 if units == "cm" else 1.0
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


# ---------------------------------------------------------------------------------- to the core
def skeleton_from_bvh(bvh: Bvh, source: str = "BVH", up: str = "Y") -> SkeletonAnimation:
    """The file's skeleton and motion under the skeleton-animation contract (units left to detection).

    BVH rest bones carry no orientation of their own (every channel at zero is the rest pose), so
    rest matrices are identities at the rest heads; posed matrices come from forward kinematics.
    A bone's tail is its End Site, else the mean of its children's heads.
    """
    rots, pos = bvh.forward()
    heads = bvh.rest_positions()
    nb = len(bvh.joints)
    tails = heads.copy()
    children: dict[int, list[int]] = {i: [] for i in range(nb)}
    for i, joint in enumerate(bvh.joints):
        if joint.parent >= 0:
            children[joint.parent].append(i)
    for i, joint in enumerate(bvh.joints):
        if joint.end_site is not None:
            tails[i] = heads[i] + joint.end_site
        elif children[i]:
            tails[i] = heads[children[i]].mean(0)
    rest = np.broadcast_to(np.eye(4), (nb, 4, 4)).copy()
    rest[:, :3, 3] = heads
    frames = np.broadcast_to(np.eye(4), (bvh.num_frames, nb, 4, 4)).copy()
    frames[:, :, :3, :3] = rots
    frames[:, :, :3, 3] = pos
    return SkeletonAnimation(
        names=tuple(bvh.names()), parents=np.array([j.parent for j in bvh.joints], dtype=np.int64),
        rest=rest, tails=tails, frames=frames, fps=1.0 / bvh.frame_time, scale=0.0, up=up, source=source,
    )


def load_bvh(
    path: str | os.PathLike[str],
    skeleton: str = "auto",
    fps: float | None = None,
    scale: float | None = None,
    up_axis: str | None = None,
    *,
    bone_map: dict | None = None,
    fit_shape: bool = False,
    width: int = 256,
    height: int = 256,
    body_model: str = "mannequin",
    betas: np.ndarray | None = None,
    report: dict | None = None,
) -> MotionClip:
    """Import a BVH motion onto SMPL as a MotionClip framed by the default camera.

    Args:
        path: the .bvh file.
        skeleton: bone-map preset, one of :data:`SKELETONS` (see :mod:`btdm_engine.motion.bonemaps`).
        fps: resample to this frame rate (slerp); None keeps the file's ``1 / Frame Time``.
        scale: metres per file unit; None detects metres, centimetres, millimetres or inches.
        up_axis: "Y" (BVH's convention) or "Z" (Blender-style, forward -Y); None: Y unless the rest
            skeleton stands along Z.
        bone_map: a custom ``{smpl_joint_name: bone_name}`` map (wins over ``skeleton``).
        fit_shape: fit the body's betas to the file's bone lengths.
        width, height: image size of the attached camera.
        body_model, betas: the SMPL body the motion is put on (its rest joints set bone lengths).
        report: a dict that receives the retargeting report (scheme, units, warnings, ...).

    The SMPL pelvis follows the BVH's pelvis/hips bone: ``trans = hips position - rest pelvis``.
    """
    path = Path(path)
    if up_axis is not None and up_axis not in UP_AXES:
        raise BvhError(f"unknown up axis {up_axis!r}; allowed: {', '.join(UP_AXES)}")
    if skeleton not in SKELETONS:
        raise BvhError(f"unknown skeleton {skeleton!r}; allowed: {', '.join(SKELETONS)}")
    anim = skeleton_from_bvh(read_bvh(path), source=path.name)
    done = to_motion_clip(anim, skeleton=skeleton, bone_map=bone_map, scale=scale, up=up_axis,
                          fit_shape=fit_shape, fps=fps, width=width, height=height, body_model=body_model,
                          betas=betas)
    if report is not None:
        report.update(done.report)
    return done.clip
