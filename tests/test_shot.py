"""Plates through the shot camera: square windows that follow the body, and the composite back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from btdm_engine.body.model import load_body_model
from btdm_engine.motion import make_motion
from btdm_engine.motion.camera import intrinsics, look_at
from btdm_engine.motion.shot import ShotError, plan_shot
from btdm_engine.posemaps.renderer import IUVRenderer


@pytest.fixture(scope="module")
def walk():
    return make_motion("walk", seconds=2.0, fps=24.0)


def _shot(clip, width, height, eyes, fov=40.0):
    K = intrinsics(width, height, fov)
    eyes = np.atleast_2d(eyes)
    w2c = np.stack([look_at(e, np.array([0.0, 0.9, 1.0])) for e in eyes])
    if len(w2c) == 1:
        w2c = w2c[0]
    return clip.with_camera(K, width, height, w2c)


def _check_windows(plan, clip):
    from btdm_engine.motion.shot import _bounding_boxes

    boxes, _ = _bounding_boxes(clip)
    left, top, side = plan.windows.T
    assert (boxes[:, 0] >= left - 1e-6).all() and (boxes[:, 2] <= left + side + 1e-6).all()
    assert (boxes[:, 1] >= top - 1e-6).all() and (boxes[:, 3] <= top + side + 1e-6).all()


@pytest.mark.parametrize("size", [(1280, 720), (720, 1280)])
def test_static_camera_keeps_one_window_size_and_a_smooth_path(walk, size):
    shot = _shot(walk, *size, np.array([3.0, 1.2, 6.0]))
    plan = plan_shot(shot, 128)
    _check_windows(plan, shot)
    assert np.ptp(plan.windows[:, 2]) == 0.0  # fixed size where the motion allows
    centre = plan.windows[:, :2] + plan.windows[:, 2:] / 2
    jerk = np.abs(np.diff(centre, n=2, axis=0)).max()
    assert jerk < 0.02 * plan.windows[0, 2], f"window centre jitters by {jerk:.2f} px"
    assert plan.square_clip.width == plan.square_clip.height == 128
    assert plan.visible.all()


def test_dolly_in_grows_the_window_without_cutting_the_body(walk):
    eyes = np.linspace([0.0, 1.0, 12.0], [0.0, 1.0, 3.5], walk.num_frames)
    shot = _shot(walk, 960, 540, eyes)
    plan = plan_shot(shot, 128)
    _check_windows(plan, shot)
    assert plan.windows[-1, 2] > 1.8 * plan.windows[0, 2]


def test_window_render_composites_exactly_over_the_full_resolution_render(walk):
    shot = _shot(walk, 640, 360, np.array([2.5, 1.0, 5.5]))
    plan = plan_shot(shot, 256)
    body = load_body_model("mannequin")
    frames = [0, 30]
    with IUVRenderer(body, 640, 360) as r:
        full = list(r.render_clip(shot, progress=False, frames=frames))
    with IUVRenderer(body, 256, 256) as r:
        square = list(r.render_clip(plan.square_clip, progress=False, frames=frames))
    for k, n in enumerate(frames):
        frame = np.where(square[k][..., :1] > 0, 200, 255).astype(np.uint8).repeat(3, axis=2)
        plate = plan.composite(n, frame, square[k], grow=0.0, feather=0.0)
        assert plate.shape == (360, 640, 4)
        sil, mine = full[k][..., 0] > 0, plate[..., 3] >= 128
        iou = (sil & mine).sum() / (sil | mine).sum()
        assert iou > 0.9, f"frame {n}: IoU {iou:.3f} with the full-resolution silhouette"
        assert (plate[..., 3] == 0).mean() > 0.8 and (plate[plate[..., 3] == 0][:, :3] == 0).all()
        grown = plan.composite(n, frame, square[k])  # the default grows the matte to keep hair and cloth
        assert ((grown[..., 3] > 0) | ~sil).all()


def test_crop_cuts_a_picture_of_the_shot_as_the_pose_map_frames_the_body(walk):
    # The appearance of a shot-camera job: a picture of the whole shot at frame n, cut with frame n's
    # window, lines up with frame n's pose map (its fine-tuning IUV map), at any picture resolution.
    shot = _shot(walk, 640, 360, np.array([2.5, 1.0, 5.5]))
    plan = plan_shot(shot, 128)
    body = load_body_model("mannequin")
    n = 30
    with IUVRenderer(body, 640, 360) as r:
        (full,) = r.render_clip(shot, progress=False, frames=[n])
    with IUVRenderer(body, 128, 128) as r:
        (square,) = r.render_clip(plan.square_clip, progress=False, frames=[n])
    picture = np.where(full[..., :1] > 0, 40, 255).astype(np.uint8).repeat(3, axis=2)
    for scale in (1.0, 3.0, 0.5):  # the render's own size, a larger photo, a smaller one
        resized = cv2.resize(picture, (round(640 * scale), round(360 * scale)), interpolation=cv2.INTER_AREA)
        cut = plan.crop(n, resized, 128)
        assert cut.shape == (128, 128, 3) and cut.dtype == np.uint8
        mine, pose = cut[..., 0] < 148, square[..., 0] > 0
        iou = (mine & pose).sum() / (mine | pose).sum()
        assert iou > 0.9, f"scale {scale}: IoU {iou:.3f} with frame {n}'s pose map"
    with pytest.raises(ShotError, match="aspect"):
        plan.crop(n, np.zeros((300, 300, 3), np.uint8), 128)
    with pytest.raises(ShotError, match="outside the shot"):
        plan.crop(plan.num_frames, picture, 128)


def test_errors_name_the_problem(walk):
    behind = _shot(walk, 320, 240, np.array([0.0, 1.0, -6.0]))
    behind = behind.with_camera(behind.K, 320, 240, look_at(np.array([0.0, 1.0, -6.0]), np.array([0.0, 1.0, -12.0])))
    with pytest.raises(ShotError, match="never inside the shot camera's view"):
        plan_shot(behind, 64)
    with pytest.raises(ShotError, match="window size must be an integer between 8 and 8192"):
        plan_shot(walk, 4)
    plan = plan_shot(walk, 64)
    with pytest.raises(ShotError, match="frame 99 is outside the shot's 48 frames"):
        plan.composite(99, np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ShotError, match="expected a square RGB uint8 frame"):
        plan.composite(0, np.zeros((64, 32, 3), np.uint8), np.zeros((64, 64, 3), np.uint8))


def test_animate_plate_writes_square_frames_and_shot_plates(tmp_path, walk, one_thread):
    import cv2

    from btdm_engine.cli import main

    shot = _shot(walk.slice(0, 4), 480, 270, np.array([2.0, 1.2, 5.0]))
    path = shot.save(tmp_path / "shot.npz")
    out = tmp_path / "out"
    assert main(["animate", "--clip", str(path), "--plate", "--steps", "2", "--sr-steps", "2", "--out", str(out),
                 "--no-progress"]) == 0
    frames = sorted((out / "frames").glob("*.png"))
    plates = sorted((out / "plates").glob("*.png"))
    assert [p.name for p in plates] == [f.name for f in frames] == [f"{i:06d}.png" for i in range(4)]
    plate = cv2.imread(str(plates[0]), cv2.IMREAD_UNCHANGED)
    assert plate.shape == (270, 480, 4)
    # Opaque where the body is, transparent far from it.
    with IUVRenderer(load_body_model("mannequin"), 480, 270) as r:
        sil = next(iter(r.render_clip(shot, progress=False, frames=[0])))[..., 0] > 0
    eroded = cv2.erode(sil.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert (plate[..., 3][eroded] > 200).mean() > 0.95
    far = ~cv2.dilate(sil.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
    assert (plate[..., 3][far] == 0).all()
    assert main(["animate", "--posemaps", str(out / "frames"), "--plate", "--out", str(tmp_path / "x")]) == 2
