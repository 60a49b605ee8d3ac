"""Procedural motion library: walk, run, turn, spin, jumping jacks, dance, kick, wave.

Each motion is a set of smooth (C2 or better) joint-angle curves on SMPL's skeleton,
then placed in the world by a ground-contact solve: the body is lifted so that its lowest foot
point touches the floor ``y = 0`` and moved horizontally so that the supporting foot does not
slide. Locomotion speed therefore follows from the leg swing itself, not from a guessed velocity.

SMPL conventions used throughout (checked by forward kinematics in tests/test_motion.py): the
body faces +Z, the person's left is +X, Y is up; all joint frames are world-aligned at rest (the
T-pose). Hence, about +X: hip flexion (thigh forward) is negative, knee flexion positive, ankle
plantar flexion (toes down) positive, spine/neck flexion (lean forward) positive. About +Z: the
left arm comes down with a negative angle, the right arm with a positive one; left leg abduction
is positive. About +Y (root): a positive yaw turns the body towards its left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.ndimage import gaussian_filter1d, maximum_filter1d

from btdm_engine import fixed_order as fx
from btdm_engine import limits
from btdm_engine.body.exact import rest_vertices
from btdm_engine.body.skeleton import JOINT_NAMES, NUM_BETAS, NUM_JOINTS
from btdm_engine.errors import UsageError
from btdm_engine.motion.camera import framing_camera
from btdm_engine.motion.clip import MotionClip
from btdm_engine.motion.kinematics import forward_kinematics, world_rotations
from btdm_engine.motion.rotations import matrix_to_axis_angle, rotation_x, rotation_y, rotation_z

__all__ = ["MOTIONS", "cached_body_model", "describe", "make_motion", "pose_motion"]

J = {name: i for i, name in enumerate(JOINT_NAMES)}
TAU = 2.0 * np.pi
# Shoulder angle that brings the T-pose arm down beside the body (about 72 degrees).
ARM_DOWN = 1.25


@dataclass
class _Curves:
    """Joint angles of one motion before world placement.

    ``angles[t, j] = (ax, ay, az)`` builds joint j's local rotation as ``Rx(ax) @ Ry(ay) @ Rz(az)``
    (Z first: arm lowering / leg abduction; then Y twist; then X flexion). The root rotation is
    ``Ry(yaw) @ Rx @ Ry @ Rz`` of its angles, so leaning follows the facing direction.
    """

    angles: np.ndarray  # (T, 24, 3)
    yaw: np.ndarray  # (T,)
    hop: np.ndarray  # (T,) extra height above the ground contact, metres
    # "contact": move so the supporting foot does not slide; "smoothed": the same, low-passed in
    # time, for running, whose flight phases have no support.
    plant: str = "contact"
    # Optional (T, 2) weights of the left / right foot as the support for horizontal planting,
    # from the gait phase; None picks the lowest foot. Running needs it: a swing foot can reach
    # floor level before its stance begins, and must not drag the body back.
    support: np.ndarray | None = None


@dataclass(frozen=True)
class _Style:
    """Per-seed natural variation: amplitude scales, a phase offset, small posture offsets."""

    legs: float
    arms: float
    torso: float
    tempo: float
    phase: float
    head_tilt: float
    arm_carry: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Style:
        n = np.clip(rng.normal(size=7), -2.0, 2.0)
        return cls(
            legs=1.0 + 0.06 * n[0],
            arms=1.0 + 0.12 * n[1],
            torso=1.0 + 0.15 * n[2],
            tempo=1.0 + 0.03 * n[3],
            phase=float(rng.uniform(-0.5, 0.5)),
            head_tilt=0.04 * n[4],
            arm_carry=0.05 * n[5],
        )


def _vm(x: np.ndarray, kappa: float) -> np.ndarray:
    """A smooth periodic bump (von Mises shape), 1 at x = 0 (mod 2 pi), near 0 far from it."""
    return np.exp(kappa * (np.cos(x) - 1.0))


def _smootherstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


def _standing(T: int, style: _Style) -> np.ndarray:
    """Relaxed standing posture: arms down, elbows soft, small per-seed head and arm offsets."""
    a = np.zeros((T, NUM_JOINTS, 3))
    a[:, J["left_shoulder"], 2] = -(ARM_DOWN - style.arm_carry)
    a[:, J["right_shoulder"], 2] = ARM_DOWN - style.arm_carry
    a[:, J["left_elbow"], 1] = -0.15
    a[:, J["right_elbow"], 1] = 0.15
    a[:, J["head"], 2] = style.head_tilt
    return a


def _set_leg(a: np.ndarray, side: str, hip: np.ndarray, knee: np.ndarray, foot_pitch: np.ndarray,
             abduct: np.ndarray | float = 0.0) -> None:
    """Hip flexion (positive = thigh forward), knee flexion, and the foot's world pitch.

    The ankle is solved so the foot ends at ``foot_pitch`` (positive = toes down) relative to the
    pelvis: in the sagittal plane the chain's X angles add up, so ankle = pitch - (hip + knee).
    Abduction is cancelled at the ankle so the sole stays level.
    """
    hip_x = -np.asarray(hip)
    a[:, J[f"{side}_hip"], 0] = hip_x
    a[:, J[f"{side}_knee"], 0] = knee
    a[:, J[f"{side}_ankle"], 0] = foot_pitch - (hip_x + knee)
    sign = 1.0 if side == "left" else -1.0
    a[:, J[f"{side}_hip"], 2] = sign * np.asarray(abduct)
    a[:, J[f"{side}_ankle"], 2] = -a[:, J[f"{side}_hip"], 2]


# ---------------------------------------------------------------------------------- motions
# Sagittal keyframes over one gait cycle of one leg, starting at its heel strike (fraction, deg).
# Shapes follow normative gait data (Winter, "Biomechanics and Motor Control of Human Movement"):
# hip flexion measured from the vertical (the pelvis is not tilted here), knee flexion, and the
# foot's pitch (toes up positive) from which the ankle is solved. Walk: stance 0-0.62; run:
# stance 0-0.4, then flight.
_WALK_KEYS = {
    "hip": [(0.0, 22), (0.1, 15), (0.3, -3), (0.5, -18), (0.6, -13), (0.7, 4), (0.82, 28), (0.92, 27)],
    "knee": [(0.0, 4), (0.15, 17), (0.4, 5), (0.6, 38), (0.72, 62), (0.85, 22), (0.93, 5)],
    "pitch": [(0.0, 17), (0.08, 0), (0.4, 0), (0.5, -8), (0.62, -35), (0.72, -12), (0.85, 2), (0.95, 12)],
}
_RUN_KEYS = {
    "hip": [(0.0, 20), (0.2, 0), (0.4, -20), (0.5, -12), (0.65, 15), (0.82, 32), (0.92, 28)],
    "knee": [(0.0, 22), (0.15, 40), (0.38, 20), (0.6, 80), (0.75, 95), (0.88, 55), (0.95, 28)],
    "pitch": [(0.0, 8), (0.1, 0), (0.25, -5), (0.4, -40), (0.55, -25), (0.75, -5), (0.9, 8)],
}


def _periodic(keys: list[tuple[float, float]]) -> Callable[[np.ndarray], np.ndarray]:
    """A C2 periodic cubic spline through (cycle fraction, degrees) keys -> radians."""
    x = np.array([k[0] for k in keys] + [1.0])
    y = np.radians([k[1] for k in keys] + [keys[0][1]])
    spline = CubicSpline(x, y, bc_type="periodic")
    return lambda c: spline(np.mod(c, 1.0))


def _gait(t: np.ndarray, speed: float, style: _Style, run: bool) -> _Curves:
    """Walk or run from keyframed joint curves; ``c`` is the left leg's cycle fraction."""
    T = len(t)
    keys = _RUN_KEYS if run else _WALK_KEYS
    curves = {name: _periodic(k) for name, k in keys.items()}
    stride_hz = (1.4 if run else 0.9) * speed * style.tempo
    c = stride_hz * t + style.phase / TAU
    a = _standing(T, style)
    for side, cs in (("left", c), ("right", c + 0.5)):
        hip = style.legs * curves["hip"](cs)
        knee = style.legs * curves["knee"](cs)
        _set_leg(a, side, hip, knee, -curves["pitch"](cs), abduct=0.02)
    wave = np.cos(TAU * c)  # +1 at the left heel strike (left leg in front)
    # Arms counter-swing the legs: left arm back while the left leg is forward.
    arm_amp = (0.55 if run else 0.3) * style.arms
    a[:, J["left_shoulder"], 0] = arm_amp * wave + (0.0 if run else 0.05)
    a[:, J["right_shoulder"], 0] = -arm_amp * wave + (0.0 if run else 0.05)
    base, extra = (1.45, 0.25) if run else (0.3, 0.3)
    a[:, J["left_elbow"], 1] = -(base + extra * style.arms * (1 - wave) / 2)
    a[:, J["right_elbow"], 1] = base + extra * style.arms * (1 + wave) / 2
    # Pelvis turns with the forward leg; the thorax counter-rotates so the head looks ahead.
    a[:, 0, 1] = -(0.1 if run else 0.07) * style.torso * wave
    lean = 0.06 if run else 0.02
    for j in ("spine1", "spine2", "spine3"):
        a[:, J[j], 1] = (0.045 if run else 0.03) * style.torso * wave
        a[:, J[j], 0] = lean
    a[:, J["neck"], 0] = -2.0 * lean
    hop = np.zeros(T)
    if run:
        # Flight around each toe-off (0.4-0.5 of either leg's cycle, 0.8-1 of a half cycle): a
        # broad smooth lift that also keeps the landing foot off the floor until heel strike.
        u = 2.0 * c
        hop = 0.06 * style.legs * _vm(TAU * (u - 0.87), 2.0)
    support = None
    if run:
        stance_mid = 0.2  # the middle of 0-0.4
        support = np.stack([_vm(TAU * (c - stance_mid), 3.0), _vm(TAU * (c + 0.5 - stance_mid), 3.0)], axis=1)
    return _Curves(a, np.zeros(T), hop, plant="smoothed" if run else "contact", support=support)


def _walk(t: np.ndarray, speed: float, style: _Style, duration: float) -> _Curves:
    """Walk forward (+Z) at about 1 m/s: heel strike, roll-over, push-off, counter-swinging arms."""
    return _gait(t, speed, style, run=False)


def _run(t: np.ndarray, speed: float, style: _Style, duration: float) -> _Curves:
    """Run forward (+Z) at about 2 m/s with flight phases, bent arms and a forward lean."""
    return _gait(t, speed, style, run=True)


def _step_in_place(a: np.ndarray, phi: np.ndarray, amount: np.ndarray, style: _Style) -> None:
    """Alternating small steps (each foot lifted in turn) scaled by ``amount`` in [0, 1]."""
    for side, ph in (("left", phi), ("right", phi + np.pi)):
        lift = amount * style.legs * np.sin(ph).clip(0.0) ** 2
        _set_leg(a, side, 0.45 * lift, 0.9 * lift, 0.1 * lift, abduct=0.03)


def _turn(t: np.ndarray, speed: float, style: _Style, duration: float) -> _Curves:
    """Turn 180 degrees to the left and back, stepping while turning (4 s cycle at speed 1)."""
    T = len(t)
    u = TAU * speed * t / 4.0
    yaw = np.pi * (1.0 - np.cos(u)) / 2.0
    a = _standing(T, style)
    _step_in_place(a, TAU * 1.6 * speed * style.tempo * t + style.phase, 0.2 + 0.8 * np.sin(u) ** 2, style)
    # Head leads the turn a little.
    a[:, J["neck"], 1] = 0.15 * style.torso * np.sin(u)
    a[:, J["left_shoulder"], 0] = 0.1 * style.arms * np.sin(u)
    a[:, J["right_shoulder"], 0] = -0.1 * style.arms * np.sin(u)
    return _Curves(a, yaw, np.zeros(T))


def _spin(t: np.ndarray, speed: float, style: _Style, duration: float) -> _Curves:
    """A full 360-degree turn in place every 4 s / speed (UBC Fashion style), pausing facing front."""
    T = len(t)
    u = TAU * speed * t / 4.0
    yaw = u - np.sin(u)  # rate ~ 1 - cos u: starts and ends each turn at rest, facing +Z
    a = _standing(T, style)
    # Arms held slightly away from the body, as models do to show a garment.
    a[:, J["left_shoulder"], 2] += 0.25 * style.arms
    a[:, J["right_shoulder"], 2] -= 0.25 * style.arms
    _step_in_place(a, TAU * 1.6 * speed * style.tempo * t + style.phase, 0.15 + 0.6 * (1 - np.cos(u)) / 2, style)
    return _Curves(a, yaw, np.zeros(T))


def _jumping_jacks(t: np.ndarray, speed: float, style: _Style, duration: float) -> _Curves:
    """Jump out to legs apart / arms overhead and back, one jack per 1.2 s at speed 1."""
    T = len(t)
    u = TAU * speed * style.tempo * t / 1.2
    # 0 = together, 1 = spread; the phase warp makes the limbs move mostly while airborne
    # (u = pi/2, 3 pi/2) and hold still while the feet are on the floor (u = 0, pi).
    s = (1.0 - np.cos(u - 0.3 * np.sin(2.0 * u))) / 2.0
    a = _standing(T, style)
    # Knees bend when landing (s = 0 or 1) and straighten in the air.
    land = np.cos(u) ** 2
    for side in ("left", "right"):
        _set_leg(a, side, 0.25 * land, 0.5 * land, 0.0, abduct=0.04 + 0.32 * style.legs * s)
    raise_ = (ARM_DOWN + 1.45 * style.arms) * s
    a[:, J["left_shoulder"], 2] += raise_
    a[:, J["right_shoulder"], 2] -= raise_
    a[:, J["left_collar"], 2] = 0.25 * s
    a[:, J["right_collar"], 2] = -0.25 * s
    a[:, J["left_elbow"], 1] = -0.15 * (1 - s)
    a[:, J["right_elbow"], 1] = 0.15 * (1 - s)
    hop = 0.08 * style.legs * _vm(2.0 * u - np.pi, 3.0)  # airborne between the two landing poses
    return _Curves(a, np.zeros(T), hop)


def _dance(t: np.ndarray, speed: float, style: _Style, duration: float) -> _Curves:
    """Side-to-side sway on a 2 Hz beat with bouncing knees, torso twist and alternating arm swings."""
    T = len(t)
    phi = TAU * 0.5 * speed * style.tempo * t + style.phase  # one sway (two beats) per second
    beat = 2.0 * phi
    a = _standing(T, style)
    bounce = 0.3 * style.legs * (1.0 - np.cos(beat)) / 2.0
    # Legs tilt together, so with the feet planted the pelvis sways about 7 cm each way.
    sway = -0.085 * style.legs * np.sin(phi)
    for side in ("left", "right"):
        abduct = 0.1 + (sway if side == "left" else -sway)
        _set_leg(a, side, 0.5 * bounce, bounce, 0.0, abduct=abduct)
    a[:, 0, 2] = 0.06 * style.torso * np.sin(phi)  # hips roll with the sway
    for j in ("spine1", "spine2", "spine3"):
        a[:, J[j], 2] = -0.06 * style.torso * np.sin(phi)
        a[:, J[j], 1] = 0.09 * style.torso * np.sin(phi + 0.5)
    # Arms: each swings forward and up in turn, elbows bent, on the sway.
    up_l = style.arms * (1.0 + np.sin(phi)) / 2.0
    up_r = style.arms * (1.0 - np.sin(phi)) / 2.0
    a[:, J["left_shoulder"], 0] = -1.2 * up_l
    a[:, J["right_shoulder"], 0] = -1.2 * up_r
    a[:, J["left_shoulder"], 2] += 0.5 * up_l
    a[:, J["right_shoulder"], 2] -= 0.5 * up_r
    a[:, J["left_elbow"], 1] = -(0.4 + 0.9 * up_l)
    a[:, J["right_elbow"], 1] = 0.4 + 0.9 * up_r
    a[:, J["left_wrist"], 2] = 0.3 * np.sin(beat)
    a[:, J["right_wrist"], 2] = -0.3 * np.sin(beat)
    a[:, J["neck"], 0] = 0.08 * np.sin(beat)  # nod on the beat
    a[:, J["head"], 2] += 0.06 * np.sin(phi)
    return _Curves(a, np.zeros(T), np.zeros(T))


def _kick(t: np.ndarray, speed: float, style: _Style, duration: float) -> _Curves:
    """Front snap kicks from a guard stance, alternating legs, one every 2 s at speed 1."""
    T = len(t)
    cycles = speed * style.tempo * t / 2.0
    u = cycles % 1.0
    env = np.sin(np.pi * u) ** 2  # zero with zero slope between kicks, so switching legs is smooth
    snap = np.exp(-(((u - 0.5) / 0.09) ** 2))
    kicking_right = (np.floor(cycles).astype(int) % 2) == 0
    a = _standing(T, style)
    for side, active in (("right", kicking_right), ("left", ~kicking_right)):
        e = np.where(active, env, 0.0)
        sn = np.where(active, snap, 0.0)
        support = np.where(active, 0.0, env)
        hip = 1.45 * style.legs * e + 0.1 * support
        knee = 0.15 + 2.0 * e - 1.9 * sn + 0.2 * support
        pitch = 0.5 * sn - 0.1 * e
        _set_leg(a, side, hip, knee, pitch, abduct=0.06)
    # Guard: upper arms down and forward, turned in, so the fists come up in front of the chest;
    # the torso leans back to balance the kick.
    for side, sign in (("left", -1.0), ("right", 1.0)):
        a[:, J[f"{side}_shoulder"]] = [-0.6 * style.arms, sign * 0.5, sign * ARM_DOWN]
        a[:, J[f"{side}_elbow"], 1] = sign * 1.6
    for j in ("spine1", "spine2"):
        a[:, J[j], 0] = -0.1 * style.torso * env
    a[:, J["neck"], 0] = 0.15 * env
    return _Curves(a, np.zeros(T), np.zeros(T))


def _wave(t: np.ndarray, speed: float, style: _Style, duration: float) -> _Curves:
    """Raise the right hand, wave it side to side at 2 Hz, lower it again before the clip ends."""
    T = len(t)
    rise = 0.8 / speed
    if duration < 2.5 * rise:  # too short to lower again: keep the hand up after raising it
        r = _smootherstep(t / rise)
    else:
        r = _smootherstep(t / rise) * _smootherstep((duration - t) / rise)
    wag = 0.4 * style.arms * np.sin(TAU * 2.0 * speed * style.tempo * t + style.phase) * r
    a = _standing(T, style)
    a[:, J["right_shoulder"], 2] = (ARM_DOWN - style.arm_carry) * (1 - r) - 0.35 * r
    a[:, J["right_shoulder"], 0] = -0.3 * r
    a[:, J["right_elbow"], 1] = 0.15 * (1 - r)
    a[:, J["right_elbow"], 2] = -1.55 * r + wag
    a[:, J["right_wrist"], 2] = 0.3 * wag
    # Weight settles onto one leg and the head tilts towards the waving hand.
    a[:, J["head"], 2] -= 0.08 * r
    a[:, 0, 2] = 0.03 * r
    return _Curves(a, np.zeros(T), np.zeros(T))


_GENERATORS: dict[str, Callable[[np.ndarray, float, _Style, float], _Curves]] = {
    "walk": _walk,
    "run": _run,
    "turn": _turn,
    "spin": _spin,
    "jumping_jacks": _jumping_jacks,
    "dance": _dance,
    "kick": _kick,
    "wave": _wave,
}
MOTIONS: tuple[str, ...] = tuple(_GENERATORS)


def describe(name: str) -> str:
    """One-line description of a library motion."""
    if name not in _GENERATORS:
        raise UsageError(f"unknown motion {name!r}; allowed: {', '.join(MOTIONS)}")
    return (_GENERATORS[name].__doc__ or "").strip().splitlines()[0]


# ---------------------------------------------------------------------------------- assembly
def _local_matrices(curves: _Curves) -> np.ndarray:
    a = curves.angles
    # fixed_order, not `@`: the poses are stored data (a synthetic clip's), the same bits everywhere
    mats = fx.matmul(fx.matmul(rotation_x(a[..., 0]), rotation_y(a[..., 1])), rotation_z(a[..., 2]))
    mats[:, 0] = fx.matmul(rotation_y(curves.yaw), mats[:, 0])
    return mats


def pose_motion(
    name: str, seconds: float = 4.0, fps: float = 30.0, speed: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, np.ndarray | None]:
    """The joint-space part of :func:`make_motion`: poses (T, 24, 3), root yaw (T,), hop (T,),
    the planting mode ("contact" or "smoothed") and optional phase-based support weights (T, 2).

    No body model is needed; world placement (ground contact, translation) happens in
    :func:`make_motion`.
    """
    if name not in _GENERATORS:
        raise UsageError(f"unknown motion {name!r}; allowed: {', '.join(MOTIONS)}")
    for label, value in (("seconds", seconds), ("fps", fps), ("speed", speed)):
        if not np.isfinite(value) or value <= 0:
            raise UsageError(f"{label} must be a positive number, got {value}")
    limits.check_fps(fps, "fps")
    limits.check("frames", seconds * fps, f"{seconds:g} seconds at {fps:g} fps (frames)")
    T = max(1, int(round(seconds * fps)))
    t = np.arange(T) / fps
    style = _Style.draw(np.random.default_rng(seed))
    curves = _GENERATORS[name](t, float(speed), style, T / fps)
    poses = matrix_to_axis_angle(_local_matrices(curves))
    return poses, curves.yaw, curves.hop, curves.plant, curves.support


# Sole contact points: a heel under each ankle and a ball under each toe joint.
_CONTACT_JOINTS = (J["left_ankle"], J["left_foot"], J["right_ankle"], J["right_foot"])


def _ground_and_plant(
    poses: np.ndarray, rest: np.ndarray, sole_y: float, hop: np.ndarray, plant: str, fps: float,
    support: np.ndarray | None = None,
) -> np.ndarray:
    """Root translation (T, 3) that keeps the lowest sole point on y = 0 and the stance foot still.

    Soft minima (softmax weights over contact heights) keep the result smooth in time.
    """
    if plant not in ("contact", "smoothed"):
        raise UsageError(f"unknown planting mode {plant!r}; allowed: contact, smoothed")
    world = world_rotations(poses)
    joints = forward_kinematics(poses, rest)  # without translation
    ids = list(_CONTACT_JOINTS)
    offset = np.stack([[0.0, sole_y - rest[j, 1], 0.0] for j in ids])  # joint -> sole, at rest
    pts = joints[:, ids] + fx.matvec(world[:, ids], offset)
    height = pts[..., 1]
    tau = 0.01  # metres: how soft the choice of the lowest point is
    w = fx.exp(-(height - height.min(axis=1, keepdims=True)) / tau)
    w /= w.sum(axis=1, keepdims=True)
    ground = (w * height).sum(axis=1)
    trans = np.zeros((len(poses), 3))
    trans[:, 1] = -ground + hop
    if plant == "smoothed" and len(poses) > 1:
        # Running: smooth the landings' jolts, then lift wherever that put a foot into the floor
        # (a running maximum before smoothing, so the smooth lift covers each sinking frame).
        lifted = gaussian_filter1d(trans[:, 1], sigma=0.04 * fps, mode="nearest")
        sink = np.maximum(-(lifted + height.min(axis=1)), 0.0)
        sigma = 0.02 * fps
        sink = maximum_filter1d(sink, size=2 * int(np.ceil(2 * sigma)) + 1, mode="nearest")
        trans[:, 1] = lifted + gaussian_filter1d(sink, sigma=sigma, mode="nearest")
    if len(poses) > 1:
        # Velocity of the material points in contact (not of the moving contact location), so a
        # foot rolling from heel to ball does not push the body backwards.
        vel = np.gradient(pts, 1.0 / fps, axis=0)[..., [0, 2]]
        if support is not None:
            # Within each foot the lower of heel and ball carries it; across feet, the gait phase.
            w = np.empty_like(w)
            for foot in (slice(0, 2), slice(2, 4)):
                h = height[:, foot]
                e = fx.exp(-(h - h.min(axis=1, keepdims=True)) / tau)
                w[:, foot] = e / e.sum(axis=1, keepdims=True)
            w *= np.repeat(support / support.sum(axis=1, keepdims=True), 2, axis=1)
        v = -(w[..., None] * vel).sum(axis=1)
        if plant == "smoothed":
            # No support in flight: carry the body through it by smoothing the support velocity
            # over a few frames (sigma 0.04 s); the stance foot slides a little in exchange.
            v = gaussian_filter1d(v, sigma=0.04 * fps, axis=0, mode="nearest")
        dt = 1.0 / fps
        trans[1:, [0, 2]] = np.cumsum(0.5 * (v[1:] + v[:-1]) * dt, axis=0)
    return trans


def cached_body_model(name_or_path: str) -> object:
    """The body model by name or path (``load_body_model`` keeps models in memory)."""
    from btdm_engine.body import load_body_model  # lazy: torch (btdm_engine.body.model)

    return load_body_model(name_or_path)


def make_motion(
    name: str,
    seconds: float = 4.0,
    fps: float = 30.0,
    speed: float = 1.0,
    seed: int = 0,
    betas: np.ndarray | None = None,
    *,
    width: int = 256,
    height: int = 256,
    body_model: str = "mannequin",
    fov_deg: float = 40.0,
    margin: float = 0.05,
) -> MotionClip:
    """A procedural motion from :data:`MOTIONS` as a MotionClip, framed by the default camera.

    Args:
        name: one of :data:`MOTIONS`.
        seconds, fps: clip length and frame rate (``round(seconds * fps)`` frames).
        speed: tempo multiplier (2.0 = twice as fast).
        seed: natural variation (amplitudes, phase, posture); same seed, same clip.
        betas: body shape (10,), zeros by default.
        width, height: image size of the attached camera.
        body_model: body used to place the feet on the floor and to frame the whole mesh.
        fov_deg, margin: passed to :func:`btdm_engine.motion.camera.default_camera`.

    The body stands on the floor ``y = 0`` and starts facing +Z; the camera is static, in front.
    """
    poses, yaw, hop, plant, support = pose_motion(name, seconds, fps, speed, seed)
    betas = np.zeros(NUM_BETAS) if betas is None else np.asarray(betas, dtype=np.float64)
    if betas.shape != (NUM_BETAS,):
        raise UsageError(f"betas must have shape ({NUM_BETAS},), got {betas.shape}")
    body = cached_body_model(body_model)
    # Rest joints and the sole's height in float64, in a fixed order (body.exact): the float32 torch
    # and BLAS sums they came from differed in their last bits with the thread count, and so did
    # the root translation a synthetic clip stores.
    rest = body.rest_joints(betas).astype(np.float64)
    sole_y = float(rest_vertices(body, betas)[:, 1].min())
    trans = _ground_and_plant(poses, rest, sole_y, hop, plant, fps, support)
    facing = rotation_y(yaw[0])[:, 2]  # the body's front, +Z turned by the yaw
    K, w2c = framing_camera(body, poses, betas, trans, width, height, fov_deg=fov_deg, margin=margin,
                            direction=-facing)
    return MotionClip(
        fps=float(fps), poses=poses, trans=trans, betas=betas, body_model=body_model,
        K=K, width=width, height=height, world_to_cam=w2c,
    )
