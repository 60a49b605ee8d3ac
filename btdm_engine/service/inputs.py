"""Uploads of ``POST /v1/jobs``: size-limited copies into the job folder, then strict validation.

Nothing from a request is executed, unpickled (``.npz`` files are read with ``allow_pickle=False``
by their own loaders) or used as a path: uploads are written under fixed names in the job's
``input/`` folder, and pose-map zip members become ``NNNNNN.png`` by their frame number. Every
size has a limit in :mod:`btdm_engine.service.limits`; an image's size is checked from its header
and the same bytes are then decoded (:mod:`btdm_engine.imageio`), never read twice. Each error is a
:class:`~btdm_engine.service.errors.ServiceError` naming the form field.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from btdm_engine import limits as engine_limits
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_dir, atomic_path, read_npy_header
from btdm_engine.imageio import MIN_APPEARANCE_SIDE, ImageReadError, decode_image, decode_rgb
from btdm_engine.service import limits
from btdm_engine.service.errors import InvalidParams, PayloadTooLarge, ServiceError

logger = logging.getLogger(__name__)

_MEMBER = re.compile(r"^(?:[A-Za-z0-9_.-]+/)*(\d{1,9})\.png$")
_CHUNK = 1 << 20
SERVICE_BODY_MODELS = ("mannequin",)
"""The bodies a motion upload may name: the bundled mannequin (never a path, see check_motion)."""


def save_upload(source: BinaryIO, dest: Path, field: str) -> int:
    """Copy an uploaded file to ``dest`` atomically, refusing more than ``MAX_UPLOAD_BYTES[field]``."""
    limit = limits.MAX_UPLOAD_BYTES[field]
    size = 0
    with atomic_path(dest) as tmp, open(tmp, "wb") as out:
        while chunk := source.read(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"{field}: the upload is larger than the {limit // limits.MiB} MiB limit",
                                      field=field)
            out.write(chunk)
    if size == 0:
        dest.unlink(missing_ok=True)
        raise ServiceError(f"{field}: the uploaded file is empty", field=field)
    return size


def _named(field: str, exc: Exception) -> ServiceError:
    return ServiceError(f"{field}: {exc}", field=field)


def _mib(n: int) -> str:
    return f"{n / limits.MiB:,.1f} MiB" if n < 1 << 40 else f"{n / (1 << 40):,.0f} TiB"


def check_npz(path: Path, field: str) -> int:
    """Refuse an ``.npz`` upload whose arrays declare more than ``MAX_NPZ_DECODED_BYTES[field]``.

    Every member's ``.npy`` header (magic, then the header dict, bounded by numpy's
    ``max_header_size``) is read, and nothing else: shape x itemsize counts every dimension and every
    dtype (structured, void and sub-array types by their itemsize, itself at most ``MAX_NPY_ITEMSIZE``),
    so a small zip that declares gigabytes is a 413 naming the field and the array before any array
    is read. Object arrays are
    refused outright (they would need pickle). Returns the declared bytes.
    """
    budget = limits.MAX_NPZ_DECODED_BYTES[field]
    if not zipfile.is_zipfile(path):
        raise ServiceError(f"{field}: not a .npz file (not a zip archive)", field=field)
    archive = _open_zip(path, field, limits.MAX_NPZ_MEMBERS)
    total = 0
    with archive:
        members = archive.infolist()
        if len(members) > limits.MAX_NPZ_MEMBERS:
            raise PayloadTooLarge(f"{field}: {len(members)} arrays; at most {limits.MAX_NPZ_MEMBERS}", field=field)
        for info in members:
            name = info.filename[:100]
            if not info.filename.endswith(".npy"):
                raise ServiceError(f"{field}: member {name!r} is not an .npy array", field=field)
            array = name[: -len(".npy")]
            try:
                with archive.open(info) as fh:
                    shape, dtype = read_npy_header(fh)
            except (ValueError, EOFError, OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError,
                    TypeError, SyntaxError) as exc:
                raise ServiceError(f"{field}: array {array!r}: bad .npy header ({str(exc)[:200]})",
                                   field=field) from None
            if dtype.hasobject:
                raise ServiceError(f"{field}: array {array!r} holds Python objects ({dtype.str}); only plain "
                                   "arrays are read (never unpickled)", field=field)
            if dtype.itemsize > limits.MAX_NPY_ITEMSIZE:
                raise PayloadTooLarge(f"{field}: array {array!r} declares elements of {dtype.itemsize:,} bytes "
                                      f"({dtype.str[:40]}); at most {limits.MAX_NPY_ITEMSIZE:,}", field=field)
            size = math.prod(int(n) for n in shape) * int(dtype.itemsize)
            total += size
            if size > budget or total > budget:
                what = f"declares shape {tuple(shape)} of {dtype.str[:40]}: {_mib(size)}"
                raise PayloadTooLarge(f"{field}: array {array!r} {what}; the arrays of one {field} upload may "
                                      f"declare at most {_mib(budget)} in all", field=field)
    return total


def check_motion(path: Path) -> dict[str, int | float]:
    """Validate a MotionClip upload (``MotionClip.load``: allow_pickle=False, every field checked)."""
    from btdm_engine.motion.clip import MotionClip  # lazy: btdm_engine.motion loads scipy, which the API needs only here

    check_npz(path, "motion")
    try:
        clip = MotionClip.load(path)
    except BtdmError as exc:
        raise _named("motion", exc) from None
    if clip.body_model not in SERVICE_BODY_MODELS:
        # A clip names its body as "mannequin" or a path to a model file. A path in an upload
        # would be a server path chosen by the client (opened, read whole, unpickled): refused.
        raise ServiceError(f"motion: body_model {clip.body_model!r} is not served here; the service renders "
                           f"{', '.join(map(repr, SERVICE_BODY_MODELS))} (retarget the motion onto it with "
                           "'btdm motion import', or send the skeleton animation)", field="motion")
    return {"frames": clip.num_frames, "fps": float(clip.fps), "width": int(clip.width), "height": int(clip.height)}


def retarget_skeleton(path: Path, clip_path: Path, params: dict[str, Any], size: int) -> tuple[dict[str, Any],
                                                                                               dict[str, Any]]:
    """Validate a skeleton-animation upload and retarget it onto the body, saving the MotionClip at ``clip_path``.

    Runs at submit time, so a bone map that does not fit the rig is a 4xx naming it, not a failed
    job. The retargeting options come from ``params`` (``skeleton``, ``bone_map``, ``scale``,
    ``up``, ``fit_shape``); without a shot camera the default camera is ``size`` px square.
    Returns (what the worker needs to know, the retargeting report).
    """
    # lazy, all three: btdm_engine.motion loads scipy, which the API needs only for an upload of this kind
    from btdm_engine.motion.bonemaps import SKELETONS  # lazy: scipy
    from btdm_engine.motion.retarget import to_motion_clip  # lazy: scipy
    from btdm_engine.motion.skeleton_animation import SkeletonAnimation  # lazy: scipy

    if params["skeleton"] not in SKELETONS:
        raise InvalidParams(f"params.skeleton: unknown bone-map preset {params['skeleton']!r}; allowed: "
                            f"{', '.join(SKELETONS)}", field="params.skeleton")
    check_npz(path, "skeleton")
    try:
        anim = SkeletonAnimation.load(path)
    except BtdmError as exc:
        raise _named("skeleton", exc) from None
    kwargs: dict[str, Any] = {"skeleton": params["skeleton"], "width": size, "height": size}
    kwargs.update({key: params[key] for key in ("bone_map", "scale", "up", "fit_shape") if params.get(key) is not None})
    try:
        result = to_motion_clip(anim, **kwargs)
    except BtdmError as exc:
        field = "params.bone_map" if params.get("bone_map") is not None and "bone map" in str(exc) else "skeleton"
        raise ServiceError(f"skeleton: {exc}", field=field) from None
    clip = result.clip
    clip.save(clip_path)
    report = json.loads(json.dumps(result.report, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    described = {"frames": clip.num_frames, "fps": float(clip.fps), "bones": anim.num_bones,
                 "camera": anim.has_camera, "width": int(clip.width), "height": int(clip.height)}
    return described, report


# PNG colour type -> channels OpenCV decodes it to (palette and grey+alpha come out as BGR(A)).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 4, 4: 4, 6: 4}


def png_info(data: bytes, field: str, max_side: int = limits.MAX_IMAGE_SIDE, where: str | None = None
             ) -> tuple[int, int, int]:
    """(width, height, decoded bytes) from a PNG's IHDR, before decoding: refuses non-PNGs and sides
    over ``max_side``. Decoded bytes are width x height x channels x bytes per sample, as OpenCV
    will allocate them. Errors name ``where`` (default: the field)."""
    where = where or field
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ServiceError(f"{where}: not a PNG file", field=field)
    width, height = struct.unpack(">II", data[16:24])
    if not (0 < width <= max_side and 0 < height <= max_side):
        raise ServiceError(f"{where}: {width}x{height} px; each side must be 1..{max_side}", field=field)
    depth, colour = (data[24], data[25]) if len(data) >= 26 else (0, 0)
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16):
        raise ServiceError(f"{where}: not a valid PNG (bit depth {depth}, colour type {colour})", field=field)
    return width, height, width * height * _PNG_CHANNELS[colour] * (2 if depth == 16 else 1)


def png_size(data: bytes, field: str, max_bytes: int = limits.MAX_IMAGE_DECODED_BYTES) -> tuple[int, int]:
    """(width, height) of a PNG whose decoded pixels fit ``max_bytes`` (:func:`png_budget`), else a 413."""
    return png_budget(data, field, max_bytes)[:2]


def png_budget(data: bytes, field: str, max_bytes: int = limits.MAX_IMAGE_DECODED_BYTES, where: str | None = None
               ) -> tuple[int, int, int]:
    """(width, height, decoded bytes) of a PNG whose decoded pixels fit ``max_bytes`` (:func:`png_info`),
    else a 413. Errors name ``where`` (default: the field)."""
    width, height, decoded = png_info(data, field, where=where)
    if decoded > max_bytes:
        raise PayloadTooLarge(f"{where or field}: {width}x{height} px decode to {_mib(decoded)}; at most "
                              f"{_mib(max_bytes)} (save it as 8-bit, or smaller)", field=field)
    return width, height, decoded


def _decode_iuv(data: bytes, where: str, field: str, order: str) -> np.ndarray:
    """An IUV PNG's bytes in the project's channel order, valid under the DensePose contract."""
    from btdm_engine.posemaps.encoding import validate_iuv  # lazy: torch stays out of the API's import

    try:
        pixels = decode_image(data, where, formats=("png",))
    except ImageReadError:
        pixels = None
    if pixels is None or pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ServiceError(f"{where}: expected an 8-bit 3-channel PNG", field=field)
    iuv = np.ascontiguousarray(pixels[..., ::-1] if order == "btdm" else pixels)
    try:
        validate_iuv(iuv, where=where)
    except BtdmError as exc:
        raise ServiceError(str(exc), field=field) from None
    return iuv


def check_appearance(path: Path, shot: tuple[int, int] | None = None) -> tuple[int, int]:
    """A PNG (RGB, RGBA or grey, 8 or 16 bit) that OpenCV decodes: square, or with ``shot`` (width,
    height) the whole shot-camera view (its aspect within 1 %)."""
    data = path.read_bytes()
    size = png_size(data, "appearance")
    _check_picture(data, "appearance", "appearance", size, shot, str(path))
    return size


def _check_picture(data: bytes, where: str, field: str, size: tuple[int, int], shot: tuple[int, int] | None,
                   name: str | None = None) -> None:
    """A picture of the person (the appearance, a view): the shot's aspect with ``shot``, else square; decodable."""
    width, height = size
    if shot is not None:
        from btdm_engine.motion.shot import same_aspect  # lazy: scipy (btdm_engine.motion)

        if not same_aspect(width, height, *shot):
            raise ServiceError(f"{where}: {width}x{height} px; at a frame of a job with plates it is the whole "
                               f"shot-camera view, {shot[0]}x{shot[1]} (or that aspect)", field=field)
    elif width != height:
        raise ServiceError(f"{where}: expected a square image (the networks are square), got {width}x{height}",
                           field=field)
    try:
        decode_rgb(data, name or where, min_side=MIN_APPEARANCE_SIDE)  # the same floor as btdm animate
    except BtdmError as exc:
        raise _named(field, exc) from None


def check_appearance_iuv(path: Path, order: str, size: tuple[int, int] | None) -> None:
    """An IUV PNG of the appearance image's size, valid under the DensePose contract."""
    field = "appearance_iuv"
    data = path.read_bytes()
    width, height = png_size(data, field)
    if size is not None and (width, height) != size:
        raise ServiceError(f"appearance_iuv: {width}x{height} px, but the appearance image is {size[0]}x{size[1]}",
                           field=field)
    _decode_iuv(data, f"{field}: {path.name} (order={order})", field, order)


_END = struct.Struct("<4s4H2LH")  # the end of central directory record (22 bytes, then a comment)
_END64_LOCATOR = struct.Struct("<4sLQL")  # just before it in a ZIP64 archive: where the ZIP64 end record is
_END64 = struct.Struct("<4sQ2H2L4Q")  # the ZIP64 end record: ... entries, directory size, its offset


def _directory_size(path: Path) -> int | None:
    """The size in bytes of a zip's central directory, as its end record (ZIP64 too) declares it: read
    from the file's last 64 KiB (the record and its comment) without parsing the directory; None when
    the file has no end record (zipfile then refuses it)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - (_END.size + 0xFFFF + _END64_LOCATOR.size)))
        tail = fh.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _END.size > len(tail):
            return None
        directory = _END.unpack_from(tail, at)[5]
        locator = at - _END64_LOCATOR.size
        if directory == 0xFFFFFFFF and locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
            fh.seek(_END64_LOCATOR.unpack_from(tail, locator)[2])
            record = fh.read(_END64.size)
            if len(record) == _END64.size and record[:4] == b"PK\x06\x06":
                directory = _END64.unpack(record)[8]
    return directory


def _open_zip(path: Path, field: str, max_members: int) -> zipfile.ZipFile:
    """The upload as a zip archive, refused first by the size of its directory (``max_members`` files,
    as many folder entries, 64 more; ``limits.ZIP_DIRECTORY_BYTES_PER_MEMBER`` each), so that zipfile
    never parses a directory of a million entries."""
    if not zipfile.is_zipfile(path):
        raise ServiceError(f"{field}: not a zip archive", field=field)
    directory = _directory_size(path)
    most = (2 * max_members + 64) * limits.ZIP_DIRECTORY_BYTES_PER_MEMBER
    if directory is not None and directory > most:
        raise PayloadTooLarge(f"{field}: the zip's directory is {directory:,} bytes, more than {most:,} for at most "
                              f"{max_members} files", field=field)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ServiceError(f"{field}: unreadable zip archive ({exc})", field=field) from None


def _numbered_members(archive: zipfile.ZipFile, field: str, max_members: int) -> dict[int, zipfile.ZipInfo]:
    """The zip's files by the frame number of their ``[folders/]<digits>.png`` names (folder entries
    skipped; no ``..``; each number once), counted and budgeted from the zip's directory alone."""
    members = [info for info in archive.infolist() if not info.is_dir()]
    if not members:
        raise ServiceError(f"{field}: the zip holds no files", field=field)
    if len(members) > max_members:
        raise PayloadTooLarge(f"{field}: {len(members)} files; at most {max_members}", field=field)
    if sum(info.file_size for info in members) > limits.MAX_UNZIPPED_BYTES:
        raise PayloadTooLarge(f"{field}: more than {limits.MAX_UNZIPPED_BYTES // limits.MiB} MiB unzipped",
                              field=field)
    numbered: dict[int, zipfile.ZipInfo] = {}
    for info in members:
        parts = info.filename.split("/")
        if info.filename.startswith(("/", "\\")) or any(part in (".", "..") for part in parts):
            raise ServiceError(f"{field}: member {info.filename[:100]!r} points outside the zip (an absolute name, "
                               "'.' or '..'); name members [folders/]<digits>.png", field=field)
        match = _MEMBER.match(info.filename)
        if match is None:
            raise ServiceError(f"{field}: member {info.filename[:100]!r} is not named <digits>.png", field=field)
        index = int(match.group(1))
        if index in numbered:
            raise ServiceError(f"{field}: frame {index} appears twice ({numbered[index].filename[:100]!r}, "
                               f"{info.filename[:100]!r})", field=field)
        numbered[index] = info
    return numbered


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, field: str, size: int | None = None) -> bytes:
    """A member's bytes (its first ``size`` only, when given), never more than the zip declares."""
    where = f"{field}: {info.filename[:100]}"
    try:
        with archive.open(info) as fh:
            data = fh.read(info.file_size + 1 if size is None else size)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted member ("password required")
        raise ServiceError(f"{where}: unreadable ({exc})", field=field) from None
    if len(data) > info.file_size:
        raise ServiceError(f"{where}: larger than the zip declares", field=field)
    return data


def extract_posemaps(path: Path, dest: Path, order: str) -> dict[str, int]:
    """Validate a zip of IUV PNGs and write them, in the project's channel order, as ``dest/NNNNNN.png``.

    Members must be ``[folders/]<digits>.png`` (folder entries are skipped; no ``..``, no absolute
    names); frames are taken in numeric order and renumbered from 0. All maps must be square and
    of one size. Declared sizes are checked from the zip directory before anything is
    decompressed, and reads are capped.
    """
    from btdm_engine.posemaps.encoding import encode_iuv_png  # lazy: torch stays out of the API's import

    field = "posemaps"
    with _open_zip(path, field, limits.MAX_POSEMAP_MEMBERS) as archive:
        numbered = _numbered_members(archive, field, limits.MAX_POSEMAP_MEMBERS)
        # Every map's PNG header first (33 bytes each): the decoded size of the whole zip is budgeted
        # before any map is decoded.
        decoded = 0
        for info in numbered.values():
            where = f"{field}: {info.filename[:100]}"
            decoded += png_info(_read_member(archive, info, field, 33), field, limits.MAX_POSEMAP_SIDE, where)[2]
            if decoded > limits.MAX_POSEMAPS_DECODED_BYTES:
                raise PayloadTooLarge(f"{field}: the maps decode to more than "
                                      f"{_mib(limits.MAX_POSEMAPS_DECODED_BYTES)} (from their PNG headers)",
                                      field=field)
        size: tuple[int, int] | None = None
        # A job's own folder, so a previous extraction into it is replaced whole.
        with atomic_dir(dest, replace=True) as tmp:
            for out_index, index in enumerate(sorted(numbered)):
                info = numbered[index]
                where = f"{field}: {info.filename[:100]}"
                data = _read_member(archive, info, field)
                width, height, _ = png_info(data, field, limits.MAX_POSEMAP_SIDE, where)
                if width != height:
                    raise ServiceError(f"{where}: {width}x{height}; pose maps must be square", field=field)
                if size is not None and (width, height) != size:
                    raise ServiceError(f"{where}: {width}x{height}, but the first map is {size[0]}x{size[1]}",
                                       field=field)
                size = (width, height)
                iuv = _decode_iuv(data, where, field, order)
                (tmp / f"{out_index:06d}.png").write_bytes(encode_iuv_png(iuv, "btdm"))
    assert size is not None
    return {"frames": len(numbered), "width": size[0], "height": size[1]}


def extract_views(path: Path, dest: Path, shot: tuple[int, int] | None) -> list[int]:
    """Validate a zip of further views of the person and write them as ``dest/NNNNNN.png``.

    Members are ``[folders/]<digits>.png`` named by the job frame (zero-based from
    ``frame_start``) whose body each shows, so that frame's pose map is its IUV map; at most
    ``views`` (:data:`btdm_engine.limits.DEFAULTS`) of them, each an appearance image
    (:func:`check_appearance`: square, or with ``shot`` the whole shot-camera view). Returns the
    frames, in order (:meth:`JobParams.window` checks them against the job's frames).
    """
    field = "views"
    with _open_zip(path, field, engine_limits.DEFAULTS["views"]) as archive:
        numbered = _numbered_members(archive, field, engine_limits.DEFAULTS["views"])
        most = limits.MAX_UPLOAD_BYTES["appearance"]  # each view is a picture like the appearance
        decoded = 0
        sizes: dict[int, tuple[int, int]] = {}
        for index, info in numbered.items():  # every size and header before anything is decoded
            where = f"{field}: {info.filename[:100]}"
            if info.file_size > most:
                raise PayloadTooLarge(f"{where} is larger than the {most // limits.MiB} MiB an appearance picture "
                                      "may be", field=field)
            width, height, pixels = png_budget(_read_member(archive, info, field, 33), field, where=where)
            sizes[index] = (width, height)
            decoded += pixels
            if decoded > limits.MAX_VIEWS_DECODED_BYTES:
                raise PayloadTooLarge(f"{field}: the pictures decode to more than {_mib(limits.MAX_VIEWS_DECODED_BYTES)} "
                                      "together (from their PNG headers); send fewer or smaller", field=field)
        with atomic_dir(dest, replace=True) as tmp:
            for index, info in sorted(numbered.items()):
                data = _read_member(archive, info, field)
                name = info.filename[:100]
                _check_picture(data, f"{field}: {name}", field, sizes[index], shot, name=name)
                (tmp / f"{index:06d}.png").write_bytes(data)
    return sorted(numbered)
