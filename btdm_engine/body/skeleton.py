"""The SMPL skeleton: 24 joints, their names and the kinematic tree.

Every part of the project (mannequin, MotionClip, BVH import, Blender retargeting) uses these
constants, so joint order is defined exactly once.
"""

from __future__ import annotations

NUM_JOINTS = 24
NUM_BETAS = 10
# 23 non-root joints x 9 rotation-matrix entries (SMPL's pose-corrective blend shape basis).
NUM_POSE_BASIS = (NUM_JOINTS - 1) * 9  # 207

JOINT_NAMES: tuple[str, ...] = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hand",
    "right_hand",
)

PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)

# Mixamo bone names in SMPL joint order (DESIGN.md, "facts already checked").
MIXAMO_NAMES: tuple[str, ...] = (
    "Hips", "LeftUpLeg", "RightUpLeg", "Spine", "LeftLeg", "RightLeg", "Spine1", "LeftFoot",
    "RightFoot", "Spine2", "LeftToeBase", "RightToeBase", "Neck", "LeftShoulder", "RightShoulder",
    "Head", "LeftArm", "RightArm", "LeftForeArm", "RightForeArm", "LeftHand", "RightHand",
    "LeftHandIndex1", "RightHandIndex1",
)

# Index of each joint's mirror image (left <-> right); centre joints map to themselves.
MIRROR: tuple[int, ...] = tuple(
    JOINT_NAMES.index(
        n.replace("left_", "@").replace("right_", "left_").replace("@", "right_")
    )
    for n in JOINT_NAMES
)
