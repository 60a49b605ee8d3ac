"""Diffusion: the log-SNR schedule (eq. 2), x0-prediction losses (eq. 4) and samplers (algorithm 1).

The networks know nothing of the schedule beyond the lambda they are given; this package owns
everything else about noise.
"""

from __future__ import annotations

from btdm_engine.diffusion.common import draw_noise
from btdm_engine.diffusion.losses import WEIGHTINGS, LossError, bidirectional_loss, sr3_loss, unidirectional_loss
from btdm_engine.diffusion.samplers import (
    Cancelled,
    PairDenoiser,
    SamplerError,
    cancel_checker,
    ddim_step,
    frame_chunks,
    sample_bidirectional,
    sample_bidirectional_loop,
    sample_sr3,
    sample_unidirectional,
)
from btdm_engine.diffusion.schedule import (
    ScheduleConfig,
    ScheduleConfigError,
    alpha_sigma,
    logsnr_schedule,
    q_sample,
)

__all__ = [
    "WEIGHTINGS",
    "Cancelled",
    "LossError",
    "PairDenoiser",
    "SamplerError",
    "ScheduleConfig",
    "ScheduleConfigError",
    "alpha_sigma",
    "bidirectional_loss",
    "cancel_checker",
    "ddim_step",
    "draw_noise",
    "frame_chunks",
    "logsnr_schedule",
    "q_sample",
    "sample_bidirectional",
    "sample_bidirectional_loop",
    "sample_sr3",
    "sample_unidirectional",
    "sr3_loss",
    "unidirectional_loss",
]
