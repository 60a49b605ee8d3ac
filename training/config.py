"""The training configuration: one frozen dataclass, saved as ``RUN/train_config.json``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from btdm_engine.errors import BtdmError

KINDS = ("btunet", "sr3")
MODES = ("bidirectional", "unidirectional", "person", "unconditional")
PRESETS = ("tiny", "base", "paper")
DEVICES = ("auto", "cpu", "cuda")

# Which paper task each training mode serves; stored in the checkpoint's "extra".
MODE_TASKS = {
    "bidirectional": "single_image",
    "unidirectional": "single_image",
    "person": "person_specific",
    "unconditional": "unconditional",
}

# Fields a resumed run may change: they do not alter what the optimisation computes.
RESUMABLE_CHANGES = frozenset(
    {"steps", "checkpoint_every", "sample_every", "log_every", "num_workers", "device", "keep_snapshots",
     "sample_steps", "sample_frames", "cache_frames"}
)


class TrainConfigError(BtdmError, ValueError):
    """A training option that cannot be used; names the option."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    kind: ``"btunet"`` or ``"sr3"``.
    data: dataset folder (``manifest.json`` layout, or a DensePose video set, see
        :mod:`training.video`).
    preset: model preset (``tiny`` / ``base`` / ``paper``); ``model_overrides`` replaces single
        config fields of it (e.g. ``{"model_channels": 16}``).
    mode (BTU-Net): ``bidirectional`` (eq. 4 with c), ``unidirectional`` (the table-3 baseline),
        ``person`` (eq. 4 without c, one person's video: select it with ``characters``),
        ``unconditional`` (eq. 4 with c = empty, every character).
    steps: total optimisation steps (a resumed run continues to this number).
    batch_size: per process; the effective batch is ``batch_size * world_size``.
    lr, weight_decay, betas: AdamW (the paper uses lr 1e-5 with batch 32); ``warmup_steps`` ramps
        the learning rate linearly from 0.
    grad_clip: max global gradient L2 norm (0 disables).
    ema_decay: EMA of the weights, with warm-up ``min(ema_decay, (1 + s) / (10 + s))``.
    appearance_dropout: probability of replacing c by the null token per sample (BTU-Net modes
        with c); 0 follows the paper.
    split / characters: which sequences train (a split of the manifest, optionally only the
        given characters).
    hflip_prob, background, fit, cache_frames: dataset options (:class:`training.datasets.PairDatasetConfig`).
    schedule: :class:`~btdm_engine.diffusion.schedule.ScheduleConfig` fields (default: the paper's).
    checkpoint_every, sample_every, log_every: intervals in steps (0 disables sampling).
    keep_snapshots: resumable snapshots kept on disk (the newest ones).
    sample_steps, sample_frames: denoising steps and frames of the periodic preview videos.
    seed: model initialisation, data order, noise and dropout all derive from it.
    num_workers: DataLoader worker processes per rank.
    device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    kind: str
    data: str
    preset: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    mode: str = "bidirectional"
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    appearance_dropout: float = 0.0
    split: str = "train"
    characters: tuple[str, ...] = ()
    hflip_prob: float = 0.5
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fit: str = "pad"
    cache_frames: bool = False
    schedule: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 500
    sample_every: int = 1000
    log_every: int = 10
    keep_snapshots: int = 2
    sample_steps: int = 20
    sample_frames: int = 8
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        def choice(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                raise TrainConfigError(f"unknown {name} {getattr(self, name)!r}; allowed: {', '.join(allowed)}")

        def integer(name: str, low: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise TrainConfigError(f"{name} must be an int >= {low}, got {v!r}")

        def number(name: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > low if low_open else v >= low) and v <= high
            if not ok:
                raise TrainConfigError(f"{name} must be a number in {'(' if low_open else '['}{low}, {high}], got {v!r}")

        choice("kind", KINDS)
        choice("mode", MODES)
        choice("preset", PRESETS)
        choice("device", DEVICES)
        if self.kind == "sr3" and self.mode != "bidirectional":
            raise TrainConfigError(f"mode {self.mode!r} applies to the BTU-Net only; SR3 has one training mode")
        if not isinstance(self.data, str) or not self.data:
            raise TrainConfigError("data must be a dataset folder path")
        if not isinstance(self.model_overrides, dict):
            raise TrainConfigError("model_overrides must be an object of model config fields")
        if not isinstance(self.schedule, dict):
            raise TrainConfigError("schedule must be an object of ScheduleConfig fields")
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_snapshots", "sample_steps", "sample_frames"):
            integer(name, 1)
        for name in ("warmup_steps", "sample_every", "seed", "num_workers"):
            integer(name, 0)
        number("lr", 0.0, low_open=True)
        number("weight_decay", 0.0)
        number("grad_clip", 0.0)
        number("ema_decay", 0.0, 1.0)
        number("appearance_dropout", 0.0, 1.0)
        number("hflip_prob", 0.0, 1.0)
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise TrainConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if len(self.background) != 3 or not all(isinstance(b, (int, float)) and 0 <= b <= 1 for b in self.background):
            raise TrainConfigError(f"background must be three numbers in [0, 1], got {self.background!r}")
        if not isinstance(self.characters, tuple) or not all(isinstance(c, str) for c in self.characters):
            raise TrainConfigError(f"characters must be a tuple of names, got {self.characters!r}")
        if self.appearance_dropout > 0 and self.mode in ("person", "unconditional"):
            raise TrainConfigError(f"appearance_dropout needs a mode with an appearance image, not {self.mode!r}")
        # normalise JSON lists back to tuples so a saved config compares equal to the original
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "background", tuple(float(b) for b in self.background))

    @property
    def task(self) -> str:
        """The paper task the trained model serves (sec. 3.3)."""
        return MODE_TASKS[self.mode] if self.kind == "btunet" else "super_resolution"

    @property
    def uses_appearance(self) -> bool:
        return self.kind == "btunet" and self.mode in ("bidirectional", "unidirectional")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["background"] = list(self.background)
        d["characters"] = list(self.characters)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise naming them."""
        if not isinstance(d, dict):
            raise TrainConfigError(f"training config must be an object, got {type(d).__name__}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise TrainConfigError(f"unknown training config key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        d = dict(d)
        for key in ("betas", "background", "characters"):
            if key in d and isinstance(d[key], list):
                d[key] = tuple(d[key])
        return cls(**d)

    def changed_fields(self, other: "TrainConfig") -> list[str]:
        """Names of fields whose values differ between two configs."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def resumed_with(self, **changes: Any) -> "TrainConfig":
        """This config with the given changes, refusing any that would alter the optimisation."""
        bad = sorted(k for k, v in changes.items() if k not in RESUMABLE_CHANGES and getattr(self, k) != v)
        if bad:
            raise TrainConfigError(
                f"cannot change {', '.join(bad)} when resuming (the run was made with other values); "
                f"a resumed run may change only {', '.join(sorted(RESUMABLE_CHANGES))}"
            )
        return replace(self, **changes)
