"""The skeleton-animation contract: any rig's bones moving over time, before retargeting onto SMPL.

BVH files, FBX files (through Blender's importer) and live Blender armatures (the add-on) all
produce a :class:`SkeletonAnimation`; one function (:func:`btdm_engine.motion.retarget.to_motion_clip`)
turns it into a :class:`~btdm_engine.motion.clip.MotionClip`. The add-on writes the same ``.npz``
with numpy alone (``blender_addon/skeleton_io.py`` mirrors :meth:`SkeletonAnimation.save`), so the
format is plain arrays:

=================  ==================  =========================================================
field              shape / type        meaning
=================  ==================  =========================================================
format_version     int                 1
names              (NB,) str           bone names, unique
parents            (NB,) int64         parent index, -1 for roots; parents come before children
rest               (NB, 4, 4) float    rest-pose bone matrices in world space: rotation columns
                                       are the bone's axes, translation its head
tails              (NB, 3) float       rest-pose tail positions (a bone's end; a BVH End Site or
                                       its child's head; equal to the head for a point bone)
frames             (T, NB, 4, 4) float posed bone matrices, same space as ``rest``
fps                float               frames per second
scale              float               metres per unit, or 0 for "unknown: detect"
up                 str                 the world's up axis, "Y" or "Z" (Z-up means Blender's
                                       convention: forward -Y)
cam_K              (T, 3, 3) float     optional: the shot camera's OpenCV intrinsics per frame
cam_world_to_cam   (T, 4, 4) float     optional: its extrinsics, world (these units) -> OpenCV
                                       camera (x right, y down, z ahead)
cam_width          int                 optional: image width in pixels
cam_height         int                 optional: image height in pixels
=================  ==================  =========================================================

Rotations carry full orientation, so twist about a bone survives. Matrices may include scale
(Blender's ``matrix_world``); only the rotation part of ``rest``/``frames`` is used for
orientation (orthonormalised), and the translation for positions.

Every declared size is checked against :data:`LIMITS` from the archive's headers before anything
is read, and nothing is unpickled.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from btdm_engine.constants import UP_AXES
from btdm_engine.dataconfig import is_int
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_path, npz_headers
from btdm_engine.limits import FPS_RANGE

__all__ = ["FORMAT_VERSION", "LIMITS", "UP_AXES", "MotionSourceError", "SkeletonAnimation", "SkeletonAnimationError"]

FORMAT_VERSION = 1
# Sizes a file may declare (checked from the headers, before reading any array).
LIMITS = {"bones": 1024, "frames": 100_000, "bone_frames": 4_000_000, "name_chars": 256, "pixels": 16384}

_REQUIRED = ("format_version", "names", "parents", "rest", "tails", "frames", "fps", "scale", "up")
_CAMERA = ("cam_K", "cam_world_to_cam", "cam_width", "cam_height")


class SkeletonAnimationError(BtdmError, ValueError):
    """A skeleton animation (file or arrays) breaks the contract; the message names the field."""


class MotionSourceError(BtdmError, ValueError):
    """A motion file of an unknown kind, or one that holds no usable armature (raised by every reader
    of a motion file into this contract: :mod:`.sources`, :mod:`.fbx`)."""


@dataclass(frozen=True, eq=False)
class SkeletonAnimation:
    """A rig's bones over time (module docstring). Validated on construction."""

    names: tuple[str, ...]
    parents: np.ndarray  # (NB,) int64
    rest: np.ndarray  # (NB, 4, 4) float64
    tails: np.ndarray  # (NB, 3) float64
    frames: np.ndarray  # (T, NB, 4, 4) float64
    fps: float
    scale: float = 0.0  # metres per unit; 0 = detect
    up: str = "Y"
    cam_K: np.ndarray | None = None  # (T, 3, 3)
    cam_world_to_cam: np.ndarray | None = None  # (T, 4, 4)
    cam_width: int | None = None
    cam_height: int | None = None
    source: str = "skeleton animation"  # for messages only; not saved

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ basics
    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_bones(self) -> int:
        return len(self.names)

    @property
    def has_camera(self) -> bool:
        return self.cam_K is not None

    def heads(self) -> np.ndarray:
        """Posed head positions (T, NB, 3)."""
        return self.frames[:, :, :3, 3]

    def rest_heads(self) -> np.ndarray:
        """Rest head positions (NB, 3)."""
        return self.rest[:, :3, 3]

    def rotations(self) -> np.ndarray:
        """Posed bone orientations (T, NB, 3, 3), scale removed."""
        return orthonormalise(self.frames[:, :, :3, :3])

    def rest_rotations(self) -> np.ndarray:
        """Rest bone orientations (NB, 3, 3), scale removed."""
        return orthonormalise(self.rest[:, :3, :3])

    def __repr__(self) -> str:
        cam = f", camera {self.cam_width}x{self.cam_height}" if self.has_camera else ""
        return (f"SkeletonAnimation({self.num_bones} bones, {self.num_frames} frames at {self.fps:g} fps, "
                f"up {self.up}, scale {self.scale:g}{cam})")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ``.npz`` atomically; returns the path."""
        path = Path(path)
        if path.suffix != ".npz":
            raise SkeletonAnimationError(f"{path}: a skeleton animation file must end in '.npz'")
        arrays: dict[str, Any] = {
            "format_version": np.int64(FORMAT_VERSION),
            "names": np.array(self.names, dtype=np.str_),
            "parents": self.parents,
            "rest": self.rest,
            "tails": self.tails,
            "frames": self.frames,
            "fps": np.float64(self.fps),
            "scale": np.float64(self.scale),
            "up": np.str_(self.up),
        }
        if self.has_camera:
            arrays.update(cam_K=self.cam_K, cam_world_to_cam=self.cam_world_to_cam,
                          cam_width=np.int64(self.cam_width), cam_height=np.int64(self.cam_height))
        with atomic_path(path, suffix=".npz.tmp") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], limits: dict[str, int] | None = None) -> SkeletonAnimation:
        """Read and validate a file written by :meth:`save` (or by the add-on); never unpickles."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such skeleton animation file")
        name = path.name
        if not zipfile.is_zipfile(path):
            raise SkeletonAnimationError(f"{name}: not a skeleton animation (.npz) file: it is not a zip archive")
        lim = {**LIMITS, **(limits or {})}
        try:
            headers = npz_headers(path)
        except ValueError as exc:
            raise SkeletonAnimationError(f"{name}: {exc}") from exc
        missing = [f for f in _REQUIRED if f not in headers]
        if missing:
            raise SkeletonAnimationError(f"{name}: missing field(s) {', '.join(map(repr, missing))}")
        allowed = set(_REQUIRED) | set(_CAMERA)
        extra = sorted(set(headers) - allowed)
        if extra:
            raise SkeletonAnimationError(
                f"{name}: unknown field(s) {', '.join(map(repr, extra))}; allowed: {', '.join(_REQUIRED + _CAMERA)}")
        for field, (_shape, dtype) in headers.items():
            if dtype.hasobject:
                raise SkeletonAnimationError(
                    f"{name}: field {field!r} holds Python objects; only plain arrays are read")
        nb = headers["names"][0][0] if headers["names"][0] else 0
        t = headers["frames"][0][0] if headers["frames"][0] else 0
        if nb > lim["bones"]:
            raise SkeletonAnimationError(f"{name}: field 'names' declares {nb} bones; the limit is {lim['bones']}")
        if t > lim["frames"]:
            raise SkeletonAnimationError(f"{name}: field 'frames' declares {t} frames; the limit is {lim['frames']}")
        for field, (shape, _dtype) in headers.items():
            size = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if size > lim["bone_frames"] * 16:
                raise SkeletonAnimationError(
                    f"{name}: field {field!r} declares shape {shape}, over the limit of "
                    f"{lim['bone_frames']} bone-frames")
        if t * nb > lim["bone_frames"]:
            raise SkeletonAnimationError(
                f"{name}: {t} frames x {nb} bones is over the limit of {lim['bone_frames']} bone-frames")
        if headers["names"][1].kind == "U" and headers["names"][1].itemsize // 4 > lim["name_chars"]:
            raise SkeletonAnimationError(f"{name}: field 'names' allows names over {lim['name_chars']} characters")
        try:
            with np.load(path, allow_pickle=False) as npz:
                raw = {f: npz[f] for f in headers}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise SkeletonAnimationError(f"{name}: unreadable .npz archive ({exc})") from exc
        return from_arrays(raw, source=name, limits=lim)


def from_arrays(raw: dict[str, Any], source: str, limits: dict[str, int] | None = None) -> SkeletonAnimation:
    """Build from a dict of the file's fields, checking scalar types (the constructor checks the rest)."""
    lim = {**LIMITS, **(limits or {})}
    version = _scalar(raw["format_version"], "format_version", source, "iu")
    if version != FORMAT_VERSION:
        raise SkeletonAnimationError(
            f"{source}: unknown format_version {version}; this version of btdm reads {FORMAT_VERSION}")
    names = np.asarray(raw["names"])
    if names.dtype.kind != "U" or names.ndim != 1:
        raise SkeletonAnimationError(
            f"{source}: field 'names' must be a 1-D string array, got {names.dtype} {names.shape}")
    cam: dict[str, Any] = {}
    present = [f for f in _CAMERA if f in raw]
    if present and len(present) != len(_CAMERA):
        raise SkeletonAnimationError(
            f"{source}: camera fields come together: got {', '.join(present)}, missing "
            f"{', '.join(f for f in _CAMERA if f not in raw)}")
    if present:
        cam = dict(cam_K=raw["cam_K"], cam_world_to_cam=raw["cam_world_to_cam"],
                   cam_width=_scalar(raw["cam_width"], "cam_width", source, "iu"),
                   cam_height=_scalar(raw["cam_height"], "cam_height", source, "iu"))
        for f in ("cam_width", "cam_height"):
            if not 0 < cam[f] <= lim["pixels"]:
                raise SkeletonAnimationError(f"{source}: field {f!r} must be 1..{lim['pixels']} pixels, got {cam[f]}")
    return SkeletonAnimation(
        names=tuple(str(n) for n in names), parents=raw["parents"], rest=raw["rest"], tails=raw["tails"],
        frames=raw["frames"], fps=_scalar(raw["fps"], "fps", source, "iuf"),
        scale=_scalar(raw["scale"], "scale", source, "iuf"), up=_scalar(raw["up"], "up", source, "U"),
        source=source, **cam,
    )


def orthonormalise(m: np.ndarray) -> np.ndarray:
    """Nearest rotation matrices (..., 3, 3) to ``m`` (polar decomposition), dropping scale and shear."""
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    flip = np.linalg.det(r) < 0
    if np.any(flip):  # a mirrored bone (negative scale): keep a proper rotation
        u = u.copy()
        u[flip, :, -1] *= -1
        r = u @ vt
    return r


# ---------------------------------------------------------------------------------- validation
def _scalar(value: Any, name: str, source: str, kinds: str) -> Any:
    arr = np.asarray(value)
    if arr.shape != () or arr.dtype.kind not in kinds:
        want = {"iu": "an integer", "iuf": "a number", "U": "a string"}[kinds]
        raise SkeletonAnimationError(f"{source}: field {name!r} must be {want}, got {arr.dtype} {arr.shape}")
    return arr.item()


def _float(value: Any, name: str, source: str, shape: tuple[int | None, ...], expected: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise SkeletonAnimationError(f"{source}: field {name!r} must be a float array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        raise SkeletonAnimationError(f"{source}: field {name!r} has shape {arr.shape}, expected {expected}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise SkeletonAnimationError(f"{source}: field {name!r} contains NaN or inf (first at index {first})")
    return arr


def _validate(anim: SkeletonAnimation) -> None:
    src = anim.source
    set_ = object.__setattr__
    names = tuple(anim.names)
    nb = len(names)
    if nb == 0:
        raise SkeletonAnimationError(f"{src}: field 'names' is empty: a skeleton needs at least one bone")
    if nb > LIMITS["bones"]:
        raise SkeletonAnimationError(f"{src}: {nb} bones; the limit is {LIMITS['bones']}")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n or len(n) > LIMITS["name_chars"]:
            raise SkeletonAnimationError(f"{src}: field 'names' entry {i} must be a non-empty string of at most "
                                         f"{LIMITS['name_chars']} characters, got {n!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SkeletonAnimationError(f"{src}: field 'names' repeats bone name(s) {', '.join(map(repr, dup))}")
    set_(anim, "names", names)
    parents = np.asarray(anim.parents)
    if parents.dtype.kind not in "iu" or parents.shape != (nb,):
        raise SkeletonAnimationError(
            f"{src}: field 'parents' must be ({nb},) integers, got {parents.dtype} {parents.shape}")
    parents = parents.astype(np.int64)
    for i, p in enumerate(parents):
        if not -1 <= p < i:
            raise SkeletonAnimationError(
                f"{src}: field 'parents' entry {i} ({names[i]!r}) is {p}: a parent must come before its child "
                "(or be -1 for a root)")
    set_(anim, "parents", parents)
    set_(anim, "rest", _float(anim.rest, "rest", src, (nb, 4, 4), f"({nb}, 4, 4)"))
    set_(anim, "tails", _float(anim.tails, "tails", src, (nb, 3), f"({nb}, 3)"))
    frames = _float(anim.frames, "frames", src, (None, nb, 4, 4), f"(T, {nb}, 4, 4)")
    if frames.shape[0] == 0:
        raise SkeletonAnimationError(f"{src}: field 'frames' has no frames")
    if frames.shape[0] > LIMITS["frames"] or frames.shape[0] * nb > LIMITS["bone_frames"]:
        raise SkeletonAnimationError(
            f"{src}: {frames.shape[0]} frames x {nb} bones is over the limits ({LIMITS['frames']} frames, "
            f"{LIMITS['bone_frames']} bone-frames)")
    set_(anim, "frames", frames)
    for field, arr in (("rest", anim.rest), ("frames", frames)):
        det = np.linalg.det(arr[..., :3, :3])
        if np.any(np.abs(det) < 1e-12):
            first = tuple(int(i) for i in np.argwhere(np.abs(det) < 1e-12)[0])
            raise SkeletonAnimationError(
                f"{src}: field {field!r} has a singular (zero-scale) bone matrix at index {first}")
    fps = float(anim.fps)
    lo, hi = FPS_RANGE  # the one fps limit of every command (btdm_engine.limits)
    if not (np.isfinite(fps) and lo <= fps <= hi):
        raise SkeletonAnimationError(f"{src}: field 'fps' must be between {lo:g} and {hi:g}, got {anim.fps}")
    set_(anim, "fps", fps)
    scale = float(anim.scale)
    if not (np.isfinite(scale) and (scale == 0 or 1e-6 <= scale <= 1e3)):
        raise SkeletonAnimationError(f"{src}: field 'scale' must be metres per unit (1e-6..1000) or 0 to detect, "
                                     f"got {anim.scale}")
    set_(anim, "scale", scale)
    if anim.up not in UP_AXES:
        raise SkeletonAnimationError(f"{src}: field 'up' must be one of {', '.join(UP_AXES)}, got {anim.up!r}")
    if anim.cam_K is not None or anim.cam_world_to_cam is not None:
        T = frames.shape[0]
        K = _float(anim.cam_K, "cam_K", src, (T, 3, 3), f"({T}, 3, 3)")
        w2c = _float(anim.cam_world_to_cam, "cam_world_to_cam", src, (T, 4, 4), f"({T}, 4, 4)")
        if not (np.all(K[:, 0, 0] > 0) and np.all(K[:, 1, 1] > 0) and np.allclose(K[:, 2], [0, 0, 1], atol=1e-6)
                and np.all(K[:, 1, 0] == 0)):
            raise SkeletonAnimationError(f"{src}: field 'cam_K' must be pinhole intrinsics with positive focal lengths "
                                         "and last row (0, 0, 1)")
        if not np.allclose(w2c[:, 3], [0, 0, 0, 1], atol=1e-6):
            raise SkeletonAnimationError(f"{src}: field 'cam_world_to_cam' must have last row (0, 0, 0, 1)")
        for f in ("cam_width", "cam_height"):
            v = getattr(anim, f)
            if not is_int(v, numpy=True) or not 0 < v <= LIMITS["pixels"]:
                raise SkeletonAnimationError(f"{src}: field {f!r} must be 1..{LIMITS['pixels']} pixels, got {v!r}")
            set_(anim, f, int(v))
        set_(anim, "cam_K", K)
        set_(anim, "cam_world_to_cam", w2c)
