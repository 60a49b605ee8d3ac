"""Plates through the shot's own camera: a square window that follows the body, and the composite back.

The networks are square and small; a shot camera is any pinhole camera at any aspect ratio and
resolution. :func:`plan_shot` picks, per frame, a square window of the shot image around the body:

1. The posed mesh is projected through the shot camera; its bounding box gives a centre and a side
   (the larger box side plus ``margin`` on each side).
2. The side is one fixed size for the whole shot when the body's on-screen size varies by less
   than ``max_zoom``; otherwise (a dolly, a body walking to the camera) it follows a running maximum,
   smoothed. The centre is smoothed over about a sixth of a second. Both are then widened where
   needed so the window always holds the whole body: no jitter, nothing cut off.
3. Window pixel j covers shot pixels ``[L + j s/R, L + (j+1) s/R]`` (left edge L, side s, R pixels),
   so the window camera is ``K_win = A K`` with ``A = [[R/s, 0, -L R/s - 1/2], [0, R/s, -T R/s - 1/2],
   [0, 0, 1]]`` (pixel centres at integer coordinates, as everywhere in the project).

:meth:`ShotPlan.composite` maps a generated square frame back through the inverse of ``A`` into a
full-resolution RGBA plate, opaque on the person (the pose map's foreground, plus what stands out from
the generated background just around it, so hair and loose cloth survive), with its edge unmixed from
the generated background (no halo of it over the shot), feathered, and transparent elsewhere, so it
lies exactly over the shot.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d, maximum_filter1d

from btdm_engine.dataconfig import is_int
from btdm_engine.errors import BtdmError
from btdm_engine.imageio import resize_labels
from btdm_engine.motion.clip import MotionClip
from btdm_engine.motion.library import cached_body_model

__all__ = ["ShotError", "ShotPlan", "plan_shot", "unmix_edges"]

MAX_PLATE_PIXELS = 16384 * 16384


class ShotError(BtdmError, ValueError):
    """The body cannot be framed through the shot camera (never in front of it, or a bad size)."""


def same_aspect(width: int, height: int, shot_width: int, shot_height: int) -> bool:
    """Whether a ``width`` x ``height`` picture has the shot's aspect (within 1 %): a picture of the
    whole shot at another resolution, which :meth:`ShotPlan.crop` can cut."""
    return abs(width * shot_height - height * shot_width) <= 0.01 * height * shot_width


@dataclass(frozen=True, eq=False)
class ShotPlan:
    """Square windows (left, top, side) per frame in shot pixels, and the clip filmed through them."""

    windows: np.ndarray  # (T, 3) float64: left edge, top edge, side (shot pixels, continuous coordinates)
    width: int  # the shot's resolution
    height: int
    size: int  # the window's resolution (square)
    square_clip: MotionClip  # the motion with the per-frame window camera, size x size
    visible: np.ndarray  # (T,) bool: some of the body is in front of the camera and inside the shot

    @property
    def num_frames(self) -> int:
        return len(self.windows)

    def window_matrix(self, n: int, resolution: int) -> np.ndarray:
        """``A`` (3, 3) taking shot pixels to the pixels of a ``resolution``-px window of frame n."""
        return _window_matrices(self.windows[n : n + 1], resolution)[0]

    def crop(self, n: int, image: np.ndarray, size: int, fill: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
        """Frame n's window cut from a picture of the whole shot, as a (size, size, 3) uint8 square.

        ``image`` (H', W', 3) uint8 is the shot-camera view at any resolution with the shot's aspect
        (a render of frame n, or a photo the body was posed to match); the result shows it exactly as
        frame n's pose map shows the body (the inverse of :meth:`composite`). Window parts outside
        the picture are ``fill``.
        """
        if not 0 <= n < self.num_frames:
            raise ShotError(f"frame {n} is outside the shot's {self.num_frames} frames")
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ShotError(f"expected an RGB uint8 picture of the shot (H, W, 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        if not same_aspect(width, height, self.width, self.height):
            raise ShotError(f"a {width}x{height} picture does not have the shot's aspect ({self.width}x{self.height})")
        # Shrink first where the window holds many picture pixels per output pixel (warpAffine only
        # interpolates), then warp picture pixels -> shot pixels -> window pixels.
        factor = self.windows[n, 2] * width / self.width / size
        if factor > 1.0:
            width, height = max(1, round(width / factor)), max(1, round(height / factor))
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        sx, sy = width / self.width, height / self.height
        to_shot = np.array([[1 / sx, 0.0, 0.5 / sx - 0.5], [0.0, 1 / sy, 0.5 / sy - 0.5], [0.0, 0.0, 1.0]])
        matrix = (self.window_matrix(n, size) @ to_shot)[:2]
        return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=tuple(int(v) for v in fill))

    def composite(self, n: int, frame: np.ndarray, iuv: np.ndarray, grow: float = 0.04,
                  feather: float = 0.006) -> np.ndarray:
        """The RGBA plate (H, W, 4) uint8 of frame n from its square frame (R, R, 3) and pose map (P, P, 3).

        A generated frame is the person over a plain generated background B (the median colour
        outside a band ``grow`` wide around the pose map's foreground, a fraction of the window's
        side), and its edge pixels are mixtures I = a F + (1 - a) B. Keeping them as they are draws
        a B-coloured fringe round the figure over any other plate (a white halo over a dark shot).
        So the edge is unmixed (colour decontamination, as matting does it: Levin et al. 2008,
        sec. 7; Smith & Blinn 1996 for the known-background case):

        1. F near the edge: the colours well inside the body extended outward (inpainting), so the
           figure's own colour, not B, is what the edge and the resampling to shot pixels see.
        2. a: 1 well inside the body, 0 outside the band; in between the fraction of the way from B
           to F that I has come, a = (I - B).(F - B) / |F - B|^2, where F and B differ enough to
           tell; where they do not, 1 on the body and what stands out from B (hair, loose cloth)
           around it.
        3. The colour where 0 < a < 1 is B + (I - B) / a (the unmixed foreground), towards F where a
           is small and that inverse is noise. Then alpha is feathered by ``feather``.

        ``grow=0`` keeps exactly the pose map's foreground (no unmixing band). Colour outside the
        alpha is zero.
        """
        if not 0 <= n < self.num_frames:
            raise ShotError(f"frame {n} is outside the shot's {self.num_frames} frames")
        frame = np.asarray(frame)
        iuv = np.asarray(iuv)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] != frame.shape[1]:
            raise ShotError(f"frame {n}: expected a square RGB uint8 frame (R, R, 3), got {frame.dtype} {frame.shape}")
        if iuv.dtype != np.uint8 or iuv.ndim != 3 or iuv.shape[2] != 3 or iuv.shape[0] != iuv.shape[1]:
            raise ShotError(f"frame {n}: expected a square IUV pose map (P, P, 3) uint8, got {iuv.dtype} {iuv.shape}")
        size = (self.width, self.height)
        # Inverse of A (src window pixel -> dst shot pixel) for each source resolution.
        def to_shot(res: int) -> np.ndarray:
            return np.linalg.inv(self.window_matrix(n, res))[:2]

        res = frame.shape[0]
        body = cv2.resize((iuv[..., 0] > 0).astype(np.uint8), (res, res), interpolation=cv2.INTER_NEAREST)
        colour, matte = unmix_edges(frame, body, int(round(grow * res)))
        sigma = feather * res
        if sigma > 0.3:
            matte = np.maximum(cv2.GaussianBlur(matte, (0, 0), sigma), 0.0)
        rgb = cv2.warpAffine(colour, to_shot(res), size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(np.round(matte * 255.0).astype(np.uint8), to_shot(res), size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        out = np.zeros((self.height, self.width, 4), np.uint8)
        out[..., :3] = np.where(alpha[..., None] > 0, rgb, 0)
        out[..., 3] = alpha
        return out


def picture_at_frame(plan: ShotPlan | None, n: int, image: np.ndarray, pose_map: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(picture, its IUV map) for a picture that shows the body as job frame n does (an appearance
    at ``appearance_frame``, a further view): with a shot ``plan`` (plates) the picture is the whole
    shot-camera view, cut with frame n's window at the pose map's size, and the pose map is its IUV
    map; without one the picture is framed like the pose maps, which is resized to it (nearest).
    ``btdm animate`` and the service's worker both read pictures of frames this way."""
    if plan is not None:
        return plan.crop(n, image, pose_map.shape[0]), pose_map
    return image, resize_labels(pose_map, image.shape[:2])


def unmix_edges(frame: np.ndarray, body: np.ndarray, grow_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(colour uint8 (R, R, 3), alpha float32 (R, R)) of a generated frame over its plain background:
    the steps of :meth:`ShotPlan.composite`'s docstring, at the frame's resolution. ``body`` is the
    pose map's foreground (uint8 0/1); ``grow_px`` the band's width (0: alpha = body, colour as is)."""
    if grow_px <= 0:
        return frame, body.astype(np.float32)
    image = frame.astype(np.float32)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow_px + 1, 2 * grow_px + 1))
    band = cv2.dilate(body, kernel).astype(bool)
    outside = image[~band]
    background = np.median(outside, axis=0) if len(outside) else np.full(3, 255.0, np.float32)
    # 1. F: the body's colours well inside (a few pixels in from its edge, which the pose map may
    # draw a little outside the generated figure) extended over the band
    depth = max(1, int(round(frame.shape[0] / 128)))
    inner = cv2.erode(body, np.ones((2 * depth + 1, 2 * depth + 1), np.uint8)).astype(bool)
    if not inner.any():
        inner = body.astype(bool)
    if inner.any():
        fore = cv2.inpaint(frame, (~inner).astype(np.uint8), 3, cv2.INPAINT_TELEA).astype(np.float32)
    else:
        fore = image.copy()
    # 2. alpha: projection of I - B on F - B where F stands out from B; else the key of I against B
    df = fore - background
    di = image - background
    contrast = np.einsum("hwc,hwc->hw", df, df)
    projected = np.einsum("hwc,hwc->hw", di, df) / np.maximum(contrast, 1.0)
    keyed = np.clip((np.linalg.norm(di, axis=-1) - 16.0) / 48.0, 0.0, 1.0)
    # (on the body where F is too close to B to tell, as a white shirt on white: opaque)
    alpha = np.where(contrast > 40.0**2, np.clip(projected, 0.0, 1.0), np.where(body > 0, 1.0, keyed))
    alpha = np.where(inner, 1.0, np.where(band, alpha, 0.0)).astype(np.float32)
    # 3. the unmixed colour, towards F where alpha is too small for the inverse to be trusted
    unmixed = background + di / np.maximum(alpha, 1e-3)[..., None]
    trust = np.clip((alpha - 0.25) / 0.5, 0.0, 1.0)[..., None]
    colour = np.where(inner[..., None], image, trust * unmixed + (1 - trust) * fore)
    return np.clip(np.round(colour), 0, 255).astype(np.uint8), alpha


def _window_matrices(windows: np.ndarray, resolution: int) -> np.ndarray:
    """``A`` (T, 3, 3) per window (left, top, side): shot pixels -> window pixels (module docstring, 3.)."""
    a = resolution / windows[:, 2]
    A = np.zeros((len(windows), 3, 3))
    A[:, 0, 0] = A[:, 1, 1] = a
    A[:, 0, 2] = -windows[:, 0] * a - 0.5
    A[:, 1, 2] = -windows[:, 1] * a - 0.5
    A[:, 2, 2] = 1.0
    return A


def _bounding_boxes(clip: MotionClip, body_model: str | None = None, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame box (x0, y0, x1, y1) of the posed mesh in shot pixels, and whether it is visible."""
    body = cached_body_model(body_model or clip.body_model)
    T = clip.num_frames
    boxes = np.zeros((T, 4))
    seen = np.zeros(T, bool)
    for start in range(0, T, chunk):
        sl = slice(start, min(T, start + chunk))
        verts, _ = body.forward(clip.poses[sl], clip.betas, clip.trans[sl])
        verts = np.asarray(verts, dtype=np.float64)
        w2c = clip.world_to_cam[sl].astype(np.float64)
        cam = np.einsum("tij,tvj->tvi", w2c[:, :3, :3], verts) + w2c[:, None, :3, 3]
        K = clip.K[sl].astype(np.float64)
        for k in range(len(cam)):
            front = cam[k, :, 2] > 1e-3
            if not front.any():
                continue
            p = cam[k, front] @ K[k].T
            uv = p[:, :2] / p[:, 2:3]
            x0, y0 = uv.min(0)
            x1, y1 = uv.max(0)
            inside = x1 > -0.5 and y1 > -0.5 and x0 < clip.width - 0.5 and y0 < clip.height - 0.5
            boxes[start + k] = (x0, y0, x1, y1)
            seen[start + k] = inside
    return boxes, seen


def plan_shot(clip: MotionClip, size: int, margin: float = 0.1, max_zoom: float = 1.5,
              smooth_s: float = 1.0 / 6.0) -> ShotPlan:
    """Square windows that follow the body through ``clip``'s camera (module docstring).

    Args:
        clip: the motion with the shot camera (``K``, ``width``, ``height``, ``world_to_cam``).
        size: the window resolution the pose maps are rendered at (the network input's size or larger).
        margin: free border around the body, as a fraction of its larger box side, on each side.
        max_zoom: below this ratio of largest to smallest on-screen body size the window keeps one size.
        smooth_s: smoothing time constant of the window centre (seconds).
    """
    if not is_int(size, numpy=True) or not 8 <= size <= 8192:
        raise ShotError(f"window size must be an integer between 8 and 8192 pixels, got {size!r}")
    if clip.width * clip.height > MAX_PLATE_PIXELS:
        raise ShotError(f"shot resolution {clip.width}x{clip.height} is over the limit of {MAX_PLATE_PIXELS} pixels")
    boxes, visible = _bounding_boxes(clip)
    if not visible.any():
        raise ShotError("the body is never inside the shot camera's view: check the camera and the armature")
    T = clip.num_frames
    idx = np.arange(T)
    if not visible.all():  # off screen: interpolate the box between visible frames (held at the ends)
        boxes = np.stack([np.interp(idx, idx[visible], boxes[visible, k]) for k in range(4)], axis=1)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    need = np.max(boxes[:, 2:] - boxes[:, :2], axis=1) * (1.0 + 2.0 * margin)
    need = np.maximum(need, 8.0)
    sigma = max(smooth_s * clip.fps, 1e-6)
    if need.max() / need.min() <= max_zoom:
        side = np.full(T, need.max())
    else:
        window = max(1, int(round(clip.fps)))
        side = gaussian_filter1d(maximum_filter1d(need, size=2 * window + 1, mode="nearest"), sigma, mode="nearest")
    centre = gaussian_filter1d(centre, sigma, axis=0, mode="nearest") if T > 1 else centre
    # Widen where smoothing left part of the body (plus its margin) outside the window.
    half = np.maximum.reduce([side / 2.0, centre[:, 0] - boxes[:, 0], boxes[:, 2] - centre[:, 0],
                              centre[:, 1] - boxes[:, 1], boxes[:, 3] - centre[:, 1]])
    side = np.maximum(side, 2.0 * half)
    windows = np.stack([centre[:, 0] - side / 2.0, centre[:, 1] - side / 2.0, side], axis=1)
    K = _window_matrices(windows, size) @ clip.K.astype(np.float64)
    square = clip.with_camera(K, int(size), int(size), clip.world_to_cam)
    return ShotPlan(windows=windows, width=clip.width, height=clip.height, size=int(size), square_clip=square,
                    visible=visible)
