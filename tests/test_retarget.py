"""The retargeting core on rigs written in code: CMU- and MocapBank-style BVH, zero-length bones,
inches, rest poses facing +X/-X/+Z, custom bone maps, shape fitting, every bad-file class."""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np
import pytest
from rigs import CMU_MB, MOCAPBANK, bvh_rig

from btdm_engine.body.skeleton import JOINT_NAMES
from btdm_engine.cli import main
from btdm_engine.motion import MotionClip, load_bvh, make_motion, save_bvh, write_bvh
from btdm_engine.motion.bonemaps import BoneMapError
from btdm_engine.motion.bvh import BvhError, read_bvh, skeleton_from_bvh
from btdm_engine.motion.kinematics import world_rotations
from btdm_engine.motion.retarget import RetargetError, to_motion_clip
from btdm_engine.motion.rotations import rotation_angle, rotation_y
from btdm_engine.motion.skeleton_animation import SkeletonAnimation, SkeletonAnimationError

J = {name: i for i, name in enumerate(JOINT_NAMES)}
SMPL_NAMES = {n: n for n in JOINT_NAMES}
# Joints whose rig position equals SMPL's in every test rig below.
TRACKED = [J[n] for n in ("pelvis", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_elbow",
                          "right_elbow", "left_wrist", "right_wrist", "left_shoulder", "right_shoulder")]


@pytest.fixture(scope="module")
def clip():
    return make_motion("dance", seconds=1.0, fps=20.0, seed=3)


@pytest.fixture(scope="module")
def rest(body):
    return body.rest_joints(np.zeros(10)).astype(np.float64)


def _joints(body, clip: MotionClip) -> np.ndarray:
    return np.asarray(body.forward(clip.poses, clip.betas, clip.trans)[1], dtype=np.float64)


def _import(tmp_path, bvh, name, **kw):
    report: dict = {}
    clip = load_bvh(write_bvh(bvh, tmp_path / name), report=report, **kw)
    return clip, report


def test_cmu_like_file_with_zero_length_bones_and_hips_root(tmp_path, body, clip, rest):
    # MotionBuilder-style CMU: Hips root, LHipJoint/RHipJoint and Neck1 in between (unmapped),
    # a zero-length LowerBack at the hips, collars sitting on the chest, finger bases at the wrists.
    bvh = bvh_rig(clip, rest, CMU_MB, unit=0.01, inserted={
        "left_hip": ("LHipJoint", 0.0), "right_hip": ("RHipJoint", 0.0), "head": ("Neck1", 0.5)},
        collapsed=("left_collar", "right_collar", "left_hand", "right_hand"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy (or any) warning may leak
        back, report = _import(tmp_path, bvh, "cmu.bvh")
    assert report["skeleton"] == "cmu" and report["units"] == "cm" and report["up"] == "Y"
    assert report["map"]["spine1"] == "LowerBack" and report["map"]["left_shoulder"] == "LeftArm"
    assert np.isfinite(back.poses).all()
    got, want = _joints(body, back), _joints(body, clip)
    legs = [J[n] for n in ("pelvis", "left_knee", "right_knee", "left_ankle", "right_ankle")]
    assert np.abs(got[:, legs] - want[:, legs]).max() < 1e-3
    # The collapsed collars change where the arms hang from, not which way they point.
    for a, b in (("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"),
                 ("right_elbow", "right_wrist"), ("neck", "head"), ("spine1", "spine3")):
        u, v = got[:, J[b]] - got[:, J[a]], want[:, J[b]] - want[:, J[a]]
        cos = np.sum(u * v, -1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 1.0, (a, b)


def test_mocapbank_like_file(tmp_path, body, clip, rest):
    back, report = _import(tmp_path, bvh_rig(clip, rest, MOCAPBANK, unit=0.01), "mocapbank.bvh")
    assert report["skeleton"] == "mocapbank"
    assert np.abs(_joints(body, back) - _joints(body, clip)).max() < 1e-3


def test_inches_are_detected_not_read_as_centimetres(tmp_path, body, clip, rest):
    back, report = _import(tmp_path, bvh_rig(clip, rest, CMU_MB, unit=0.0254), "inches.bvh")
    assert report["units"] == "in" and report["scale"] == pytest.approx(0.0254)
    assert np.abs(_joints(body, back) - _joints(body, clip)).max() < 1e-3
    # The pelvis stays at its real height, not 0.4 of it.
    np.testing.assert_allclose(back.trans, clip.trans, atol=1e-4)


@pytest.mark.parametrize("up", ["Y", "Z"])
def test_rest_pose_facing_does_not_change_the_clip(tmp_path, clip, rest, up):
    clips = {}
    for facing in (0.0, 90.0, -90.0):
        clips[facing], report = _import(tmp_path, bvh_rig(clip, rest, SMPL_NAMES, facing_deg=facing, up=up),
                                        f"f{facing:+.0f}{up}.bvh")
        assert report["up"] == up  # detected from the rest skeleton
        assert report["facing_deg"] == pytest.approx(facing, abs=1e-6)
    ref = clips[0.0]
    for facing in (90.0, -90.0):
        c, Q = clips[facing], rotation_y(np.radians(facing))
        local = world_rotations(c.poses.astype(np.float64))  # compare local rotations (not the root)
        local_ref = world_rotations(ref.poses.astype(np.float64))
        rel = np.swapaxes(local[:, :1], -1, -2) @ local  # each joint relative to the root
        rel_ref = np.swapaxes(local_ref[:, :1], -1, -2) @ local_ref
        assert np.degrees(rotation_angle(np.swapaxes(rel, -1, -2) @ rel_ref)).max() < 1.0
        # The root turns with the rig, and so does the path.
        root_err = rotation_angle(np.swapaxes(local[:, 0], -1, -2) @ (Q @ local_ref[:, 0]))
        assert np.degrees(root_err).max() < 1.0
        np.testing.assert_allclose((rest[0] + c.trans), (rest[0] + ref.trans) @ Q.T, atol=1e-4)
    # Against the source motion itself (facing +Z, no turn): exact up to float error.
    np.testing.assert_allclose(ref.poses, clip.poses, atol=1e-4)


def test_round_trip_clip_bvh_clip_is_exact(tmp_path, clip):
    back = load_bvh(save_bvh(clip, tmp_path / "rt.bvh"))
    np.testing.assert_allclose(back.trans, clip.trans, atol=2e-6)
    W, Wb = world_rotations(clip.poses.astype(np.float64)), world_rotations(back.poses.astype(np.float64))
    assert np.degrees(rotation_angle(np.swapaxes(W, -1, -2) @ Wb)).max() < 1e-3


def test_custom_bone_map_and_its_errors(tmp_path, body, clip, rest):
    odd = {n: f"bn_{i:02d}" for i, n in enumerate(JOINT_NAMES)}
    path = write_bvh(bvh_rig(clip, rest, odd), tmp_path / "odd.bvh")
    with pytest.raises(BoneMapError, match=r"odd\.bvh: no bone-map preset .* has no bone for SMPL joint\(s\) pelvis, "
                       r"left_hip.*; bones seen: bn_00, bn_01"):
        load_bvh(path)
    mapping = {n: odd[n] for n in JOINT_NAMES}
    report: dict = {}
    back = load_bvh(path, bone_map=mapping, report=report)
    assert report["skeleton"] == "custom"
    assert np.abs(_joints(body, back) - _joints(body, clip)).max() < 1e-3
    with pytest.raises(BoneMapError, match="unknown SMPL joint 'hips'; allowed: pelvis"):
        load_bvh(path, bone_map={**mapping, "hips": "bn_00"})
    with pytest.raises(BoneMapError, match="joint 'head' names bone 'Skull', which the rig does not have"):
        load_bvh(path, bone_map={**mapping, "head": "Skull"})
    with pytest.raises(BoneMapError, match=r"the custom bone map has no bone for SMPL joint\(s\) left_wrist"):
        load_bvh(path, bone_map={**mapping, "left_wrist": None})
    with pytest.raises(BoneMapError, match="is not below"):
        load_bvh(path, bone_map={**mapping, "left_knee": odd["right_knee"], "right_knee": odd["left_knee"]})
    # The CLI reads it from a JSON file, and inspect writes nothing.
    map_file = tmp_path / "map.json"
    map_file.write_text(json.dumps(mapping))
    out = tmp_path / "odd.npz"
    assert main(["motion", "import", str(path), "--bone-map", str(map_file), "--out", str(out)]) == 0
    assert MotionClip.load(out).num_frames == clip.num_frames
    map_file.write_text("{not json")
    assert main(["motion", "import", str(path), "--bone-map", str(map_file), "--out", str(tmp_path / "x.npz")]) == 2
    assert not (tmp_path / "x.npz").exists()


def test_shape_fit_recovers_the_rigs_proportions(tmp_path, body, clip):
    betas = np.array([1.5, 0.0, 1.0, -0.5, 0.0, 0.0, 0.8, 0.0, 0.0, 0.0])
    tall = body.rest_joints(betas).astype(np.float64)
    report: dict = {}
    back = load_bvh(write_bvh(bvh_rig(clip, tall, SMPL_NAMES), tmp_path / "tall.bvh"), fit_shape=True, report=report)
    assert report["fit_rms_mm"] < 5.0
    fitted = body.rest_joints(back.betas)
    assert np.abs((fitted - fitted[0]) - (tall - tall[0])).max() < 0.015  # bone lengths fix shape, not offset
    # The plain import keeps the mannequin's own proportions.
    assert np.abs(load_bvh(tmp_path / "tall.bvh").betas).max() == 0.0


def test_inspect_prints_the_map_and_writes_nothing(tmp_path, clip, rest, capsys):
    path = write_bvh(bvh_rig(clip, rest, CMU_MB, unit=0.0254), tmp_path / "cmu.bvh")
    before = set(tmp_path.iterdir())
    assert main(["motion", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "skeleton:  cmu (picked by auto)" in out and "units:     in, 0.0254 metres per unit" in out
    assert "left_shoulder   <- LeftArm" in out and "frames:    20 at 20 fps" in out
    assert set(tmp_path.iterdir()) == before


def test_warnings_are_one_readable_line(tmp_path, clip, rest, capsys):
    # A 2.8 m giant in metres is imported, with one warning line.
    path = write_bvh(bvh_rig(clip, rest * 1.8, SMPL_NAMES, unit=1.0), tmp_path / "small.bvh")
    assert main(["motion", "import", str(path), "--out", str(tmp_path / "s.npz")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("btdm motion import: warning: small.bvh: the rest skeleton is")
    # A Z-up file read with the default (BVH is Y up) is noticed and turned, with a warning.
    zpath = write_bvh(bvh_rig(clip, rest, SMPL_NAMES, up="Z"), tmp_path / "z.bvh")
    report: dict = {}
    load_bvh(zpath, report=report)
    assert report["up"] == "Z" and "stands along Z" in report["warnings"][0]


def test_skeleton_animation_npz_round_trip_and_bad_files(tmp_path, clip, rest):
    anim = skeleton_from_bvh(bvh_rig(clip, rest, SMPL_NAMES), source="x")
    path = anim.save(tmp_path / "anim.npz")
    back = SkeletonAnimation.load(path)
    assert back.names == anim.names and np.array_equal(back.frames, anim.frames)
    assert to_motion_clip(back).clip.num_frames == clip.num_frames
    good = dict(np.load(path))

    def bad(name, **changes):
        arrays = {**good, **changes}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        p = tmp_path / name
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)
        return p

    cases = {
        "missing": (bad("m.npz", frames=None), "missing field.*'frames'"),
        "objects": (bad("o.npz", names=np.array([object()] * len(anim.names), dtype=object)), "holds Python objects"),
        "nan": (bad("n.npz", frames=np.where(good["frames"] == good["frames"][0, 0, 0, 0], np.nan, good["frames"])),
                "field 'frames' contains NaN"),
        "parents": (bad("p.npz", parents=good["parents"][::-1].copy()), "a parent must come before its child"),
        "fps": (bad("f.npz", fps=np.float64(1e300)), "field 'fps' must be between"),
        "up": (bad("u.npz", up=np.str_("X")), "field 'up' must be one of Y, Z"),
        "version": (bad("v.npz", format_version=np.int64(7)), "unknown format_version 7"),
        "extra": (bad("e.npz", evil=np.zeros(3)), "unknown field.*'evil'"),
        "camera half": (bad("c.npz", cam_K=np.tile(np.eye(3), (clip.num_frames, 1, 1))), "camera fields come together"),
    }
    for p, message in cases.values():
        with pytest.raises(SkeletonAnimationError, match=message):
            SkeletonAnimation.load(p)
    # A header that declares a huge array is refused before anything is read.
    huge = tmp_path / "huge.npz"
    with open(huge, "wb") as fh:
        np.savez(fh, **{**good, "frames": np.zeros((1, 1, 4, 4))})
    with zipfile.ZipFile(huge, "a") as z:
        header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1, 4, 4)))
        header["shape"] = (10**9, len(anim.names), 4, 4)
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        z.writestr("frames_big.npy", buf.getvalue())
    with pytest.raises(SkeletonAnimationError, match="unknown field"):
        SkeletonAnimation.load(huge)
    with open(huge, "wb") as fh:
        fake = dict(good)
        fake.pop("frames")
        np.savez(fh, **fake)
    with zipfile.ZipFile(huge, "a") as z:
        z.writestr("frames.npy", buf.getvalue())
    with pytest.raises(SkeletonAnimationError, match=r"field 'frames' declares 1000000000 frames; the limit is"):
        SkeletonAnimation.load(huge)
    plain = tmp_path / "plain.npz"
    plain.write_text("hello")
    with pytest.raises(SkeletonAnimationError, match="not a zip archive"):
        SkeletonAnimation.load(plain)


def test_bad_bvh_classes_have_named_errors(tmp_path, clip, rest):
    path = write_bvh(bvh_rig(clip, rest, SMPL_NAMES), tmp_path / "ok.bvh")
    text = path.read_text()
    deep = "HIERARCHY\nROOT j0\n{\nOFFSET 0 0 0\nCHANNELS 3 Xposition Yposition Zposition\n"
    for i in range(1, 400):
        deep += f"JOINT j{i}\n{{\nOFFSET 0 1 0\nCHANNELS 1 Xrotation\n"
    deep += "}\n" * 400 + "MOTION\nFrames: 1\nFrame Time: 0.1\n" + " ".join(["0"] * 402) + "\n"
    (tmp_path / "deep.bvh").write_text(deep)
    with pytest.raises(BvhError, match=r"deep\.bvh:\d+: joints nested more than 256 levels deep"):
        read_bvh(tmp_path / "deep.bvh")
    (tmp_path / "many.bvh").write_text(text.replace("Frames: 20", "Frames: 10000000"))
    with pytest.raises(BvhError, match=r"'Frames: 10000000' is over the limit of 100000 frames"):
        read_bvh(tmp_path / "many.bvh")
    flat = read_bvh(path)
    for joint in flat.joints:  # every bone at the root: no height, no facing
        joint.offset = np.zeros(3)
        joint.end_site = None if joint.end_site is None else np.zeros(3)
    with pytest.raises(RetargetError, match="flat.bvh: the rest skeleton does not stand along Y or Z"):
        load_bvh(write_bvh(flat, tmp_path / "flat.bvh"))
    with pytest.raises(RetargetError, match="flat.bvh: the rig's left and right hips and shoulders coincide"):
        load_bvh(tmp_path / "flat.bvh", up_axis="Y", scale=0.01)
    assert main(["motion", "import", str(tmp_path / "flat.bvh"), "--out", str(tmp_path / "f.npz")]) == 2
    assert main(["motion", "import", str(tmp_path / "take.abc"), "--out", str(tmp_path / "f.npz")]) == 2
