"""Training loop for the BTU-Net (eq. 4, the unidirectional baseline, person-specific and
unconditional tasks) and SR3, resumable, single-process or DistributedDataParallel.

Run folder::

    RUN/
      train_config.json              the TrainConfig (resume reads it back)
      checkpoint/                    the latest EMA weights as a project checkpoint
                                     (config.json + model.safetensors, btdm_engine.checkpoints):
                                     a "btunet/" (or "sr3/") folder for Animator.from_pretrained
      snapshots/step_0000500/        resumable state, one folder per saved step:
        checkpoint/                  the EMA checkpoint of that step (as above)
        training_state.safetensors   raw weights ("model.*"), optimizer tensors ("optim.<i>.<name>")
        training_state.json          step, epoch, position in the epoch, optimizer scalars,
                                     world size, the TrainConfig
        COMPLETE                     written last
      log.csv                        step, epoch, loss, lr, grad_norm, samples/s, elapsed
      tb/                            TensorBoard events (SummaryWriter)
      samples/step_0000500.png/.mp4  preview strip (pose | ground truth | EMA sample) and video

Crash safety: a snapshot is written into a hidden temporary folder beside it
(:func:`btdm_engine.fileio.atomic_dir`) and renamed into place after every file in it is complete
and flushed, so a run killed at any moment (even with SIGKILL) leaves only complete snapshots under
``step_*`` names; resume takes the newest one that has ``COMPLETE`` and ignores anything else.
``RUN/checkpoint`` is rewritten from the snapshot after that (``config.json`` is removed first and
written last, so a half-written ``checkpoint/`` is never loadable); resume rewrites it again.

Randomness: the model is initialised from ``seed``; the data order is DistributedSampler's
permutation of ``(seed, epoch)``; item augmentations draw from ``(seed, epoch, index)``; the
noise levels, noise and dropout of step ``s`` on rank ``r`` draw from generators seeded with
``(seed, r, s)``. Nothing random is carried from step to step, so a resumed run continues
exactly as an uninterrupted one would (same world size and batch size).

Distributed: launch with ``torchrun --nproc_per_node N -m btdm_engine.cli train ...``. The
backend is NCCL on CUDA, gloo on CPU; each rank reads ``batch_size`` samples per step through a
DistributedSampler; rank 0 alone writes checkpoints, logs and samples.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from btdm_engine import limits
from btdm_engine.checkpoints import load_checkpoint, non_finite_tensors, save_checkpoint
from btdm_engine.diffusion.losses import bidirectional_loss, sr3_loss, unidirectional_loss
from btdm_engine.diffusion.samplers import sample_bidirectional, sample_sr3, sample_unidirectional
from btdm_engine.diffusion.schedule import ScheduleConfig
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_dir, atomic_path, atomic_write_text, write_json_atomic
from btdm_engine.models import build_model, on_meta
from btdm_engine.models.btunet import BTUNetConfig
from btdm_engine.models.sr3 import SR3Config
from btdm_engine.posemaps.encoding import tensor_to_iuv
from btdm_engine.posemaps.preview import colorize_iuv, contact_sheet, write_mp4, write_rgb_png
from training.config import TrainConfig, TrainConfigError
from training.dataset_format import DatasetFormatError, DatasetManifest, SequenceFrames
from training.datasets import (
    WARP_RESOLUTION,
    FramePairDataset,
    PairDatasetConfig,
    SR3FrameDataset,
    load_sequence,
    sequence_warp,
    tensor_to_uint8,
)
from training.video import DensePoseVideoSet

STATE_VERSION = 1
CONFIG_FILE = "train_config.json"
SNAPSHOTS = "snapshots"
COMPLETE = "COMPLETE"
LOG_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s")

logger = logging.getLogger(__name__)


class NonFiniteLossError(BtdmError, ValueError):
    """The training loss or the weights became NaN or inf (e.g. a learning rate far too high); the run stops."""


class TrainingError(BtdmError, ValueError):
    """Training cannot start or continue (bad run folder, data too small, ...)."""


# --------------------------------------------------------------------------------------------
# Data


def training_sequences(config: TrainConfig) -> tuple[list[SequenceFrames], list[SequenceFrames]]:
    """(training sequences, preview sequences) of a config's data folder.

    Previews come from the held-out split (``test``) when the data has one, so the periodic
    samples show people the model has not seen; otherwise from the training sequences.
    """
    root = Path(config.data)
    if (root / "manifest.json").is_file():
        manifest = DatasetManifest.load(root)
        train = manifest.sequence_frames(config.split)
        held_out = [s for s in ("test", "val") if s in manifest.splits and s != config.split]
        preview = manifest.sequence_frames(held_out[0]) if held_out else train
    else:
        videos = DensePoseVideoSet(root)
        train = videos.sequence_frames(config.split)
        held_out = [s for s in ("test", "val") if s in videos.splits and s != config.split]
        preview = videos.sequence_frames(held_out[0]) if held_out else train
    if config.characters:
        known = {s.character for s in train}
        unknown = sorted(set(config.characters) - known)
        if unknown:
            raise DatasetFormatError(
                f"{root}: character(s) {', '.join(unknown)} not in split {config.split!r}; present: {', '.join(sorted(known))}"
            )
        train = [s for s in train if s.character in config.characters]
        preview = [s for s in preview if s.character in config.characters] or train
    return train, preview


def model_config(config: TrainConfig) -> BTUNetConfig | SR3Config:
    """The network config: the preset with ``model_overrides`` applied (validated by the model)."""
    cls = BTUNetConfig if config.kind == "btunet" else SR3Config
    base = cls.preset(config.preset).to_dict()
    unknown = sorted(set(config.model_overrides) - set(base))
    if unknown:
        raise TrainConfigError(f"model_overrides: unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                               f"allowed: {', '.join(sorted(base))}")
    return cls.from_dict({**base, **config.model_overrides})


def build_dataset(config: TrainConfig, sequences: list[SequenceFrames], net_config: Any) -> FramePairDataset | SR3FrameDataset:
    """The training dataset of a config at its network's resolution(s)."""
    if config.kind == "btunet":
        return FramePairDataset(
            sequences,
            PairDatasetConfig(
                resolution=net_config.resolution,
                appearance="other_frame" if config.uses_appearance else "none",
                hflip_prob=config.hflip_prob, background=config.background, fit=config.fit,
                cache=config.cache_frames, seed=config.seed, warp=net_config.warp_channels > 0,
                warp_resolution=max(net_config.resolution, WARP_RESOLUTION),
            ),
        )  # fmt: skip
    return SR3FrameDataset(
        sequences, net_config.resolution, net_config.low_resolution, config.hflip_prob,
        config.background, config.fit, config.cache_frames, config.seed, warp=net_config.warp_channels > 0,
    )  # fmt: skip


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (after ``skip`` of this rank's samples).

    It yields ``(epoch, index)`` keys, which the datasets read as "item ``index`` with the draws of
    ``epoch``", so workers that outlive an epoch (``persistent_workers``) still draw per epoch.
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        return iter([(self.epoch, i) for i in indices[self.skip :]])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def data_loader(dataset: Any, sampler: ResumableSampler, config: TrainConfig) -> DataLoader:
    """The run's batches. Workers live for the whole run (``persistent_workers``), so a frame
    cache (``cache_frames``) lasts past the first epoch; the sampler's ``(epoch, index)`` keys keep
    each epoch's draws what they are without workers."""
    workers = config.num_workers
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


# --------------------------------------------------------------------------------------------
# Loss of one batch


def step_generators(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    """The generator for step ``step`` on ``rank`` (levels and noise), and seed torch's global
    RNG (dropout) from the same (seed, rank, step), so no RNG state lives between steps."""
    a, b = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint64)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(a) >> 1)
    torch.manual_seed(int(b) >> 1)
    return generator


def batch_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    config: TrainConfig,
    schedule: ScheduleConfig,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """The training loss of one batch for the config's kind and mode (eq. 4 and its variants)."""
    if config.kind == "sr3":
        warp = batch["warp"].to(device) if "warp" in batch else None
        return sr3_loss(model, batch["hr"].to(device), batch["lr"].to(device), schedule, generator, warp=warp)
    y, y_prev = batch["y"].to(device), batch["y_prev"].to(device)
    pose, pose_prev = batch["pose"].to(device), batch["pose_prev"].to(device)
    c = batch["appearance"].to(device) if config.uses_appearance else None
    mask = None
    if c is not None and config.appearance_dropout > 0:
        u = torch.rand(y.shape[0], generator=generator, device=generator.device)
        mask = (u >= config.appearance_dropout).to(device)
    loss_fn = unidirectional_loss if config.mode == "unidirectional" else bidirectional_loss
    return loss_fn(model, y, y_prev, pose, pose_prev, c, schedule, generator, appearance_mask=mask)


# --------------------------------------------------------------------------------------------
# EMA, optimizer state and snapshots


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers are copied."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers()):
        eb.copy_(b)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with the usual warm-up, so early averages are not dominated by the random init."""
    return min(decay, (1.0 + step) / (10.0 + step))


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars[f"{idx}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def snapshot_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete snapshots of a run, oldest first: ``step_<digits>`` folders holding ``COMPLETE``."""
    root = run_dir / SNAPSHOTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        name = p.name
        if p.is_dir() and name.startswith("step_") and name[5:].isdigit() and (p / COMPLETE).is_file():
            found.append((int(name[5:]), p))
    return sorted(found)


@dataclass
class TrainingState:
    """What a snapshot restores."""

    step: int
    epoch: int
    epoch_batches: int
    world_size: int
    elapsed_s: float
    snapshot: Path


def save_snapshot(
    run_dir: Path,
    step: int,
    epoch: int,
    epoch_batches: int,
    world_size: int,
    elapsed_s: float,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    schedule: ScheduleConfig,
) -> Path:
    """Write a complete snapshot (module docstring) and refresh ``RUN/checkpoint``."""
    final = run_dir / SNAPSHOTS / f"step_{step:07d}"
    # A snapshot of the same step (a re-run after a resume) is replaced whole.
    with atomic_dir(final, replace=True, fsync=True) as tmp:
        save_checkpoint(tmp / "checkpoint", ema, config.kind, schedule, extra=checkpoint_extra(config, step))
        tensors = {f"model.{k}": v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        optim_tensors, optim_meta = _optimizer_to_files(optimizer)
        tensors.update(optim_tensors)
        save_file(tensors, str(tmp / "training_state.safetensors"), metadata={"format": "pt", "step": str(step)})
        write_json_atomic(tmp / "training_state.json", {
            "format_version": STATE_VERSION, "step": step, "epoch": epoch, "epoch_batches": epoch_batches,
            "world_size": world_size, "elapsed_s": elapsed_s, "optimizer": optim_meta, "train_config": config.to_dict(),
        })  # fmt: skip
        write_json_atomic(tmp / COMPLETE, {"step": step})
    publish_checkpoint(run_dir, final)
    return final


def publish_checkpoint(run_dir: Path, snapshot: Path) -> None:
    """Make ``RUN/checkpoint`` a copy of a snapshot's EMA checkpoint (config.json written last)."""
    dest = run_dir / "checkpoint"
    dest.mkdir(exist_ok=True)
    (dest / "config.json").unlink(missing_ok=True)
    for name in ("model.safetensors", "config.json"):
        with atomic_path(dest / name, fsync=True) as tmp:
            shutil.copyfile(snapshot / "checkpoint" / name, tmp)


def prune_snapshots(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete snapshots, and temporary snapshot folders a killed
    run left (``atomic_dir``'s ``.step_XXXXXXX.<pid>.XXXX.tmp``, or ``.step_XXXXXXX.tmp-<pid>`` of older versions)."""
    for _, path in snapshot_dirs(run_dir)[:-keep]:
        shutil.rmtree(path)
    for pattern in (".step_*.tmp", ".step_*.tmp-*"):
        for p in (run_dir / SNAPSHOTS).glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)


def load_snapshot(snapshot: Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Restore raw weights, EMA weights and optimizer from a snapshot, strictly."""
    meta = json.loads((snapshot / "training_state.json").read_text(encoding="utf-8"))
    if meta.get("format_version") != STATE_VERSION:
        raise TrainingError(f"{snapshot / 'training_state.json'}: unsupported format_version {meta.get('format_version')!r}")
    tensors = load_file(str(snapshot / "training_state.safetensors"))
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    if set(state) != set(expected):
        diff = sorted(set(state) ^ set(expected))
        raise TrainingError(f"{snapshot}: saved weights do not match the model ({', '.join(diff[:4])} ...)")
    model.load_state_dict(state, strict=True)
    ema_model, _, _ = load_checkpoint(snapshot / "checkpoint")
    ema.load_state_dict(ema_model.state_dict(), strict=True)
    optimizer.load_state_dict(_optimizer_from_files(tensors, meta["optimizer"]))
    return TrainingState(
        step=int(meta["step"]), epoch=int(meta["epoch"]), epoch_batches=int(meta["epoch_batches"]),
        world_size=int(meta["world_size"]), elapsed_s=float(meta["elapsed_s"]), snapshot=snapshot,
    )  # fmt: skip


def checkpoint_extra(config: TrainConfig, step: int) -> dict[str, Any]:
    """What a checkpoint records about its training (``config.json`` ``extra``)."""
    return {
        "task": config.task,
        "sampler": "unidirectional" if config.mode == "unidirectional" else "bidirectional",
        "training": {"mode": config.mode, "step": step, "preset": config.preset, "data": config.data, "seed": config.seed},
    }


# --------------------------------------------------------------------------------------------
# Distributed context


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_distributed(device_option: str) -> DistContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); start the
    process group (NCCL on CUDA, gloo on CPU) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_option == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("device 'cuda' requested but CUDA is not available")
    use_cuda = device_option == "cuda" or (device_option == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local, device)


# --------------------------------------------------------------------------------------------
# Logging and previews


class RunLog:
    """CSV + TensorBoard logging on rank 0; a resumed run drops rows past its snapshot."""

    def __init__(self, run_dir: Path, resume_step: int, resumed: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard (protobuf, absl) only for a logging run

        self.csv_path = run_dir / "log.csv"
        rows: list[dict[str, str]] = []
        if self.csv_path.is_file():
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv_path, buf.getvalue())
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (appended to until close())
        self._csv = csv.DictWriter(self._file, fieldnames=LOG_FIELDS)
        # purge_step discards events a killed run logged after its last snapshot.
        self.tb = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=resume_step + 1 if resumed else None)

    def write(self, row: dict[str, float]) -> None:
        self._csv.writerow({k: row[k] for k in LOG_FIELDS})
        self._file.flush()
        for key in ("loss", "lr", "grad_norm", "samples_per_s"):
            self.tb.add_scalar(f"train/{key}", row[key], int(row["step"]))

    def close(self) -> None:
        self._file.close()
        self.tb.close()


@torch.no_grad()
def write_preview(
    run_dir: Path, step: int, ema: nn.Module, config: TrainConfig, schedule: ScheduleConfig,
    sequence: SequenceFrames, device: torch.device, fps: float = 8.0,
) -> tuple[Path, Path | None]:
    """Sample the EMA model on a (held-out) sequence; write a PNG strip and an MP4 (None where
    imageio-ffmpeg is not installed, as on a bare GPU machine: the PNG is the preview then).

    BTU-Net: rows = pose maps, ground truth, sample (bidirectional recursive sampling, or the
    autoregressive sampler for the unidirectional mode), c = the sequence's first frame.
    SR3: rows = low-res input (nearest-upscaled), ground truth, sample.
    """
    ema.eval()
    n = min(config.sample_frames, sequence.num_frames)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    cfg = ema.config
    if config.kind == "btunet":
        frames, poses = load_sequence(sequence, cfg.resolution, 0, n, config.background, config.fit)
        c = frames[0].to(device) if config.uses_appearance else None
        top = colorize_iuv(tensor_to_iuv(poses))
        if cfg.warp_channels:
            poses = torch.cat([poses, sequence_warp(sequence, 0 if c is not None else None, n, cfg.resolution,
                                                    config.background, config.fit)], dim=1)
        sampler = sample_unidirectional if config.mode == "unidirectional" else sample_bidirectional
        out = sampler(ema, poses.to(device), c, steps=config.sample_steps, schedule=schedule, generator=generator)
    else:
        frames, _ = load_sequence(sequence, cfg.resolution, 0, n, config.background, config.fit)
        low, _ = load_sequence(sequence, cfg.low_resolution, 0, n, config.background, config.fit)
        warp = None
        if cfg.warp_channels:
            whole = sequence_warp(sequence, 0, n, cfg.resolution, config.background, config.fit)
            warp = lambda start, stop: whole[start:stop]  # noqa: E731
        out = torch.cat(list(sample_sr3(ema, low.to(device), steps=config.sample_steps, schedule=schedule,
                                        generator=generator, resolution=cfg.resolution, warp=warp)))  # fmt: skip
        factor = cfg.resolution // cfg.low_resolution
        top = tensor_to_uint8(low).repeat(factor, axis=1).repeat(factor, axis=2)
    truth, sample = tensor_to_uint8(frames), tensor_to_uint8(out.cpu())
    scale = max(1, 128 // frames.shape[-1])

    def up(img: np.ndarray) -> np.ndarray:
        return img.repeat(scale, axis=0).repeat(scale, axis=1)

    images = [up(im) for row in (top, truth, sample) for im in row]
    labels = [f"{name} {t}" if t == 0 else "" for name in ("input", "truth", "sample") for t in range(n)]
    png = write_rgb_png(run_dir / "samples" / f"step_{step:07d}.png", contact_sheet(images, cols=n, labels=labels))
    if importlib.util.find_spec("imageio_ffmpeg") is None:
        logger.info("preview %s: no MP4 (imageio-ffmpeg is not installed)", png)
        return png, None
    video = write_mp4((np.concatenate([up(g), up(s)], axis=1) for g, s in zip(truth, sample)),
                      run_dir / "samples" / f"step_{step:07d}.mp4", fps=fps)  # fmt: skip
    return png, video


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank)."""

    model: nn.Module
    ema: nn.Module
    step: int
    resumed_from: int | None
    run_dir: Path
    last_loss: float | None


def prepare_run_dir(run_dir: Path, config: TrainConfig, resume: bool) -> TrainConfig:
    """Create a new run folder, or check a resumed one and return its (possibly extended) config."""
    saved_path = run_dir / CONFIG_FILE
    if resume:
        if not saved_path.is_file():
            raise TrainingError(f"{run_dir}: cannot resume, no {CONFIG_FILE} (not a training run folder)")
        saved = TrainConfig.from_dict(json.loads(saved_path.read_text(encoding="utf-8")))
        changes = {name: getattr(config, name) for name in saved.changed_fields(config)}
        return saved.resumed_with(**changes)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise TrainingError(f"{run_dir}: folder exists and is not empty; pass --resume to continue it, or choose a new --out")
    return config


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    verify_checksums: bool = False,
    allow_incomplete: bool = False,
) -> TrainResult:
    """Train (or resume) a run; see the module docstring for the folder and guarantees.

    Args:
        config: the run's configuration. With ``resume``, it must equal the saved one except
            for :data:`training.config.RESUMABLE_CHANGES` (e.g. a larger ``steps``).
        run_dir: the run folder.
        resume: continue from the newest complete snapshot (from scratch if none was written).
        progress: show a tqdm progress bar (rank 0).
        on_step: called on rank 0 after every step with ``(step, loss)``.
        verify_checksums: also recompute every file's SHA-256 before training (reads the whole set).
        allow_incomplete: train on a dataset whose manifest says it is still being built.

    A fresh run that fails before its first snapshot removes what it wrote (``train_config.json``,
    ``log.csv``, ``tb/``), so the corrected command runs again without ``--resume``. A loss or
    weights that stop being finite end the run with :class:`NonFiniteLossError`; the snapshots
    already written (all finite) stay.
    """
    run_dir = Path(run_dir)
    ctx = init_distributed(config.device)
    fresh = False
    if ctx.is_main:
        config = prepare_run_dir(run_dir, config, resume)
        check_training_data(config, verify_checksums, allow_incomplete)  # before the run folder is made
        check_model_size(config)
        fresh = not (run_dir / CONFIG_FILE).exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / CONFIG_FILE, config.to_dict(), fsync=True)
    try:
        return _train(config, run_dir, resume, progress, on_step, ctx)
    except BaseException:
        if fresh and not snapshot_dirs(run_dir):
            _remove_failed_start(run_dir)
        raise


def _remove_failed_start(run_dir: Path) -> None:
    """Delete exactly what a fresh run writes before its first snapshot (and the folder if then empty)."""
    (run_dir / CONFIG_FILE).unlink(missing_ok=True)
    (run_dir / "log.csv").unlink(missing_ok=True)
    for sub in ("tb", SNAPSHOTS, "samples"):
        if (run_dir / sub).is_dir():
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def check_model_size(config: TrainConfig) -> None:
    """Build the network on the meta device (no memory) and refuse one over the ``parameters`` limit."""
    net_config = model_config(config)
    with on_meta():
        count = sum(p.numel() for p in build_model(config.kind, net_config.to_dict()).parameters())
    limits.check("parameters", count, f"the {config.kind} network these options describe has {count} parameters")


def check_training_data(config: TrainConfig, verify_checksums: bool = False, allow_incomplete: bool = False) -> None:
    """Cheap checks of the data before a run starts: manifest, presence, frame counts and sizes, clips,
    completeness, a spot check of contents (:meth:`DatasetManifest.spot_check`: changed files, blank
    sequences) and every checksum with ``verify_checksums``; every error names the sequence and file."""
    root = Path(config.data)
    if (root / "manifest.json").is_file():
        manifest = DatasetManifest.load(root)
        if not manifest.info.get("complete", True) and not allow_incomplete:
            pending = manifest.info.get("pending", [])
            raise DatasetFormatError(
                f"{root / 'manifest.json'}: the dataset is marked incomplete ({len(pending)} sequence(s) pending); "
                "finish it (btdm synth build resumes) or pass --allow-incomplete"
            )
        manifest.validate_files(verify_checksums=verify_checksums, check_clips=True)
        # Always, cheaply: files changed since the manifest and a sample are hashed (all of them were with
        # --checksums), and each sequence's middle frames decoded, so a blank or altered set is not trained on.
        for line in manifest.spot_check(hash_sample=not verify_checksums):
            logger.warning("warning: %s", line)
    train, _ = training_sequences(config)
    if not train:
        raise DatasetFormatError(f"{root}: split {config.split!r} has no sequences to train on")


def _train(
    config: TrainConfig,
    run_dir: Path,
    resume: bool,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
    ctx: DistContext,
) -> TrainResult:
    """1. prepare, 2. resume, then per batch: 3. optimise, 4. report, 5. snapshot, 6. preview."""
    ctx.barrier()
    if not ctx.is_main:
        config = TrainConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")))
    run = _prepare(config, run_dir, ctx)
    pos, resumed_from = _resume(run, resume)
    if pos.step >= config.steps:
        if ctx.is_main:
            logger.info("%s: already at step %d >= steps %d; nothing to do", run_dir, pos.step, config.steps)
        return TrainResult(run.model, run.ema, pos.step, resumed_from, run_dir, None)
    train_model = _distributed(run)
    sampler = ResumableSampler(run.dataset, ctx.world_size, ctx.rank, config.seed)
    loader = data_loader(run.dataset, sampler, config)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if ctx.device.type == "cuda" else contextlib.nullcontext()
    monitor = _Monitor(run, pos.step, resume, progress, on_step) if ctx.is_main else None
    run.model.train()
    pos.started = time.monotonic()
    last_loss: float | None = None
    try:
        while pos.step < config.steps:
            sampler.set_epoch(pos.epoch)
            sampler.skip = pos.epoch_batches * config.batch_size  # a resumed epoch goes on where it stopped
            for batch in loader:
                stats = _optimisation_step(run, train_model, batch, pos.step, amp)
                pos.step += 1
                pos.epoch_batches += 1
                last_loss = stats.loss
                if monitor is not None:
                    monitor.after_step(pos, stats)
                done_epoch = pos.epoch_batches >= run.per_epoch
                _snapshot_if_due(run, pos, done_epoch)
                _preview_if_due(run, pos.step)
                if pos.step >= config.steps or done_epoch:
                    break
            if pos.epoch_batches >= run.per_epoch:
                pos.epoch, pos.epoch_batches = pos.epoch + 1, 0
    finally:
        if monitor is not None:
            monitor.close()
    return TrainResult(run.model, run.ema, pos.step, resumed_from, run_dir, last_loss)


@dataclass
class _Run:
    """What every step of a run uses, built once by :func:`_prepare` (the same on every rank)."""

    config: TrainConfig
    run_dir: Path
    ctx: DistContext
    schedule: ScheduleConfig
    dataset: FramePairDataset | SR3FrameDataset
    previews: list[SequenceFrames]
    per_epoch: int  # optimisation steps per epoch (global batches)
    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer


@dataclass
class _Position:
    """Where a run is: the step counter, the epoch and the batches done in it, and the time trained."""

    step: int = 0
    epoch: int = 0
    epoch_batches: int = 0
    elapsed0: float = 0.0  # seconds trained before this process (from the snapshot)
    started: float = 0.0  # time.monotonic() when this process began training

    def elapsed_s(self, now: float | None = None) -> float:
        return self.elapsed0 + (time.monotonic() if now is None else now) - self.started


@dataclass(frozen=True)
class _StepStats:
    loss: float
    lr: float
    grad_norm: float


def _prepare(config: TrainConfig, run_dir: Path, ctx: DistContext) -> _Run:
    """1. Data, network, EMA and optimizer (the same init on every rank; DDP also broadcasts rank 0's)."""
    sequences, previews = training_sequences(config)
    net_config = model_config(config)
    dataset = build_dataset(config, sequences, net_config)
    per_epoch = len(dataset) // (config.batch_size * ctx.world_size)
    if per_epoch < 1:
        raise TrainingError(
            f"{config.data}: {len(dataset)} training samples are fewer than one global batch "
            f"({config.batch_size} x {ctx.world_size} processes)"
        )
    schedule = ScheduleConfig.from_dict(config.schedule)
    torch.manual_seed(config.seed)
    model = build_model(config.kind, net_config.to_dict()).to(ctx.device)
    if config.init_from:
        warm_start(model, config)
    ema = build_model(config.kind, net_config.to_dict()).to(ctx.device)
    ema.load_state_dict(model.state_dict())
    ema.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    return _Run(config, run_dir, ctx, schedule, dataset, previews, per_epoch, model, ema, optimizer)


def warm_start(model: nn.Module, config: TrainConfig) -> None:
    """Start ``model`` from ``config.init_from``'s weights (safetensors, never a pickle) where a
    parameter's name and shape match and its name does not start with one of ``config.init_reset``;
    the rest keep their fresh initialisation. Names what was kept fresh."""
    root = Path(config.init_from)
    candidates = [root / config.kind / "model.safetensors", root / "checkpoint" / "model.safetensors",
                  root / "model.safetensors"]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise TrainingError(f"init_from {config.init_from}: no {config.kind} weights there (looked for "
                            f"{', '.join(str(c) for c in candidates)})")
    loaded = load_file(str(path))
    state = model.state_dict()
    taken = {k: v for k, v in loaded.items() if k in state and tuple(v.shape) == tuple(state[k].shape)
             and not k.startswith(config.init_reset)}
    if not taken:
        raise TrainingError(f"init_from {path}: no parameter matches this {config.kind}'s names and shapes")
    fresh = sorted(set(state) - set(taken))
    with torch.no_grad():
        for k, v in taken.items():
            state[k].copy_(v.to(state[k].dtype))
    logger.info("warm start from %s: %d of %d tensors; fresh: %s", path, len(taken), len(state),
                ", ".join(fresh) if fresh else "none")


def _resume(run: _Run, resume: bool) -> tuple[_Position, int | None]:
    """2. Restore the newest complete snapshot (with ``resume``); returns the position and its step."""
    snapshots = snapshot_dirs(run.run_dir) if resume else []
    if not snapshots:
        return _Position(), None
    state = load_snapshot(snapshots[-1][1], run.model, run.ema, run.optimizer)
    pos = _Position(state.step, state.epoch, state.epoch_batches, state.elapsed_s)
    if state.world_size != run.ctx.world_size:
        # DistributedSampler deals an epoch's permutation out by rank; with another world
        # size the remaining samples of this epoch are not the same set: restart the epoch.
        if run.ctx.is_main:
            logger.warning("resuming with %d processes instead of %d: epoch %d restarts from its beginning",
                           run.ctx.world_size, state.world_size, pos.epoch)
        pos.epoch_batches = 0
    if run.ctx.is_main:
        publish_checkpoint(run.run_dir, state.snapshot)
    return pos, state.step


def _distributed(run: _Run) -> nn.Module:
    """The module the loss runs through: the model itself, or its DistributedDataParallel wrapper."""
    ctx = run.ctx
    if ctx.world_size == 1:
        return run.model
    # Without c (person / unconditional) the appearance encoder gets no gradient.
    unused = run.config.kind == "btunet" and not run.config.uses_appearance
    return DistributedDataParallel(
        run.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, find_unused_parameters=unused
    )


def _optimisation_step(
    run: _Run, train_model: nn.Module, batch: dict[str, torch.Tensor], step: int, amp: contextlib.AbstractContextManager
) -> _StepStats:
    """3. One optimisation step: lr warm-up, the loss (eq. 4 or its variant), clipping, AdamW, EMA."""
    config, ctx = run.config, run.ctx
    lr = config.lr * min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else config.lr
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    generator = step_generators(config.seed, ctx.rank, step, ctx.device)
    with amp:
        loss = batch_loss(train_model, batch, config, run.schedule, generator, ctx.device)
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        kept = snapshot_dirs(run.run_dir)
        raise NonFiniteLossError(
            f"{run.run_dir}: the loss is {loss_value} at step {step + 1} (lr {lr:g}); training stopped"
            + (f", the last good snapshot is {kept[-1][1]}" if kept else ", no snapshot was written yet")
            + ". Lower --lr or check the data"
        )
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = config.grad_clip if config.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip))
    run.optimizer.step()
    ema_update(run.ema, run.model, ema_decay_at(step, config.ema_decay))
    return _StepStats(loss_value, lr, grad_norm)


class _Monitor:
    """4. Rank 0's reporting: the progress bar, ``on_step``, and a log row every ``log_every`` steps
    (the mean loss and the throughput since the previous row)."""

    def __init__(
        self, run: _Run, step: int, resumed: bool, progress: bool, on_step: Callable[[int, float], None] | None
    ) -> None:
        self.run, self.on_step = run, on_step
        self.log = RunLog(run.run_dir, step, resumed=resumed)
        self.bar = None
        if progress:
            config = run.config
            self.bar = tqdm(total=config.steps, initial=step, desc=f"train {config.kind} ({config.mode})", unit="step",
                            dynamic_ncols=True)  # fmt: skip
        self.window_loss, self.window_n, self.window_t = 0.0, 0, time.monotonic()

    def after_step(self, pos: _Position, stats: _StepStats) -> None:
        config = self.run.config
        self.window_loss += stats.loss
        self.window_n += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{stats.loss:.4f}", epoch=pos.epoch)
        if self.on_step is not None:
            self.on_step(pos.step, stats.loss)
        if pos.step % config.log_every == 0 or pos.step == config.steps:
            now = time.monotonic()
            samples = self.window_n * config.batch_size * self.run.ctx.world_size
            self.log.write({
                "step": pos.step, "epoch": pos.epoch, "loss": self.window_loss / self.window_n, "lr": stats.lr,
                "grad_norm": stats.grad_norm, "samples_per_s": samples / max(now - self.window_t, 1e-9),
                "elapsed_s": pos.elapsed_s(now),
            })  # fmt: skip
            self.window_loss, self.window_n, self.window_t = 0.0, 0, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.log.close()


def _snapshot_if_due(run: _Run, pos: _Position, done_epoch: bool) -> None:
    """5. Every ``checkpoint_every`` steps and at the end: check the weights are finite and write a
    snapshot (rank 0 writes; every rank waits, so none runs ahead of a save)."""
    config, ctx = run.config, run.ctx
    if not (pos.step % config.checkpoint_every == 0 or pos.step == config.steps):
        return
    if ctx.is_main:
        bad = non_finite_tensors({**run.model.state_dict(), **{f"ema.{k}": v for k, v in run.ema.state_dict().items()}})
        if bad:
            kept = snapshot_dirs(run.run_dir)
            raise NonFiniteLossError(
                f"{run.run_dir}: weights became non-finite by step {pos.step} ({', '.join(bad[:3])}); training "
                "stopped" + (f", the last good snapshot is {kept[-1][1]}" if kept else "") + ". Lower --lr"
            )
        epoch, batches = (pos.epoch + 1, 0) if done_epoch else (pos.epoch, pos.epoch_batches)
        save_snapshot(run.run_dir, pos.step, epoch, batches, ctx.world_size, pos.elapsed_s(), run.model, run.ema,
                      run.optimizer, config, run.schedule)  # fmt: skip
        prune_snapshots(run.run_dir, config.keep_snapshots)
    ctx.barrier()


def _preview_if_due(run: _Run, step: int) -> None:
    """6. Every ``sample_every`` steps and at the end: rank 0 samples the EMA model on a preview sequence."""
    config, ctx = run.config, run.ctx
    if not config.sample_every or not (step % config.sample_every == 0 or step == config.steps):
        return
    if ctx.is_main and run.previews:
        write_preview(run.run_dir, step, run.ema, config, run.schedule, run.previews[0], ctx.device)
    ctx.barrier()
