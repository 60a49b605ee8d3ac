"""MotionClip: an SMPL body motion plus the camera that films it, stored as a versioned `.npz`.

The contract (docs/architecture.md, "MotionClip"): ``format_version`` 1, ``fps``, ``poses``
(T, 24, 3) SMPL axis-angle with joint 0 the global orientation, ``trans`` (T, 3) metres,
``betas`` (10,), ``body_model`` name, and a per-frame OpenCV camera ``K`` (T, 3, 3), ``width``,
``height``, ``world_to_cam`` (T, 4, 4). World is SMPL's: Y up, metres, the body faces +Z at rest.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from btdm_engine import limits
from btdm_engine.body.skeleton import NUM_BETAS, NUM_JOINTS
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_path, npz_headers

__all__ = ["FORMAT_VERSION", "MAX_ANGLE", "MAX_DISTANCE", "MotionClip", "MotionClipError"]

FORMAT_VERSION = 1
# Values no motion holds: a root further than this from the origin (metres; float32 keeps about a
# centimetre there) or an axis-angle longer than this (radians, some 1600 turns).
MAX_DISTANCE = 1e5
MAX_ANGLE = 1e4

_FIELDS: tuple[str, ...] = (
    "format_version", "fps", "poses", "trans", "betas", "body_model",
    "K", "width", "height", "world_to_cam",
)
# Per-frame arrays: name -> (trailing shape, human-readable expected shape).
_FRAME_FIELDS: dict[str, tuple[tuple[int, ...], str]] = {
    "poses": ((NUM_JOINTS, 3), f"(T, {NUM_JOINTS}, 3)"),
    "trans": ((3,), "(T, 3)"),
    "K": ((3, 3), "(T, 3, 3)"),
    "world_to_cam": ((4, 4), "(T, 4, 4)"),
}


class MotionClipError(BtdmError, ValueError):
    """A motion clip (file or arrays) breaks the MotionClip contract; the message names the field."""


class MotionClipLimitError(MotionClipError, limits.LimitError):
    """A clip declares more frames or pixels than :mod:`btdm_engine.limits` allows; names the field and limit."""


@dataclass(frozen=True, eq=False)
class MotionClip:
    """An SMPL motion with a per-frame pinhole camera (OpenCV convention: x right, y down, z ahead).

    Arrays are validated and stored as float32 on construction; a bad field raises
    :class:`MotionClipError` naming it.
    """

    fps: float
    poses: np.ndarray  # (T, 24, 3) SMPL axis-angle, joint 0 = global orientation
    trans: np.ndarray  # (T, 3) root translation, metres
    betas: np.ndarray  # (10,) shape coefficients
    body_model: str  # "mannequin" or a path/name of an SMPL model file
    K: np.ndarray  # (T, 3, 3) intrinsics
    width: int
    height: int
    world_to_cam: np.ndarray  # (T, 4, 4) extrinsics
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        clean = _validate({name: getattr(self, name) for name in _FIELDS}, "MotionClip")
        for name, value in clean.items():
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ basics
    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return int(self.poses.shape[0])

    @property
    def duration(self) -> float:
        """Length in seconds (``num_frames / fps``)."""
        return self.num_frames / self.fps

    def __repr__(self) -> str:
        return (
            f"MotionClip(frames={self.num_frames}, fps={self.fps:g}, body_model={self.body_model!r}, "
            f"size={self.width}x{self.height})"
        )

    # ------------------------------------------------------------------ derived clips
    def slice(self, start: int, stop: int | None = None) -> MotionClip:
        """Frames ``start:stop`` (Python slice semantics, negative indices allowed) as a new clip."""
        idx = range(self.num_frames)[start:stop]
        if len(idx) == 0:
            raise MotionClipError(
                f"slice({start}, {stop}) of a {self.num_frames}-frame clip is empty"
            )
        sl = slice(idx.start, idx.stop)
        return self._replace(
            poses=self.poses[sl], trans=self.trans[sl], K=self.K[sl], world_to_cam=self.world_to_cam[sl]
        )

    def with_camera(
        self, K: np.ndarray, width: int, height: int, world_to_cam: np.ndarray
    ) -> MotionClip:
        """The same motion filmed by another camera; ``K`` (3,3) or (T,3,3), ``world_to_cam``
        (4,4) or (T,4,4) (a single matrix means a static camera)."""
        T = self.num_frames
        K = np.asarray(K, dtype=np.float32)
        w2c = np.asarray(world_to_cam, dtype=np.float32)
        if K.shape == (3, 3):
            K = np.broadcast_to(K, (T, 3, 3))
        if w2c.shape == (4, 4):
            w2c = np.broadcast_to(w2c, (T, 4, 4))
        return self._replace(K=np.array(K), width=width, height=height, world_to_cam=np.array(w2c))

    def resized(self, width: int, height: int) -> MotionClip:
        """The same camera rendering into a ``width`` x ``height`` image.

        Pixels stay square: the image is scaled uniformly by ``min(width/W, height/H)`` and, when
        the aspect ratio changes, centred with extra margin, so everything the old image showed
        stays in view. Pixel centres are at integer coordinates, hence the half-pixel terms.
        """
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise MotionClipError(f"resized: {name} must be a positive integer, got {value!r}")
        s = min(width / self.width, height / self.height)
        K = self.K.astype(np.float64).copy()
        K[:, 0, 0] *= s
        K[:, 1, 1] *= s
        K[:, 0, 1] *= s
        # Map the old image centre to the new one, then scale about it.
        K[:, 0, 2] = (K[:, 0, 2] + 0.5 - self.width / 2) * s + width / 2 - 0.5
        K[:, 1, 2] = (K[:, 1, 2] + 0.5 - self.height / 2) * s + height / 2 - 0.5
        return self._replace(K=K, width=int(width), height=int(height))

    def _replace(self, **changes: Any) -> MotionClip:
        fields = {name: getattr(self, name) for name in _FIELDS}
        fields.update(changes)
        return MotionClip(**fields)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the clip to ``path`` (must end in ``.npz``) atomically; returns the path."""
        path = Path(path)
        if path.suffix != ".npz":
            raise MotionClipError(f"{path}: a motion clip file must end in '.npz'")
        arrays = {
            "format_version": np.int64(self.format_version),
            "fps": np.float64(self.fps),
            "poses": self.poses,
            "trans": self.trans,
            "betas": self.betas,
            "body_model": np.str_(self.body_model),
            "K": self.K,
            "width": np.int64(self.width),
            "height": np.int64(self.height),
            "world_to_cam": self.world_to_cam,
        }
        with atomic_path(path, suffix=".npz.tmp") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MotionClip:
        """Read and validate a clip written by :meth:`save`; never unpickles anything."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such motion clip file")
        if not zipfile.is_zipfile(path):
            raise MotionClipError(f"{path.name}: not a motion clip (.npz) file: it is not a zip archive")
        _check_headers(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                names = set(npz.files)
                raw = {name: npz[name] for name in _FIELDS if name in names}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise MotionClipError(f"{path.name}: unreadable .npz archive ({exc})") from exc
        missing = [name for name in _FIELDS if name not in names]
        if missing:
            raise MotionClipError(f"{path.name}: missing field(s) {', '.join(map(repr, missing))}")
        extra = sorted(names - set(_FIELDS))
        if extra:
            raise MotionClipError(
                f"{path.name}: unknown field(s) {', '.join(map(repr, extra))} for format_version "
                f"{FORMAT_VERSION}; allowed: {', '.join(_FIELDS)}"
            )
        return cls(**_validate(raw, path.name))


# ---------------------------------------------------------------------- validation
def _check_headers(path: Path) -> None:
    """Refuse declared sizes over the limits from the ``.npy`` headers, before any array is read."""
    try:
        headers = npz_headers(path)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise MotionClipError(f"{path.name}: unreadable .npz archive ({exc})") from exc
    for name, (shape, dtype) in headers.items():
        if dtype.hasobject:
            raise MotionClipError(f"{path.name}: unreadable .npz archive (field {name!r} holds Python objects, which "
                                  "need allow_pickle; btdm never unpickles)")
        if name in _FRAME_FIELDS and shape:
            _limit("frames", shape[0], f"{path.name}: field {name!r} declares {shape[0]} frames")
        elif name not in _FRAME_FIELDS and int(np.prod(shape, dtype=np.int64)) > 1024:
            raise MotionClipError(f"{path.name}: field {name!r} declares shape {shape}; expected a scalar or (10,)")
        if dtype.kind == "U" and dtype.itemsize // 4 > 4096:
            raise MotionClipError(f"{path.name}: field {name!r} allows strings of {dtype.itemsize // 4} characters")


def _limit(name: str, value: float, what: str) -> None:
    try:
        limits.check(name, value, what)
    except limits.LimitError as exc:
        raise MotionClipLimitError(str(exc), limit=name) from None


def _scalar(value: Any, name: str, source: str, kind: str) -> Any:
    arr = np.asarray(value)
    if arr.shape != ():
        raise MotionClipError(f"{source}: field {name!r} must be a scalar, got shape {arr.shape}")
    ok = {
        "int": arr.dtype.kind in "iu",
        "number": arr.dtype.kind in "iuf",
        "str": arr.dtype.kind == "U",
    }[kind]
    if not ok:
        expected = {"int": "an integer", "number": "a number", "str": "a string"}[kind]
        raise MotionClipError(f"{source}: field {name!r} must be {expected}, got dtype {arr.dtype}")
    return arr.item()


def _float_array(value: Any, name: str, source: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise MotionClipError(f"{source}: field {name!r} must be a float array, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "NaN" if np.isnan(arr[first]) else "inf"
        raise MotionClipError(f"{source}: field {name!r} contains {what} (first at index {first})")
    return arr


def _validate(fields: dict[str, Any], source: str) -> dict[str, Any]:
    """Check every field of the contract; returns cleaned values (float32 arrays, Python scalars)."""
    out: dict[str, Any] = {}
    version = _scalar(fields["format_version"], "format_version", source, "int")
    if version != FORMAT_VERSION:
        raise MotionClipError(
            f"{source}: unknown format_version {version}; this version of btdm reads {FORMAT_VERSION}"
        )
    out["format_version"] = int(version)

    fps = float(_scalar(fields["fps"], "fps", source, "number"))
    if not np.isfinite(fps) or fps <= 0:
        raise MotionClipError(f"{source}: field 'fps' must be a positive number, got {fps}")
    try:
        out["fps"] = limits.check_fps(fps, f"{source}: field 'fps'")
    except limits.LimitError as exc:
        raise MotionClipLimitError(str(exc), limit="fps") from None

    for name in ("width", "height"):
        size = int(_scalar(fields[name], name, source, "int"))
        if size <= 0:
            raise MotionClipError(f"{source}: field {name!r} must be a positive integer, got {size}")
        out[name] = size
    _limit("pixels", out["width"] * out["height"], f"{source}: camera image {out['width']}x{out['height']} px")

    body = _scalar(fields["body_model"], "body_model", source, "str")
    if not body:
        raise MotionClipError(f"{source}: field 'body_model' is empty")
    out["body_model"] = str(body)

    betas = _float_array(fields["betas"], "betas", source)
    if betas.shape != (NUM_BETAS,):
        raise MotionClipError(
            f"{source}: field 'betas' has shape {betas.shape}, expected ({NUM_BETAS},)"
        )
    out["betas"] = betas

    frames: dict[str, int] = {}
    for name, (tail, expected) in _FRAME_FIELDS.items():
        arr = _float_array(fields[name], name, source)
        if arr.ndim != len(tail) + 1 or arr.shape[1:] != tail:
            raise MotionClipError(f"{source}: field {name!r} has shape {arr.shape}, expected {expected}")
        if arr.shape[0] == 0:
            raise MotionClipError(f"{source}: field {name!r} has no frames")
        _limit("frames", arr.shape[0], f"{source}: field {name!r} has {arr.shape[0]} frames")
        frames[name] = arr.shape[0]
        out[name] = arr
    if len(set(frames.values())) > 1:
        counts = ", ".join(f"{name} {count}" for name, count in frames.items())
        raise MotionClipError(f"{source}: frame counts differ between fields ({counts})")
    for name, bound, unit in (("trans", MAX_DISTANCE, "m"), ("poses", MAX_ANGLE, "rad")):
        over = np.abs(out[name]) > bound
        if over.any():
            first = tuple(int(i) for i in np.argwhere(over)[0])
            raise MotionClipError(f"{source}: field {name!r} holds {float(out[name][first]):g} {unit} at index {first} "
                                  f"(frame {first[0]}): over {bound:g} {unit}, not a motion")

    K = out["K"]
    if not (np.allclose(K[:, 2], [0.0, 0.0, 1.0], atol=1e-6) and np.all(K[:, 1, 0] == 0)
            and np.all(K[:, 0, 0] > 0) and np.all(K[:, 1, 1] > 0)):
        raise MotionClipError(
            f"{source}: field 'K' must be upper-triangular pinhole intrinsics with positive "
            "focal lengths and last row (0, 0, 1)"
        )
    w2c = out["world_to_cam"]
    rot = w2c[:, :3, :3].astype(np.float64)
    orthonormal = np.abs(rot @ rot.transpose(0, 2, 1) - np.eye(3)).max() < 1e-3
    if not (np.allclose(w2c[:, 3], [0.0, 0.0, 0.0, 1.0], atol=1e-6) and orthonormal
            and np.all(np.linalg.det(rot) > 0)):
        raise MotionClipError(
            f"{source}: field 'world_to_cam' must be rigid transforms (rotation + translation, "
            "last row (0, 0, 0, 1))"
        )
    return out
