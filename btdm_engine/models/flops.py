"""Parameter and FLOP counts of the networks (``torch.utils.flop_counter.FlopCounterMode``).

FLOPs are counted on the meta device, so even the paper-sized models are measured without
allocating their weights or running them; a FLOP is one multiply or one add (a multiply-add is
2 FLOPs, FlopCounterMode's convention). Only matmul-like ops count: convolutions, linear
layers, and attention as its two batched matmuls (on the meta device SDPA takes its math path,
which FlopCounterMode sees; the CPU flash kernel it would not count). Norms and activations
are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from btdm_engine.models import on_meta
from btdm_engine.models.btunet import BTUNet, BTUNetConfig
from btdm_engine.models.config import ModelConfigError
from btdm_engine.models.sr3 import SR3, SR3Config


@dataclass(frozen=True)
class ModelCost:
    """Size and compute of one network call: a BTU-Net pair pass, or one SR3 pass."""

    parameters: int
    flops: int  # per call at batch 1 (a BTU-Net call processes both frames of a pair)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def example_inputs(
    model: BTUNet | SR3, batch: int = 1, *, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None, conditional: bool = True,
) -> tuple[tuple[Tensor | None, ...], dict[str, Tensor]]:
    """Valid random (args, kwargs) for ``model``'s forward: frames in [-1, 1], lambda in [-10, 10].

    Pose maps are drawn as piecewise-constant IUV-like maps (not blended labels).
    ``generator`` is ignored on the meta device (meta tensors hold no values).
    """
    meta = torch.device(device).type == "meta"
    gen = None if meta else generator

    def frames(size: int, channels: int = 3) -> Tensor:
        if meta:
            return torch.empty(batch, channels, size, size, device=device)
        return torch.rand(batch, channels, size, size, generator=gen, device=device) * 2 - 1

    def logsnr() -> Tensor:
        if meta:
            return torch.empty(batch, device=device)
        return torch.rand(batch, generator=gen, device=device) * 20 - 10

    if isinstance(model, BTUNet):
        cfg = model.config
        r = cfg.resolution
        args = (frames(r), frames(r), logsnr(), frames(r, cfg.condition_channels), frames(r, cfg.condition_channels))
        kwargs: dict[str, Tensor] = {}
        if conditional:
            kwargs["appearance"] = frames(r, cfg.appearance_channels)
        return args, kwargs
    if isinstance(model, SR3):
        cfg_sr = model.config
        warp = {"warp": frames(cfg_sr.resolution, cfg_sr.warp_channels)} if cfg_sr.warp_channels else {}
        return (frames(cfg_sr.resolution), logsnr(), frames(cfg_sr.low_resolution), logsnr()), warp
    raise TypeError(f"example_inputs: expected a BTUNet or SR3, got {type(model).__name__}")


def count_flops(model: BTUNet | SR3, batch: int = 1, *, conditional: bool = True) -> int:
    """FLOPs of one forward call at ``batch`` (a BTU-Net call is one pair per sample).

    The model may live on any device; it is counted as a meta-device copy of its architecture.
    """
    config = model.config
    with on_meta():
        meta_model = type(model)(config)
    args, kwargs = example_inputs(meta_model, batch, device="meta", conditional=conditional)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(*args, **kwargs)
    return int(counter.get_total_flops())


def model_cost(kind: str, preset: str) -> ModelCost:
    """Parameter count and FLOPs per call (batch 1) of a preset, measured on the meta device."""
    config_classes = {"btunet": (BTUNet, BTUNetConfig), "sr3": (SR3, SR3Config)}
    if kind not in config_classes:
        raise ModelConfigError(f"unknown model kind {kind!r}; allowed: {sorted(config_classes)}")
    model_cls, config_cls = config_classes[kind]
    with on_meta():
        model = model_cls(config_cls.preset(preset))
    return ModelCost(parameters=count_parameters(model), flops=count_flops(model))
