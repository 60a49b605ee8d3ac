"""Every size that comes from input has a limit, in one place (documented in the README).

A clip, an image, a config or a flag that declares more than these is refused with a
:class:`~btdm_engine.errors.LimitError` naming the limit *before* anything is allocated. A user
who means it raises a limit for one command with ``--limit NAME=VALUE`` (every ``btdm`` command
takes it; :func:`override` applies it for the process).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from btdm_engine.errors import LimitError, UsageError

__all__ = ["DEFAULTS", "JOB_LIMITS", "check", "check_fps", "get", "job_limits", "override", "parse_override"]

DEFAULTS: dict[str, int] = {
    "frames": 100_000,  # frames in one clip, pose-map folder or dataset sequence (55 min at 30 fps)
    "pixels": 8192 * 8192,  # width x height of one image read (checked from its header)
    "size": 4096,  # a square working resolution asked for (posemaps --size, eval --size, demo --size)
    "steps": 1000,  # denoising steps (animate/demo --steps, --sr-steps)
    "finetune_steps": 100_000,  # fine-tuning / training iterations asked for on the command line
    "batch": 1024,  # samples per step (finetune --batch, train --batch, --max-batch)
    "parameters": 2_000_000_000,  # network parameters a checkpoint's config.json may declare
    "sequences": 100_000,  # sequences in one dataset manifest
    "views": 16,  # further pictures of the person in one job (animate --view; the service's views zip: always 16)
}
# fps outside this range is refused (a clip's fps, a BVH's Frame Time, --fps).
FPS_RANGE: tuple[float, float] = (0.1, 1000.0)

_overrides: dict[str, int] = {}


def get(name: str) -> int:
    """The limit in force for ``name`` (a ``--limit`` override, else the default)."""
    return _overrides.get(name, DEFAULTS[name])


def parse_override(text: str) -> tuple[str, int]:
    """``"frames=200000"`` -> ``("frames", 200000)``; an unknown name or a bad value is a UsageError."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in DEFAULTS:
        raise UsageError(f"--limit {text!r}: expected NAME=VALUE with NAME one of {', '.join(DEFAULTS)}")
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"--limit {text!r}: {value!r} is not an integer") from None
    if number < 1:
        raise UsageError(f"--limit {text!r}: a limit must be >= 1")
    return name, number


def override(items: Iterable[str] | None) -> None:
    """Apply ``--limit NAME=VALUE`` overrides for this process (replacing earlier ones)."""
    _overrides.clear()
    for text in items or ():
        name, number = parse_override(text)
        _overrides[name] = number


def check(name: str, value: int | float, what: str) -> None:
    """Refuse ``value`` (described by ``what``, e.g. "--steps" or "clip.npz: field 'poses'") over ``name``'s limit."""
    limit = get(name)
    if value > limit:
        raise LimitError(
            f"{what}: {value:g} is over the {name} limit of {limit} (raise it with --limit {name}=N if you mean it)",
            limit=name,
        )


def check_fps(fps: float, what: str) -> float:
    """A finite frame rate within :data:`FPS_RANGE`, or a LimitError naming ``what``."""
    lo, hi = FPS_RANGE
    fps = float(fps)
    if not math.isfinite(fps) or not lo <= fps <= hi:
        raise LimitError(f"{what}: fps {fps:g} is outside {lo:g}..{hi:g}", limit="fps")
    return fps


# A generation job's parameters: the (lowest, highest) value each may take. The one table that the
# CLI (`btdm animate`), the service's request model (`GET /v1/limits` serves it, the Blender add-on
# reads it from there) and the Animator check with, through `btdm_engine.jobspec.JobSpec.check`.
# `finetune_lr`'s lower bound is open (> 0). A `--limit steps=N`, `finetune_steps=N` or `batch=N`
# raises the matching job limit for that command (`job_limits`).
JOB_LIMITS: dict[str, tuple[float, float]] = {
    "steps": (1, 1000),
    "sr_steps": (1, 1000),
    "seed": (0, 2**63 - 1),
    "finetune_steps": (0, 5000),
    "finetune_lr": (0.0, 1.0),
    "eta": (0.0, 1.0),
    "max_batch": (1, 4096),
    "fps": FPS_RANGE,
}
JOB_OVERRIDES = {"steps": "steps", "sr_steps": "steps", "finetune_steps": "finetune_steps", "max_batch": "batch"}


def job_limits() -> dict[str, tuple[float, float]]:
    """:data:`JOB_LIMITS` with this process's ``--limit`` overrides of steps, fine-tuning steps and batch applied."""
    table = dict(JOB_LIMITS)
    for field, name in JOB_OVERRIDES.items():
        if name in _overrides:
            table[field] = (table[field][0], _overrides[name])
    return table
