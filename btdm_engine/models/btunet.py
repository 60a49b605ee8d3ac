"""BTU-Net: the Bidirectional Temporal U-Net of the paper (sec. 3.2, fig. 4, appendix B.3).

One U-Net f_theta is run as a weight-shared pair on (y_t^k, y_{t-1}^k): the two branches are
stacked along the batch (2B) for every convolution, and meet only in the bidirectional
attention blocks, where each branch attends to the appearance tokens of E_a(c) and then to the
other branch's features. FiLM modulates every residual block with E_p's pose features, the
log-SNR lambda and the learnt direction vector (d_f for the branch predicting forward in time,
d_b for the other). The network predicts x0 for both branches (eq. 4).

Design choices the paper leaves open (documented here, stated in the docs):
* no self-attention inside the bidirectional block: appearance cross-attention, then
  spatiotemporal cross-attention, as fig. 4(b) draws it;
* a fixed 2-D sinusoidal position code is added to attention queries and keys (not values),
  so the spatiotemporal block can find the same place in the neighbouring frame;
* the appearance tokens for "no appearance" (person-specific / unconditional tasks, condition
  dropout) are a learnt null token set per attention resolution;
* the output convolution is not zero-initialised (the residual branches are), so an untrained
  network's x0 prediction is a function of its input rather than a constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from btdm_engine.errors import BtdmError
from btdm_engine.models.config import (
    ModelConfig,
    ModelConfigError,
    check_bool,
    check_divisible,
    check_float,
    check_int,
    check_int_tuple,
    check_unet_levels,
    check_warp_channels,
)
from btdm_engine.models.layers import (
    Cond,
    CondBlock,
    ConvEncoder,
    MultiHeadAttention,
    UNetTrunk,
    logsnr_embedding,
    sinusoidal_positions_2d,
)

FORWARD = 0  # d_f: the branch predicts y_t from y_{t-1} (eq. 1, p_f)
BACKWARD = 1  # d_b: the branch predicts y_{t-1} from y_t (eq. 1, p_b)


class BTUNetInputError(BtdmError, ValueError):
    """A BTU-Net forward argument has the wrong shape, dtype or value (names which)."""


@dataclass(frozen=True)
class BTUNetConfig(ModelConfig):
    """BTU-Net architecture. All fields JSON-serialisable; see ``PRESETS``.

    resolution: frame size H = W the network runs at (64 in the paper).
    model_channels x channel_mult: U-Net channels per level (level i at resolution / 2**i).
    attention_resolutions: feature sizes that get a bidirectional attention block.
    pose_encoder_channels / appearance_encoder_channels: E_p / E_a base widths (x channel_mult).
    null_tokens: size of the learnt token set that replaces E_a's tokens when c is absent.
    warp_channels: 0 (the paper's network) or 4: every frame's conditioning then also holds the
        texture-transfer prior (w_t, its confidence) (:mod:`btdm_engine.posemaps.texture`), which
        goes into E_p with the pose map and is concatenated to the noisy frame at the U-Net's
        input, as Dense Pose Transfer (Neverova et al. 2018) feeds its warped texture to the
        generator. Beyond the paper: the ``paper`` and ``base`` presets keep 0.
    """

    resolution: int
    image_channels: int = 3
    pose_channels: int = 3
    appearance_channels: int = 3
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_heads: int = 4
    dropout: float = 0.0
    norm_groups: int = 32
    pose_encoder_channels: int = 32
    appearance_encoder_channels: int = 32
    null_tokens: int = 8
    position_code: bool = True
    warp_channels: int = 0

    PRESET_FIELDS: ClassVar[dict[str, dict[str, Any]]] = {
        # 32 px: tests, CPU training smoke runs and the shipped default model.
        "tiny": dict(
            resolution=32, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
            attention_resolutions=(16, 8), num_heads=2, norm_groups=8,
            pose_encoder_channels=16, appearance_encoder_channels=16, null_tokens=4,
        ),
        # "tiny" with the texture-transfer prior as input: the shipped default model.
        "tiny-warp": dict(
            resolution=32, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
            attention_resolutions=(16, 8), num_heads=2, norm_groups=8,
            pose_encoder_channels=16, appearance_encoder_channels=16, null_tokens=4, warp_channels=4,
        ),
        # 64 px, moderate: a model one can train on a single consumer GPU.
        "base": dict(
            resolution=64, model_channels=64, channel_mult=(1, 2, 3, 4), num_res_blocks=2,
            attention_resolutions=(32, 16, 8), num_heads=4, dropout=0.1, norm_groups=32,
            pose_encoder_channels=32, appearance_encoder_channels=32, null_tokens=8,
        ),
        # 64 px, sized like SR3's 64 px U-Net (paper appendix B.3 / fig. 8).
        "paper": dict(
            resolution=64, model_channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=3,
            attention_resolutions=(32, 16, 8), num_heads=8, dropout=0.1, norm_groups=32,
            pose_encoder_channels=64, appearance_encoder_channels=64, null_tokens=16,
        ),
    }

    def __post_init__(self) -> None:
        owner = "BTUNetConfig"
        for name in (
            "resolution", "image_channels", "pose_channels", "appearance_channels",
            "model_channels", "num_res_blocks", "num_heads", "norm_groups",
            "pose_encoder_channels", "appearance_encoder_channels", "null_tokens",
        ):
            check_int(owner, name, getattr(self, name))
        check_int_tuple(owner, "channel_mult", self.channel_mult)
        # the pair meets only in the attention blocks: without one there is no BTU-Net
        check_int_tuple(owner, "attention_resolutions", self.attention_resolutions)
        check_float(owner, "dropout", self.dropout, 0.0, 1.0)
        check_bool(owner, "position_code", self.position_code)
        check_warp_channels(owner, self.warp_channels)
        check_unet_levels(owner, self.resolution, self.channel_mult, self.attention_resolutions,
                          self.model_channels, self.norm_groups, self.num_heads)
        for mult in self.channel_mult:
            if self.position_code:
                check_divisible(owner, "model_channels*channel_mult", self.model_channels * mult, 4, "4 (position code)")
            for enc in ("pose_encoder_channels", "appearance_encoder_channels"):
                check_divisible(owner, enc, getattr(self, enc) * mult, self.norm_groups, "norm_groups")
        if self.model_channels % 2:
            raise ModelConfigError(f"{owner}.model_channels: must be even, got {self.model_channels}")

    @property
    def condition_channels(self) -> int:
        """Channels of one frame's conditioning map: the pose map, then the warp channels, if any."""
        return self.pose_channels + self.warp_channels

    @property
    def level_resolutions(self) -> list[int]:
        return [self.resolution // 2**i for i in range(len(self.channel_mult))]


PRESETS: dict[str, BTUNetConfig] = {
    name: BTUNetConfig.preset(name) for name in BTUNetConfig.PRESET_FIELDS
}


class BidirectionalAttention(CondBlock):
    """Bidirectional attention block (fig. 4(b)) on the stacked pair (2B, C, r, r).

    1. Appearance block: both branches query E_a's tokens (or the null tokens), shared weights.
    2. Spatiotemporal block: branch a queries branch b's features and b queries a's (the
       cross-attention that makes y_t depend on y_{t-1} and vice versa, eq. 3), shared weights.
    Both are pre-norm residual multi-head attentions.
    """

    def __init__(
        self, channels: int, context_channels: int, resolution: int, num_heads: int,
        null_tokens: int, position_code: bool,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm_appearance = nn.LayerNorm(channels)
        self.norm_context = nn.LayerNorm(context_channels)
        self.appearance = MultiHeadAttention(channels, context_channels, num_heads)
        self.norm_temporal = nn.LayerNorm(channels)
        self.temporal = MultiHeadAttention(channels, channels, num_heads)
        # Learnt stand-in for E_a's tokens when c is absent (person-specific / unconditional).
        self.null = nn.Parameter(torch.randn(null_tokens, context_channels) * 0.02)
        pos = sinusoidal_positions_2d(resolution, channels) if position_code else None
        pos_ctx = sinusoidal_positions_2d(resolution, context_channels) if position_code else None
        self.register_buffer("pos", pos, persistent=False)
        self.register_buffer("pos_context", pos_ctx, persistent=False)

    def _with_pos(self, tokens: Tensor, pos: Tensor | None) -> Tensor:
        return tokens if pos is None else tokens + pos.to(tokens.dtype)

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        tokens = rearrange(x, "b c h w -> b (h w) c")
        n = tokens.shape[0]

        # 1. appearance block: keys/values are E_a(c) tokens and/or the null tokens
        appearance_tokens, use_appearance = cond.context[self.resolution]
        null = repeat(self.norm_context(self.null), "l c -> n l c", n=n)
        q = self._with_pos(self.norm_appearance(tokens), self.pos)
        if appearance_tokens is None:
            k = v = null
            mask = None
        elif use_appearance is None:
            # every sample attends to the same E_a(c) tokens (sampling): one (1, L, C) set,
            # projected once; the null tokens are left out, as the mask below would leave them
            ctx = self.norm_context(appearance_tokens)
            k, v, mask = self._with_pos(ctx, self.pos_context), ctx, None
        else:
            ctx = self.norm_context(appearance_tokens)
            k = torch.cat([self._with_pos(ctx, self.pos_context), null], dim=1)
            v = torch.cat([ctx, null], dim=1)
            # per sample: attend to E_a's tokens where c is given, to the null tokens where not
            use = rearrange(use_appearance, "n -> n 1")
            mask = torch.cat(
                [use.expand(n, ctx.shape[1]), (~use).expand(n, null.shape[1])], dim=1
            )
        tokens = tokens + self.appearance(q, k, v, mask)

        # 2. spatiotemporal block: each branch reads its partner (a <-> b) at the same lambda
        normed = self.norm_temporal(tokens)
        partner = rearrange(
            rearrange(normed, "(two b) l c -> two b l c", two=2).flip(0), "two b l c -> (two b) l c"
        )
        tokens = tokens + self.temporal(
            self._with_pos(normed, self.pos), self._with_pos(partner, self.pos), partner
        )
        return rearrange(tokens, "b (h w) c -> b c h w", h=x.shape[-2])


class PairSampling:
    """A BTU-Net bound to one sequence's conditioning, for samplers (made by ``prepare_sampling``).

    ``__call__(x_a, x_b, logsnr, idx_a, idx_b, direction_a)`` returns branch a's x0 prediction
    for frames ``idx_a`` paired with ``idx_b``: the same numbers as ``BTUNet.forward`` on those
    frames' pose maps and the shared c, without re-encoding E_p / E_a every step and without
    finishing branch b (the sampler reads only branch a).
    """

    def __init__(self, net: BTUNet, poses: Tensor, context: dict, pose_cache: list[Tensor] | None) -> None:
        self.net, self.poses, self.context, self.pose_cache = net, poses, context, pose_cache

    def __call__(
        self, x_a: Tensor, x_b: Tensor, logsnr: Tensor, idx_a: Tensor, idx_b: Tensor, direction_a: Tensor
    ) -> Tensor:
        idx = torch.cat([idx_a, idx_b])
        if self.pose_cache is None:
            feats = self.net.pose_encoder(self.poses[idx])
        else:
            feats = [f[idx] for f in self.pose_cache]
        warp = self.net.warp_of(self.poses[idx])
        return self.net.pair_trunk(x_a, x_b, logsnr, direction_a, feats, self.context, branch_a_only=True, warp=warp)


class BTUNet(nn.Module):
    """Bidirectional Temporal U-Net f_theta with its encoders E_a and E_p (paper fig. 4)."""

    def __init__(self, config: BTUNetConfig) -> None:
        super().__init__()
        if not isinstance(config, BTUNetConfig):
            raise TypeError(f"BTUNet: expected a BTUNetConfig, got {type(config).__name__}")
        self.config = config
        cfg = config
        emb_dim = 4 * cfg.model_channels
        levels = cfg.level_resolutions
        pose_channels = [cfg.pose_encoder_channels * m for m in cfg.channel_mult]
        self._pose_channels = pose_channels

        self.logsnr_mlp = nn.Sequential(
            nn.Linear(cfg.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        # d_f / d_b: learnt direction vectors (eq. 4), random at init so the two directions
        # already differ before training.
        self.direction = nn.Embedding(2, emb_dim)
        # E_p: weight-shared over the pair, one feature map per U-Net level.
        self.pose_encoder = ConvEncoder(cfg.condition_channels, pose_channels, cfg.norm_groups)
        # E_a: only as deep as the lowest attention resolution needs.
        self._appearance_levels = [i for i, r in enumerate(levels) if r in cfg.attention_resolutions]
        appearance_channels = [
            cfg.appearance_encoder_channels * m
            for m in cfg.channel_mult[: max(self._appearance_levels, default=-1) + 1]
        ]
        self.appearance_encoder = ConvEncoder(
            cfg.appearance_channels, appearance_channels, cfg.norm_groups
        )

        def attention(channels: int, resolution: int) -> BidirectionalAttention:
            level = levels.index(resolution)
            return BidirectionalAttention(
                channels, cfg.appearance_encoder_channels * cfg.channel_mult[level], resolution,
                cfg.num_heads, cfg.null_tokens, cfg.position_code,
            )

        self.unet = UNetTrunk(
            in_channels=cfg.image_channels + cfg.warp_channels,
            out_channels=cfg.image_channels,
            model_channels=cfg.model_channels,
            channel_mult=cfg.channel_mult,
            num_res_blocks=cfg.num_res_blocks,
            resolution=cfg.resolution,
            attention_resolutions=cfg.attention_resolutions,
            emb_dim=emb_dim,
            groups=cfg.norm_groups,
            dropout=cfg.dropout,
            attention=attention,
            pose_channels=pose_channels,
        )

    def forward(
        self,
        x_a: Tensor,
        x_b: Tensor,
        logsnr: Tensor,
        pose_a: Tensor,
        pose_b: Tensor,
        appearance: Tensor | None = None,
        direction_a: Tensor | None = None,
        appearance_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One weight-shared pair pass (paper fig. 4); returns the x0 predictions (x0_a, x0_b).

        x_a, x_b: noisy frames (B,3,H,W) at the same log-SNR ``logsnr`` (B,), finite.
        pose_a, pose_b: their conditioning maps (B, condition_channels, H, W): the IUV pose map in
            tensor form (nearest-resized), then with ``warp_channels`` the warped appearance w_t
            and its confidence, all in [-1, 1].
        appearance: c (B,3,H,W) in [-1, 1], or None: the learnt null tokens for every sample.
        direction_a: long (B,), 0 = d_f, 1 = d_b; branch b gets 1 - direction_a. Default 0
            (a = y_t predicted forward from b = y_{t-1}).
        appearance_mask: bool (B,); False uses the null tokens for that sample (condition
            dropout). Only meaningful with ``appearance``.
        """
        self._check_inputs(x_a, x_b, logsnr, pose_a, pose_b, appearance, direction_a, appearance_mask)
        batch = x_a.shape[0]
        if direction_a is None:
            direction_a = torch.zeros(batch, dtype=torch.long, device=x_a.device)

        # E_p(s) for both branches at every U-Net resolution
        conditions = torch.cat([pose_a, pose_b])
        pose_feats = self.pose_encoder(conditions)

        # E_a(c) tokens at the attention resolutions, shared by both branches
        if appearance is None:
            context = self.appearance_context(None)
        else:
            use = (
                torch.ones(batch, dtype=torch.bool, device=x_a.device)
                if appearance_mask is None
                else appearance_mask
            )
            feats = self.appearance_encoder(appearance)
            context = {
                r: (repeat(tokens, "b l c -> (two b) l c", two=2), torch.cat([use, use]))
                for r, (tokens, _) in self._context_tokens(feats).items()
            }
        out = self.pair_trunk(x_a, x_b, logsnr, direction_a, pose_feats, context, warp=self.warp_of(conditions))
        x0_a, x0_b = out.chunk(2, dim=0)
        return x0_a, x0_b

    # The pass in named pieces, so a sampler can encode the fixed conditioning once
    # (``prepare_sampling``) and a plain ``forward`` stays the training contract.

    def _context_tokens(self, feats: list[Tensor]) -> dict[int, tuple[Tensor, None]]:
        levels = self.config.level_resolutions
        return {levels[i]: (rearrange(feats[i], "b c h w -> b (h w) c"), None) for i in self._appearance_levels}

    def warp_of(self, conditions: Tensor) -> Tensor | None:
        """The warp channels (w_t, confidence) of conditioning maps, or None for the paper's network."""
        return conditions[:, self.config.pose_channels :] if self.config.warp_channels else None

    def appearance_context(self, appearance: Tensor | None) -> dict[int, tuple[Tensor | None, Tensor | None]]:
        """E_a(c) tokens per attention resolution for ONE appearance c (1, 3, H, W), shared by
        every sample of a call; None gives the learnt null tokens."""
        if appearance is None:
            return {r: (None, None) for r in self.config.attention_resolutions}
        return dict(self._context_tokens(self.appearance_encoder(appearance)))

    def pair_trunk(
        self,
        x_a: Tensor,
        x_b: Tensor,
        logsnr: Tensor,
        direction_a: Tensor,
        pose_feats: list[Tensor],
        context: dict[int, tuple[Tensor | None, Tensor | None]],
        branch_a_only: bool = False,
        warp: Tensor | None = None,
    ) -> Tensor:
        """The U-Net pair on stacked branches; ``pose_feats`` are E_p's maps for (pose_a; pose_b),
        ``warp`` their warp channels (2B, warp_channels, H, W) for a warp-conditioned network.

        Returns (2B, 3, H, W) x0 predictions, or branch a's (B, ...) alone with
        ``branch_a_only`` (branch b is then dropped after the last attention block, where the
        branches last meet, so branch a's output is unchanged).
        """
        # 1. stack the pair along the batch: index = branch * B + sample
        x = torch.cat([x_a, x_b])
        if warp is not None:
            x = torch.cat([x, warp.to(x.dtype)], dim=1)
        direction = torch.cat([direction_a, 1 - direction_a])
        logsnr2 = torch.cat([logsnr, logsnr])
        # 2. FiLM vector: embedding of lambda (eq. 2) plus the direction vector d_f / d_b (eq. 4)
        emb = self.logsnr_mlp(logsnr_embedding(logsnr2, self.config.model_channels))
        emb = emb + self.direction(direction)
        pose = dict(zip(self.config.level_resolutions, pose_feats))
        # 3. the U-Net pair
        return self.unet(x, Cond(emb=emb, pose=pose, context=context), keep=x_a.shape[0] if branch_a_only else None)

    def prepare_sampling(self, poses: Tensor, appearance: Tensor | None, cache_bytes: int) -> PairSampling:
        """Encode a sequence's fixed conditioning once for a sampler (see :class:`PairSampling`).

        poses: (T, condition_channels, H, W) conditioning maps; appearance: c (3, H, W) or None. E_p's maps of every
        frame are kept when they fit ``cache_bytes``, else encoded per call.
        """
        context = self.appearance_context(None if appearance is None else appearance.unsqueeze(0))
        per_frame = 4 * sum(c * r * r for c, r in zip(self._pose_channels, self.config.level_resolutions))
        cache = self.pose_encoder(poses) if per_frame * poses.shape[0] <= cache_bytes else None
        return PairSampling(self, poses, context, cache)

    def _check_inputs(
        self,
        x_a: Tensor,
        x_b: Tensor,
        logsnr: Tensor,
        pose_a: Tensor,
        pose_b: Tensor,
        appearance: Tensor | None,
        direction_a: Tensor | None,
        appearance_mask: Tensor | None,
    ) -> None:
        cfg = self.config
        size = (cfg.resolution, cfg.resolution)
        expected = {
            "x_a": (x_a, cfg.image_channels),
            "x_b": (x_b, cfg.image_channels),
            "pose_a": (pose_a, cfg.condition_channels),
            "pose_b": (pose_b, cfg.condition_channels),
        }
        if appearance is not None:
            expected["appearance"] = (appearance, cfg.appearance_channels)
        batch = x_a.shape[0] if x_a.ndim == 4 else -1
        for name, (t, channels) in expected.items():
            if t.ndim != 4 or t.shape[0] != batch or t.shape[1] != channels or tuple(t.shape[2:]) != size:
                raise BTUNetInputError(
                    f"BTUNet.forward: {name} has shape {tuple(t.shape)}, expected "
                    f"({batch if batch > 0 else 'B'}, {channels}, {size[0]}, {size[1]})"
                )
        for name, t, dtypes in (
            ("logsnr", logsnr, None),
            ("direction_a", direction_a, (torch.long, torch.int32)),
            ("appearance_mask", appearance_mask, (torch.bool,)),
        ):
            if t is None:
                continue
            if tuple(t.shape) != (batch,):
                raise BTUNetInputError(
                    f"BTUNet.forward: {name} has shape {tuple(t.shape)}, expected ({batch},)"
                )
            if dtypes is not None and t.dtype not in dtypes:
                raise BTUNetInputError(
                    f"BTUNet.forward: {name} has dtype {t.dtype}, expected one of {list(dtypes)}"
                )
        # a value check syncs with the device, so it is skipped inside torch.compile graphs
        if (
            direction_a is not None
            and not torch.compiler.is_compiling()
            and bool(((direction_a != FORWARD) & (direction_a != BACKWARD)).any())
        ):
            raise BTUNetInputError(
                f"BTUNet.forward: direction_a holds {sorted(set(direction_a.tolist()))}; "
                f"allowed: {FORWARD} (d_f), {BACKWARD} (d_b)"
            )
        if appearance_mask is not None and appearance is None:
            raise BTUNetInputError(
                "BTUNet.forward: appearance_mask given without appearance; pass appearance=None "
                "alone to use the null tokens for every sample"
            )
