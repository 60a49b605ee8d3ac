"""SMPL animation in, in Blender: an AMASS-style ``.npz`` becomes an armature with SMPL's joint names whose bones
have exactly the file's rotations, and generates plates like any rig (a real engine on loopback).

The add-on's copy of the SMPL tree and the body's rest joints (``blender_addon/smpl.py``, numpy only) is checked
against the engine's here. The motion files are synthetic, written by ``test_amass.amass_file``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from test_addon import Engine, run_bpy
from test_amass import amass_file

from blender_addon import smpl

pytestmark = [pytest.mark.blender, pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                                     reason="needs the bpy module (pip install -e .[blender])")]


def test_the_addons_copy_agrees_with_the_engine(tmp_path: Path) -> None:
    from btdm_engine.body import load_body_model
    from btdm_engine.body.skeleton import JOINT_NAMES, PARENTS
    from btdm_engine.motion.amass import read_amass
    from btdm_engine.motion.rotations import axis_angle_to_matrix

    assert smpl.JOINT_NAMES == JOINT_NAMES and smpl.PARENTS == PARENTS
    body = load_body_model("mannequin")
    for betas in (np.zeros(10), np.linspace(-2, 2, 10), np.random.default_rng(3).standard_normal(10)):
        assert np.abs(smpl.rest_joints(betas) - body.rest_joints(betas)).max() < 1e-6
    aa = np.random.default_rng(4).standard_normal((50, 3)) * 2
    assert np.abs(smpl.axis_angle_to_matrix(aa) - axis_angle_to_matrix(aa)).max() < 1e-12
    # The two readers read the same file alike (and refuse alike).
    for model in ("smpl", "smplh", "smplx"):
        amass_file(tmp_path / f"{model}.npz", model)
        a, b = smpl.read_amass(str(tmp_path / f"{model}.npz")), read_amass(tmp_path / f"{model}.npz")
        assert np.array_equal(a.poses, b.body_poses()) and np.array_equal(a.betas, b.clip_betas())
        assert (a.fps, a.gender, a.model) == (b.fps, b.gender, b.model)
    amass_file(tmp_path / "bad.npz", "smplh", trans=np.zeros((3, 3)))
    with pytest.raises(smpl.SmplError, match=r"bad\.npz: field 'trans' has shape \(3, 3\), expected \(12, 3\)"):
        smpl.read_amass(str(tmp_path / "bad.npz"))


def test_import_smpl_motion_as_an_armature_and_generate(engine: Engine, tmp_path: Path) -> None:
    src = amass_file(tmp_path / "walk_poses.npz", "smplh", frames=6)
    amass_file(tmp_path / "broken.npz", "smplh", poses=np.zeros((6, 70)))
    result = run_bpy(f"""
import numpy as np
import blender_addon
from test_addon_scenes import make_scene
scene, _ = make_scene("mixamo", frames=3, armature=False)
scene.camera.location = (0.5, -6.0, 1.0)
bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / 'shot.blend')!r})
blender_addon.register()
out = {{}}
try:
    bpy.ops.btdm.import_smpl(filepath={str(tmp_path / 'broken.npz')!r})
except RuntimeError as exc:
    out["broken"] = str(exc)
bpy.ops.btdm.import_smpl(filepath={str(tmp_path / 'walk_poses.npz')!r})
arm = scene.btdm.armature
out["name"], out["bones"] = arm.name, [b.name for b in arm.data.bones]
out["range"], out["fps"] = [scene.frame_start, scene.frame_end], scene.render.fps / scene.render.fps_base
out["settings"] = [scene.btdm.skeleton, scene.btdm.fit_shape]
from blender_addon.smpl import JOINT_NAMES
out["rest_axes"] = [[list(r) for r in arm.data.bones[n].matrix_local.to_3x3()] for n in JOINT_NAMES]
pbs = [arm.pose.bones[n] for n in JOINT_NAMES]
world, heads = [], []
for f in range(scene.frame_start, scene.frame_end + 1):
    scene.frame_set(f)
    world.append([[list(r) for r in (arm.matrix_world @ pb.matrix).to_3x3()] for pb in pbs])
    heads.append([list(arm.matrix_world @ pb.head) for pb in pbs])
out["world"], out["heads"] = world, heads
scene.btdm.method = "TEXTURE"
bpy.ops.btdm.generate_previs(skeleton_path={str(tmp_path / 'skeleton.npz')!r})
[strip] = list(scene.sequence_editor.strips_all)
out["strip"] = [len(strip.elements), strip["btdm_job_id"]]
blender_addon.unregister()
print("RESULT " + json.dumps(out))
""", tmp_path, env={"BTDM_ENGINE_URL": engine.url})
    assert "broken.npz: field 'poses' has shape (6, 70)" in result["broken"]
    assert result["name"] == "walk_poses" and sorted(result["bones"]) == sorted(smpl.JOINT_NAMES)
    assert result["range"] == [1, 6] and result["fps"] == pytest.approx(120.0)
    assert result["settings"] == ["smpl", True]
    # Each bone's world orientation is SMPL's for the file's rotations: G_j (Z-up world) Y_TO_Z^T C_j.
    poses = np.zeros((6, 24, 3))
    poses[:, :22] = src["poses"].reshape(6, 52, 3)[:, :22]
    local = smpl.axis_angle_to_matrix(poses)
    G = np.empty_like(local)
    for j, p in enumerate(smpl.PARENTS):
        G[:, j] = local[:, j] if p < 0 else G[:, p] @ local[:, j]
    C = np.array(result["rest_axes"])
    want = G @ (smpl.Y_TO_Z.T @ C)[None]
    assert np.abs(np.array(result["world"]) - want).max() < 2e-5
    # ... and the file's local rotations come back from the bones exactly (to float32).
    W = np.array(result["world"]) @ np.swapaxes((smpl.Y_TO_Z.T @ C), -1, -2)[None]
    back = np.swapaxes(W[:, list(smpl.PARENTS[1:])], -1, -2) @ W[:, 1:]
    assert np.abs(back - local[:, 1:]).max() < 2e-5
    # The joints stand where SMPL puts them: pelvis = rest pelvis + trans; the others by forward kinematics.
    rest = smpl.rest_joints(src["betas"][:10])
    joints = np.empty((6, 24, 3))
    joints[:, 0] = rest[0] + src["trans"]
    for j in range(1, 24):
        p = smpl.PARENTS[j]
        joints[:, j] = joints[:, p] + np.einsum("tij,j->ti", G[:, p], rest[j] - rest[p])
    assert np.abs(np.array(result["heads"]) - joints).max() < 1e-5
    # Generated like any rig: the engine's SMPL map, the rig's rotations on the body.
    assert result["strip"][0] == 6
    from blender_addon.engine_client import EngineClient
    from btdm_engine.motion.retarget import to_motion_clip
    from btdm_engine.motion.rotations import axis_angle_to_matrix
    from btdm_engine.motion.skeleton_animation import SkeletonAnimation

    job = EngineClient(engine.url).job(result["strip"][1])
    assert job["state"] == "succeeded" and job["retarget"]["skeleton"] == "smpl"
    clip = to_motion_clip(SkeletonAnimation.load(tmp_path / "skeleton.npz"), skeleton="smpl",
                          betas=src["betas"][:10]).clip
    diff = np.swapaxes(axis_angle_to_matrix(clip.poses[:, 1:22]), -1, -2) @ local[:, 1:22]
    angle = np.degrees(np.arccos(np.clip((np.trace(diff, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))
    assert angle.max() < 0.5, angle.max()
