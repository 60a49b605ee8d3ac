"""Test rigs written in code: one SMPL motion re-expressed on other skeletons, as BVH files.

``bvh_rig`` puts a MotionClip on a rig with any bone names, extra unmapped bones (zero-length or
not), collapsed joints (a collar sitting at its chest), a rest pose turned to face any direction,
any length unit and Y or Z up. Because the rig's bones move exactly as SMPL's, a correct import
gives back the clip (turned with the rig).
"""

from __future__ import annotations

import numpy as np

from btdm_engine.body.skeleton import JOINT_NAMES, PARENTS
from btdm_engine.motion.bvh import Bvh, BvhJoint
from btdm_engine.motion.clip import MotionClip
from btdm_engine.motion.kinematics import world_rotations
from btdm_engine.motion.rotations import matrix_to_euler, rotation_y

J = {name: i for i, name in enumerate(JOINT_NAMES)}
Y_TO_Z = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # (x, y, z) -> (x, -z, y)

CMU_MB = {  # the MotionBuilder-friendly CMU conversion
    "pelvis": "Hips", "left_hip": "LeftUpLeg", "right_hip": "RightUpLeg", "spine1": "LowerBack",
    "left_knee": "LeftLeg", "right_knee": "RightLeg", "spine2": "Spine", "left_ankle": "LeftFoot",
    "right_ankle": "RightFoot", "spine3": "Spine1", "left_foot": "LeftToeBase", "right_foot": "RightToeBase",
    "neck": "Neck", "left_collar": "LeftShoulder", "right_collar": "RightShoulder", "head": "Head",
    "left_shoulder": "LeftArm", "right_shoulder": "RightArm", "left_elbow": "LeftForeArm",
    "right_elbow": "RightForeArm", "left_wrist": "LeftHand", "right_wrist": "RightHand",
    "left_hand": "LeftFingerBase", "right_hand": "RightFingerBase",
}
MOCAPBANK = {
    "pelvis": "Hips", "left_hip": "LeftHip", "right_hip": "RightHip", "spine1": "Chest",
    "left_knee": "LeftKnee", "right_knee": "RightKnee", "spine2": "Chest2", "left_ankle": "LeftAnkle",
    "right_ankle": "RightAnkle", "spine3": "Chest3", "left_foot": "LeftToe", "right_foot": "RightToe",
    "neck": "Neck", "left_collar": "LeftCollar", "right_collar": "RightCollar", "head": "Head",
    "left_shoulder": "LeftShoulder", "right_shoulder": "RightShoulder", "left_elbow": "LeftElbow",
    "right_elbow": "RightElbow", "left_wrist": "LeftWrist", "right_wrist": "RightWrist",
    "left_hand": "LeftFingers", "right_hand": "RightFingers",
}


def bvh_rig(
    clip: MotionClip,
    rest: np.ndarray,
    names: dict[str, str],
    *,
    facing_deg: float = 0.0,
    unit: float = 0.01,
    up: str = "Y",
    inserted: dict[str, tuple[str, float]] | None = None,
    collapsed: tuple[str, ...] = (),
) -> Bvh:
    """``clip`` on a rig (module docstring).

    Args:
        names: SMPL joint name -> bone name, for all 24 joints.
        facing_deg: the whole rig (rest pose and motion) turned about the vertical by this much.
        unit: metres per file unit.
        inserted: SMPL joint -> (bone name, fraction): an unmapped bone between the joint's parent
            and the joint, at that fraction of the way (0: a zero-length bone at the parent).
        collapsed: SMPL joints placed at their parent's position (zero-length bones).
    """
    inserted = inserted or {}
    Q = rotation_y(np.radians(facing_deg))
    C = Y_TO_Z if up == "Z" else np.eye(3)
    W = world_rotations(clip.poses.astype(np.float64))  # (T, 24, 3, 3) SMPL world rotations
    T = clip.num_frames
    place = rest.astype(np.float64).copy()
    for name in collapsed:
        place[J[name]] = place[PARENTS[J[name]]]
    rows: list[dict] = []  # name, parent row, rest position (SMPL world), world rotation (T, 3, 3)
    row_of: dict[int, int] = {}
    for j in range(24):
        p = PARENTS[j]
        world = W[:, j]
        if p < 0:
            rows.append({"name": names[JOINT_NAMES[j]], "parent": -1, "pos": place[0], "world": world})
            row_of[j] = 0
            continue
        parent_row = row_of[p]
        if JOINT_NAMES[j] in inserted:
            bone, frac = inserted[JOINT_NAMES[j]]
            pos = place[p] + frac * (place[j] - place[p])
            rows.append({"name": bone, "parent": parent_row, "pos": pos, "world": W[:, p]})
            parent_row = len(rows) - 1
        rows.append({"name": names[JOINT_NAMES[j]], "parent": parent_row, "pos": place[j], "world": world})
        row_of[j] = len(rows) - 1
    has_child = {r["parent"] for r in rows}
    joints, channels = [], []
    M = C @ Q
    root_pos = (place[0] + clip.trans.astype(np.float64)) @ M.T / unit
    for i, row in enumerate(rows):
        parent = row["parent"]
        offset = row["pos"] if parent < 0 else row["pos"] - rows[parent]["pos"]
        parent_world = np.broadcast_to(np.eye(3), (T, 3, 3)) if parent < 0 else rows[parent]["world"]
        local = np.swapaxes(parent_world, -1, -2) @ row["world"]
        local_rig = M @ local @ M.T
        angles = np.degrees(matrix_to_euler(local_rig, "ZXY"))
        chans = ("Zrotation", "Xrotation", "Yrotation")
        if parent < 0:
            chans = ("Xposition", "Yposition", "Zposition", *chans)
            angles = np.concatenate([root_pos, angles], axis=1)
        end = None if i in has_child else (M @ np.array([0.0, 0.05, 0.0])) / unit
        joints.append(BvhJoint(row["name"], parent, M @ offset / unit, chans, end_site=end))
        channels.append(angles)
    return Bvh(joints=joints, frame_time=1.0 / clip.fps, motion=np.concatenate(channels, axis=1))
