"""Temporal metrics from optical flow: tOF and the flow-warping error.

Flow is OpenCV's DIS optical flow (Kroeger et al. 2016, ``cv2.DISOpticalFlow_create`` with the
MEDIUM preset) on 8-bit grey frames; it is deterministic, so identical inputs give identical
flows. ``flow(a, b)`` is the flow from ``a`` to ``b``: ``a(x) ~ b(x + flow(x))``, in pixels,
channels (dx, dy).

Definitions (sequences are (T, 3, H, W) float tensors in [0, 1]; masks (T, H, W) bool):

* **tOF** (Chu et al. 2020, as the paper's table 1 uses it): with ``F^gen_t`` and ``F^gt_t`` the
  flows from frame t-1 to frame t of the generated and of the ground-truth sequence,

      tOF = 1/(T-1) * sum_{t=1}^{T-1} mean_{x in M_{t-1}} || F^gen_t(x) - F^gt_t(x) ||_2

  in pixels at the evaluation resolution; ``M_{t-1}`` is the foreground mask of frame t-1 (the
  grid the flows live on), or every pixel without masks. 0 for identical sequences.

* **Warping error** (Lai et al. 2018, "Learning blind video temporal consistency"): frame t-1 of
  the generated sequence is warped into frame t with the backward flow ``B_t`` (frame t to t-1)
  of the *ground-truth* sequence (``flow_source="gt"``, the default: a generated video is
  judged by how well it follows the true motion) or of the generated sequence itself
  (``flow_source="pred"``: self-consistency only), then

      E_warp = 1/(T-1) * sum_t  sum_x V_t(x) ||y_t(x) - warp(y_{t-1}, B_t)(x)||^2 / (3 sum_x V_t(x))

  where ``V_t`` keeps the pixels that are (a) inside the image after warping, (b) not occluded by
  the forward-backward check of Sundaram et al. 2010,
  ``|B(x) + F(x + B(x))|^2 < 0.01 (|B(x)|^2 + |F(x + B(x))|^2) + 0.5``, with ``F`` the
  forward flow t-1 -> t of the same sequence, and (c) in the foreground mask of frame t.
  The squared error is averaged over the RGB channels ([0, 1] values).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from einops import rearrange

from btdm_engine.constants import FLOW_SOURCES
from btdm_engine.errors import UsageError


def _to_grey_u8(frames: torch.Tensor) -> np.ndarray:
    """(T,3,H,W) float [0,1] -> (T,H,W) uint8 grey (ITU-R BT.601 weights, as cv2 uses)."""
    rgb = rearrange(frames.detach().to("cpu", torch.float32).clamp(0, 1), "t c h w -> t h w c").numpy()
    rgb_u8 = np.round(rgb * 255).astype(np.uint8)
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb_u8])


def _dis() -> cv2.DISOpticalFlow:
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def optical_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """DIS flow from grey uint8 image ``a`` (H,W) to ``b``: float32 (H,W,2), ``a(x) ~ b(x + flow(x))``."""
    if a.dtype != np.uint8 or b.dtype != np.uint8 or a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"optical_flow needs two grey uint8 (H, W) images of equal size, got {a.shape} {a.dtype} and {b.shape} {b.dtype}")
    return _dis().calc(a, b, None)


def sequence_flows(frames: torch.Tensor) -> np.ndarray:
    """Flows from each frame to the next: (T-1, H, W, 2) float32 for a (T,3,H,W) sequence."""
    grey = _to_grey_u8(frames)
    if len(grey) < 2:
        return np.zeros((0, *grey.shape[1:], 2), np.float32)
    dis = _dis()
    return np.stack([dis.calc(grey[t - 1], grey[t], None) for t in range(1, len(grey))])


def tof_per_pair(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """tOF terms per consecutive pair, (T-1,) float64 in pixels (NaN where frame t-1 has no foreground)."""
    _check_sequences(pred, gt, mask)
    diff = np.linalg.norm(sequence_flows(pred).astype(np.float64) - sequence_flows(gt).astype(np.float64), axis=-1)
    if mask is None:
        return diff.mean(axis=(1, 2))
    m = mask[:-1].cpu().numpy()
    out = np.full(len(diff), math.nan)
    for t in range(len(diff)):
        if m[t].any():
            out[t] = diff[t][m[t]].mean()
    return out


def tof(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """tOF of a generated sequence against its ground truth (module docstring); NaN if T < 2."""
    terms = tof_per_pair(pred, gt, mask)
    terms = terms[~np.isnan(terms)]
    return float(terms.mean()) if terms.size else math.nan


def _warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Backward warp: out(x) = image(x + flow(x)), bilinear; also the in-bounds mask."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx, my = gx + flow[..., 0], gy + flow[..., 1]
    out = cv2.remap(image, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    return out, inside


def _non_occluded(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Forward-backward consistency (Sundaram et al. 2010) on frame t's grid."""
    fwd_at, _ = _warp(forward, backward)
    total = backward + fwd_at
    lhs = (total**2).sum(-1)
    rhs = 0.01 * ((backward**2).sum(-1) + (fwd_at**2).sum(-1)) + 0.5
    return lhs < rhs


def warping_error_per_pair(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None, flow_source: str = "gt"
) -> np.ndarray:
    """Warping-error terms per consecutive pair, (T-1,) float64 (module docstring)."""
    if flow_source not in FLOW_SOURCES:
        raise UsageError(f"unknown flow_source {flow_source!r}; allowed: {', '.join(FLOW_SOURCES)}")
    _check_sequences(pred, gt, mask)
    ref = _to_grey_u8(gt if flow_source == "gt" else pred)
    frames = rearrange(pred.detach().to("cpu", torch.float32), "t c h w -> t h w c").numpy()
    m = None if mask is None else mask.cpu().numpy()
    dis = _dis()
    out = np.full(len(frames) - 1, math.nan)
    for t in range(1, len(frames)):
        backward = dis.calc(ref[t], ref[t - 1], None)
        forward = dis.calc(ref[t - 1], ref[t], None)
        warped, inside = _warp(frames[t - 1], backward)
        valid = inside & _non_occluded(backward, forward)
        if m is not None:
            valid &= m[t]
        if valid.any():
            err = ((frames[t].astype(np.float64) - warped) ** 2).mean(-1)
            out[t - 1] = err[valid].mean()
    return out


def warping_error(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None, flow_source: str = "gt") -> float:
    """Flow-warping error of a generated sequence (module docstring); NaN if T < 2."""
    terms = warping_error_per_pair(pred, gt, mask, flow_source)
    terms = terms[~np.isnan(terms)]
    return float(terms.mean()) if terms.size else math.nan


def _check_sequences(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None) -> None:
    if pred.ndim != 4 or pred.shape[1] != 3 or pred.shape != gt.shape:
        raise ValueError(f"sequences must both be (T, 3, H, W), got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (pred.shape[0], *pred.shape[2:])):
        raise ValueError(
            f"mask must be bool (T, H, W) = {(pred.shape[0], *pred.shape[2:])}, got {tuple(mask.shape)} {mask.dtype}")
