"""Human-readable previews of IUV pose maps: colour coding, contact sheets and MP4 files.

:func:`colorize_iuv` gives every part its own hue from a fixed palette (left parts warm, right
parts cool, torso and head neutral-ish), shades it along V, and draws iso-lines of U and V so
the surface flow of each chart is visible. The background is black.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from btdm_engine import limits
from btdm_engine.errors import UsageError
from btdm_engine.fileio import atomic_path, atomic_write_bytes
from btdm_engine.posemaps.encoding import validate_iuv
from btdm_engine.posemaps.parts import NUM_PARTS, PART_NAMES
from btdm_engine.procs import clean_stale_temps, die_with_parent

# One RGB colour per part (index 0 = background). Person's left: warm hues (reds, oranges,
# yellows); person's right: cool hues (blues, greens, purples); front/back twins differ in
# lightness, so a mislabelled side or a left/right swap is visible at a glance.
PART_PALETTE: np.ndarray = np.array(
    [
        (0, 0, 0),  # background
        (120, 120, 150),  # torso back
        (205, 205, 225),  # torso front
        (40, 90, 255),  # right hand
        (255, 60, 40),  # left hand
        (255, 200, 0),  # left foot
        (0, 200, 255),  # right foot
        (0, 110, 80),  # right thigh back
        (170, 70, 0),  # left thigh back
        (60, 220, 140),  # right thigh front
        (255, 150, 40),  # left thigh front
        (40, 60, 150),  # right calf back
        (150, 40, 40),  # left calf back
        (110, 150, 255),  # right calf front
        (255, 110, 110),  # left calf front
        (255, 230, 90),  # left upper arm inside
        (120, 255, 230),  # right upper arm inside
        (170, 140, 0),  # left upper arm outside
        (0, 140, 150),  # right upper arm outside
        (255, 120, 200),  # left forearm inside
        (170, 120, 255),  # right forearm inside
        (170, 30, 110),  # left forearm outside
        (90, 40, 170),  # right forearm outside
        (120, 200, 40),  # head right
        (240, 170, 130),  # head left
    ],
    dtype=np.uint8,
)
PART_PALETTE.setflags(write=False)


def colorize_iuv(iuv: np.ndarray, isolines: int = 8) -> np.ndarray:
    """Colour-code IUV maps for viewing.

    Args:
        iuv: uint8 ``(..., H, W, 3)`` IUV maps.
        isolines: number of U and V iso-line intervals per chart (0 for none).

    Returns:
        uint8 ``(..., H, W, 3)`` RGB: part colour, darker towards V = 1, with dark iso-lines
        of U and V; black background.
    """
    validate_iuv(iuv)
    labels = iuv[..., 0]
    u = iuv[..., 1].astype(np.float32) / 255.0
    v = iuv[..., 2].astype(np.float32) / 255.0
    base = PART_PALETTE[labels].astype(np.float32)
    shade = 1.0 - 0.45 * v
    if isolines > 0:
        # Distance to the nearest iso-line, in units of one interval, then a soft dark band.
        du = np.abs((u * isolines + 0.5) % 1.0 - 0.5)
        dv = np.abs((v * isolines + 0.5) % 1.0 - 0.5)
        line = np.minimum(du, dv)
        shade = shade * np.where(line < 0.08, 0.45, 1.0)
    rgb = base * shade[..., None]
    rgb[labels == 0] = 0.0
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def part_legend(cell: int = 18, cols: int = 4) -> np.ndarray:
    """RGB image listing every part's colour and name."""
    rows = -(-NUM_PARTS // cols)
    width = 190
    img = np.zeros((rows * (cell + 4) + 4, cols * width, 3), dtype=np.uint8)
    for p in range(1, NUM_PARTS + 1):
        r, c = divmod(p - 1, cols)
        y, x = 4 + r * (cell + 4), 4 + c * width
        img[y : y + cell, x : x + cell] = PART_PALETTE[p]
        cv2.putText(img, f"{p} {PART_NAMES[p]}", (x + cell + 4, y + cell - 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.33, (230, 230, 230), 1, cv2.LINE_AA)
    return img


def _put_label(img: np.ndarray, text: str) -> None:
    for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, color, thickness,
                    cv2.LINE_AA)


def contact_sheet(
    images: Sequence[np.ndarray],
    cols: int,
    labels: Sequence[str] | None = None,
    gap: int = 4,
) -> np.ndarray:
    """Tile RGB images into one sheet, row by row, each optionally labelled in its corner.

    Args:
        images: uint8 ``(H_i, W_i, 3)`` images; cells take the largest size, smaller images
            are centred.
        cols: images per row.
        labels: one caption per image.
        gap: pixels of dark grey between cells.
    """
    if len(images) == 0:
        raise UsageError("contact_sheet: no images")
    if cols < 1:
        raise UsageError(f"contact_sheet: cols must be positive, got {cols}")
    if labels is not None and len(labels) != len(images):
        raise UsageError(f"contact_sheet: {len(labels)} labels for {len(images)} images")
    for i, img in enumerate(images):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise UsageError(f"contact_sheet: image {i} must be uint8 (H, W, 3), got "
                             f"{img.dtype} {img.shape}")
    ch = max(img.shape[0] for img in images)
    cw = max(img.shape[1] for img in images)
    rows = -(-len(images) // cols)
    sheet = np.full((rows * ch + (rows + 1) * gap, cols * cw + (cols + 1) * gap, 3), 40, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        cell = np.zeros((ch, cw, 3), dtype=np.uint8)
        oy, ox = (ch - img.shape[0]) // 2, (cw - img.shape[1]) // 2
        cell[oy : oy + img.shape[0], ox : ox + img.shape[1]] = img
        if labels is not None and labels[i]:
            _put_label(cell, labels[i])
        y, x = gap + r * (ch + gap), gap + c * (cw + gap)
        sheet[y : y + ch, x : x + cw] = cell
    return sheet


def write_rgb_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG, atomically."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{path}: expected uint8 (H, W, 3) RGB, got {rgb.dtype} {rgb.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the PNG")
    return atomic_write_bytes(path, buf.tobytes())


def write_rgba_png(path: str | os.PathLike[str], rgba: np.ndarray) -> Path:
    """Write an RGBA uint8 image (straight alpha) as PNG, atomically."""
    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"{path}: expected uint8 (H, W, 4) RGBA, got {rgba.dtype} {rgba.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgba[..., [2, 1, 0, 3]]))
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the PNG")
    return atomic_write_bytes(path, buf.tobytes())


def write_mp4(frames: Iterable[np.ndarray], path: str | os.PathLike[str], fps: float) -> Path:
    """Encode RGB frames as an H.264 MP4 (yuv420p), atomically.

    Odd widths or heights are padded with one black column or row, since yuv420p needs even
    dimensions. All frames must have the same size.

    Args:
        frames: uint8 ``(H, W, 3)`` RGB frames.
        path: destination ``.mp4`` file.
        fps: frames per second.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise UsageError(f"{path}: the preview video must end in '.mp4'")
    fps = limits.check_fps(fps, f"{path}: write_mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)  # a killed writer's half video
    with atomic_path(path, suffix=".tmp.mp4") as tmp:
        proc: subprocess.Popen | None = None
        try:
            size: tuple[int, int] | None = None
            for i, frame in enumerate(frames):
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise UsageError(f"{path}: frame {i} must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
                if size is None:
                    size = (frame.shape[1], frame.shape[0])
                    even = (size[0] + size[0] % 2, size[1] + size[1] % 2)
                    import imageio_ffmpeg  # lazy: absent on the GPU machine (docs/gpu.md); only MP4s need it

                    # ffmpeg dies with this process (never an orphan writing on), quality as imageio's 8 (crf 10).
                    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
                           "-vcodec", "rawvideo", "-s", f"{even[0]}x{even[1]}", "-pix_fmt", "rgb24", "-r", f"{fps:.6f}",
                           "-i", "-", "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "10",
                           "-movflags", "+faststart", "-f", "mp4", str(tmp)]  # fmt: skip
                    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, preexec_fn=die_with_parent)
                elif (frame.shape[1], frame.shape[0]) != size:
                    raise UsageError(f"{path}: frame {i} is {frame.shape[1]}x{frame.shape[0]}, "
                                     f"frame 0 was {size[0]}x{size[1]}")
                if frame.shape[0] % 2 or frame.shape[1] % 2:
                    frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)))
                assert proc is not None and proc.stdin is not None
                try:
                    proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                except BrokenPipeError:
                    break  # ffmpeg stopped: its own message follows below
            if proc is None:
                raise UsageError(f"{path}: no frames to write")
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr is not None else ""
            if proc.wait() != 0:
                raise OSError(f"{path}: ffmpeg failed (exit {proc.returncode}): {err.strip()[-500:]}")
            proc = None
        finally:
            if proc is not None:  # an error before ffmpeg finished: stop it before its file is removed
                proc.kill()
                proc.wait()
    return path
