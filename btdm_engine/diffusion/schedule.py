"""The log-SNR noise schedule (paper eq. 2, after Salimans & Ho 2021 / Kingma et al. 2021).

The diffusion time t runs over [0, 1]; the schedule maps it to a log signal-to-noise ratio
lambda(t), decreasing in t, and the networks are conditioned on lambda itself. A model trained
with K discrete levels (k uniform in 1..K, t = k / K) can therefore be sampled with any number of
steps: sampling only evaluates lambda on a coarser grid of the same curve.

    alpha^2 = sigmoid(lambda),  sigma^2 = sigmoid(-lambda)          (eq. 2, alpha^2 + sigma^2 = 1)
    y^k = alpha * y^0 + sigma * eps,  eps ~ N(0, I)                    (closed form of eq. 2's chain)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from btdm_engine import dataconfig
from btdm_engine.dataconfig import check_choice, check_int, check_number, is_int
from btdm_engine.errors import BtdmError

SCHEDULE_KINDS: tuple[str, ...] = ("cosine",)


class ScheduleConfigError(BtdmError, ValueError):
    """A schedule configuration that cannot be used (unknown key, value out of range)."""


@dataclass(frozen=True)
class ScheduleConfig:
    """The noise schedule, saved in a checkpoint's ``config.json`` under ``"schedule"``.

    Attributes:
        kind: the lambda(t) curve; only ``"cosine"`` (the truncated cosine log-SNR schedule).
        logsnr_min: lambda at t = 1 (the noisiest level; -20 makes y^K pure noise to float32).
        logsnr_max: lambda at t = 0 (the cleanest level).
        shift: added to lambda(t), so the endpoints become ``logsnr_max + shift`` and
            ``logsnr_min + shift``; ``2 * log(64 / resolution)`` moves a 64 px schedule to
            another resolution (Hoogeboom et al. 2023). 0 (the default) is the paper's setting.
        num_train_steps: K, the number of discrete training levels (paper B.1: 1000).
    """

    kind: str = "cosine"
    logsnr_min: float = -20.0
    logsnr_max: float = 20.0
    shift: float = 0.0
    num_train_steps: int = 1000

    def __post_init__(self) -> None:
        check_choice(self.kind, "schedule kind", SCHEDULE_KINDS, ScheduleConfigError)
        check_number(self.logsnr_min, "schedule logsnr_min", ScheduleConfigError)
        check_number(self.logsnr_max, "schedule logsnr_max", ScheduleConfigError)
        if not self.logsnr_min < self.logsnr_max:
            raise ScheduleConfigError(
                f"schedule logsnr_min ({self.logsnr_min}) must be below logsnr_max ({self.logsnr_max})"
            )
        check_number(self.shift, "schedule shift", ScheduleConfigError)
        check_int(self.num_train_steps, "schedule num_train_steps", ScheduleConfigError, lo=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, the inverse of :meth:`from_dict`."""
        return dataconfig.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScheduleConfig:
        """Build from :meth:`to_dict`'s output; unknown keys raise naming them."""
        return dataconfig.from_dict(cls, d, ScheduleConfigError, noun="schedule config key")

    def logsnr(self, t: Tensor | float) -> Tensor:
        """lambda(t) for t in [0, 1] (float64 math, float32 result); decreasing in t."""
        return logsnr_schedule(t, self)

    def train_logsnr(self, k: Tensor) -> Tensor:
        """lambda(k / K) for integer training levels k in 1..K."""
        if k.dtype.is_floating_point or k.dtype == torch.bool:
            raise ScheduleConfigError(f"training levels k must be an integer tensor, got {k.dtype}")
        if k.numel() and (int(k.min()) < 1 or int(k.max()) > self.num_train_steps):
            raise ScheduleConfigError(
                f"training levels k must lie in 1..{self.num_train_steps}, "
                f"got {int(k.min())}..{int(k.max())}"
            )
        return self.logsnr(k.to(torch.float64) / self.num_train_steps)

    def sample_train_logsnr(
        self, batch: int, generator: torch.Generator, device: torch.device | str = "cpu"
    ) -> Tensor:
        """One lambda per sample: k uniform in 1..K (eq. 4's k ~ [1, K]), t = k / K."""
        k = torch.randint(
            1, self.num_train_steps + 1, (batch,), generator=generator, device=generator.device
        )
        return self.train_logsnr(k).to(device)

    def sampling_logsnrs(self, steps: int) -> Tensor:
        """The ``steps + 1`` levels a sampler walks, noisiest first, float32.

        Entries 0..steps-1 are lambda(i / steps) for i = steps..1; the last entry is +inf, i.e.
        alpha = 1, sigma = 0: the final update returns the network's x0 prediction itself rather
        than re-noising it to lambda(0).
        """
        if not is_int(steps) or steps < 1:
            raise ScheduleConfigError(f"steps must be a positive int, got {steps!r}")
        t = torch.arange(steps, 0, -1, dtype=torch.float64) / steps
        return torch.cat([self.logsnr(t), torch.tensor([math.inf], dtype=torch.float32)])


def logsnr_schedule(t: Tensor | float, config: ScheduleConfig) -> Tensor:
    """Truncated cosine log-SNR: lambda(t) = -2 log tan(a t + b) + shift.

    a and b are chosen so that lambda(0) = logsnr_max and lambda(1) = logsnr_min exactly (before
    the shift)
    (Kingma et al. 2021, app. of "Variational Diffusion Models"; Salimans & Ho 2021), which is
    -2 log tan(pi t / 2) squeezed into the finite range instead of clipped, so it stays strictly
    monotone everywhere.
    """
    t64 = torch.as_tensor(t, dtype=torch.float64)
    if t64.numel() and (bool((t64 < 0).any()) or bool((t64 > 1).any()) or bool(t64.isnan().any())):
        raise ScheduleConfigError("diffusion time t must lie in [0, 1]")
    b = math.atan(math.exp(-0.5 * config.logsnr_max))
    a = math.atan(math.exp(-0.5 * config.logsnr_min)) - b
    lam = -2.0 * torch.log(torch.tan(a * t64 + b)) + config.shift
    return lam.to(torch.float32)


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, sigma) with alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda) (eq. 2).

    Computed through sigmoid directly (not 1 - alpha^2) so sigma stays accurate at high lambda;
    lambda = +inf gives exactly (1, 0).
    """
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def _expand(v: Tensor, like: Tensor) -> Tensor:
    """Per-sample (B,) values broadcast against a (B, ...) tensor."""
    if v.ndim == 0:
        return v
    if v.ndim != 1 or v.shape[0] != like.shape[0]:
        raise ValueError(
            f"per-sample logsnr must have shape ({like.shape[0]},) to match a batch of "
            f"{tuple(like.shape)}, got {tuple(v.shape)}"
        )
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(x0: Tensor, logsnr: Tensor, noise: Tensor) -> Tensor:
    """Diffuse clean x0 to level lambda in one jump: alpha x0 + sigma eps (closed form of eq. 2)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
    alpha, sigma = alpha_sigma(torch.as_tensor(logsnr, dtype=x0.dtype, device=x0.device))
    return _expand(alpha, x0) * x0 + _expand(sigma, x0) * noise
