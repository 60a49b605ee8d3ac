"""The two worlds coincide: Blender's armature deformation and camera against the engine's.

Training pose maps come from the engine's IUV renderer and the RGB frames from Blender; both are
driven by the same MotionClip. These tests prove that Blender's skinned body is SMPL's
``BodyModel.forward`` (under a millimetre) and that Blender's camera, set from the clip's OpenCV
``K`` and ``world_to_cam``, sees the body exactly where the IUV renderer draws it.
"""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy", reason="needs the bpy module (pip install '.[blender]')")

from btdm_engine.motion import make_motion  # noqa: E402
from synthetic_data import blender_scene as bs  # noqa: E402
from synthetic_data.coords import blender_camera, project_blender, smpl_to_blender  # noqa: E402
from synthetic_data.garments import BodyRest  # noqa: E402

pytestmark = pytest.mark.blender


def _poses(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A real motion's frames plus random poses with large rotations at every joint."""
    clip = make_motion("dance", seconds=0.2, fps=30.0, seed=3)
    rand = rng.normal(scale=0.6, size=(3, 24, 3))
    poses = np.concatenate([clip.poses[:3], rand]).astype(np.float64)
    trans = np.concatenate([clip.trans[:3], rng.normal(scale=0.5, size=(3, 3))]).astype(np.float64)
    return poses, trans


def test_blender_armature_matches_engine_skinning(body) -> None:
    rng = np.random.default_rng(11)
    betas = rng.normal(scale=1.0, size=10)
    rest = BodyRest.from_body_model(body, betas)
    poses, trans = _poses(rng)
    with bs.quiet():
        bs.reset_scene()
        rig = bs.build_armature(rest.joints)
        obj = bs.add_skinned_mesh(rig, "body", rest.vertices, body.faces, body.weights)
        if np.any(body.posedirs != 0):
            bs.add_pose_blend_keys(obj, body.posedirs)
        bs.keyframe_poses(rig, poses, trans, first_frame=1, body=obj)
    # Bones follow the skeleton (head at the joint, pointing at the child), not identity frames.
    assert not np.allclose(rig.rest[:, :3, :3], np.eye(3))
    expected, _ = body.forward(poses.astype(np.float32), betas.astype(np.float32), trans.astype(np.float32))
    errors = []
    for t in range(len(poses)):
        bpy.context.scene.frame_set(1 + t)
        got = bs.evaluated_vertices(obj)
        errors.append(np.linalg.norm(got - expected[t], axis=1).max())
    assert max(errors) < 1e-3, f"Blender skinning differs from BodyModel.forward by up to {max(errors) * 1000:.3f} mm"
    # The comparison is not vacuous: the poses move the body by decimetres.
    rest_verts = rest.vertices + trans[:, None]
    assert np.linalg.norm(expected - rest_verts, axis=2).max() > 0.2


def test_blender_camera_projects_like_opencv() -> None:
    """A non-square image with an off-centre principal point, through Blender's own projection."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    from btdm_engine.motion import look_at

    width, height = 96, 160
    K = np.array([[140.0, 0.0, 41.3], [0.0, 140.0, 88.6], [0.0, 0.0, 1.0]])
    w2c = look_at(np.array([0.8, 0.4, 3.0]), np.array([0.0, -0.2, 0.0]))
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, 0.5, size=(30, 3))
    cam_pts = points @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam_pts @ K.T
    uv = uv[:, :2] / uv[:, 2:]
    with bs.quiet():
        bs.reset_scene()
        cam = bs.set_camera(K[None], w2c[None], width, height, first_frame=1)
    scene = bpy.context.scene
    got = []
    for p in smpl_to_blender(points):
        ndc = world_to_camera_view(scene, cam, Vector(p.tolist()))
        got.append((ndc.x * width - 0.5, (1.0 - ndc.y) * height - 0.5))
    assert np.abs(np.array(got) - uv).max() < 1e-3
    assert np.abs(project_blender(blender_camera(K, w2c, width, height), smpl_to_blender(points)) - uv).max() < 1e-6


def test_cycles_silhouette_matches_iuv_foreground(body, tmp_path) -> None:
    import cv2

    from btdm_engine.posemaps import IUVRenderer
    from synthetic_data.presets import RenderSettings

    betas = np.random.default_rng(5).normal(scale=0.8, size=10)
    clip = make_motion("kick", seconds=1.0, fps=30.0, seed=2, betas=betas, width=112, height=128)
    frames = [5, 17]
    clip = clip.slice(0, 18)
    rest = BodyRest.from_body_model(body, betas)
    with IUVRenderer(body, clip.width, clip.height) as renderer:
        iuv = list(renderer.render_clip(clip, progress=False, frames=frames))
    with bs.quiet():
        bs.reset_scene()
        rig = bs.build_armature(rest.joints)
        bs.add_skinned_mesh(rig, "body", rest.vertices, body.faces, body.weights, bs.flat_material("grey", (0.5, 0.5, 0.5)))
        bs.keyframe_poses(rig, clip.poses, clip.trans, first_frame=1)
        bs.set_camera(clip.K, clip.world_to_cam, clip.width, clip.height, first_frame=1)
        bs.configure_render(RenderSettings(resolution=128, samples=8, denoise=False), seed=0, fps=clip.fps)
    # Box-filter coverage: alpha > 0.5 is what a pixel-centre rasteriser draws.
    bpy.context.scene.cycles.filter_width = 0.01
    for k, f in enumerate(frames):
        path = tmp_path / f"{f}.png"
        bs.render_frame(1 + f, path)
        alpha = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., 3]
        mask_blender = alpha > 127
        mask_iuv = iuv[k][..., 0] > 0
        iou = (mask_blender & mask_iuv).sum() / (mask_blender | mask_iuv).sum()
        assert mask_iuv.sum() > 500, "the body should fill a good part of the frame"
        assert iou > 0.97, f"frame {f}: silhouette IoU {iou:.4f}"
