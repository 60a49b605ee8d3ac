"""Training losses: eq. 4 (bidirectional), the unidirectional baseline, and SR3.

All networks predict the clean frame x0 (paper sec. 3.1, after Ramesh et al. 2022), so the
paper's loss is a plain mean squared error against y^0, averaged over pixels and the batch:
``weighting="x0"`` (the default). ``weighting="truncated_snr"`` multiplies each sample's x0 error
by max(SNR, 1) = max(exp(lambda), 1) (Salimans & Ho 2021, "truncated SNR"), which equals the
eps-prediction loss at high SNR; it is offered for experiments and is not what the paper does.

Every draw (levels k, noise) comes from the ``generator`` argument, on the generator's device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from btdm_engine.diffusion.common import D_FORWARD, PairNetwork, draw_noise
from btdm_engine.diffusion.schedule import ScheduleConfig, q_sample
from btdm_engine.errors import BtdmError

WEIGHTINGS: tuple[str, ...] = ("x0", "truncated_snr")


class LossError(BtdmError, ValueError):
    """A loss argument that cannot be used (shape mismatch, unknown option)."""


def _check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise LossError(f"loss weighting {weighting!r} is unknown; allowed: {', '.join(WEIGHTINGS)}")


def _weighted_mse(pred: Tensor, target: Tensor, logsnr: Tensor, weighting: str) -> Tensor:
    """Per-pixel MSE, per-sample weight, mean over the batch."""
    per_sample = (pred.float() - target.float()).square().flatten(1).mean(dim=1)
    if weighting == "truncated_snr":
        per_sample = per_sample * logsnr.exp().clamp(min=1.0)
    return per_sample.mean()


def _check_pair(y_t: Tensor, y_prev: Tensor, s_t: Tensor, s_prev: Tensor, c: Tensor | None) -> None:
    if y_t.ndim != 4 or y_t.shape[1] != 3:
        raise LossError(f"y_t must be (B, 3, H, W), got {tuple(y_t.shape)}")
    for name, value in (("y_prev", y_prev), ("c", c)):
        if value is not None and value.shape != y_t.shape:
            raise LossError(f"{name} shape {tuple(value.shape)} differs from y_t shape {tuple(y_t.shape)}")
    # conditioning maps: the pose map (3 channels), then any warp channels
    for name, value in (("s_t", s_t), ("s_prev", s_prev)):
        if value.ndim != 4 or value.shape[1] < 3 or value.shape[0] != y_t.shape[0] or value.shape[2:] != y_t.shape[2:]:
            raise LossError(f"{name} shape {tuple(value.shape)} does not match y_t shape {tuple(y_t.shape)}")
    if s_t.shape != s_prev.shape:
        raise LossError(f"s_prev shape {tuple(s_prev.shape)} differs from s_t shape {tuple(s_t.shape)}")


def _noise_pair(
    y_t: Tensor, y_prev: Tensor, schedule: ScheduleConfig, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """One level per sample shared by both frames, independent noise for each (eq. 4's y^k ~ q_k)."""
    logsnr = schedule.sample_train_logsnr(y_t.shape[0], generator, y_t.device)
    x_t = q_sample(y_t, logsnr, draw_noise(tuple(y_t.shape), generator, y_t.device))
    x_prev = q_sample(y_prev, logsnr, draw_noise(tuple(y_prev.shape), generator, y_prev.device))
    return logsnr, x_t, x_prev


def bidirectional_loss(
    model: PairNetwork,
    y_t: Tensor,
    y_prev: Tensor,
    s_t: Tensor,
    s_prev: Tensor,
    c: Tensor | None,
    schedule: ScheduleConfig,
    generator: torch.Generator,
    appearance_mask: Tensor | None = None,
    weighting: str = "x0",
) -> Tensor:
    """Eq. 4: both frames of a consecutive pair noised to the same level, both denoised at once.

        L = 1/2 (|| f(y_t^k, y_{t-1}^k, lambda(k), s_t, c, d_f) - y_t^0 ||^2
               + || f(y_{t-1}^k, y_t^k, lambda(k), s_{t-1}, c, d_b) - y_{t-1}^0 ||^2)

    The weight-shared pair pass gives both terms from ONE call: branch a = y_t with d_f, branch
    b = y_{t-1} with d_b (``direction_a = 0``). Single-image fine-tuning (sec. 3.3) passes the
    pair (c, c) with poses (g(c), g(c)).

    Args:
        model: the BTU-Net (train mode for training).
        y_t, y_prev: clean frames y_t^0, y_{t-1}^0 (B, 3, H, W) in [-1, 1].
        s_t, s_prev: their pose maps (B, 3, H, W).
        c: the appearance image (B, 3, H, W), or None (person-specific / unconditional, eq. 4
            with c = empty).
        schedule: k ~ U{1..K}, lambda = lambda(k / K).
        generator: source of k and of the two noise tensors (drawn in that order).
        appearance_mask: bool (B,), False drops c for that sample (condition dropout).
        weighting: ``"x0"`` (paper) or ``"truncated_snr"``.

    Returns:
        The scalar loss (float32).
    """
    _check_weighting(weighting)
    _check_pair(y_t, y_prev, s_t, s_prev, c)
    logsnr, x_t, x_prev = _noise_pair(y_t, y_prev, schedule, generator)
    direction = torch.full((y_t.shape[0],), D_FORWARD, dtype=torch.long, device=y_t.device)
    x0_t, x0_prev = model(x_t, x_prev, logsnr, s_t, s_prev, c, direction, appearance_mask)
    return 0.5 * (
        _weighted_mse(x0_t, y_t, logsnr, weighting) + _weighted_mse(x0_prev, y_prev, logsnr, weighting)
    )


def unidirectional_loss(
    model: PairNetwork,
    y_t: Tensor,
    y_prev: Tensor,
    s_t: Tensor,
    s_prev: Tensor,
    c: Tensor | None,
    schedule: ScheduleConfig,
    generator: torch.Generator,
    appearance_mask: Tensor | None = None,
    weighting: str = "x0",
) -> Tensor:
    """The autoregressive baseline of table 3 ("the same BTU-Net trained in a unidirectional manner").

    p(y_t | y_{t-1}, s_t): branch a holds the noisy y_t^k (direction d_f, level lambda(k)), branch
    b the CLEAN previous frame y_{t-1}^0 with its pose s_{t-1}, as the finished frame that
    :func:`~btdm_engine.diffusion.samplers.sample_unidirectional` feeds at inference. The network
    is told only branch a's level; only branch a's x0 error is the loss:

        L = || f(y_t^k, y_{t-1}^0, lambda(k), s_t, c, d_f) - y_t^0 ||^2

    Arguments as in :func:`bidirectional_loss`; the generator draws k then y_t's noise.
    """
    _check_weighting(weighting)
    _check_pair(y_t, y_prev, s_t, s_prev, c)
    logsnr = schedule.sample_train_logsnr(y_t.shape[0], generator, y_t.device)
    x_t = q_sample(y_t, logsnr, draw_noise(tuple(y_t.shape), generator, y_t.device))
    direction = torch.full((y_t.shape[0],), D_FORWARD, dtype=torch.long, device=y_t.device)
    x0_t, _ = model(x_t, y_prev, logsnr, s_t, s_prev, c, direction, appearance_mask)
    return _weighted_mse(x0_t, y_t, logsnr, weighting)


def sr3_loss(
    model: Callable[..., Tensor],
    hr: Tensor,
    lr: Tensor,
    schedule: ScheduleConfig,
    generator: torch.Generator,
    aug_min_logsnr: float = 3.0,
    aug_max_logsnr: float = 20.0,
    weighting: str = "x0",
    warp: Tensor | None = None,
) -> Tensor:
    """SR3 x0 loss with noise-conditioning augmentation of the low-res frame.

    1. lambda = lambda(k / K), k ~ U{1..K}; hr^k = q_sample(hr, lambda, eps) (eq. 2).
    2. Conditioning augmentation (Ho et al. 2022, "Cascaded Diffusion Models"): the low-res frame
       is noised to lambda_aug ~ U[aug_min_logsnr, aug_max_logsnr] and the model is told
       lambda_aug, so at inference it tolerates the BTU-Net's imperfect 64 px frames. The upper
       end (20: sigma = 4.5e-5) is clean in all but name, so the clean case is trained too.
    3. x0 MSE against hr.

    Args:
        model: ``model(x, logsnr, low_res, low_res_logsnr) -> x0`` (SR3 contract).
        hr: clean high-res frames (B, 3, H, W) in [-1, 1].
        lr: their low-res versions (B, 3, h, w) in [-1, 1].
        schedule: the high-res frame's schedule.
        generator: draws k, the hr noise, lambda_aug and the low-res noise (in that order).
        aug_min_logsnr, aug_max_logsnr: the augmentation range (aug_min = aug_max fixes it).
        weighting: ``"x0"`` (plain MSE, as SR3 here predicts x0) or ``"truncated_snr"``.
        warp: for a warp-conditioned SR3, the texture-transfer prior (B, C, H, W) at hr's size;
            passed to the model as its fifth argument.

    Returns:
        The scalar loss (float32).
    """
    _check_weighting(weighting)
    if hr.ndim != 4 or lr.ndim != 4 or hr.shape[:2] != lr.shape[:2] or hr.shape[1] != 3:
        raise LossError(
            f"sr3_loss needs hr (B, 3, H, W) and lr (B, 3, h, w), got {tuple(hr.shape)} and {tuple(lr.shape)}"
        )
    if not aug_min_logsnr <= aug_max_logsnr:
        raise LossError(f"aug_min_logsnr ({aug_min_logsnr}) must not exceed aug_max_logsnr ({aug_max_logsnr})")
    b = hr.shape[0]
    device = hr.device
    logsnr = schedule.sample_train_logsnr(b, generator, device)
    x = q_sample(hr, logsnr, draw_noise(tuple(hr.shape), generator, device))
    u = torch.rand(b, generator=generator, device=generator.device, dtype=torch.float32).to(device)
    aug_logsnr = aug_max_logsnr - u * (aug_max_logsnr - aug_min_logsnr)
    low_res = q_sample(lr.float(), aug_logsnr, draw_noise(tuple(lr.shape), generator, device))
    x0 = model(x, logsnr, low_res, aug_logsnr) if warp is None else model(x, logsnr, low_res, aug_logsnr, warp)
    return _weighted_mse(x0, hr, logsnr, weighting)
