"""Pose maps of a motion clip to disk: a resumable PNG sequence and a colour preview MP4.

Layout under the output folder::

    iuv/000000.png ...   one IUV map per clip frame (zero-based frame index, 6 digits)
    preview.mp4          colour-coded preview of the frames in the requested range

    posemaps.json        fingerprint of the inputs (clip, camera size, body, atlas)

Every PNG is written atomically, so a file that exists with a valid PNG header and trailer for
the requested size is complete; a rerun with the same inputs renders only the frames that are
missing. When the inputs changed (another clip, size, body or atlas in the same folder), the old
PNGs are outdated: they are deleted and every requested frame is rendered again.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from btdm_engine import limits
from btdm_engine.dataconfig import is_int
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_write_bytes, read_json
from btdm_engine.posemaps.atlas import Atlas, build_atlas
from btdm_engine.procs import clean_stale_temps


class PosemapExportError(BtdmError, ValueError):
    """A pose-map export cannot run: bad range or size, or a folder btdm did not write."""

if TYPE_CHECKING:
    from btdm_engine.body.model import BodyModel
    from btdm_engine.motion.clip import MotionClip

MANIFEST = "posemaps.json"
# Bump when the renderer's output for the same inputs changes.
RENDERER_VERSION = 1

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(frozen=True)
class PosemapExport:
    """What :func:`export_posemaps` wrote.

    Attributes:
        iuv_dir: folder of the PNG sequence.
        frames: clip frame indices covered, in order.
        rendered: frames rendered in this call.
        skipped: frames whose PNG was already complete.
        preview: the preview MP4, or None when not requested.
        replaced: PNGs deleted because they came from different inputs (only ever files an
            earlier run's ``posemaps.json`` says it wrote).
        empty: frames rendered in this call with no body pixel at all (out of view).
    """

    iuv_dir: Path
    frames: tuple[int, ...]
    rendered: int
    skipped: int
    preview: Path | None
    replaced: int = 0
    empty: tuple[int, ...] = ()

    def png(self, frame: int) -> Path:
        """Path of one frame's IUV PNG."""
        return frame_path(self.iuv_dir, frame)


def frame_path(iuv_dir: str | os.PathLike[str], frame: int) -> Path:
    """``iuv_dir/NNNNNN.png`` for a zero-based frame index."""
    return Path(iuv_dir) / f"{int(frame):06d}.png"


def png_is_complete(path: Path, width: int, height: int) -> bool:
    """True if ``path`` is a whole PNG (signature, IHDR of this size, IEND trailer)."""
    try:
        size = path.stat().st_size
        if size < 33 + len(_PNG_IEND):
            return False
        with open(path, "rb") as fh:
            head = fh.read(24)
            fh.seek(size - len(_PNG_IEND))
            tail = fh.read()
    except FileNotFoundError:
        return False
    if head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR" or tail != _PNG_IEND:
        return False
    w, h = struct.unpack(">II", head[16:24])
    return (w, h) == (width, height)


def _fingerprint(clip: MotionClip, body: BodyModel, atlas: Atlas) -> str:
    """Hash of everything that determines the pixels of the pose maps."""
    h = hashlib.sha1(f"renderer-v{RENDERER_VERSION}".encode())
    arrays = [clip.poses, clip.trans, clip.betas, clip.K, clip.world_to_cam,
              np.array([clip.width, clip.height])]
    arrays += [getattr(body, name) for name in
               ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "faces")]
    arrays += [atlas.vertex_index, atlas.faces, atlas.part, atlas.uv]
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def export_posemaps(
    clip: MotionClip,
    out_dir: str | os.PathLike[str],
    size: int | None = 256,
    mp4: bool = True,
    start: int = 0,
    end: int | None = None,
    body: BodyModel | None = None,
    atlas: Atlas | None = None,
    progress: bool = True,
) -> PosemapExport:
    """Render a clip's pose maps to ``out_dir/iuv/NNNNNN.png`` and ``out_dir/preview.mp4``.

    Args:
        clip: the motion clip.
        out_dir: output folder (created).
        size: output ``size`` x ``size`` pixels by rescaling the clip camera; None keeps the
            clip's own size.
        mp4: also write the colour-coded preview video.
        start, end: frame range ``[start, end)``; ``end`` defaults to the clip's length.
        body: body model; by default ``load_body_model(clip.body_model)``.
        atlas: IUV atlas; by default the body's procedural atlas.
        progress: show a progress bar.
    """
    from btdm_engine.posemaps.encoding import read_iuv_png, write_iuv_png  # lazy: torch, cv2
    from btdm_engine.posemaps.preview import colorize_iuv, write_mp4  # lazy: torch, cv2
    from btdm_engine.posemaps.renderer import IUVRenderer  # lazy: pyrender, OpenGL

    num_frames = clip.num_frames
    end = num_frames if end is None else int(end)
    if not 0 <= int(start) < end <= num_frames:
        raise PosemapExportError(
            f"frame range --start {start} --end {end} is outside the clip's 0..{num_frames} "
            "(start < end required)"
        )
    if size is not None:
        if int(size) < 1:
            raise PosemapExportError(f"size must be positive, got {size}")
        limits.check("size", int(size), "--size")
        clip = clip.resized(int(size), int(size))
    if body is None:
        from btdm_engine.body.model import load_body_model  # lazy: torch

        body = load_body_model(clip.body_model)
    if atlas is None:
        atlas = build_atlas(body)

    out_dir = Path(out_dir)
    iuv_dir = out_dir / "iuv"
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        # Not (yet) a btdm pose-map folder: never touch files that look like ours but are not.
        foreign = sorted(iuv_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png")) if iuv_dir.is_dir() else []
        foreign += [p for p in (out_dir / "preview.mp4",) if p.exists()]
        if foreign:
            raise PosemapExportError(
                f"{out_dir}: holds {len(foreign)} file(s) btdm did not write (no {MANIFEST}), e.g. {foreign[0]}; "
                "choose another --out, or move them away"
            )
    iuv_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(iuv_dir)
    clean_stale_temps(out_dir)
    manifest = {"fingerprint": _fingerprint(clip, body, atlas), "width": clip.width,
                "height": clip.height, "fps": clip.fps, "frames": num_frames,
                "atlas": atlas.source, "body_model": clip.body_model}
    replaced = 0
    previous = None
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text())
        except ValueError as exc:
            raise PosemapExportError(
                f"{manifest_path}: not valid JSON ({exc}); delete it to re-render"
            ) from None
        if not isinstance(previous, dict):
            raise PosemapExportError(f"{manifest_path}: expected a JSON object; delete it to re-render")
    if previous is None or previous.get("fingerprint") != manifest["fingerprint"]:
        # Frames on disk were rendered from other inputs: outdated. Only the names the old
        # manifest accounts for (frames 0..its count - 1) are ours to delete.
        old_count = previous.get("frames") if previous is not None else 0
        old_count = old_count if is_int(old_count) else 0
        ours = [frame_path(iuv_dir, t) for t in range(old_count)]
        foreign = [p for p in iuv_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png") if int(p.stem) >= old_count]
        if foreign:
            raise PosemapExportError(
                f"{iuv_dir}: {len(foreign)} frame file(s) that {manifest_path.name} does not account for, e.g. "
                f"{foreign[0].name}; choose another --out, or move them away"
            )
        manifest_path.unlink(missing_ok=True)  # until the new one is written, nothing here is trusted
        for old in ours:
            if old.exists():
                old.unlink()
                replaced += 1
        atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    frames = tuple(range(int(start), end))
    todo = [t for t in frames
            if not png_is_complete(frame_path(iuv_dir, t), clip.width, clip.height)]

    empty: list[int] = []
    if todo:
        with IUVRenderer(body, clip.width, clip.height, atlas=atlas) as renderer:
            for t, iuv in zip(todo, renderer.render_clip(clip, progress=progress, frames=todo)):
                if not iuv[..., 0].any():
                    empty.append(t)
                write_iuv_png(frame_path(iuv_dir, t), iuv)

    preview = None
    if mp4:
        maps = (colorize_iuv(read_iuv_png(frame_path(iuv_dir, t))) for t in frames)
        preview = write_mp4(maps, out_dir / "preview.mp4", fps=clip.fps)
    return PosemapExport(iuv_dir, frames, len(todo), len(frames) - len(todo), preview, replaced, tuple(empty))


def posemap_files(folder: str | os.PathLike[str], frames: tuple[int, int] | None = None) -> dict[int, Path]:
    """The IUV PNGs of a pose-map folder (``DIR/iuv/NNNNNN.png`` or ``DIR/NNNNNN.png``), frame -> file, in
    frame order, without reading them: what :func:`read_posemap_folder` reads and ``btdm animate
    --engine`` sends, by one rule.

    Every frame must be there: without ``frames`` the sequence runs from the first file to the
    last with no hole, and to ``posemaps.json``'s frame count when the folder has one; with
    ``frames = (start, stop)`` exactly those frames. A missing frame or a frame count over the
    ``frames`` limit is an error naming the files.
    """
    from btdm_engine.imageio import frame_index, list_frames  # lazy: cv2

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such pose-map folder")
    source = folder / "iuv" if (folder / "iuv").is_dir() else folder
    files = {frame_index(f): f for f in list_frames(source)}
    if not files:
        raise PosemapExportError(f"{folder}: no <digits>.png IUV files in {source}")
    if frames is not None:
        start, stop = frames
        if not 0 <= start < stop:
            raise PosemapExportError(f"frame range {start}:{stop}: need 0 <= start < stop")
        wanted = range(start, stop)
    else:
        first, last = min(files), max(files)
        declared = None
        manifest = folder / MANIFEST
        if manifest.is_file():
            doc = read_json(manifest, PosemapExportError)
            declared = doc.get("frames") if isinstance(doc, dict) else None
            if not is_int(declared) or declared < 1:
                raise PosemapExportError(f"{manifest}: field 'frames' must be a positive integer")
            first, last = 0, declared - 1
        wanted = range(first, last + 1)
    limits.check("frames", len(wanted), f"{folder}: {len(wanted)} pose maps")
    missing = [t for t in wanted if t not in files]
    if missing:
        shown = ", ".join(f"{t:06d}.png" for t in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise PosemapExportError(
            f"{source}: {len(missing)} of frames {wanted.start}..{wanted.stop - 1} are missing ({shown}); "
            "render them (btdm posemaps resumes) or pass a frame range that exists"
        )
    return {t: files[t] for t in wanted}


def read_posemap_folder(
    folder: str | os.PathLike[str], order: str = "btdm", frames: tuple[int, int] | None = None
) -> np.ndarray:
    """A folder of IUV PNGs as uint8 ``(T, H, W, 3)``: the frames :func:`posemap_files` checks and lists
    (``frames = (start, stop)``, or the whole sequence). Maps of different sizes are an error naming the file.
    """
    from btdm_engine.posemaps.encoding import read_iuv_png  # lazy: torch, cv2

    files = posemap_files(folder, frames)
    first = next(iter(files.values()))
    maps = []
    for path in files.values():
        iuv = read_iuv_png(path, order=order)
        if maps and iuv.shape != maps[0].shape:
            raise PosemapExportError(
                f"{path}: {iuv.shape[1]}x{iuv.shape[0]} px, but {first.name} is "
                f"{maps[0].shape[1]}x{maps[0].shape[0]}; all pose maps of a sequence must have one size"
            )
        maps.append(iuv)
    return np.stack(maps)
