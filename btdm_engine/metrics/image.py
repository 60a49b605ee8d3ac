"""Per-frame image metrics: SSIM (Wang et al. 2004) and PSNR, with optional foreground masks.

Conventions shared by every metric in :mod:`btdm_engine.metrics`:

* Images are float tensors ``(N, 3, H, W)`` with values in ``[0, 1]`` (``data_range`` = 1).
* A mask is a bool tensor ``(N, H, W)``; True marks the pixels that count (the foreground,
  ``I > 0`` in the driving pose map). ``None`` means every pixel counts.
* Foreground-only evaluation (paper sec. 4.2 removes the background with a segmenter before
  measuring) is done in two steps: :func:`fill_background` paints the background of *both*
  images with the same colour, then the per-pixel maps are averaged over the mask only. Filling
  first matters for SSIM, whose 11x11 windows straddle the silhouette border.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from btdm_engine.errors import BtdmError

# Wang et al. 2004, sec. III-C: an 11x11 circular-symmetric Gaussian window, sigma 1.5,
# K1 = 0.01 and K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


class MetricInputError(BtdmError, ValueError):
    """Images or masks given to a metric have the wrong shape, dtype or value range."""


def check_images(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    """Raise :class:`MetricInputError` unless ``a``/``b`` are matching (N,3,H,W) float images
    and ``mask`` (if any) is a bool (N,H,W) tensor of the same size."""
    if a.ndim != 4 or a.shape[1] != 3:
        raise MetricInputError(f"images must be (N, 3, H, W), got {tuple(a.shape)}")
    if a.shape != b.shape:
        raise MetricInputError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if not (a.is_floating_point() and b.is_floating_point()):
        raise MetricInputError(f"images must be float tensors in [0, 1], got {a.dtype} and {b.dtype}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise MetricInputError(f"mask must be a bool tensor, got {mask.dtype}")
        n, _, h, w = a.shape
        if tuple(mask.shape) != (n, h, w):
            raise MetricInputError(f"mask must be (N, H, W) = {(n, h, w)}, got {tuple(mask.shape)}")


def fill_background(images: torch.Tensor, mask: torch.Tensor, colour: tuple[float, float, float]) -> torch.Tensor:
    """Return ``images`` (N,3,H,W) with every pixel outside ``mask`` (N,H,W) set to ``colour`` (RGB in [0,1])."""
    fill = torch.tensor(colour, dtype=images.dtype, device=images.device)
    fill = rearrange(fill, "c -> 1 c 1 1")
    keep = rearrange(mask, "n h w -> n 1 h w")
    return torch.where(keep, images, fill)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _blur_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel, 'valid' extent (no padding: no invented borders)."""
    c = x.shape[1]
    wx = repeat(window, "k -> c 1 1 k", c=c)
    wy = repeat(window, "k -> c 1 k 1", c=c)
    return F.conv2d(F.conv2d(x, wx, groups=c), wy, groups=c)


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004, eq. 13) averaged over the RGB channels.

    Returns (N, H-10, W-10): the Gaussian window is applied only where it fits entirely in the
    image (as scikit-image crops), so output pixel (i, j) is centred on input pixel (i+5, j+5).
    """
    check_images(a, b)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise MetricInputError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} px, got {tuple(a.shape[-2:])}")
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, dtype, a.device)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    # Local statistics mu, sigma^2 and sigma_xy under the Gaussian window (eq. 14-16).
    stats = _blur_valid(torch.cat([a, b, a * a, b * b, a * b], dim=1), window)
    mu_a, mu_b, aa, bb, ab = torch.chunk(stats, 5, dim=1)
    var_a = aa - mu_a**2
    var_b = bb - mu_b**2
    cov = ab - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over (H, W) per sample, over ``mask`` pixels only; NaN for a sample with an empty mask."""
    if mask is None:
        return values.flatten(1).mean(dim=1)
    m = mask.to(values.dtype)
    count = m.flatten(1).sum(dim=1)
    total = (values * m).flatten(1).sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image pair, shape (N,). With ``mask``, the SSIM map is averaged over the
    mask pixels whose window lies inside the image (mask cropped like the map); an image whose
    mask is empty gives NaN (the caller decides to skip it, see :func:`nanmean_frames`)."""
    check_images(a, b, mask)
    smap = ssim_map(a, b, data_range)
    if mask is not None:
        r = SSIM_WINDOW // 2
        mask = mask[:, r : mask.shape[1] - r, r : mask.shape[2] - r]
    return _masked_mean(smap, mask)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0) -> torch.Tensor:
    """PSNR per image pair in dB, shape (N,): ``10 log10(L^2 / MSE)`` with MSE over the three
    channels and the (masked) pixels. Identical images give ``inf``."""
    check_images(a, b, mask)
    dtype = torch.float64
    se = ((a.to(dtype) - b.to(dtype)) ** 2).mean(dim=1)
    mse = _masked_mean(se, mask)
    out = 10 * torch.log10(data_range**2 / mse)
    return torch.where(mse == 0, torch.full_like(mse, math.inf), out)


def nanmean_frames(values: torch.Tensor) -> float:
    """Mean over frames, ignoring NaN (frames with no foreground); NaN if every frame is NaN."""
    finite = values[~torch.isnan(values)]
    if finite.numel() == 0:
        return math.nan
    return float(finite.mean())
