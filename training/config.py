"""The training configuration: one frozen dataclass, saved as ``RUN/train_config.json``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from btdm_engine import dataconfig
from btdm_engine.constants import DEVICES, FIT_MODES, MODEL_KINDS, MODEL_PRESETS, TRAIN_MODES
from btdm_engine.dataconfig import check_int, check_number, check_numbers, option
from btdm_engine.errors import BtdmError

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

# Integer fields and their lower bounds.
_INT_MINIMUMS = {
    "steps": 1, "batch_size": 1, "checkpoint_every": 1, "log_every": 1, "keep_snapshots": 1, "sample_steps": 1,
    "sample_frames": 1, "warmup_steps": 0, "sample_every": 0, "seed": 0, "num_workers": 0,
}  # fmt: skip


class TrainConfigError(BtdmError, ValueError):
    """A training option that cannot be used; names the option."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; each field's ``help`` says what it does.

    ``btdm train`` offers every field as a flag with that help (:mod:`training.command`),
    and a run saves its config as ``RUN/train_config.json`` (:meth:`to_dict`), which ``--resume``
    reads back.
    """

    kind: str = option(help="the network to train", choices=MODEL_KINDS)
    data: str = option(help="dataset folder (manifest.json layout, or DensePose videos: training.video)")
    preset: str = option("tiny", help="model size", choices=MODEL_PRESETS)
    model_overrides: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": 'single model config fields replacing the preset\'s, e.g. {"model_channels": 16}'})
    mode: str = option(
        "bidirectional", choices=TRAIN_MODES,
        help="BTU-Net objective: eq. 4 with c, the autoregressive baseline of table 3, eq. 4 without c on one "
        "person (select the person with --character), or unconditional (eq. 4 with c empty, every character)")
    steps: int = option(1000, help="total optimisation steps (a resumed run continues to this number)")
    batch_size: int = option(8, help="samples per process per step (the effective batch is this x the world size)")
    lr: float = option(1e-4, help="AdamW learning rate (the paper: 1e-5 at batch 32)")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    betas: tuple[float, float] = option((0.9, 0.999), help="AdamW betas")
    warmup_steps: int = option(0, help="linear learning-rate warm-up from 0, in steps")
    grad_clip: float = option(1.0, help="max global gradient L2 norm, 0 = off")
    ema_decay: float = option(0.999, help="EMA decay of the saved weights (warmed up: min(decay, (1 + s) / (10 + s)))")
    appearance_dropout: float = option(
        0.0, help="probability of replacing c by the null token per sample (modes with c; the paper: 0)")
    split: str = option("train", help="manifest split to train on")
    characters: tuple[str, ...] = option((), help="train only on this character (repeatable; mode person needs it)")
    hflip_prob: float | None = option(
        None, help="probability of the truthful horizontal flip (default 0.5 where it is exact: this project's "
        "atlas, and SR3; 0 on DensePose videos unless they come with a symmetry table, see training.video)")
    background: tuple[float, float, float] = option(
        (1.0, 1.0, 1.0), help="colour RGBA frames are composited on, and padding (RGB in [0, 1])")
    fit: str = option("pad", help="how non-square frames become square", choices=FIT_MODES)
    cache_frames: bool = option(False, help="keep resized frames in memory")
    schedule: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "ScheduleConfig fields (btdm_engine.diffusion.schedule; default: the paper's)"})
    checkpoint_every: int = option(500, help="snapshot interval in steps")
    sample_every: int = option(1000, help="preview interval in steps, 0 = never")
    log_every: int = option(10, help="log interval in steps")
    keep_snapshots: int = option(2, help="resumable snapshots kept on disk (the newest ones)")
    sample_steps: int = option(20, help="denoising steps of the preview videos")
    sample_frames: int = option(8, help="frames in the preview videos")
    seed: int = option(0, help="seed of the initialisation, data order, noise and dropout")
    init_from: str = option(
        "", help="warm start: a model folder (its <kind>/ weights), a run folder (its checkpoint/) or a folder "
        "holding model.safetensors; parameters whose names and shapes match start from it, the rest from the "
        "seed (empty: all from the seed)")
    init_reset: tuple[str, ...] = option(
        (), help="with init_from: parameter-name prefixes left at their fresh initialisation (repeatable), "
        "e.g. unet.out. for a new output head")
    num_workers: int = option(0, help="DataLoader worker processes per process")
    device: str = option("auto", help="auto = CUDA when present", choices=DEVICES)

    def __post_init__(self) -> None:
        for f in fields(self):
            if "choices" in f.metadata:
                dataconfig.check_choice(getattr(self, f.name), f.name, f.metadata["choices"], TrainConfigError)
        if self.kind == "sr3" and self.mode != "bidirectional":
            raise TrainConfigError(f"mode {self.mode!r} applies to the BTU-Net only; SR3 has one training mode")
        if not isinstance(self.data, str) or not self.data:
            raise TrainConfigError("data must be a dataset folder path")
        if not isinstance(self.model_overrides, dict):
            raise TrainConfigError("model_overrides must be an object of model config fields")
        if not isinstance(self.schedule, dict):
            raise TrainConfigError("schedule must be an object of ScheduleConfig fields")
        for name, low in _INT_MINIMUMS.items():
            check_int(getattr(self, name), name, TrainConfigError, lo=low)
        check_number(self.lr, "lr", TrainConfigError, lo=0.0, lo_open=True)
        check_number(self.weight_decay, "weight_decay", TrainConfigError, lo=0.0)
        check_number(self.grad_clip, "grad_clip", TrainConfigError, lo=0.0)
        for name in ("ema_decay", "appearance_dropout"):
            check_number(getattr(self, name), name, TrainConfigError, lo=0.0, hi=1.0)
        if self.hflip_prob is not None:
            check_number(self.hflip_prob, "hflip_prob", TrainConfigError, lo=0.0, hi=1.0)
        dataconfig.check_bool(self.cache_frames, "cache_frames", TrainConfigError)
        if not isinstance(self.init_from, str):
            raise TrainConfigError(f"init_from must be a folder path or empty, got {self.init_from!r}")
        if not isinstance(self.init_reset, tuple) or not all(isinstance(c, str) and c for c in self.init_reset):
            raise TrainConfigError(f"init_reset must be a tuple of parameter-name prefixes, got {self.init_reset!r}")
        if self.init_reset and not self.init_from:
            raise TrainConfigError("init_reset applies to a warm start: give init_from as well")
        if not isinstance(self.characters, tuple) or not all(isinstance(c, str) for c in self.characters):
            raise TrainConfigError(f"characters must be a tuple of names, got {self.characters!r}")
        if self.appearance_dropout > 0 and self.mode in ("person", "unconditional"):
            raise TrainConfigError(f"appearance_dropout needs a mode with an appearance image, not {self.mode!r}")
        if self.kind == "btunet" and self.mode == "person" and not self.characters:
            raise TrainConfigError(
                "mode 'person' trains on one person's video, and no person is selected (characters is empty, so "
                "it would train on everyone): name the person with characters=(NAME,), on the command line "
                "--character NAME (a DensePose video's character is its folder name)"
            )
        # normalise JSON lists back to tuples of floats so a saved config compares equal to the original
        object.__setattr__(self, "betas", check_numbers(self.betas, "betas", TrainConfigError, length=2, lo=0, hi=1,
                                                        hi_open=True))
        object.__setattr__(self, "background", check_numbers(self.background, "background", TrainConfigError,
                                                             length=3, lo=0, hi=1))

    @property
    def task(self) -> str:
        """The paper task the trained model serves (sec. 3.3)."""
        return MODE_TASKS[self.mode] if self.kind == "btunet" else "super_resolution"

    @property
    def uses_appearance(self) -> bool:
        return self.kind == "btunet" and self.mode in ("bidirectional", "unidirectional")

    def to_dict(self) -> dict[str, Any]:
        return dataconfig.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise naming them."""
        return dataconfig.from_dict(cls, d, TrainConfigError, noun="training config key")

    def changed_fields(self, other: TrainConfig) -> list[str]:
        """Names of fields whose values differ between two configs."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def resumed_with(self, **changes: Any) -> TrainConfig:
        """This config with the given changes, refusing any that would alter the optimisation."""
        bad = sorted(k for k, v in changes.items() if k not in RESUMABLE_CHANGES and getattr(self, k) != v)
        if bad:
            raise TrainConfigError(
                f"cannot change {', '.join(bad)} when resuming (the run was made with other values); "
                f"a resumed run may change only {', '.join(sorted(RESUMABLE_CHANGES))}"
            )
        return replace(self, **changes)
