"""The texture-transfer prior: an appearance's pixels in the 24-part UV atlas, looked up per pose map.

This is DensePose texture transfer (Güler et al. 2018, sec. 6; Neverova et al., "Dense Pose
Transfer", ECCV 2018, whose "warping module" is this operation): every foreground pixel of the
appearance image c carries its (I, U, V) from g(c), so its colour can be scattered into part I's
chart at (U, V). A target pose map s_t then reads its colour back at each of its own (I, U, V):
the warped appearance w_t, at the pose map's resolution, with no learning at all.

Three things make it usable here:

1. **Texture resolution from the figure.** The chart side ``S`` follows the figure's height in
   c (about a sixth of it, a power of two in 16..256), so a 100 px figure fills a 16 px chart
   densely and a full-HD render keeps its prints in a 128 or 256 px one.
2. **Filling what c does not show** (the back of a person seen from the front, the far arm):
   gaps between the texels c shows from the texels around them (:data:`HOLE_NEIGHBOURS`), then
   from the mirror part (:data:`~btdm_engine.posemaps.parts.MIRROR_PART`: the right sleeve is
   probably the left one mirrored; the torso charts are their own mirror with U reversed),
   then within each part by push-pull interpolation (Gortler et al. 1996, as coordinate-based
   texture inpainting (Grigorev et al., CVPR 2019) fills its input texture before learning
   the rest), and a part c never shows takes its front/back partner's mean colour.
3. **A confidence map**: 1 where the texel was seen (or is a gap among seen ones), 0.5 where the
   mirror filled it, 0.02 where it was interpolated or guessed, and 0 outside the body. The
   networks that take w_t as input (``warp_channels`` in their configs) read it as a fourth
   channel, so they learn where to trust the prior and where to draw from their own knowledge
   (Neverova et al.'s "blending module" and Grigorev et al.'s inpainting network make the same
   split).

The pixels c shows at the silhouette's edge are mixtures with the background (anti-aliasing);
they are given a small weight, so a texel seen inside the body wins over a fringe pixel and the
warped figure does not carry a background-coloured halo.

Several views (for instance renders of the same character at several frames: ``btdm animate
--view``, the service's ``views``, the add-on's Scene render with Views > 1) accumulate into one
texture: :func:`build_texture` takes a list, and each texel averages every view's pixels on it
(weighting each view by a power k of its samples there, so that the view seeing a texel best
dominates, scored worse on the validation people of ``wide256-val`` with two views: body SSIM
0.7865 plain, 0.7854 with k = 2, 0.7760 with k = 4). On the held-out people of
``wide256`` the texture transfer goes 0.747 -> 0.806 -> 0.825 body SSIM with 1, 2, 4 views
(``bench/bench_views.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from btdm_engine.errors import BtdmError
from btdm_engine.posemaps.encoding import validate_iuv
from btdm_engine.posemaps.parts import MIRROR_PART, NUM_PARTS, SELF_SYMMETRIC_PARTS

# The channels a warp-conditioned network reads per frame: w_t (RGB) and its confidence.
WARP_CHANNELS = 4
# Confidence of a texel: seen in c, filled from the mirror part, interpolated or guessed.
# FILLED is above 0, so that w_t's confidence channel also tells the body (> 0) from its surroundings (0).
SEEN, MIRRORED, FILLED = 1.0, 0.5, 0.02
# Weight of a pixel on the silhouette's edge (a mixture with the background) against one inside.
EDGE_WEIGHT = 0.02
MIN_TEXTURE, MAX_TEXTURE = 16, 256
# An unseen texel with at least this many seen ones among its 8 neighbours is a hole in what c
# shows, filled from them rather than from the mirror part (build_texture step 2): on the
# wide256-val people's bodies 0.721 / 18.10 -> 0.726 / 18.15 SSIM / PSNR (1 neighbour: the same,
# 3: 0.725, 4: 0.724), and no checks of the far side's colour on a near limb's skin.
HOLE_NEIGHBOURS = 2
# Standard deviation, in the pose map's pixels, of the screen-space filter over a rendered body
# (UVTexture.render). A renderer integrates each pixel over its footprint (Cycles, which draws the
# synthetic truth, through a 1.5 px Blackman-Harris filter; a camera through its lens and sensor);
# a texture lookup is a point sample, and so it is sharper than any view of the person and aliases
# in motion. Chosen on the validation people of `wide256-val` (body SSIM / PSNR of the texture
# transfer at 256 px for sigma 0 / 0.4 / 0.5 / 0.6 / 0.7: 0.718 / 17.90, 0.720 / 18.00,
# 0.721 / 18.10, 0.720 / 18.15, 0.717 / 18.16).
PIXEL_FILTER = 0.5

# Each part's front/back (or inside/outside, left/right head half, other hand or foot) partner:
# the colour a part that c never shows is most likely to share.
PARTNER_PART: np.ndarray = np.array(
    [0, 2, 1, 4, 3, 6, 5, 9, 10, 7, 8, 13, 14, 11, 12, 17, 18, 15, 16, 21, 22, 19, 20, 24, 23],
    dtype=np.int64,
)


class TextureError(BtdmError, ValueError):
    """An appearance and its IUV map that cannot make a texture (names which and why)."""


@dataclass(frozen=True)
class UVTexture:
    """A person's appearance in the 24-part atlas.

    colour: float32 (25, S, S, 3) in [0, 1]; index 0 (background) is unused.
        Row v, column u of part i holds chart point (U, V) = (u / (S-1), v / (S-1)).
    confidence: float32 (25, S, S) in [0, 1] (:data:`SEEN`, :data:`MIRRORED`, :data:`FILLED`).
    background: float32 (3,) in [0, 1]: the colour around the person in c (median of its
        background pixels away from the figure), used outside the body.
    """

    colour: np.ndarray
    confidence: np.ndarray
    background: np.ndarray

    @property
    def size(self) -> int:
        return int(self.colour.shape[1])

    @property
    def empty(self) -> bool:
        """True for :meth:`blank` textures: nothing seen, so w_t carries no information."""
        return not bool(self.confidence.any())

    @classmethod
    def blank(cls, background: Sequence[float] = (1.0, 1.0, 1.0), size: int = MIN_TEXTURE) -> UVTexture:
        """The texture of "no appearance map": background colour everywhere, confidence 0.

        What a warp-conditioned network gets for an appearance without g(c) (a photo with no
        IUV map) or without c: it then draws from E_a(c) alone, as it was trained to do for a
        share of its samples.
        """
        bg = np.asarray(background, dtype=np.float32).reshape(3)
        colour = np.broadcast_to(bg, (NUM_PARTS + 1, size, size, 3)).copy()
        return cls(colour, np.zeros((NUM_PARTS + 1, size, size), np.float32), bg)

    def render(self, iuv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """w_t for one pose map: (rgb float32 (H, W, 3) in [0, 1], confidence float32 (H, W)).

        Bilinear lookup in part I's chart at (U, V) for every body pixel, then the body filtered
        in screen space (:data:`PIXEL_FILTER`, normalised over the body, so the background does not
        bleed in); the background colour and confidence 0 elsewhere. Any resolution: the pose
        map's own.
        """
        validate_iuv(iuv, where="iuv")
        h, w = iuv.shape[:2]
        rgb = np.empty((h, w, 3), np.float32)
        rgb[...] = self.background
        conf = np.zeros((h, w), np.float32)
        part = iuv[..., 0].astype(np.int64)
        body = part > 0
        if not body.any():
            return rgb, conf
        s = self.size
        p = part[body]
        u = iuv[..., 1][body].astype(np.float32) * ((s - 1) / 255.0)
        v = iuv[..., 2][body].astype(np.float32) * ((s - 1) / 255.0)
        u0 = np.minimum(u.astype(np.int64), s - 2)
        v0 = np.minimum(v.astype(np.int64), s - 2)
        fu, fv = (u - u0)[:, None], (v - v0)[:, None]
        base = (p * s + v0) * s + u0
        colour = self.colour.reshape(-1, 3)
        confidence = self.confidence.reshape(-1)
        weights = ((1 - fv) * (1 - fu), (1 - fv) * fu, fv * (1 - fu), fv * fu)
        offsets = (0, 1, s, s + 1)
        rgb[body] = sum(wt * colour[base + o] for wt, o in zip(weights, offsets))
        conf[body] = sum(wt[:, 0] * confidence[base + o] for wt, o in zip(weights, offsets))
        mask = body.astype(np.float32)
        blurred = cv2.GaussianBlur(np.where(body[..., None], rgb, 0.0), (0, 0), PIXEL_FILTER)
        coverage = cv2.GaussianBlur(mask, (0, 0), PIXEL_FILTER)
        rgb[body] = blurred[body] / np.maximum(coverage[body], 1e-6)[:, None]
        return rgb, conf


def texture_size_for(iuv: np.ndarray) -> int:
    """Chart side for a view: about a sixth of the figure's height, the nearest power of two in 16..256.

    Denser charts leave more texels between the pixels c shows, which interpolation then fills
    (on the `wide` set's 128 px frames, 16 texels scored higher than 32 or 64: bench_texture)."""
    rows = np.flatnonzero((iuv[..., 0] > 0).any(axis=1))
    height = int(rows[-1] - rows[0] + 1) if rows.size else 0
    side = 1 << max(0, round(np.log2(max(height, 1) / 6)))
    return int(np.clip(side, MIN_TEXTURE, MAX_TEXTURE))


def _estimate_background(image: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Median colour of the pixels well away from the figure (white when there are none)."""
    near = cv2.dilate(body.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    far = image[~near]
    if len(far) == 0:
        return np.ones(3, np.float32)
    return np.median(far, axis=0).astype(np.float32)


def _push_pull(colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Fill the zero-weight texels of charts (P, S, S, 3) by push-pull interpolation (Gortler et
    al. 1996), every chart at once: sum down a pyramid of weighted colours, then fill holes from
    the coarser level (bilinearly enlarged) on the way up. Texels with weight 1 keep their colour."""
    levels = [(colour * weight[..., None], weight)]
    while levels[-1][1].shape[-1] > 1:
        c, w = levels[-1]
        p, n = c.shape[0], c.shape[1] // 2
        levels.append((c.reshape(p, n, 2, n, 2, 3).sum(axis=(2, 4)), w.reshape(p, n, 2, n, 2).sum(axis=(2, 4))))
    c, w = levels[-1]
    filled = torch.from_numpy(rearrange(c / np.maximum(w, 1e-12)[..., None], "p h w c -> p c h w").astype(np.float32))
    for c, w in reversed(levels[:-1]):
        up = F.interpolate(filled, size=c.shape[1:3], mode="bilinear", align_corners=False)
        mean = torch.from_numpy(rearrange(c / np.maximum(w, 1e-12)[..., None], "p h w c -> p c h w").astype(np.float32))
        alpha = torch.from_numpy(np.clip(w, 0.0, 1.0)[:, None].astype(np.float32))
        filled = alpha * mean + (1 - alpha) * up
    return rearrange(filled, "p c h w -> p h w c").numpy()


def build_texture(
    views: Sequence[tuple[np.ndarray, np.ndarray]], size: int | None = None
) -> UVTexture:
    """Scatter one or more views of a person into a :class:`UVTexture`.

    Args:
        views: ``(image, iuv)`` pairs: RGB float in [0, 1] or uint8 (H, W, 3), and its IUV map
            g(c) uint8 (H', W', 3) in this project's order (resized NEAREST to the image's size
            when it differs). The views' pixels are averaged per texel.
        size: chart side S; None picks it from the first view's figure (:func:`texture_size_for`).

    Raises:
        TextureError: no views, a view that is not an image, or no body pixel in any view.
    """
    if not views:
        raise TextureError("build_texture: no views given")
    prepared = []
    for n, (image, iuv) in enumerate(views):
        where = f"view {n}"
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise TextureError(f"{where}: expected an RGB image (H, W, 3), got shape {image.shape}")
        if image.dtype == np.uint8:
            image = image.astype(np.float32) / 255.0
        image = image.astype(np.float32, copy=False)
        validate_iuv(iuv, where=f"{where} IUV map")
        if iuv.shape[:2] != image.shape[:2]:
            iuv = cv2.resize(iuv, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        prepared.append((image, iuv))
    if size is None:
        size = texture_size_for(prepared[0][1])
    if not MIN_TEXTURE <= size <= MAX_TEXTURE:
        raise TextureError(f"texture size {size} is outside {MIN_TEXTURE}..{MAX_TEXTURE}")

    # 1. scatter: every body pixel adds its colour to the four texels around its (I, U, V), with
    #    bilinear weights: the adjoint of render's lookup. (To the nearest texel alone, as before,
    #    a 256 px view left isolated texels among interpolated ones: specks on the skin, and 0.695
    #    against 0.718 SSIM on the validation people of wide256-val.)
    texels = (NUM_PARTS + 1) * size * size
    total = np.zeros((texels, 3), np.float64)
    weight = np.zeros(texels, np.float64)
    backgrounds = []
    for image, iuv in prepared:
        body = iuv[..., 0] > 0
        if not body.any():
            continue
        backgrounds.append(_estimate_background(image, body))
        # a pixel next to the background (or another part) is a mixture: it counts little
        interior = cv2.erode(iuv[..., 0], np.ones((3, 3), np.uint8)) == iuv[..., 0]
        interior &= cv2.dilate(iuv[..., 0], np.ones((3, 3), np.uint8)) == iuv[..., 0]
        w = np.where(interior[body], 1.0, EDGE_WEIGHT)
        u = iuv[..., 1][body] * ((size - 1) / 255.0)
        v = iuv[..., 2][body] * ((size - 1) / 255.0)
        u0 = np.minimum(u.astype(np.int64), size - 2)
        v0 = np.minimum(v.astype(np.int64), size - 2)
        fu, fv = u - u0, v - v0
        base = (iuv[..., 0][body].astype(np.int64) * size + v0) * size + u0
        colours = image[body]
        for offset, tap in ((0, (1 - fu) * (1 - fv)), (1, fu * (1 - fv)), (size, (1 - fu) * fv), (size + 1, fu * fv)):
            weight += np.bincount(base + offset, weights=w * tap, minlength=texels)
            for ch in range(3):
                total[:, ch] += np.bincount(base + offset, weights=w * tap * colours[:, ch], minlength=texels)
    if not backgrounds:
        raise TextureError("build_texture: the IUV map shows no body (every pixel is background, I = 0)")
    background = np.median(np.stack(backgrounds), axis=0).astype(np.float32)
    weight = weight.reshape(NUM_PARTS + 1, size, size)
    colour = (total.reshape(NUM_PARTS + 1, size, size, 3) / np.maximum(weight, 1e-12)[..., None]).astype(np.float32)
    seen = weight > 0

    # 2. a hole among seen texels (a thin limb seen across covers a chart's U in steps wider than a
    #    texel) takes its seen neighbours' mean, before the mirror part can put the other side's
    #    colour there: checks of the far leg's shadow on the near one's skin otherwise
    if HOLE_NEIGHBOURS > 0:
        for p in range(1, NUM_PARTS + 1):
            near = cv2.boxFilter(seen[p].astype(np.float32), -1, (3, 3), normalize=False,
                                 borderType=cv2.BORDER_CONSTANT)
            hole = ~seen[p] & (near >= HOLE_NEIGHBOURS)
            if hole.any():
                sums = cv2.boxFilter(np.where(seen[p][..., None], colour[p], 0.0), -1, (3, 3), normalize=False,
                                     borderType=cv2.BORDER_CONSTANT)
                colour[p][hole] = sums[hole] / near[hole][:, None]
                seen[p] |= hole
    confidence = np.where(seen, SEEN, FILLED).astype(np.float32)

    # 3. the mirror part fills what c does not show (torso: itself with U reversed, parts.py)
    mirror_colour = colour[MIRROR_PART]
    mirror_seen = seen[MIRROR_PART]
    for p in SELF_SYMMETRIC_PARTS:
        mirror_colour[p] = mirror_colour[p][:, ::-1]
        mirror_seen[p] = mirror_seen[p][:, ::-1]
    from_mirror = ~seen & mirror_seen
    colour[from_mirror] = mirror_colour[from_mirror]
    confidence[from_mirror] = MIRRORED
    known = seen | from_mirror

    # 4. within a part, push-pull interpolation; a part never seen takes its partner's mean
    means = np.array([colour[p][known[p]].mean(axis=0) if known[p].any() else np.full(3, np.nan)
                      for p in range(NUM_PARTS + 1)], np.float32)
    person = colour[1:][known[1:]].mean(axis=0)
    partial = [p for p in range(1, NUM_PARTS + 1) if known[p].any() and not known[p].all()]
    if partial:
        colour[partial] = _push_pull(np.where(known[partial][..., None], colour[partial], 0.0),
                                     known[partial].astype(np.float32))
    for p in range(1, NUM_PARTS + 1):
        if not known[p].any():
            partner = means[PARTNER_PART[p]]
            colour[p] = person if np.isnan(partner).any() else partner
    colour[0] = background
    return UVTexture(np.clip(colour, 0.0, 1.0), confidence, background)


def warp_maps(texture: UVTexture, pose_maps: np.ndarray, size: int) -> torch.Tensor:
    """The warp channels a network reads: (T, 4, size, size) float32 in [-1, 1] = (w_t, confidence).

    Each pose map (T, H, W, 3) is looked up at its own resolution and area-resized to ``size``,
    so a 32 px network sees the anti-aliased average of a 128 or 256 px lookup.
    """
    out = np.empty((len(pose_maps), size, size, WARP_CHANNELS), np.float32)
    for t, iuv in enumerate(pose_maps):
        rgb, conf = texture.render(iuv)
        both = np.concatenate([rgb, conf[..., None]], axis=-1)
        out[t] = both if both.shape[0] == size else cv2.resize(
            both, (size, size), interpolation=cv2.INTER_AREA if both.shape[0] > size else cv2.INTER_LINEAR
        )
    return rearrange(torch.from_numpy(out), "t h w c -> t c h w") * 2.0 - 1.0


def transfer(texture: UVTexture, iuv: np.ndarray) -> np.ndarray:
    """The texture-transfer method's frame for one pose map: RGB uint8 at the pose map's size."""
    rgb, _ = texture.render(iuv)
    return np.round(rgb * 255.0).astype(np.uint8)


def texture_from_image(image: np.ndarray, iuv: np.ndarray | None, size: int | None = None,
                       views: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> UVTexture:
    """A texture from one appearance image and its IUV map, and any further ``views`` of the same
    person (``(image, iuv)`` pairs: the body seen at other frames fills texels the first view
    hides); a :meth:`UVTexture.blank` one (the image's border colour as background) when the IUV
    map is unknown (a photo with no g(c)), which takes no views."""
    if iuv is None:
        if views:
            raise TextureError("further views join the appearance's texture, which needs the appearance's IUV map")
        img = np.asarray(image, np.float32) / (255.0 if np.asarray(image).dtype == np.uint8 else 1.0)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        return UVTexture.blank(np.median(border, axis=0))
    return build_texture([(image, iuv), *views], size)


def transfer_frames(texture: UVTexture, pose_maps: Sequence[np.ndarray] | np.ndarray,
                    start: int = 0) -> Iterator[np.ndarray]:
    """The texture-transfer method (``--method texture``, the service's ``method: texture``): frames
    ``start..`` of the job, each :func:`transfer` of ``texture`` at its pose map, at the pose
    map's size; no network. The one home of that job, for ``btdm animate`` and the service."""
    for iuv in pose_maps[start:]:
        yield transfer(texture, iuv)

__all__ = [
    "FILLED",
    "MIRRORED",
    "PARTNER_PART",
    "PIXEL_FILTER",
    "SEEN",
    "WARP_CHANNELS",
    "TextureError",
    "UVTexture",
    "build_texture",
    "texture_from_image",
    "texture_size_for",
    "transfer",
    "transfer_frames",
    "warp_maps",
]
