"""MotionClip files, rotations, SMPL conventions, the procedural motion library, cameras, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from btdm_engine.body.skeleton import JOINT_NAMES
from btdm_engine.cli import main
from btdm_engine.motion import (
    MOTIONS,
    MotionClip,
    MotionClipError,
    default_camera,
    intrinsics,
    look_at,
    make_motion,
    orbit,
    project,
)
from btdm_engine.motion import rotations as R
from btdm_engine.motion.kinematics import forward_kinematics, local_rotations, world_rotations

J = {name: i for i, name in enumerate(JOINT_NAMES)}
SECONDS, FPS = 2.0, 30.0


@pytest.fixture(scope="module")
def library(body):
    """Every library motion (2 s at 30 fps) with its posed vertices and joints."""
    out = {}
    for name in MOTIONS:
        clip = make_motion(name, seconds=SECONDS, fps=FPS, width=200, height=160)
        verts, joints = body.forward(clip.poses, clip.betas, clip.trans)
        out[name] = (clip, np.asarray(verts, np.float64), np.asarray(joints, np.float64))
    return out


def _random_clip(T: int = 7, seed: int = 0) -> MotionClip:
    rng = np.random.default_rng(seed)
    K = intrinsics(64, 48, 45.0)
    w2c = look_at([0.3, 1.0, 4.0], [0.0, 0.9, 0.0])
    return MotionClip(
        fps=25.0, poses=rng.normal(0, 0.3, (T, 24, 3)), trans=rng.normal(0, 1, (T, 3)),
        betas=rng.normal(0, 1, 10), body_model="mannequin", K=np.repeat(K[None], T, 0),
        width=64, height=48, world_to_cam=np.repeat(w2c[None], T, 0),
    )


# ------------------------------------------------------------------------------ MotionClip files
def test_clip_round_trip_keeps_every_field(tmp_path):
    clip = _random_clip()
    path = clip.save(tmp_path / "walk.npz")
    assert path == tmp_path / "walk.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.npz"]  # no temp file left behind
    back = MotionClip.load(path)
    for name in ("poses", "trans", "betas", "K", "world_to_cam"):
        a, b = getattr(clip, name), getattr(back, name)
        assert b.dtype == np.float32 and np.array_equal(a, b), name
    assert (back.fps, back.width, back.height, back.body_model, back.format_version) == (25.0, 64, 48, "mannequin", 1)
    assert back.num_frames == 7 and back.duration == pytest.approx(7 / 25)


def test_save_needs_npz_suffix(tmp_path):
    with pytest.raises(MotionClipError, match="must end in '.npz'"):
        _random_clip().save(tmp_path / "walk.npy")


def _fields(clip: MotionClip) -> dict:
    return {
        "format_version": np.int64(1), "fps": np.float64(clip.fps), "poses": clip.poses, "trans": clip.trans,
        "betas": clip.betas, "body_model": np.str_(clip.body_model), "K": clip.K,
        "width": np.int64(clip.width), "height": np.int64(clip.height), "world_to_cam": clip.world_to_cam,
    }


def _nan_at(arr: np.ndarray, value: float) -> np.ndarray:
    arr = arr.copy()
    arr.flat[5] = value
    return arr


BAD_FIELDS = {
    "wrong shape": (lambda f: f.update(poses=f["poses"][:, :23]),
                    r"walk\.npz: field 'poses' has shape \(7, 23, 3\), expected \(T, 24, 3\)"),
    "nan": (lambda f: f.update(trans=_nan_at(f["trans"], np.nan)), r"walk\.npz: field 'trans' contains NaN"),
    "inf": (lambda f: f.update(K=_nan_at(f["K"], np.inf)), r"walk\.npz: field 'K' contains inf"),
    "version": (lambda f: f.update(format_version=np.int64(2)), r"walk\.npz: unknown format_version 2"),
    "frames": (lambda f: f.update(trans=f["trans"][:5]), r"walk\.npz: frame counts differ .*trans 5"),
    "missing": (lambda f: f.pop("betas"), r"walk\.npz: missing field\(s\) 'betas'"),
    "int poses": (lambda f: f.update(poses=np.zeros((7, 24, 3), np.int32)), r"field 'poses' must be a float array"),
    "fps": (lambda f: f.update(fps=np.float64(0.0)), r"field 'fps' must be a positive number"),
    "width": (lambda f: f.update(width=np.int64(-4)), r"field 'width' must be a positive integer"),
    "extra": (lambda f: f.update(colour=np.zeros(3)), r"unknown field\(s\) 'colour'"),
    "not rigid": (lambda f: f.update(world_to_cam=f["world_to_cam"] * 2), r"field 'world_to_cam' must be rigid"),
}


@pytest.mark.parametrize("case", sorted(BAD_FIELDS))
def test_bad_clip_files_name_file_and_field(tmp_path, case):
    fields = _fields(_random_clip())
    change, message = BAD_FIELDS[case]
    change(fields)
    path = tmp_path / "walk.npz"
    np.savez(path, **fields)
    with pytest.raises(MotionClipError, match=message):
        MotionClip.load(path)


def test_garbage_pickled_and_missing_files(tmp_path):
    garbage = tmp_path / "walk.npz"
    garbage.write_bytes(b"\x00not a zip archive" * 10)
    with pytest.raises(MotionClipError, match=r"walk\.npz: not a motion clip .*not a zip"):
        MotionClip.load(garbage)
    # An object array needs pickle to load: refused, never unpickled.
    fields = _fields(_random_clip())
    fields["body_model"] = np.array({"evil": 1}, dtype=object)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **fields)
    with pytest.raises(MotionClipError, match=r"pickled\.npz: unreadable .npz archive .*allow_pickle"):
        MotionClip.load(pickled)
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        MotionClip.load(tmp_path / "nowhere.npz")


def test_slice_and_with_camera():
    clip = _random_clip(T=10)
    part = clip.slice(2, 5)
    assert part.num_frames == 3 and np.array_equal(part.poses, clip.poses[2:5])
    assert np.array_equal(clip.slice(-2).trans, clip.trans[-2:])
    with pytest.raises(MotionClipError, match="empty"):
        clip.slice(5, 5)
    moved = clip.with_camera(intrinsics(32, 32, 60.0), 32, 32, look_at([0, 0, 3], [0, 0, 0]))
    assert moved.K.shape == (10, 3, 3) and moved.width == 32 and np.array_equal(moved.poses, clip.poses)
    with pytest.raises(MotionClipError, match="'K' has shape"):
        clip.with_camera(np.eye(2), 32, 32, np.eye(4))


def test_resized_scales_pixels_and_keeps_the_view():
    clip = _random_clip()
    pts = np.random.default_rng(1).normal([0, 0.9, 0], 0.3, (7, 50, 3))
    uv, _ = project(pts, clip.K, clip.world_to_cam)
    double = clip.resized(128, 96)
    uv2, _ = project(pts, double.K, double.world_to_cam)
    # Pixel centres sit at integers: a point at u maps to (u + 0.5) * 2 - 0.5.
    np.testing.assert_allclose(uv2, (uv + 0.5) * 2 - 0.5, atol=1e-3)
    square = clip.resized(100, 100)  # 64x48 -> fits as 100x75, centred vertically
    uv3, _ = project(pts, square.K, square.world_to_cam)
    np.testing.assert_allclose(uv3[..., 0], (uv[..., 0] + 0.5) * 100 / 64 - 0.5, atol=1e-3)
    np.testing.assert_allclose(uv3[..., 1], (uv[..., 1] + 0.5) * 100 / 64 - 0.5 + 12.5, atol=1e-3)
    with pytest.raises(MotionClipError, match="width must be a positive integer"):
        clip.resized(0, 10)


# ------------------------------------------------------------------------------ rotations
def test_rotation_conversions_round_trip():
    rng = np.random.default_rng(0)
    aa = rng.normal(0, 1, (5, 4, 3))
    aa *= np.minimum(1.0, 3.0 / np.linalg.norm(aa, axis=-1, keepdims=True))  # angles below pi
    mats = R.axis_angle_to_matrix(aa)
    assert mats.shape == (5, 4, 3, 3)
    np.testing.assert_allclose(mats @ np.swapaxes(mats, -1, -2), np.broadcast_to(np.eye(3), mats.shape), atol=1e-12)
    np.testing.assert_allclose(R.matrix_to_axis_angle(mats), aa, atol=1e-9)
    np.testing.assert_allclose(R.quat_to_axis_angle(R.axis_angle_to_quat(aa)), aa, atol=1e-9)
    np.testing.assert_allclose(R.quat_to_matrix(R.matrix_to_quat(mats)), mats, atol=1e-12)
    np.testing.assert_allclose(R.rotation_angle(mats), np.linalg.norm(aa, axis=-1), atol=1e-7)
    # Intrinsic Euler: the first axis named is the outermost factor (BVH channel order).
    a, b, c = 0.3, -0.7, 1.1
    np.testing.assert_allclose(R.euler_to_matrix([a, b, c], "ZXY"), R.rotation_z(a) @ R.rotation_x(b) @ R.rotation_y(c),
                               atol=1e-12)
    np.testing.assert_allclose(R.matrix_to_euler(R.euler_to_matrix([a, b, c], "ZXY"), "ZXY"), [a, b, c], atol=1e-12)
    with pytest.raises(ValueError, match="allowed: XYZ"):
        R.euler_to_matrix([a, b, c], "XXY")
    # align_vectors: one pair gives the shortest arc, several the best rotation.
    src, dst = np.array([[1.0, 0, 0]]), np.array([[0, 0, 2.0]])
    np.testing.assert_allclose(R.align_vectors(src, dst) @ src[0], [0, 0, 1], atol=1e-12)
    rot = R.axis_angle_to_matrix(np.array([0.2, -0.4, 0.9]))
    many = rng.normal(size=(4, 3))
    np.testing.assert_allclose(R.align_vectors(many, many @ rot.T), rot, atol=1e-9)


def test_kinematics_world_local_round_trip(body):
    rng = np.random.default_rng(2)
    poses = rng.normal(0, 0.4, (3, 24, 3))
    np.testing.assert_allclose(R.axis_angle_to_matrix(local_rotations(world_rotations(poses))),
                               R.axis_angle_to_matrix(poses), atol=1e-9)
    # Joint forward kinematics equals the body model's LBS joints.
    trans = rng.normal(0, 1, (3, 3))
    _, joints = body.forward(poses.astype(np.float32), np.zeros(10, np.float32), trans.astype(np.float32))
    np.testing.assert_allclose(forward_kinematics(poses, body.rest_joints(), trans), joints, atol=1e-5)


def _posed_joints(body, **angles) -> np.ndarray:
    """Joints after rotating the named joints by axis-angle vectors (dict name -> (3,))."""
    poses = np.zeros((1, 24, 3), np.float32)
    for name, aa in angles.items():
        poses[0, J[name]] = aa
    return np.asarray(body.forward(poses, np.zeros(10, np.float32), np.zeros((1, 3), np.float32))[1])[0]


def test_smpl_conventions_the_library_relies_on(body):
    rest = _posed_joints(body)
    # Hip flexion (thigh forward, towards +Z) is a negative rotation about X, for both legs.
    for side in ("left", "right"):
        flexed = _posed_joints(body, **{f"{side}_hip": [-0.5, 0, 0]})
        assert flexed[J[f"{side}_knee"], 2] > rest[J[f"{side}_knee"], 2] + 0.1
        # Knee flexion is positive about X: the ankle goes back (-Z).
        bent = _posed_joints(body, **{f"{side}_knee": [0.8, 0, 0]})
        assert bent[J[f"{side}_ankle"], 2] < rest[J[f"{side}_ankle"], 2] - 0.2
    # Arms come down: negative Z for the left shoulder (left is +X), positive for the right.
    left_down = _posed_joints(body, left_shoulder=[0, 0, -1.2])
    right_down = _posed_joints(body, right_shoulder=[0, 0, 1.2])
    assert rest[J["left_wrist"], 0] > 0.3 and rest[J["right_wrist"], 0] < -0.3
    assert left_down[J["left_wrist"], 1] < rest[J["left_wrist"], 1] - 0.3
    assert right_down[J["right_wrist"], 1] < rest[J["right_wrist"], 1] - 0.3
    # A positive root yaw turns the body towards its left: the left hip moves backwards (-Z).
    turned = _posed_joints(body, pelvis=[0, 0.5, 0])
    assert turned[J["left_hip"], 2] < rest[J["left_hip"], 2] - 0.02


# ------------------------------------------------------------------------------ motion library
@pytest.mark.parametrize("name", MOTIONS)
def test_library_motion_is_valid_smooth_grounded_and_framed(library, name):
    clip, verts, _ = library[name]
    T = int(SECONDS * FPS)
    assert clip.num_frames == T and clip.fps == FPS and clip.poses.shape == (T, 24, 3)
    assert np.isfinite(clip.poses).all() and np.isfinite(clip.trans).all()
    # Smooth: no joint turns more than 0.4 rad between frames (12 rad/s, a sprinter's knee), the
    # root moves < 12 cm per frame, and angular and linear velocities change gradually (C1).
    mats = R.axis_angle_to_matrix(clip.poses)
    rel = R.matrix_to_axis_angle(np.swapaxes(mats[:-1], -1, -2) @ mats[1:])
    step = np.linalg.norm(rel, axis=-1)
    assert step.max() < 0.4, f"{name}: joint {JOINT_NAMES[np.unravel_index(step.argmax(), step.shape)[1]]} jumps"
    assert np.linalg.norm(np.diff(rel, axis=0), axis=-1).max() < 0.25
    assert np.linalg.norm(np.diff(clip.trans, axis=0), axis=1).max() < 0.12
    assert np.linalg.norm(np.diff(clip.trans, 2, axis=0), axis=1).max() < 0.06
    # Standing on the floor y = 0: never far below it, and touching it in most frames.
    lowest = verts[..., 1].min(axis=1)
    assert lowest.min() > -0.02, f"{name}: a foot sinks {-lowest.min():.3f} m into the floor"
    assert np.mean(lowest < 0.02) > (0.4 if name in ("run", "jumping_jacks") else 0.9)
    # The default camera keeps every vertex of every frame inside the image, with margin.
    uv, depth = project(verts, clip.K, clip.world_to_cam)
    m = 0.05 * np.array([clip.width, clip.height]) - 1e-3
    assert (depth > 0).all()
    assert (uv >= m).all() and (uv <= np.array([clip.width, clip.height]) - 1 - m).all()
    # ... and frames it tightly: the motion reaches the margin on some side.
    slack = np.min(np.concatenate([uv.min((0, 1)) - m, np.array([clip.width, clip.height]) - 1 - m - uv.max((0, 1))]))
    assert slack < 1.0


def _facing_yaw(poses: np.ndarray) -> np.ndarray:
    forward = world_rotations(poses)[:, 0] @ np.array([0.0, 0.0, 1.0])
    return np.unwrap(np.arctan2(forward[:, 0], forward[:, 2]))


def test_walk_and_run_advance_along_the_facing_direction(library):
    for name, lo, hi in (("walk", 0.8, 1.6), ("run", 1.4, 3.5)):
        clip, verts, _ = library[name]
        travel = clip.trans[-1] - clip.trans[0]
        speed = travel[2] / SECONDS
        assert lo < speed < hi, f"{name}: {speed:.2f} m/s"
        assert abs(travel[0]) < 0.15 * travel[2]
        assert np.abs(_facing_yaw(clip.poses)).max() < 0.2  # faces +Z throughout
    # The supporting foot stays put: points of the sole touching the floor barely slide.
    clip, verts, _ = library["walk"]
    sole = verts[..., 1] < 0.005
    vel = np.linalg.norm(np.diff(verts[..., [0, 2]], axis=0), axis=-1) * FPS
    touching = sole[:-1] & sole[1:]
    assert np.median(vel[touching]) < 0.15


def test_spin_turns_a_full_circle_and_turn_goes_there_and_back(body):
    spin = make_motion("spin", seconds=4.0, fps=15.0)
    yaw = _facing_yaw(spin.poses)
    assert np.degrees(yaw[-1] - yaw[0]) > 340 and np.all(np.diff(yaw) > -1e-6)
    turn = make_motion("turn", seconds=4.0, fps=15.0)
    yaw = np.degrees(_facing_yaw(turn.poses))
    assert 170 < yaw.max() < 190 and abs(yaw[-1]) < 15
    # Turning in place: the body stays within a small circle.
    assert np.linalg.norm(turn.trans[:, [0, 2]] - turn.trans[0, [0, 2]], axis=1).max() < 0.35


def test_jumping_jacks_wave_and_kick_do_what_they_say(library):
    _, _, joints = library["jumping_jacks"]
    head = joints[:, J["head"], 1]
    wrists = joints[:, [J["left_wrist"], J["right_wrist"]], 1].min(axis=1)
    assert (wrists > head + 0.1).any() and (wrists < head - 0.5).any()  # overhead and down again
    ankles = joints[:, J["left_ankle"], 0] - joints[:, J["right_ankle"], 0]
    assert ankles.max() > ankles.min() + 0.3  # legs spread and close
    _, verts, _ = library["jumping_jacks"]
    assert verts[..., 1].min(axis=1).max() > 0.04  # airborne at times

    _, _, joints = library["wave"]
    right, left = joints[:, J["right_wrist"]], joints[:, J["left_wrist"]]
    assert right[:, 1].max() > joints[:, J["head"], 1].max()  # the right hand goes up
    assert left[:, 1].max() < joints[:, J["left_shoulder"], 1].min()  # the left arm stays down
    mid = right[len(right) // 4 : -len(right) // 4, 0]
    assert np.ptp(mid) > 0.08  # and waves from side to side

    _, _, joints = library["kick"]
    feet = joints[:, [J["left_ankle"], J["right_ankle"]]]
    assert feet[..., 1].max() > 0.6 * joints[:, J["pelvis"], 1].min()  # a foot kicks up near hip height
    assert (feet[..., 2] - joints[:, None, J["pelvis"], 2]).max() > 0.5  # in front of the body


def test_seed_is_deterministic_and_varies_the_motion():
    a = make_motion("dance", seconds=1.0, fps=10.0, seed=3)
    b = make_motion("dance", seconds=1.0, fps=10.0, seed=3)
    c = make_motion("dance", seconds=1.0, fps=10.0, seed=4)
    for name in ("poses", "trans", "K", "world_to_cam"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    diff = np.abs(a.poses - c.poses).max()
    assert 0.01 < diff < 0.6  # a natural variation, not a different motion


def test_speed_scales_tempo():
    slow = make_motion("walk", seconds=2.0, fps=15.0, speed=1.0)
    fast = make_motion("walk", seconds=2.0, fps=15.0, speed=2.0)
    ratio = (fast.trans[-1, 2] - fast.trans[0, 2]) / (slow.trans[-1, 2] - slow.trans[0, 2])
    assert 1.6 < ratio < 2.4


def test_unknown_motion_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown motion 'moonwalk'; allowed: walk, run, turn, spin"):
        make_motion("moonwalk")
    with pytest.raises(ValueError, match="seconds must be a positive number"):
        make_motion("walk", seconds=0)
    with pytest.raises(ValueError, match=r"betas must have shape \(10,\)"):
        make_motion("walk", seconds=0.2, betas=np.zeros(3))


# ------------------------------------------------------------------------------ cameras
@pytest.mark.parametrize("size", [(256, 256), (320, 180), (90, 300)])
def test_default_camera_frames_all_points_tightly(size):
    width, height = size
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(4, 500, 3)) * [0.4, 0.8, 0.3] + [2.0, 1.0, -1.0]
    for direction in (None, (1.0, 0.0, 0.0), (0.3, 0.0, 0.7)):
        K, w2c = default_camera(pts, width, height, margin=0.1, direction=direction)
        assert K.shape == (4, 3, 3) and w2c.shape == (4, 4, 4)
        np.testing.assert_allclose(K[0, 0, 0], K[0, 1, 1])  # square pixels
        assert np.linalg.det(w2c[0, :3, :3]) == pytest.approx(1.0)
        uv, depth = project(pts, K, w2c)
        lo = 0.1 * np.array([width, height]) - 1e-6
        hi = np.array([width, height]) - 1 - lo
        assert (depth > 0).all() and (uv >= lo).all() and (uv <= hi).all()
        # Tight: in x or y the projections span the full allowed range.
        span = (uv.max((0, 1)) - uv.min((0, 1))) / (hi - lo)
        assert span.max() > 0.999


def test_default_camera_looks_at_the_front_in_opencv_axes():
    pts = np.array([[[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    K, w2c = default_camera(pts, 100, 100)
    uv, _ = project(pts, K, w2c)
    assert uv[0, 1, 0] > uv[0, 0, 0]  # the body's left (+X) is on the image's right
    assert uv[0, 2, 1] < uv[0, 0, 1]  # up is up (image y grows downwards)
    cam_pos = -w2c[0, :3, :3].T @ w2c[0, :3, 3]
    assert cam_pos[2] > 1.0  # in front of the body, on the +Z side
    with pytest.raises(ValueError, match="margin"):
        default_camera(pts, 100, 100, margin=0.6)


def test_look_at_and_orbit():
    w2c = look_at([0.0, 1.0, 5.0], [0.0, 1.0, 0.0])
    cam = w2c @ np.array([0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(cam[:3], [0, 0, 5], atol=1e-12)
    cams = orbit([0.0, 1.0, 0.0], 3.0, 8, elevation_deg=20.0)
    K = np.repeat(intrinsics(64, 64, 50.0)[None], 8, 0)
    uv, depth = project(np.array([[[0.0, 1.0, 0.0]]] * 8), K, cams)
    np.testing.assert_allclose(uv[:, 0], 31.5, atol=1e-9)  # the target stays in the image centre
    np.testing.assert_allclose(depth, 3.0)
    centres = np.stack([-c[:3, :3].T @ c[:3, 3] for c in cams])
    np.testing.assert_allclose(centres[0], [0, 1 + 3 * np.sin(np.radians(20)), 3 * np.cos(np.radians(20))], atol=1e-12)
    assert centres[2, 0] > 2.0  # a quarter turn later the camera is on the +X side


def test_fixed_order_products_match_numpy():
    from btdm_engine import fixed_order as fx

    rng = np.random.default_rng(3)
    a, b, v = rng.normal(size=(5, 4, 3, 4)), rng.normal(size=(4, 4, 2)), rng.normal(size=(5, 4, 4))
    np.testing.assert_allclose(fx.matmul(a, b), a @ b, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(fx.matvec(a, v), np.einsum("...ij,...j->...i", a, v), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(fx.norm(v), np.linalg.norm(v, axis=-1), rtol=1e-15)
    x = rng.normal(size=(3, 5))
    for ours, theirs in ((fx.sin, np.sin), (fx.cos, np.cos), (fx.exp, np.exp)):
        assert ours(x).shape == x.shape
        np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-15)


def test_framing_camera_is_the_camera_of_every_exact_vertex(body, monkeypatch):
    """framing_camera poses only the vertices near an extreme exactly; with no slack at all it
    poses every vertex exactly. Both must give the same bits (and the float32 vertices' camera
    to float32 precision)."""
    from btdm_engine.motion import camera

    clip = make_motion("jumping_jacks", seconds=0.4, fps=FPS, seed=2, betas=np.linspace(-1, 1, 10))
    args = (body, clip.poses, clip.betas, clip.trans, 96, 64)
    kwargs = {"fov_deg": 35.0, "margin": 0.08, "direction": (0.4, 0.0, -1.0), "elevation_deg": 10.0}
    K, w2c = camera.framing_camera(*args, **kwargs, chunk=5)  # several chunks
    assert K.shape == (clip.num_frames, 3, 3) and w2c.shape == (clip.num_frames, 4, 4)
    monkeypatch.setattr(camera, "_SLACK_M", 1e-12)  # no candidate is trusted: every vertex, exactly
    K_all, w2c_all = camera.framing_camera(*args, **kwargs)
    assert K.tobytes() == K_all.tobytes() and w2c.tobytes() == w2c_all.tobytes()
    verts, _ = body.forward(clip.poses, clip.betas, clip.trans)
    K32, w2c32 = default_camera(np.asarray(verts), 96, 64, **kwargs)
    np.testing.assert_allclose(w2c, w2c32, atol=1e-5)
    np.testing.assert_array_equal(K, K32)


# ------------------------------------------------------------------------------ CLI
def test_cli_make_list_info(tmp_path, capsys):
    out = tmp_path / "wave.npz"
    assert main(["motion", "make", "wave", "--seconds", "0.5", "--fps", "10", "--size", "96", "--seed", "2",
                 "--out", str(out)]) == 0
    clip = MotionClip.load(out)
    assert clip.num_frames == 5 and clip.width == clip.height == 96
    assert np.array_equal(clip.poses, make_motion("wave", seconds=0.5, fps=10, seed=2, width=96, height=96).poses)
    assert main(["motion", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in MOTIONS)
    assert main(["motion", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "5 at 10 fps" in info and "96 x 96" in info and "static" in info
    assert main(["motion", "make", "moonwalk", "--out", str(tmp_path / "x.npz")]) == 2
    assert "allowed: walk, run" in capsys.readouterr().err
    assert main(["motion", "info", str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err
