"""AMASS-style SMPL motions in (SMPL, SMPL-H, SMPL-X ``.npz``): the body joints' rotations and the shape are kept
exactly, the Z-up world is turned into the clip's Y-up one, and a bad file gets one error naming its field.

The files are synthetic, written here in AMASS's layout (no downloads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from commandline import run_btdm

from btdm_engine.motion.amass import Z_TO_Y, AmassError, amass_skeleton_animation, is_amass, read_amass
from btdm_engine.motion.clip import MotionClip
from btdm_engine.motion.kinematics import forward_kinematics
from btdm_engine.motion.rotations import axis_angle_to_matrix
from btdm_engine.motion.sources import MotionSourceError, import_motion

REPO = Path(__file__).resolve().parents[1]
WIDTH = {"smpl": 72, "smplh": 156, "smplx": 165}


def amass_file(path: Path, model: str = "smplh", frames: int = 12, seed: int = 0, **extra) -> dict:
    """An AMASS-style file: a person standing up in the Z-up world (root turned +90 degrees about X), walking
    along +X, moving every joint a little; returns what was written."""
    rng = np.random.default_rng(seed)
    poses = 0.3 * rng.standard_normal((frames, WIDTH[model]))
    t = np.linspace(0.0, 1.0, frames)
    poses[:, :3] = np.stack([np.full(frames, np.pi / 2), 0.2 * np.sin(2 * np.pi * t), np.zeros(frames)], axis=1)
    fields = {
        "poses": poses, "trans": np.stack([t, 0.1 * t, 0.9 + 0.02 * np.sin(6 * t)], axis=1),
        "betas": np.linspace(-1.0, 1.0, 16), "gender": np.array("female"),
        ("mocap_frame_rate" if model == "smplx" else "mocap_framerate"): np.array(120.0),
        **({"dmpls": np.zeros((frames, 8))} if model == "smplh" else {}),
        **({"surface_model_type": np.array("smplx"), "root_orient": poses[:, :3]} if model == "smplx" else {}),
    }
    fields.update(extra)
    np.savez(path, **fields)
    return fields


@pytest.mark.parametrize("model", ["smpl", "smplh", "smplx"])
def test_body_rotations_and_shape_are_kept_exactly(tmp_path: Path, model: str) -> None:
    src = amass_file(tmp_path / f"{model}.npz", model)
    assert is_amass(tmp_path / f"{model}.npz")
    motion = read_amass(tmp_path / f"{model}.npz")
    assert (motion.model, motion.fps, motion.gender, motion.num_frames) == (model, 120.0, "female", 12)
    done = import_motion(tmp_path / f"{model}.npz", width=128, height=96)
    clip = done.clip
    saved = clip.save(tmp_path / "clip.npz")
    clip = MotionClip.load(saved)  # the round trip through the file the CLI writes
    poses = src["poses"].reshape(12, -1, 3)
    kept = 24 if model == "smpl" else 22
    # Every body joint's local rotation, bit for bit (as float32, the clip's type).
    assert np.array_equal(clip.poses[:, 1:kept], poses[:, 1:kept].astype(np.float32))
    if model != "smpl":
        assert not clip.poses[:, 22:].any()  # SMPL's hand joints rest; the fingers have no joint here
    assert np.array_equal(clip.betas, src["betas"][:10].astype(np.float32))
    assert clip.fps == 120.0 and (clip.width, clip.height) == (128, 96)
    # The global orientation: the file's, turned from Z-up to Y-up, and back again.
    root = axis_angle_to_matrix(clip.poses[:, 0])
    assert np.abs(np.einsum("ij,tjk->tik", Z_TO_Y.T, root) - axis_angle_to_matrix(poses[:, 0])).max() < 1e-6
    # The posed joints: the clip's, turned back to Z-up, are the file's (SMPL's root-about-pelvis translation).
    from btdm_engine.body import load_body_model

    rest = load_body_model("mannequin").rest_joints(src["betas"][:10]).astype(np.float64)
    body = np.zeros((12, 24, 3))
    body[:, :kept] = poses[:, :kept]
    want = forward_kinematics(body, rest, src["trans"])
    got = forward_kinematics(clip.poses, rest, clip.trans) @ Z_TO_Y
    assert np.abs(got - want).max() < 2e-5
    r = done.report
    assert r["skeleton"] == f"amass {model}" and r["up"] == "Z" and r["gender"] == "female"
    assert r["map"]["left_knee"] == "left_knee"
    warned = " ".join(r["warnings"])
    assert "16 betas" in warned and (model == "smpl") == ("finger" not in warned)
    # The body stands in the default camera's view (upright: the head above the pelvis in Y-up).
    joints = forward_kinematics(clip.poses, rest, clip.trans)
    assert (joints[:, 15, 1] > joints[:, 0, 1] + 0.15).all()


def test_the_skeleton_view_matches_the_clip(tmp_path: Path) -> None:
    """``btdm motion inspect`` reads the same motion as a Z-up rig with SMPL names; retargeted, it gives the clip."""
    from btdm_engine.motion.retarget import to_motion_clip

    amass_file(tmp_path / "m.npz", "smplh", seed=1)
    anim = amass_skeleton_animation(read_amass(tmp_path / "m.npz"))
    assert anim.names[:3] == ("pelvis", "left_hip", "right_hip") and anim.up == "Z" and anim.scale == 1.0
    exact = import_motion(tmp_path / "m.npz").clip
    via_rig = to_motion_clip(anim, skeleton="smpl", betas=exact.betas).clip
    diff = np.einsum("tjik,tjil->tjkl", axis_angle_to_matrix(exact.poses[:, :22]),
                     axis_angle_to_matrix(via_rig.poses[:, :22]))
    angle = np.degrees(np.arccos(np.clip((np.trace(diff, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))
    assert angle.max() < 0.5


def test_cli_import_and_inspect(tmp_path: Path) -> None:
    amass_file(tmp_path / "walk_poses.npz", "smplx")
    out = run_btdm("motion", "import", tmp_path / "walk_poses.npz", "--out", tmp_path / "clip.npz", "--size", "64")
    assert out.returncode == 0, out.stderr
    assert "12 frames at 120 fps" in out.stdout and "amass smplx" in out.stdout and "female" in out.stdout
    assert "finger, jaw and eye rotations" in out.stderr
    assert MotionClip.load(tmp_path / "clip.npz").num_frames == 12
    out = run_btdm("motion", "inspect", tmp_path / "walk_poses.npz")
    assert out.returncode == 0, out.stderr
    assert "bones:     24: pelvis, left_hip" in out.stdout and "left_knee       <- left_knee" in out.stdout
    out = run_btdm("motion", "import", tmp_path / "walk_poses.npz", "--out", tmp_path / "c2.npz", "--scale", "0.01")
    assert out.returncode != 0 and "walk_poses.npz" in out.stderr and "--scale cannot apply" in out.stderr


@pytest.mark.parametrize(("change", "message"), [
    ({"poses": np.zeros((12, 70))}, r"bad\.npz: field 'poses' has shape \(12, 70\); expected \(T, N\) with N one of "
                                    r"72 \(SMPL\), 156 \(SMPL-H\), 165 \(SMPL-X\)"),
    ({"trans": np.zeros((11, 3))}, r"bad\.npz: field 'trans' has shape \(11, 3\), expected \(12, 3\)"),
    ({"mocap_framerate": np.array(-5.0)}, r"bad\.npz: field 'mocap_framerate' must be a positive frame rate"),
    ({"betas": np.array([1.0, np.nan])}, r"bad\.npz: field 'betas' contains NaN"),
    ({"gender": np.array(["a", "b"])}, r"bad\.npz: field 'gender' must be a string"),
    ({"gender": np.array({"x": 1}, dtype=object)}, r"bad\.npz: field 'gender' is unreadable without unpickling"),
])
def test_bad_files_name_the_field(tmp_path: Path, change: dict, message: str) -> None:
    amass_file(tmp_path / "bad.npz", "smplh", **change)
    with pytest.raises(AmassError, match=message):
        import_motion(tmp_path / "bad.npz")


def test_missing_frame_rate_and_refused_options(tmp_path: Path) -> None:
    fields = amass_file(tmp_path / "bad.npz", "smplh")
    del fields["mocap_framerate"]
    np.savez(tmp_path / "bad.npz", **fields)
    with pytest.raises(AmassError, match=r"bad\.npz: missing the frame rate: field 'mocap_framerate'"):
        read_amass(tmp_path / "bad.npz")
    amass_file(tmp_path / "ok.npz", "smpl")
    with pytest.raises(MotionSourceError, match=r"ok\.npz: .*--bone-map, --skeleton mixamo cannot apply"):
        import_motion(tmp_path / "ok.npz", bone_map_file=tmp_path / "map.json", skeleton="mixamo")
    # A MotionClip or a skeleton-animation file is not taken for an AMASS one.
    assert not is_amass(REPO / "btdm_engine" / "weights" / "default" / "MODEL_CARD.md")
    clip = import_motion(tmp_path / "ok.npz").clip
    clip.save(tmp_path / "clip.npz")
    assert not is_amass(tmp_path / "clip.npz")
