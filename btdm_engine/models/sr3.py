"""SR3 super-resolution U-Net (Saharia et al. 2022; paper appendix B.1: 64 px -> 256 px).

The same trunk as BTU-Net without pose, appearance or direction: the noisy high-res frame is
concatenated with the bicubically upsampled low-res frame, and FiLM reads the embeddings of
lambda and of the low-res frame's noise-augmentation level (conditioning augmentation). It
predicts x0 like BTU-Net, so both share the diffusion code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from btdm_engine.errors import BtdmError
from btdm_engine.models.config import (
    ModelConfig,
    ModelConfigError,
    check_float,
    check_int,
    check_int_tuple,
    check_unet_levels,
    check_warp_channels,
)
from btdm_engine.models.layers import Cond, SelfAttentionBlock, UNetTrunk, logsnr_embedding
from btdm_engine.posemaps.texture import FILLED

# "Clean" low-res input: the log-SNR given to the augmentation embedding when no noise was added.
CLEAN_LOGSNR = 20.0


class SR3InputError(BtdmError, ValueError):
    """An SR3 forward argument has the wrong shape (names which)."""


@dataclass(frozen=True)
class SR3Config(ModelConfig):
    """SR3 architecture. ``resolution`` is the output size, ``low_resolution`` the input's.

    warp_channels: 0 (SR3 as published) or 4: the texture-transfer prior (w_t and its confidence,
        :mod:`btdm_engine.posemaps.texture`) at the OUTPUT resolution is concatenated to the input
        too, so detail that the appearance image shows survives where the low-resolution frame
        cannot hold it. Beyond the paper: the ``paper`` and ``base`` presets keep 0.
    residual: False (SR3 as published: the U-Net's output is x0) or True: x0 = base + the U-Net's
        output, the base being the prior on the body and the upsampled low-res frame around it,
        ``base = a * w_t + (1 - a) * up(low_res)`` with ``a`` the body's coverage read from the
        prior's confidence channel (``up(low_res)`` alone without a prior, or with a blank one).
        The network then learns only what the prior gets wrong (shading, seams, what c never
        showed, hair and cloth beyond the body's surface): the predict-and-refine split of Whang et
        al., "Deblurring via Stochastic Refinement" (CVPR 2022), and of Neverova et al.'s warping +
        blending modules ("Dense Pose Transfer", ECCV 2018). Its output head starts at zero, so an
        untrained network returns the base: the texture transfer itself on the body.
    body_correction: how much of a residual network's correction the body's pixels keep, in
        [0, 1]: ``x0 = base + (1 - (1 - body_correction) * a) * out`` (1: all of it, as trained;
        around the body, ``a = 0``, always all of it). A correction learned on the training people
        carries their specifics to a new person; shrinking it towards the prior (James and Stein's
        shrinkage, applied to a predict-and-refine split) trades some of what it fixes for less of
        what it invents. Chosen after training on people that neither the training nor the test
        split holds (``wide256-val``): an inference setting, training always runs at 1.
    """

    resolution: int
    low_resolution: int
    image_channels: int = 3
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 4, 8, 8)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 4
    dropout: float = 0.0
    norm_groups: int = 32
    warp_channels: int = 0
    residual: bool = False
    body_correction: float = 1.0

    PRESET_FIELDS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(
            resolution=128, low_resolution=32, model_channels=16, channel_mult=(1, 2, 4, 4),
            num_res_blocks=1, attention_resolutions=(), num_heads=2, norm_groups=8,
        ),
        "tiny-warp": dict(
            resolution=128, low_resolution=32, model_channels=16, channel_mult=(1, 2, 4, 4),
            num_res_blocks=1, attention_resolutions=(), num_heads=2, norm_groups=8, warp_channels=4,
        ),
        "base": dict(
            resolution=256, low_resolution=64, model_channels=32, channel_mult=(1, 2, 4, 8, 8),
            num_res_blocks=2, attention_resolutions=(16,), num_heads=4, dropout=0.1, norm_groups=16,
        ),
        # SR3's 64 -> 256 model (Saharia et al. 2022, table A.1): 128 channels,
        # multipliers (1,2,4,8,8), 3 residual blocks.
        "paper": dict(
            resolution=256, low_resolution=64, model_channels=128, channel_mult=(1, 2, 4, 8, 8),
            num_res_blocks=3, attention_resolutions=(16,), num_heads=8, dropout=0.1, norm_groups=32,
        ),
    }

    def __post_init__(self) -> None:
        owner = "SR3Config"
        for name in (
            "resolution", "low_resolution", "image_channels", "model_channels",
            "num_res_blocks", "num_heads", "norm_groups",
        ):
            check_int(owner, name, getattr(self, name))
        check_int_tuple(owner, "channel_mult", self.channel_mult)
        check_int_tuple(owner, "attention_resolutions", self.attention_resolutions, allow_empty=True)
        check_float(owner, "dropout", self.dropout, 0.0, 1.0)
        check_warp_channels(owner, self.warp_channels)
        if not isinstance(self.residual, bool):
            raise ModelConfigError(f"{owner}.residual: expected true or false, got {self.residual!r}")
        check_float(owner, "body_correction", self.body_correction, 0.0, 1.0)
        if self.body_correction != 1.0 and not self.residual:
            raise ModelConfigError(
                f"{owner}.body_correction: {self.body_correction} needs a residual network (residual: true)"
            )
        if self.low_resolution > self.resolution:
            raise ModelConfigError(
                f"{owner}.low_resolution: {self.low_resolution} exceeds resolution {self.resolution}"
            )
        if self.model_channels % 2:
            raise ModelConfigError(f"{owner}.model_channels: must be even, got {self.model_channels}")
        check_unet_levels(owner, self.resolution, self.channel_mult, self.attention_resolutions,
                          self.model_channels, self.norm_groups, self.num_heads)


PRESETS: dict[str, SR3Config] = {name: SR3Config.preset(name) for name in SR3Config.PRESET_FIELDS}


class SR3(nn.Module):
    """Conditional U-Net: concat(x, bicubic_up(low_res)[, warp]) -> x0 of the high-res frame
    (``residual``: -> x0 minus :func:`residual_base`)."""

    def __init__(self, config: SR3Config) -> None:
        super().__init__()
        if not isinstance(config, SR3Config):
            raise TypeError(f"SR3: expected an SR3Config, got {type(config).__name__}")
        self.config = config
        cfg = config
        emb_dim = 4 * cfg.model_channels
        # lambda of x and lambda of the augmentation noise on low_res, embedded alike
        self.logsnr_mlp = nn.Sequential(
            nn.Linear(2 * cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.unet = UNetTrunk(
            in_channels=2 * cfg.image_channels + cfg.warp_channels,
            out_channels=cfg.image_channels,
            model_channels=cfg.model_channels,
            channel_mult=cfg.channel_mult,
            num_res_blocks=cfg.num_res_blocks,
            resolution=cfg.resolution,
            attention_resolutions=cfg.attention_resolutions,
            emb_dim=emb_dim,
            groups=cfg.norm_groups,
            dropout=cfg.dropout,
            attention=lambda channels, _res: SelfAttentionBlock(channels, cfg.num_heads),
        )
        if cfg.residual:  # an untrained residual network returns the base
            head = self.unet.out[-1]
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(
        self, x: Tensor, logsnr: Tensor, low_res: Tensor, low_res_logsnr: Tensor | None = None,
        warp: Tensor | None = None,
    ) -> Tensor:
        """x0 prediction (B,3,H,W) of the high-res frame.

        x: noisy high-res frame (B,3,H,W) at log-SNR ``logsnr`` (B,).
        low_res: the (noise-augmented) low-res frame (B,3,h,w) in [-1, 1].
        low_res_logsnr: (B,) log-SNR of the augmentation noise on ``low_res``; None = clean
            (``CLEAN_LOGSNR``).
        warp: (B, warp_channels, H, W) texture-transfer prior at the output resolution, in
            [-1, 1]; required exactly when the config has ``warp_channels``.
        """
        cfg = self.config
        batch = x.shape[0] if x.ndim == 4 else -1
        for name, t, size in (
            ("x", x, cfg.resolution),
            ("low_res", low_res, cfg.low_resolution),
        ):
            if t.ndim != 4 or t.shape[0] != batch or tuple(t.shape[1:]) != (cfg.image_channels, size, size):
                raise SR3InputError(
                    f"SR3.forward: {name} has shape {tuple(t.shape)}, expected "
                    f"(B, {cfg.image_channels}, {size}, {size})"
                )
        if (warp is None) != (cfg.warp_channels == 0):
            raise SR3InputError(
                f"SR3.forward: this model takes {cfg.warp_channels} warp channels and warp is "
                f"{'missing' if warp is None else 'given'}"
            )
        if warp is not None and (warp.ndim != 4 or tuple(warp.shape) != (batch, cfg.warp_channels, *x.shape[-2:])):
            raise SR3InputError(
                f"SR3.forward: warp has shape {tuple(warp.shape)}, expected "
                f"({batch}, {cfg.warp_channels}, {cfg.resolution}, {cfg.resolution})"
            )
        for name, t in (("logsnr", logsnr), ("low_res_logsnr", low_res_logsnr)):
            if t is not None and tuple(t.shape) != (batch,):
                raise SR3InputError(
                    f"SR3.forward: {name} has shape {tuple(t.shape)}, expected ({batch},)"
                )
        if low_res_logsnr is None:
            low_res_logsnr = torch.full_like(logsnr, CLEAN_LOGSNR, dtype=torch.float32)

        # 1. SR3: condition by concatenating the bicubically upsampled low-res frame
        up = F.interpolate(low_res, size=x.shape[-2:], mode="bicubic", align_corners=False)
        h = torch.cat([x, up.to(x.dtype)] + ([] if warp is None else [warp.to(x.dtype)]), dim=1)
        # 2. FiLM vector from lambda (eq. 2) and the conditioning-augmentation level
        emb = self.logsnr_mlp(
            torch.cat(
                [
                    logsnr_embedding(logsnr, cfg.model_channels),
                    logsnr_embedding(low_res_logsnr, cfg.model_channels),
                ],
                dim=-1,
            )
        )
        out = self.unet(h, Cond(emb=emb))
        if not cfg.residual:
            return out
        base = residual_base(up, warp).to(out.dtype)
        if cfg.body_correction == 1.0 or warp is None:
            return out + base
        keep = 1 - (1 - cfg.body_correction) * body_coverage(warp)
        return out * keep.to(out.dtype) + base


def body_coverage(warp: Tensor) -> Tensor:
    """``a``, the body's coverage of each pixel (B, 1, H, W) in [0, 1], read from the prior's confidence.

    The confidence (the prior's fourth channel, in [-1, 1]) is at least
    :data:`~btdm_engine.posemaps.texture.FILLED` on every body pixel of a texture that saw anything
    and 0 around the body (and everywhere for a blank texture); the silhouette's anti-aliased
    edge falls in between.
    """
    conf = (warp[:, 3:4].float() + 1) * 0.5
    return (conf / FILLED).clamp(max=1.0)


def residual_base(up: Tensor, warp: Tensor | None) -> Tensor:
    """A residual SR3's base: ``a * w_t + (1 - a) * up`` (:func:`body_coverage`), or ``up`` without a prior."""
    if warp is None:
        return up
    a = body_coverage(warp)
    return a * warp[:, :3].float() + (1 - a) * up.float()
