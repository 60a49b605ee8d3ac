"""BVH reading, writing and retargeting onto SMPL (SMPL-named and Mixamo rigs), and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from btdm_engine.body.skeleton import JOINT_NAMES, MIXAMO_NAMES, PARENTS
from btdm_engine.cli import main
from btdm_engine.motion import MotionClip, load_bvh, make_motion, read_bvh, save_bvh, write_bvh
from btdm_engine.motion.bonemaps import BoneMapError
from btdm_engine.motion.bvh import Bvh, BvhError, BvhJoint
from btdm_engine.motion.kinematics import world_rotations
from btdm_engine.motion.retarget import RetargetError
from btdm_engine.motion.rotations import axis_angle_to_matrix, matrix_to_euler, rotation_x, rotation_z

J = {name: i for i, name in enumerate(JOINT_NAMES)}
Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # Y-up -> Z-up: (x, y, z) -> (x, -z, y)


@pytest.fixture(scope="module")
def clip():
    """A lively reference motion: arms, legs, spine and root all move; 1 s at 20 fps."""
    return make_motion("dance", seconds=1.0, fps=20.0, seed=1)


def _joints(body, clip: MotionClip) -> np.ndarray:
    return np.asarray(body.forward(clip.poses, clip.betas, clip.trans)[1], dtype=np.float64)


def test_smpl_round_trip_keeps_joint_positions(tmp_path, body, clip):
    path = save_bvh(clip, tmp_path / "dance.bvh")
    text = path.read_text()
    assert text.startswith("HIERARCHY\nROOT pelvis") and "JOINT left_hip" in text and "Frames: 20" in text
    back = load_bvh(path)
    assert back.num_frames == 20 and back.fps == pytest.approx(20.0)
    err = np.abs(_joints(body, back) - _joints(body, clip)).max()
    assert err < 1e-3, f"joints moved {err * 1000:.2f} mm"
    np.testing.assert_allclose(back.trans, clip.trans, atol=1e-4)
    # Metres instead of centimetres: units are detected from the skeleton height.
    back_m = load_bvh(save_bvh(clip, tmp_path / "dance_m.bvh", units="m"))
    assert np.abs(_joints(body, back_m) - _joints(body, clip)).max() < 1e-3


def _mixamo_a_pose_bvh(clip: MotionClip, rest: np.ndarray) -> Bvh:
    """Re-express ``clip`` on a Mixamo-named rig: A-pose arms, a tilted pelvis frame, centimetres,
    Z up, 'mixamorig:' names, an extra unmapped (twisting) neck bone and an unmapped thumb."""
    T = clip.num_frames
    W = world_rotations(clip.poses)  # SMPL world rotations (T, 24, 3, 3)
    # Q[j] turns SMPL's rest bone directions of joint j into this rig's rest bone directions.
    Q = {j: np.eye(3) for j in range(24)}
    Q[J["pelvis"]] = rotation_x(np.radians(10.0))
    for side, sign in (("left", -1.0), ("right", 1.0)):
        for part in ("shoulder", "elbow", "wrist", "hand"):
            Q[J[f"{side}_{part}"]] = rotation_z(sign * np.radians(45.0))  # arms 45 degrees down
    rows: list[dict] = []  # name, parent row, rest offset (Y-up, m), world rotation (T, 3, 3)
    index: dict[int, int] = {}

    def add(name, parent_row, offset, world):
        rows.append({"name": name, "parent": parent_row, "offset": offset, "world": world})
        return len(rows) - 1

    for j in range(24):
        p = PARENTS[j]
        name = "mixamorig:" + MIXAMO_NAMES[j]
        if p < 0:
            index[j] = add(name, -1, rest[0], W[:, 0] @ Q[0].T)
            continue
        offset = Q[p] @ (rest[j] - rest[p])
        world = W[:, j] @ Q[j].T
        if JOINT_NAMES[j] == "head":
            # An unmapped bone half-way up the neck, twisting about the neck->head axis: the chord
            # stays put, so SMPL joint positions are unchanged.
            axis = offset / np.linalg.norm(offset)
            twist = axis_angle_to_matrix(np.outer(0.4 * np.sin(np.linspace(0, 6, T)), axis))
            mid = add("mixamorig:Neck1", index[p], 0.5 * offset, rows[index[p]]["world"] @ twist)
            index[j] = add(name, mid, 0.5 * offset, world)
        else:
            index[j] = add(name, index[p], offset, world)
    add("mixamorig:LeftHandThumb1", index[J["left_wrist"]], np.array([0.02, -0.01, 0.03]),
        rows[index[J["left_wrist"]]]["world"])

    joints, channels = [], []
    pelvis = (rest[0] + clip.trans) @ Z_UP.T * 100.0
    for i, row in enumerate(rows):
        parent_world = np.eye(3) if row["parent"] < 0 else rows[row["parent"]]["world"]
        local = np.swapaxes(parent_world, -1, -2) @ row["world"]
        local_z = Z_UP @ local @ Z_UP.T
        order = "XYZ" if i % 3 == 0 else "ZXY"  # mixed channel orders on purpose
        angles = np.degrees(matrix_to_euler(local_z, order))
        names = [f"{axis}rotation" for axis in order]
        leaf = not any(r["parent"] == i for r in rows)
        if row["parent"] < 0:
            names = ["Xposition", "Yposition", "Zposition"] + names
            angles = np.concatenate([pelvis, angles], axis=1)
        joints.append(BvhJoint(row["name"], row["parent"], Z_UP @ row["offset"] * 100.0, tuple(names),
                               end_site=np.array([0.0, 0.0, 3.0]) if leaf else None))
        channels.append(angles)
    return Bvh(joints=joints, frame_time=1.0 / clip.fps, motion=np.concatenate(channels, axis=1))


def test_mixamo_a_pose_cm_z_up_imports_to_the_same_joints(tmp_path, body, clip):
    rest = body.rest_joints(clip.betas).astype(np.float64)
    path = write_bvh(_mixamo_a_pose_bvh(clip, rest), tmp_path / "mixamo.bvh")
    back = load_bvh(path, up_axis="Z")  # skeleton and units detected
    err = np.abs(_joints(body, back) - _joints(body, clip)).max()
    assert err < 1e-3, f"joints moved {err * 1000:.2f} mm"
    # Without the rest-pose correction the arms would be 45 degrees off: check the rig really is
    # in an A-pose (its rest frame imports as arms down) ...
    parsed = read_bvh(path)
    parsed.motion[:] = 0.0
    parsed.motion[:, :3] = parsed.motion[:, :3] + parsed.joints[0].offset  # root at its rest place
    rest_path = write_bvh(parsed, tmp_path / "rest.bvh")
    at_rest = _joints(body, load_bvh(rest_path, up_axis="Z"))[0]
    def droop(j: np.ndarray) -> float:
        arm = j[J["left_elbow"]] - j[J["left_shoulder"]]
        return float(np.degrees(np.arctan2(-arm[1], arm[0])))

    assert droop(at_rest) - droop(rest) == pytest.approx(45.0, abs=0.1)
    # ... and reading it as Y-up, which would lay the body down, is refused, naming the flag and the fix.
    with pytest.raises(RetargetError, match=r"mixamo\.bvh: --up Y contradicts the rest skeleton, which stands "
                       r"along \+Z .* pass --up Z, or leave --up out"):
        load_bvh(path, up_axis="Y", scale=0.01)


def test_channel_order_is_respected(tmp_path):
    def one_joint(order: str, angles: np.ndarray) -> Bvh:
        joints = [
            BvhJoint("root", -1, np.zeros(3), tuple(f"{a}rotation" for a in order)),
            BvhJoint("tip", 0, np.array([0.0, 1.0, 0.0]), (), end_site=np.array([0.0, 0.5, 0.0])),
        ]
        return Bvh(joints=joints, frame_time=0.1, motion=angles[None])

    rot = axis_angle_to_matrix(np.array([0.4, -0.9, 0.3]))
    tips = []
    for order in ("ZXY", "XYZ", "YZX"):
        path = write_bvh(one_joint(order, np.degrees(matrix_to_euler(rot, order))), tmp_path / f"{order}.bvh")
        _, pos = read_bvh(path).forward()
        tips.append(pos[0, 1])
    np.testing.assert_allclose(tips, np.repeat((rot @ [0.0, 1.0, 0.0])[None], 3, 0), atol=1e-6)


def test_resampling_to_another_frame_rate(tmp_path, body, clip):
    path = save_bvh(clip, tmp_path / "dance.bvh")
    half = load_bvh(path, fps=10.0)
    assert half.fps == 10.0 and half.num_frames == 10
    np.testing.assert_allclose(_joints(body, half), _joints(body, clip)[::2], atol=1e-3)


def test_missing_bones_unknown_skeleton_and_units(tmp_path, clip):
    path = save_bvh(clip, tmp_path / "dance.bvh")
    text = path.read_text()
    broken = tmp_path / "no_elbow.bvh"
    broken.write_text(text.replace("JOINT left_elbow", "JOINT left_forearm_twist"))
    with pytest.raises(BoneMapError, match=r"no_elbow\.bvh: no bone-map preset .* the closest, smpl, has no bone "
                       r"for SMPL joint\(s\) left_elbow; bones seen: pelvis, left_hip, .*left_forearm_twist"):
        load_bvh(broken)
    with pytest.raises(BoneMapError, match=r"the mixamo skeleton has no bone for SMPL joint\(s\) pelvis, left_hip"):
        load_bvh(path, skeleton="mixamo")
    with pytest.raises(ValueError, match="unknown skeleton 'biped'; allowed: auto, smpl, mixamo, rigify, cmu"):
        load_bvh(path, skeleton="biped")
    with pytest.raises(ValueError, match="unknown up axis 'X'"):
        load_bvh(path, up_axis="X")
    tiny = read_bvh(path)
    for joint in tiny.joints:
        joint.offset = joint.offset / 1000.0
        joint.end_site = None if joint.end_site is None else joint.end_site / 1000.0
    tiny.motion[:, :3] /= 1000.0
    with pytest.raises(RetargetError, match="tiny.bvh: cannot infer units .* pass scale"):
        load_bvh(write_bvh(tiny, tmp_path / "tiny.bvh"))
    # An explicit scale works where detection cannot.
    assert load_bvh(tmp_path / "tiny.bvh", scale=10.0).num_frames == clip.num_frames


GOOD = """HIERARCHY
ROOT Hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT Spine
  {
    OFFSET 0 10 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 10 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.033333
0 90 0 0 0 0 0 0 0
0 90 0 10 0 0 0 5 0
"""

MALFORMED = {
    "missing brace": (GOOD.replace("ROOT Hips\n{", "ROOT Hips\n"), r":4: expected '\{', got 'OFFSET'"),
    "bad offset": (GOOD.replace("OFFSET 0 10 0\n    CHANNELS", "OFFSET 0 ten 0\n    CHANNELS"),
                   r":8: expected a number for OFFSET y of 'Spine', got 'ten'"),
    "bad channel": (GOOD.replace("Zrotation Xrotation Yrotation\n  JOINT", "Zrotation Xrot Yrotation\n  JOINT"),
                    r":5: unknown channel 'Xrot' of 'Hips'; allowed: Xposition"),
    "short frame": (GOOD.replace("0 90 0 10 0 0 0 5 0", "0 90 0 10 0 0 0 5"),
                    r":20: frame has 8 values, expected 9"),
    "frame count": (GOOD.replace("Frames: 2", "Frames: 3"), r":20: 'Frames: 3' but 2 frame line\(s\) follow"),
    "not a number": (GOOD.replace("0 90 0 10 0 0 0 5 0", "0 90 0 10 0 x 0 5 0"), r":20: 'x' is not a number"),
    "no motion": (GOOD[: GOOD.index("MOTION")], r":15: expected 'MOTION' after the hierarchy, got end of file"),
    "trailing": (GOOD.replace("}\nMOTION", "}\n}\nMOTION"), r":16: expected 'MOTION' after the hierarchy, got \}"),
    "frame time": (GOOD.replace("Frame Time: 0.033333", "Frame Time: -1"), r":18: expected 'Frame Time: seconds'"),
    "not bvh": ("just some text\n", r":1: expected 'HIERARCHY' at the start"),
    "empty": ("", r":1: expected 'HIERARCHY' at the start of a BVH file, got end of file"),
    "unclosed": (GOOD.replace("  }\n}\nMOTION", "  }\nMOTION"),
                 r":15: expected JOINT, End Site or '\}' inside 'Hips', got 'MOTION'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_bvh_names_file_and_line(tmp_path, case):
    text, message = MALFORMED[case]
    path = tmp_path / "broken.bvh"
    path.write_text(text)
    with pytest.raises(BvhError, match=r"broken\.bvh" + message):
        read_bvh(path)


def test_good_file_parses_and_missing_file(tmp_path):
    path = tmp_path / "good.bvh"
    path.write_text(GOOD)
    bvh = read_bvh(path)
    assert bvh.names() == ["Hips", "Spine"] and bvh.num_frames == 2
    assert bvh.frame_time == pytest.approx(0.033333)
    _, pos = bvh.forward()
    np.testing.assert_allclose(pos[0, 1], [0, 100, 0])  # root position channels are absolute
    np.testing.assert_allclose(pos[1, 1], [-10 * np.sin(np.radians(10)), 90 + 10 * np.cos(np.radians(10)), 0], atol=1e-9)
    with pytest.raises(FileNotFoundError, match="nowhere.bvh"):
        read_bvh(tmp_path / "nowhere.bvh")


def test_cli_import(tmp_path, body, clip, capsys):
    bvh = save_bvh(clip, tmp_path / "dance.bvh")
    out = tmp_path / "dance.npz"
    assert main(["motion", "import", str(bvh), "--size", "128", "--out", str(out)]) == 0
    back = MotionClip.load(out)
    assert back.width == 128 and np.abs(_joints(body, back) - _joints(body, clip)).max() < 1e-3
    assert main(["motion", "import", str(tmp_path / "nope.bvh"), "--out", str(out)]) == 2
    assert "nope.bvh" in capsys.readouterr().err
