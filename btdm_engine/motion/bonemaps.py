"""Bone maps: which bone of a rig drives which SMPL joint.

A map is ``{smpl_joint_index: bone_index}``. Presets name the bones of common rigs; each SMPL
joint lists candidate names in order of preference, compared after :func:`normalise` (lower case,
no namespace such as ``mixamorig:``, no punctuation), and the first candidate the rig has wins:

* ``smpl``: SMPL's own names and the usual variants (``Pelvis``, ``L_Hip``, ``m_avg_L_Knee``).
* ``mixamo``: ``Hips``, ``LeftUpLeg`` ... with or without the ``mixamorig:`` prefix.
* ``rigify``: the human metarig (``spine``, ``thigh.L`` ...) and a generated rig's deform bones
  (``DEF-spine``, ``DEF-thigh.L`` ...).
* ``cmu``: the CMU mocap conversions, both common conventions: the original ASF names
  (``root``/``hips``, ``lfemur``, ``ltibia``, ``lhumerus`` ...) and the MotionBuilder-friendly ones
  (``Hips``, ``LHipJoint``, ``LeftUpLeg``, ``LowerBack``, ``Spine``, ``Spine1`` ...), plus the
  Daz-friendly names (``hip``, ``abdomen``, ``lThigh``, ``lShldr`` ...).
* ``mocapbank``: Biovision-style names as MocapBank and many capture houses write them
  (``Hips``, ``Chest``, ``LeftCollar``, ``LeftShoulder`` (the upper arm), ``LeftHip`` ...).
* ``auto``: the preset that maps the required joints and the most joints; says which it picked.

A custom map is a JSON object ``{"smpl_joint_name": "bone name", ...}`` (``--bone-map FILE``);
``null`` leaves a joint unmapped. Joints not named in a custom map are unmapped.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from btdm_engine.body.skeleton import JOINT_NAMES, MIXAMO_NAMES, PARENTS
from btdm_engine.errors import BtdmError

__all__ = [
    "PRESETS",
    "REQUIRED",
    "SKELETONS",
    "BoneMapError",
    "choose_map",
    "map_from_dict",
    "normalise",
    "preset_map",
    "read_bone_map",
]

J = {name: j for j, name in enumerate(JOINT_NAMES)}
# Without these an import is not a body motion.
REQUIRED: tuple[int, ...] = tuple(J[n] for n in (
    "pelvis", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "head",
))
# A custom map's limits: bone names are short strings, the file is small.
MAX_MAP_BYTES = 64 * 1024


class BoneMapError(BtdmError, ValueError):
    """A rig cannot be mapped onto SMPL (the message lists what is missing and what was seen)."""


def normalise(name: str) -> str:
    """Compare bone names without namespace, case or punctuation: ``mixamorig:LeftArm`` -> ``leftarm``."""
    name = name.split(":")[-1].split("|")[-1].lower()
    for prefix in ("m_avg_", "f_avg_", "smpl_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return re.sub(r"[^a-z0-9]", "", name)


def _table(rows: dict[str, list[str]]) -> dict[int, list[str]]:
    """Rows keyed by SMPL joint name ("left_*" rows may use {Side}/{s}/{S}) -> {joint: normalised names}."""
    out: dict[int, list[str]] = {}
    for joint, names in rows.items():
        if joint.startswith("side_"):
            part = joint[len("side_"):]
            for side, s, S in (("left", "l", "L"), ("right", "r", "R")):
                out[J[f"{side}_{part}"]] = [
                    normalise(n.format(side=side, Side=side.capitalize(), s=s, S=S)) for n in names]
        else:
            out[J[joint]] = [normalise(n) for n in names]
    return out


def _smpl_rows() -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for j, name in enumerate(JOINT_NAMES):
        if name.startswith(("left_", "right_")):
            side, part = name.split("_", 1)
            s = side[0]
            out[j] = [normalise(v) for v in (name, f"{side}{part}", f"{s}_{part}", f"{part}_{side}", f"{part}_{s}")]
        else:
            out[j] = [normalise(name)]
    out[J["pelvis"]] += ["root"]
    return out


PRESETS: dict[str, dict[int, list[str]]] = {
    "smpl": _smpl_rows(),
    "mixamo": {j: [normalise(n)] for j, n in enumerate(MIXAMO_NAMES)},
    "rigify": _table({
        "pelvis": ["DEF-spine", "spine"],
        "spine1": ["DEF-spine.001", "spine.001"],
        "spine2": ["DEF-spine.002", "spine.002"],
        "spine3": ["DEF-spine.003", "spine.003"],
        "neck": ["DEF-spine.004", "spine.004"],
        "head": ["DEF-spine.006", "spine.006"],
        "side_hip": ["DEF-thigh.{S}", "thigh.{S}"],
        "side_knee": ["DEF-shin.{S}", "shin.{S}"],
        "side_ankle": ["DEF-foot.{S}", "foot.{S}"],
        "side_foot": ["DEF-toe.{S}", "toe.{S}"],
        "side_collar": ["DEF-shoulder.{S}", "shoulder.{S}"],
        "side_shoulder": ["DEF-upper_arm.{S}", "upper_arm.{S}"],
        "side_elbow": ["DEF-forearm.{S}", "forearm.{S}"],
        "side_wrist": ["DEF-hand.{S}", "hand.{S}"],
        "side_hand": ["DEF-f_middle.01.{S}", "f_middle.01.{S}"],
    }),
    "cmu": _table({
        "pelvis": ["Hips", "hip", "root"],
        "spine1": ["LowerBack", "abdomen"],
        "spine2": ["upperback", "Spine"],
        "spine3": ["thorax", "Spine1", "chest"],
        "neck": ["lowerneck", "Neck", "neck"],
        "head": ["Head", "head"],
        "side_hip": ["{Side}UpLeg", "{s}femur", "{s}Thigh"],
        "side_knee": ["{Side}Leg", "{s}tibia", "{s}Shin"],
        "side_ankle": ["{Side}Foot", "{s}foot"],
        "side_foot": ["{Side}ToeBase", "{s}toes", "{s}Toe"],
        "side_collar": ["{Side}Shoulder", "{s}clavicle", "{s}Collar"],
        "side_shoulder": ["{Side}Arm", "{s}humerus", "{s}Shldr"],
        "side_elbow": ["{Side}ForeArm", "{s}radius"],
        "side_wrist": ["{Side}Hand", "{s}wrist"],
        "side_hand": ["{Side}FingerBase", "{s}hand", "{Side}HandIndex1"],
    }),
    "mocapbank": _table({
        "pelvis": ["Hips", "Hip", "Root"],
        "spine1": ["Chest", "Spine"],
        "spine2": ["Chest2", "Spine1"],
        "spine3": ["Chest3", "Chest4", "Spine2"],
        "neck": ["Neck"],
        "head": ["Head"],
        "side_hip": ["{Side}Hip", "{Side}UpLeg"],
        "side_knee": ["{Side}Knee", "{Side}Leg"],
        "side_ankle": ["{Side}Ankle", "{Side}Foot"],
        "side_foot": ["{Side}Toe", "{Side}ToeBase"],
        "side_collar": ["{Side}Collar", "{Side}Clavicle"],
        "side_shoulder": ["{Side}Shoulder", "{Side}UpArm"],
        "side_elbow": ["{Side}Elbow", "{Side}ForeArm"],
        "side_wrist": ["{Side}Wrist", "{Side}Hand"],
    }),
}
SKELETONS: tuple[str, ...] = ("auto", *PRESETS)


def preset_map(names: list[str] | tuple[str, ...], preset: str) -> dict[int, int]:
    """Map ``names`` with one preset: ``{smpl_joint: bone_index}`` (possibly incomplete)."""
    if preset not in PRESETS:
        raise BoneMapError(f"unknown skeleton {preset!r}; allowed: {', '.join(SKELETONS)}")
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(normalise(name), i)
    mapping: dict[int, int] = {}
    used: set[int] = set()
    for j, candidates in PRESETS[preset].items():
        for cand in candidates:
            i = index.get(cand)
            if i is not None and i not in used:
                mapping[j] = i
                used.add(i)
                break
    return mapping


def _structure_problem(mapping: dict[int, int], parents: list[int] | tuple[int, ...], names: list[str]) -> str | None:
    """Why ``mapping`` contradicts SMPL's tree (a mapped joint's bone not below its mapped ancestor's)."""
    def is_below(anc: int, node: int) -> bool:
        while node >= 0:
            if node == anc:
                return True
            node = parents[node]
        return False

    for j, b in mapping.items():
        a = PARENTS[j]
        while a >= 0 and a not in mapping:
            a = PARENTS[a]
        if a >= 0 and not is_below(mapping[a], b):
            return (f"bone {names[b]!r} ({JOINT_NAMES[j]}) is not below {names[mapping[a]]!r} "
                    f"({JOINT_NAMES[a]}) as SMPL's skeleton requires")
    return None


def _missing_error(source: str, what: str, mapping: dict[int, int], names: list[str]) -> BoneMapError:
    missing = [JOINT_NAMES[j] for j in REQUIRED if j not in mapping]
    seen = ", ".join(names[:60]) + (f", ... ({len(names)} bones)" if len(names) > 60 else "")
    return BoneMapError(
        f"{source}: {what} has no bone for SMPL joint(s) {', '.join(missing)}; bones seen: {seen}. "
        "Pick another --skeleton or give a --bone-map JSON file")


def choose_map(
    names: list[str] | tuple[str, ...], parents: list[int] | tuple[int, ...], skeleton: str = "auto",
    bone_map: dict[int, int] | None = None, source: str = "rig",
) -> tuple[dict[int, int], str]:
    """The bone map for a rig and the name of the scheme used (a preset, or "custom").

    ``bone_map`` (from :func:`read_bone_map` / :func:`map_from_dict`) wins over ``skeleton``.
    """
    names = list(names)
    if bone_map is not None:
        problem = _structure_problem(bone_map, parents, names)
        if any(j not in bone_map for j in REQUIRED):
            raise _missing_error(source, "the custom bone map", bone_map, names)
        if problem:
            raise BoneMapError(f"{source}: custom bone map: {problem}")
        return dict(bone_map), "custom"
    if skeleton not in SKELETONS:
        raise BoneMapError(f"unknown skeleton {skeleton!r}; allowed: {', '.join(SKELETONS)}")
    if skeleton != "auto":
        mapping = preset_map(names, skeleton)
        if any(j not in mapping for j in REQUIRED):
            raise _missing_error(source, f"the {skeleton} skeleton", mapping, names)
        problem = _structure_problem(mapping, parents, names)
        if problem:
            raise BoneMapError(f"{source}: {skeleton} skeleton: {problem}")
        return mapping, skeleton
    best: tuple[int, str, dict[int, int]] | None = None
    partial: tuple[str, dict[int, int]] = ("smpl", {})
    for preset in PRESETS:
        mapping = preset_map(names, preset)
        if sum(j in mapping for j in REQUIRED) > sum(j in partial[1] for j in REQUIRED):
            partial = (preset, mapping)
        if any(j not in mapping for j in REQUIRED) or _structure_problem(mapping, parents, names):
            continue
        if best is None or len(mapping) > best[0]:
            best = (len(mapping), preset, mapping)
    if best is None:
        raise _missing_error(
            source, f"no bone-map preset ({', '.join(PRESETS)}) fits this rig: the closest, {partial[0]},",
            partial[1], names)
    return best[2], best[1]


def map_from_dict(data: Any, names: list[str] | tuple[str, ...], source: str = "bone map") -> dict[int, int]:
    """A custom map ``{"smpl_joint_name": "bone name" | null}`` -> ``{smpl_joint: bone_index}``."""
    if not isinstance(data, dict):
        raise BoneMapError(f"{source}: a bone map is a JSON object {{smpl_joint_name: bone_name}}, "
                           f"got {type(data).__name__}")
    index = {n: i for i, n in enumerate(names)}
    mapping: dict[int, int] = {}
    for key, bone in data.items():
        if key not in J:
            raise BoneMapError(f"{source}: unknown SMPL joint {key!r}; allowed: {', '.join(JOINT_NAMES)}")
        if bone is None:
            continue
        if not isinstance(bone, str):
            raise BoneMapError(f"{source}: joint {key!r} must name a bone (a string) or be null, got {bone!r}")
        if bone not in index:
            raise BoneMapError(f"{source}: joint {key!r} names bone {bone!r}, which the rig does not have")
        if index[bone] in mapping.values():
            raise BoneMapError(f"{source}: bone {bone!r} is given to more than one SMPL joint")
        mapping[J[key]] = index[bone]
    return mapping


def read_bone_map(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a custom bone-map JSON file (size-limited); returns the raw object for :func:`map_from_dict`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such bone-map file")
    if path.stat().st_size > MAX_MAP_BYTES:
        raise BoneMapError(f"{path}: a bone-map file is at most {MAX_MAP_BYTES} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BoneMapError(f"{path}: not a JSON bone map ({exc})") from exc
    if not isinstance(data, dict):
        raise BoneMapError(f"{path}: a bone map is a JSON object {{smpl_joint_name: bone_name}}")
    return data
