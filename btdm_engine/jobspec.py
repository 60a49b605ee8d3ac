"""One generation job's parameters: their defaults, written once, and their one validator.

``btdm animate`` (its flags' defaults and checks), the engine service's request model
(``service/schemas.JobParams``: defaults and bounds; ``GET /v1/limits`` serves both) and the
``Animator`` (its argument checks) all read :class:`JobSpec`; the bounds are
:data:`btdm_engine.limits.JOB_LIMITS`. Standard library only, so ``btdm --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from btdm_engine import limits
from btdm_engine.constants import DEFAULT_NOISE, IUV_ORDERS, NOISE_MODES, SAMPLERS
from btdm_engine.dataconfig import ErrorClass, check_choice, check_int, check_number, is_int, to_dict

__all__ = ["METHODS", "JobSpec", "limits_document"]

METHODS: tuple[str, ...] = ("diffusion", "texture")


@dataclass(frozen=True)
class JobSpec:
    """What a generation job asks for, beyond its inputs (motion or pose maps, appearance, model)."""

    steps: int = 50  # BTU-Net denoising steps (the paper's 50)
    sr_steps: int | None = None  # SR3 denoising steps (None: steps)
    seed: int = 0
    finetune_steps: int = 0  # single-image fine-tuning iterations (0: none; the paper: 300)
    finetune_lr: float = 1e-5
    sampler: str = "bidirectional"
    eta: float = 0.0  # 0 = DDIM, 1 = ancestral sampling
    noise: str = DEFAULT_NOISE  # noise across frames, both stages: one draw every frame shares, or one per frame
    max_batch: int | None = None  # frames per network call (None: all)
    method: str = "diffusion"
    iuv_order: str = "btdm"
    fps: float | None = None  # video frame rate (None: the clip's, 30 for pose maps)

    def check(self, error: ErrorClass, names: Mapping[str, str] | None = None,
              table: Mapping[str, tuple[float, float]] | None = None) -> JobSpec:
        """Every value against its type, choices and :func:`limits.job_limits`; returns self.

        ``names`` maps a field to what the caller calls it in messages (``--finetune-steps``);
        ``table`` replaces the limits (the service passes the static :data:`limits.JOB_LIMITS`).
        """
        table = limits.job_limits() if table is None else table
        name = {f.name: f.name for f in dataclasses.fields(self)} | dict(names or {})
        for field, limit in limits.JOB_OVERRIDES.items():  # a --limit NAME=N raises these: say so
            value, hi = getattr(self, field), table[field][1]
            if is_int(value) and value > hi:
                raise error(f"{name[field]}: {value:g} is over the {limit} limit of {hi:g} "
                            f"(raise it with --limit {limit}=N if you mean it)")
        for field in ("steps", "seed", "finetune_steps"):
            lo, hi = table[field]
            check_int(getattr(self, field), name[field], error, lo=int(lo), hi=int(hi))
        for field in ("sr_steps", "max_batch"):
            if getattr(self, field) is not None:
                lo, hi = table[field]
                check_int(getattr(self, field), name[field], error, lo=int(lo), hi=int(hi))
        lo, hi = table["finetune_lr"]
        check_number(self.finetune_lr, name["finetune_lr"], error, lo=lo, hi=hi, lo_open=True)
        lo, hi = table["eta"]
        check_number(self.eta, name["eta"], error, lo=lo, hi=hi)
        if self.fps is not None:  # the words of limits.check_fps, which every other command's --fps uses
            lo, hi = table["fps"]
            fps = check_number(self.fps, name["fps"], error)
            if not lo <= fps <= hi:
                raise error(f"{name['fps']}: fps {fps:g} is outside {lo:g}..{hi:g}")
        check_choice(self.sampler, name["sampler"], SAMPLERS, error)
        check_choice(self.noise, name["noise"], NOISE_MODES, error)
        check_choice(self.method, name["method"], METHODS, error)
        check_choice(self.iuv_order, name["iuv_order"], IUV_ORDERS, error)
        return self


def limits_document() -> dict[str, Any]:
    """What ``GET /v1/limits`` answers: every job parameter's default and (lowest, highest) value."""
    return {
        "defaults": to_dict(JobSpec()),
        "limits": {name: {"min": lo, "max": hi} for name, (lo, hi) in limits.JOB_LIMITS.items()},
        "choices": {"sampler": list(SAMPLERS), "noise": list(NOISE_MODES), "method": list(METHODS),
                    "iuv_order": list(IUV_ORDERS)},
    }
