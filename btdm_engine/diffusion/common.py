"""What the losses and the samplers share: the BTU-Net pair contract and noise from an explicit generator.

Neither module imports the other; both take these pieces from here.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

__all__ = ["DIRECTIONS", "D_BACKWARD", "D_FORWARD", "PairNetwork", "draw_noise"]

DIRECTIONS: tuple[str, ...] = ("forward", "backward")
D_FORWARD = 0  # direction_a index of d_f (BTU-Net contract)
D_BACKWARD = 1  # direction_a index of d_b


class PairNetwork(Protocol):
    """The BTU-Net contract (``btdm_engine.models.BTUNet.forward``)."""

    def __call__(
        self,
        x_a: Tensor,
        x_b: Tensor,
        logsnr: Tensor,
        pose_a: Tensor,
        pose_b: Tensor,
        appearance: Tensor | None = None,
        direction_a: Tensor | None = None,
        appearance_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]: ...


def draw_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``device``."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32).to(device)
