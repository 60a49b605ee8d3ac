"""Live Blender armatures through the shared sampler and retargeting core (the bpy module, headless):
a Mixamo-named armature with rolled bones, a Rigify human metarig, FBX written by Blender and read
back, and the shot camera against Blender's own projection."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="needs the bpy module (pip install '.[blender]')")
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Matrix, Vector  # noqa: E402

from btdm_bridge.armature import ArmatureError, camera_matrices, sample_armature  # noqa: E402
from btdm_engine.body.skeleton import JOINT_NAMES, MIXAMO_NAMES, PARENTS  # noqa: E402
from btdm_engine.motion import make_motion  # noqa: E402
from btdm_engine.motion.fbx import read_fbx  # noqa: E402
from btdm_engine.motion.kinematics import world_rotations  # noqa: E402
from btdm_engine.motion.retarget import to_motion_clip  # noqa: E402
from btdm_engine.motion.skeleton_animation import from_arrays  # noqa: E402
from btdm_engine.motion.sources import MotionSourceError  # noqa: E402

pytestmark = pytest.mark.blender

J = {name: i for i, name in enumerate(JOINT_NAMES)}
# SMPL world (Y up) -> Blender world (Z up, forward -Y): (x, y, z) -> (x, -z, y).
Y_TO_Z = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@pytest.fixture(scope="module")
def clip():
    return make_motion("dance", seconds=0.5, fps=16.0, seed=5)


def _empty_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 16, 1.0
    return scene


def _smpl_joints(body, clip) -> np.ndarray:
    return np.asarray(body.forward(clip.poses, clip.betas, clip.trans)[1], dtype=np.float64)


def _mixamo_armature(scene, clip, body, prefix="mixamorig:", facing_deg=0.0, unit=1.0):
    """A Mixamo-named armature whose bones (rolled every which way) move exactly like ``clip``'s SMPL joints.

    Bones start at SMPL's rest joints (in Blender's Z-up world, turned by ``facing_deg`` about Z,
    scaled by ``unit``); each frame's pose is set as armature-space matrices and keyed.
    """
    rest = body.rest_joints(clip.betas).astype(np.float64)
    turn = np.array(Matrix.Rotation(np.radians(facing_deg), 3, "Z"))
    M = turn @ Y_TO_Z
    data = bpy.data.armatures.new("Rig")
    arm = bpy.data.objects.new("Rig", data)
    scene.collection.objects.link(arm)
    bpy.context.view_layer.objects.active = arm
    bpy.ops.object.mode_set(mode="EDIT")
    rng = np.random.default_rng(0)
    children = {j: [c for c in range(24) if PARENTS[c] == j] for j in range(24)}
    for j in range(24):
        bone = data.edit_bones.new(prefix + MIXAMO_NAMES[j])
        head = M @ rest[j] * unit
        tail = M @ rest[children[j][0]] * unit if children[j] else head + M @ np.array([0.0, 0.08, 0.0]) * unit
        if j == 0:
            tail = M @ rest[J["spine1"]] * unit
        bone.head, bone.tail = Vector(head), Vector(tail)
        bone.roll = float(rng.uniform(-np.pi, np.pi))  # rest orientations far from identity
        if PARENTS[j] >= 0:
            bone.parent = data.edit_bones[prefix + MIXAMO_NAMES[PARENTS[j]]]
    bpy.ops.object.mode_set(mode="OBJECT")
    W = world_rotations(clip.poses.astype(np.float64))
    P = _smpl_joints(body, clip)
    bones = [arm.pose.bones[prefix + MIXAMO_NAMES[j]] for j in range(24)]
    rest_rot = [np.array(data.bones[prefix + MIXAMO_NAMES[j]].matrix_local)[:3, :3] for j in range(24)]
    for t in range(clip.num_frames):
        scene.frame_set(t + 1)
        for j in range(24):
            m = np.eye(4)
            m[:3, :3] = M @ W[t, j] @ M.T @ rest_rot[j]
            m[:3, 3] = M @ P[t, j] * unit
            bones[j].matrix = Matrix(m.tolist())
            bpy.context.view_layer.update()
            bones[j].keyframe_insert("rotation_quaternion", frame=t + 1)
            bones[j].keyframe_insert("location", frame=t + 1)
    scene.frame_start, scene.frame_end = 1, clip.num_frames
    return arm


def test_mixamo_armature_with_rolled_bones_follows_exactly(body, clip):
    scene = _empty_scene()
    arm = _mixamo_armature(scene, clip, body, facing_deg=0.0)
    anim = from_arrays(sample_armature(scene, arm, 1, clip.num_frames), source="live")
    done = to_motion_clip(anim)
    assert done.report["skeleton"] == "mixamo" and done.report["up"] == "Z" and done.report["units"] == "stated"
    err = np.abs(_smpl_joints(body, done.clip) - _smpl_joints(body, clip)).max()
    assert err < 2e-3, f"SMPL joints off the bone heads by {err * 1000:.2f} mm"


def test_turned_and_scaled_armature_gives_the_same_motion(body, clip):
    scene = _empty_scene()
    scene.unit_settings.scale_length = 0.01  # one Blender unit is a centimetre
    arm = _mixamo_armature(scene, clip, body, prefix="", facing_deg=90.0, unit=100.0)
    done = to_motion_clip(from_arrays(sample_armature(scene, arm, 1, clip.num_frames), source="live"))
    assert done.report["facing_deg"] == pytest.approx(90.0, abs=1e-3) and done.report["scale"] == pytest.approx(0.01)
    got = _smpl_joints(body, done.clip)
    turn = np.array(Matrix.Rotation(np.radians(90.0), 3, "Y"))  # +90 about Blender Z is +90 about SMPL Y
    want = _smpl_joints(body, clip) @ turn.T
    assert np.abs(got - want).max() < 2e-3


def test_rigify_metarig_with_keyed_rotations(body):
    scene = _empty_scene()
    bpy.ops.preferences.addon_enable(module="rigify")
    bpy.ops.object.armature_human_metarig_add()
    arm = bpy.context.object
    keyed = {"thigh.L": (0.6, 0, 0), "shin.L": (-0.9, 0, 0), "upper_arm.R": (0, 0, 0.7), "forearm.R": (0, 0.5, 0.8),
             "spine.003": (0.2, 0.3, 0), "spine.006": (0, 0.4, 0), "thigh.R": (0, 0.5, 0.2)}
    for frame in (1, 8):
        scene.frame_set(frame)
        for name, angles in keyed.items():
            pb = arm.pose.bones[name]
            pb.rotation_mode = "XYZ"
            pb.rotation_euler = [a * (frame - 1) / 7 for a in angles]
            pb.keyframe_insert("rotation_euler", frame=frame)
    arrays = sample_armature(scene, arm, 1, 8)
    done = to_motion_clip(from_arrays(arrays, source="metarig"), fit_shape=True)
    assert done.report["skeleton"] == "rigify"
    assert done.report["map"]["left_hip"] == "thigh.L" and done.report["map"]["head"] == "spine.006"
    smpl = _smpl_joints(body, done.clip)
    heads = arrays["frames"][:, :, :3, 3] @ Y_TO_Z  # Blender Z up -> SMPL Y up (the inverse turn)
    names = list(arrays["names"])

    def head(bone):
        return heads[:, names.index(bone)]

    # The limbs point where the rig's do (the rig's rest proportions are not the body's).
    for a, b, ra, rb in (("left_hip", "left_knee", "thigh.L", "shin.L"), ("left_knee", "left_ankle", "shin.L", "foot.L"),
                         ("right_shoulder", "right_elbow", "upper_arm.R", "forearm.R"),
                         ("right_elbow", "right_wrist", "forearm.R", "hand.R"),
                         ("right_hip", "right_knee", "thigh.R", "shin.R")):
        u, v = smpl[:, J[b]] - smpl[:, J[a]], head(rb) - head(ra)
        cos = np.sum(u * v, -1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() < 3.0, (a, b)
    # With the shape fitted and the hips placed on the rig's, hands and feet land near the bone heads
    # (the metarig's thigh is 8 cm longer than its shin, beyond the mannequin's shape space: the
    # report says so, and the knees sit up to 8 cm off).
    assert done.report["fit_rms_mm"] < 50 and any("shape space" in w for w in done.warnings)
    for joint, bone in (("right_wrist", "hand.R"), ("left_ankle", "foot.L"), ("right_ankle", "foot.R")):
        err = np.linalg.norm(smpl[:, J[joint]] - head(bone), axis=-1).max()
        assert err < 0.07, f"{joint}: {err * 1000:.0f} mm from {bone}'s head"


def test_fbx_written_by_blender_reads_back(tmp_path, body, clip):
    scene = _empty_scene()
    arm = _mixamo_armature(scene, clip, body)
    # Blender's FBX exporter takes the bind (rest) pose from the pose on screen: show the rest pose
    # at frame 0, outside the exported range, as a rig in its T-pose would be.
    for pb in arm.pose.bones:
        pb.matrix_basis = Matrix.Identity(4)
        pb.keyframe_insert("rotation_quaternion", frame=0)
        pb.keyframe_insert("location", frame=0)
    scene.frame_set(0)
    path = tmp_path / "take.fbx"
    bpy.ops.export_scene.fbx(filepath=str(path), object_types={"ARMATURE"}, bake_anim=True, add_leaf_bones=False,
                              bake_anim_simplify_factor=0.0)
    anim = read_fbx(path)
    # The exporter bakes the action's whole range: the rest key at frame 0, then the motion.
    assert anim.num_frames == clip.num_frames + 1 and anim.fps == pytest.approx(16.0)
    done = to_motion_clip(anim)
    assert done.report["skeleton"] == "mixamo"
    err = np.abs(_smpl_joints(body, done.clip.slice(1)) - _smpl_joints(body, clip)).max()
    assert err < 5e-3, f"SMPL joints off by {err * 1000:.2f} mm after the FBX round trip"
    # The CLI path: btdm motion import take.fbx
    from btdm_engine.cli import main
    out = tmp_path / "take.npz"
    assert main(["motion", "import", str(path), "--out", str(out)]) == 0 and out.is_file()
    bad = tmp_path / "bad.fbx"
    bad.write_bytes(b"Kaydara FBX Binary  \x00garbage")
    with pytest.raises(MotionSourceError, match="bad.fbx: Blender's FBX importer failed"):
        read_fbx(bad)


@pytest.mark.parametrize("size,fit,shift", [((1920, 1080), "AUTO", (0.0, 0.0)), ((1080, 1920), "AUTO", (0.1, -0.05)),
                                            ((1280, 720), "VERTICAL", (0.0, 0.2)), ((800, 800), "HORIZONTAL", (-0.1, 0.0))])
def test_camera_projects_like_blender(body, clip, size, fit, shift):
    scene = _empty_scene()
    arm = _mixamo_armature(scene, clip, body)
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 50
    cam_data = bpy.data.cameras.new("Cam")
    cam_data.sensor_fit, cam_data.lens = fit, 42.0
    cam_data.shift_x, cam_data.shift_y = shift
    cam = bpy.data.objects.new("Cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    for frame, x in ((1, 0.0), (clip.num_frames, 1.5)):  # an animated (dollying) camera
        cam.location = (x, -6.0, 1.2)
        cam.rotation_euler = (np.radians(85.0), 0.0, np.radians(10.0 * x))
        cam.keyframe_insert("location", frame=frame)
        cam.keyframe_insert("rotation_euler", frame=frame)
    arrays = sample_armature(scene, arm, 1, clip.num_frames, camera=cam)
    width, height = size[0] // 2, size[1] // 2
    assert (arrays["cam_width"], arrays["cam_height"]) == (width, height)
    for t in (0, clip.num_frames - 1):
        scene.frame_set(t + 1)
        heads = arrays["frames"][t, :, :3, 3]
        p = (arrays["cam_world_to_cam"][t] @ np.c_[heads, np.ones(len(heads))].T)[:3].T @ arrays["cam_K"][t].T
        mine = p[:, :2] / p[:, 2:]
        want = np.array([[v.x * width - 0.5, (1.0 - v.y) * height - 0.5]
                         for v in (world_to_camera_view(scene, cam, Vector(h)) for h in heads)])
        assert np.abs(mine - want).max() < 1e-3
    # Through the retargeting core, the clip's camera sees the SMPL joints where Blender sees the bones.
    done = to_motion_clip(from_arrays(arrays, source="shot"))
    assert done.report["camera"] == "shot" and (done.clip.width, done.clip.height) == (width, height)
    joints = _smpl_joints(body, done.clip)[-1]
    c = done.clip
    p = (c.world_to_cam[-1, :3, :3] @ joints.T).T + c.world_to_cam[-1, :3, 3]
    uv = (p @ c.K[-1].T)[:, :2] / p[:, 2:]
    assert np.abs(uv - want).max() < 0.5


def test_sampler_errors():
    scene = _empty_scene()
    with pytest.raises(ArmatureError, match="select an armature: got nothing"):
        sample_armature(scene, None, 1, 10)
    mesh = bpy.data.objects.new("Box", bpy.data.meshes.new("Box"))
    scene.collection.objects.link(mesh)
    with pytest.raises(ArmatureError, match="select an armature: got a mesh object \\('Box'\\)"):
        sample_armature(scene, mesh, 1, 10)
    cam_data = bpy.data.cameras.new("Ortho")
    cam_data.type = "ORTHO"
    cam = bpy.data.objects.new("Ortho", cam_data)
    with pytest.raises(ArmatureError, match="camera 'Ortho' is ortho; only perspective cameras make plates"):
        camera_matrices(scene, cam)
