"""U-Net building blocks in the guided-diffusion style, shared by BTU-Net and SR3.

* ``ResBlock``: GroupNorm -> SiLU -> conv, then a FiLM (scale-shift) norm driven by a vector
  embedding (log-SNR lambda, direction) and, for BTU-Net, by a spatial pose feature map; then
  SiLU -> dropout -> zero-initialised conv, so every residual branch starts as the identity.
* ``MultiHeadAttention``: pre-normed tokens, ``scaled_dot_product_attention``, zero-initialised
  output projection.
* ``UNetTrunk``: down / middle / up paths with skip connections. Its blocks take one ``Cond``
  and read only the parts they use (the pattern of guided-diffusion's TimestepEmbedSequential),
  so BTU-Net and SR3 share the trunk and differ only in their attention blocks and inputs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# lambda spans about [-20, 20]; scaling it by 25 gives the sinusoidal embedding the same span
# (~1000) that DDPM's integer timesteps have, so the usual frequency ladder resolves it.
LOGSNR_EMBED_SCALE = 25.0


def logsnr_embedding(logsnr: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding (B, dim) of the log-SNR lambda (B,) of eq. 2 (computed in float32).

    lambda must be finite; the schedule clips its ends.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=logsnr.device) / half
    )
    args = rearrange(logsnr.float() * LOGSNR_EMBED_SCALE, "b -> b 1") * rearrange(freqs, "f -> 1 f")
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sinusoidal_positions_2d(size: int, dim: int) -> Tensor:
    """Fixed 2-D sinusoidal position code (size*size, dim), row-major like 'b c h w -> b (h w) c'.

    Half the channels code the row, half the column; added to attention queries and keys so the
    spatiotemporal block can match a pixel with the same place in the neighbouring frame.
    """
    if torch.empty(0).is_meta:  # a network of sizes only (models.on_meta): the code's size, no values
        return torch.empty(size * size, dim)
    quarter = dim // 4
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(size, dtype=torch.float64)
    args = rearrange(coords, "p -> p 1") * rearrange(freqs, "f -> 1 f")
    code_1d = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (size, dim/2)
    rows = rearrange(code_1d, "h c -> h 1 c").expand(size, size, dim // 2)
    cols = rearrange(code_1d, "w c -> 1 w c").expand(size, size, dim // 2)
    return rearrange(torch.cat([rows, cols], dim=-1), "h w c -> (h w) c").float()


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so the residual branch it closes starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


@dataclass
class Cond:
    """Everything a trunk block may read besides its input features.

    emb: (N, emb_dim) vector conditioning (lambda embedding [+ direction vector]).
    pose: per feature resolution, the pose features (N, C_p, r, r) that FiLM-modulate ResBlocks.
    context: per attention resolution, whatever that model's attention block needs (BTU-Net:
    appearance tokens and their mask); SR3 leaves it empty.
    """

    emb: Tensor
    pose: dict[int, Tensor] = field(default_factory=dict)
    context: dict[int, tuple[Tensor | None, Tensor | None]] = field(default_factory=dict)

    def first(self, n: int) -> Cond:
        """The conditioning of the first ``n`` samples (the context is left as it is)."""
        return Cond(emb=self.emb[:n], pose={r: p[:n] for r, p in self.pose.items()}, context=self.context)


class CondBlock(nn.Module):
    """A block that reads the conditioning: ``forward(x, cond)``."""

    def forward(self, x: Tensor, cond: Cond) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class CondSequential(nn.ModuleList):
    """Sequential container passing ``cond`` to the blocks that take it."""

    def forward(self, x: Tensor, cond: Cond) -> Tensor:  # type: ignore[override]
        for block in self:
            x = block(x, cond) if isinstance(block, CondBlock) else block(x)
        return x


class ResBlock(CondBlock):
    """Residual block with FiLM from the vector embedding and (optionally) spatial pose features.

    FiLM (Perez et al. 2018; paper sec. 3.2): norm(h) * (1 + scale) + shift, where scale and
    shift are the sum of a per-sample term from the lambda/direction embedding and a per-pixel
    term from E_p's feature map at this block's resolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        resolution: int,
        groups: int,
        dropout: float = 0.0,
        pose_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.in_layers = nn.Sequential(
            group_norm(in_channels, groups), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_film = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_channels))
        self.pose_film = (
            nn.Sequential(nn.SiLU(), nn.Conv2d(pose_channels, 2 * out_channels, 1))
            if pose_channels is not None
            else None
        )
        self.out_norm = group_norm(out_channels, groups)
        self.out_layers = nn.Sequential(
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        h = self.in_layers(x)
        film = rearrange(self.emb_film(cond.emb), "b c -> b c 1 1")
        if self.pose_film is not None:
            film = _add(self.pose_film(cond.pose[self.resolution]), film)
        scale, shift = film.chunk(2, dim=1)
        h = _add(self.out_norm(h) * (1 + scale), shift)
        return self.skip(x) + self.out_layers(h)


def _add(x: Tensor, v: Tensor) -> Tensor:
    """``x + v``, where ``v`` may broadcast over x's pixels (a FiLM vector, (N, C, 1, 1)).

    On the CPU a bf16 add that broadcasts runs about 3x slower than expanding ``v`` to x's shape
    and layout first and adding that (1.26 against 0.44 ms for SR3's widest FiLM, 4 frames on one
    thread, measured side by side); the sum is the same, bit for bit.
    """
    if x.device.type == "cpu" and x.dtype == torch.bfloat16 and v.shape != x.shape:
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        v = v.expand_as(x).contiguous(memory_format=layout)
    return x + v


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MultiHeadAttention(nn.Module):
    """Multi-head attention over token sequences via PyTorch SDPA (Vaswani et al. 2017).

    Inputs are already normalised; queries/keys may carry a position code that values do not.
    The output projection starts at zero so the block starts as the identity in its residual.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = zero_module(nn.Linear(dim, dim))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """q (N, Lq, dim), k/v (N or 1, Lk, context_dim); mask bool (N, Lk), True = may attend.

        k/v with one sample are shared by all N queries (projected once, then broadcast).
        """
        heads = self.num_heads
        q, k, v = (
            rearrange(proj(t), "n l (h d) -> n h l d", h=heads)
            for proj, t in ((self.to_q, q), (self.to_k, k), (self.to_v, v))
        )
        if k.shape[0] != q.shape[0]:
            k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
        attn_mask = None if mask is None else rearrange(mask, "n l -> n 1 1 l")
        if _cpu_bf16_inference(q):
            out = _attention_bf16(q, k, v, attn_mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(rearrange(out, "n h l d -> n l (h d)"))


def _cpu_bf16_inference(t: Tensor) -> bool:
    return (t.device.type == "cpu" and not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _attention_bf16(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v with bf16 products (CPU inference).

    Under CPU autocast SDPA runs its flash kernel in float32; for the short token sequences of
    these models (at most a few hundred per map) two bf16 matmuls are 1.4-4x faster
    (bench/bench_cpu.py), within bf16's rounding of the float32 result. The softmax takes the bf16
    scores as they are (it computes in float32 inside and rounds its output to bf16, as a float32
    softmax cast to bf16 would), which saves two copies of the largest tensor of the block.
    """
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


class SelfAttentionBlock(CondBlock):
    """Pre-norm residual self-attention over a feature map (used by SR3)."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = MultiHeadAttention(channels, channels, num_heads)

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        height = x.shape[-2]
        tokens = rearrange(x, "b c h w -> b (h w) c")
        normed = self.norm(tokens)
        tokens = tokens + self.attn(normed, normed, normed)
        return rearrange(tokens, "b (h w) c -> b c h w", h=height)


class ConvEncoder(nn.Module):
    """Small multi-scale conv encoder (E_p, E_a): one feature map per level, halving resolution.

    Each level is a residual conv block; a strided conv moves to the next level.
    """

    def __init__(self, in_channels: int, channels: list[int], groups: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                group_norm(c, groups), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                group_norm(c, groups), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
            )
            for c in channels
        )
        self.downs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            for c_in, c_out in itertools.pairwise(channels)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            if i > 0:
                h = self.downs[i - 1](h)
            h = h + block(h)
            feats.append(h)
        return feats


AttentionFactory = Callable[[int, int], CondBlock]


class UNetTrunk(nn.Module):
    """U-Net f_theta body: input conv, down path, middle, up path, output head.

    ``attention(channels, resolution)`` builds the attention block used at each resolution in
    ``attention_resolutions`` (BTU-Net: bidirectional attention; SR3: self-attention);
    ``pose_channels`` (per level, or None) enables the spatial FiLM of every ResBlock.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        channel_mult: tuple[int, ...],
        num_res_blocks: int,
        resolution: int,
        attention_resolutions: tuple[int, ...],
        emb_dim: int,
        groups: int,
        dropout: float,
        attention: AttentionFactory,
        pose_channels: list[int] | None = None,
    ) -> None:
        super().__init__()

        def res_block(c_in: int, c_out: int, level: int) -> ResBlock:
            return ResBlock(
                c_in, c_out, emb_dim, resolution // 2**level, groups, dropout,
                None if pose_channels is None else pose_channels[level],
            )

        self.input_conv = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            res = resolution // 2**level
            for _ in range(num_res_blocks):
                blocks = CondSequential([res_block(ch, model_channels * mult, level)])
                ch = model_channels * mult
                if res in attention_resolutions:
                    blocks.append(attention(ch, res))
                self.down.append(blocks)
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(CondSequential([Downsample(ch)]))
                skip_channels.append(ch)

        last = len(channel_mult) - 1
        lowest = resolution // 2**last
        middle = [res_block(ch, ch, last)]
        if lowest in attention_resolutions:
            middle.append(attention(ch, lowest))
        middle.append(res_block(ch, ch, last))
        self.middle = CondSequential(middle)

        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            res = resolution // 2**level
            for i in range(num_res_blocks + 1):
                blocks = CondSequential(
                    [res_block(ch + skip_channels.pop(), model_channels * channel_mult[level], level)]
                )
                ch = model_channels * channel_mult[level]
                if res in attention_resolutions:
                    blocks.append(attention(ch, res))
                if level != 0 and i == num_res_blocks:
                    blocks.append(Upsample(ch))
                self.up.append(blocks)

        self.out = nn.Sequential(
            group_norm(ch, groups), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1)
        )
        # Index of the last up block holding an attention block: past it every block works on
        # each sample alone (convolutions, per-sample norms, FiLM), so samples can be dropped.
        attention_blocks = [i for i, blocks in enumerate(self.up) if any(isinstance(b, CondBlock)
                            and not isinstance(b, ResBlock) for b in blocks)]
        self._last_attention_up = attention_blocks[-1] if attention_blocks else -1

    def forward(self, x: Tensor, cond: Cond, keep: int | None = None) -> Tensor:
        """The trunk on ``x`` (N, C, H, W); with ``keep``, only the first ``keep`` outputs.

        ``keep`` drops the other samples right after the last attention block (the last place
        samples meet), which gives the same first ``keep`` outputs as the full pass for less work.
        """
        h = self.input_conv(x)
        skips = [h]
        for blocks in self.down:
            h = blocks(h, cond)
            skips.append(h)
        h = self.middle(h, cond)
        if keep is not None and self._last_attention_up < 0:
            h, skips, cond = h[:keep], [s[:keep] for s in skips], cond.first(keep)
        for i, blocks in enumerate(self.up):
            h = blocks(torch.cat([h, skips.pop()], dim=1), cond)
            if keep is not None and i == self._last_attention_up:
                h, skips, cond = h[:keep], [s[:keep] for s in skips], cond.first(keep)
        return self.out(h)
