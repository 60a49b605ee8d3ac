"""The ``Animator``: pose maps (+ an appearance image) -> frames, through BTU-Net and SR3.

The denoising loops live in :mod:`btdm_engine.diffusion.samplers`; this module prepares the
inputs, optionally fine-tunes a copy of the BTU-Net on the appearance image (paper sec. 3.3),
runs the low-resolution sampler over the whole sequence and streams the SR3 stage.

Tasks (paper sec. 3.3), all sampled with bidirectional recursive sampling (app. A):

* single-image animation: ``appearance`` given (optionally with ``finetune_steps`` and the
  image's own pose map ``appearance_iuv``, g(c) in the paper);
* person-specific animation: a model trained on one person's video without c; call with
  ``appearance=None``;
* unconditional animation: a model trained with c = empty; call with ``appearance=None``.
  Without c the BTU-Net uses its learnt null token in both cases.

Devices: CUDA when present, else the CPU. Sampling runs its network calls under bf16 autocast on
CUDA and on CPUs with native bf16 (``precision="auto"``; ``"float32"`` for bit-compatible float32
frames), with CPU weights channels-last; ``bench/bench_cpu.py`` measures speed and the difference
to float32. Every random draw goes through a ``torch.Generator`` on the CPU seeded from ``seed`` (one per stage, derived
with ``numpy.random.SeedSequence``), so the same seed gives the same frames.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from btdm_engine.checkpoints import load_checkpoint
from btdm_engine.constants import NOISE_MODES, PRECISIONS, SAMPLERS, SR3_STAGE_DIRS
from btdm_engine.dataconfig import check_choice, check_int
from btdm_engine.diffusion.losses import bidirectional_loss
from btdm_engine.diffusion.samplers import (
    Callback,
    Cancelled,
    cancel_checker,
    sample_bidirectional,
    sample_sr3,
    sample_unidirectional,
)
from btdm_engine.diffusion.schedule import ScheduleConfig
from btdm_engine.errors import BtdmError
from btdm_engine.imageio import resize_labels, resize_rgb
from btdm_engine.jobspec import JobSpec
from btdm_engine.limits import JOB_LIMITS
from btdm_engine.posemaps.encoding import iuv_to_tensor, tensor_to_iuv, validate_iuv
from btdm_engine.posemaps.texture import UVTexture, texture_from_image, warp_maps
from btdm_engine.weights import sr3_stage_dirs

# Conservative activation estimate for one frame of a network call, per output pixel: the
# pair's two branches times the float32 feature maps of a U-Net of these sizes. Used only to
# pick a default ``max_batch`` from a memory budget; pass ``max_batch`` to override.
_BYTES_PER_PIXEL = 2 * 4 * 2048
# 4 GiB on the CPU (the estimate is about 10x what the process really holds: `make demo`'s job
# peaked at 634 MB RSS): SR3's 128 px tiny model then runs 8 frames per call on each of two
# workers, about 10 % faster than 4 and 20 % faster than 2, measured side by side.
_CPU_BUDGET_BYTES = 4 << 30
# Frames per BTU-Net pair call on the CPU: a call's activations then stay in the caches (16 frames
# ran 1.1-1.4x faster per step than 64 in bench/bench_cpu.py).
_CPU_PAIR_FRAMES = 16
# A job's defaults, written once (btdm_engine/jobspec.py): the CLI's, the service's and these agree.
_JOB = JobSpec()


class AnimatorError(BtdmError, ValueError):
    """Bad input to the Animator (the message names the argument and the problem)."""


def _stage_seed(seed: int, stage: int) -> int:
    """Independent seed per stage, so e.g. fine-tuning steps never shift the sampling noise."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1, dtype=np.uint64)[0])


def _generator(seed: int, stage: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(_stage_seed(seed, stage))


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def max_batch_for(resolution: int, device: torch.device, workers: int = 1) -> int:
    """Frames per network call that fit a memory budget (half the free GPU memory, 4 GiB on CPU),
    shared by ``workers`` calls running side by side."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = _CPU_BUDGET_BYTES
    return max(1, int(budget // (_BYTES_PER_PIXEL * resolution * resolution * workers)))


def sampling_workers(device: torch.device, workers: int | None = None) -> tuple[int, int]:
    """(threads running network calls side by side, intra-op threads each) for sampling on ``device``.

    On the CPU the default is one worker per thread torch may use (``torch.get_num_threads()``:
    ``--threads``, ``OMP_NUM_THREADS`` or the core count), each with one intra-op thread: the
    calls of these small networks scale across cores far better side by side than split inside
    each kernel (bench/bench_cpu.py). On CUDA the calls queue on one stream: one worker.
    """
    threads = torch.get_num_threads()
    if workers is None:
        workers = threads if device.type == "cpu" else 1
    check_int(workers, "workers", AnimatorError, lo=1, hi=1024)
    return workers, max(1, threads // workers)


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for a block, then restored."""
    before = torch.get_num_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads != before:
            torch.set_num_threads(before)


def stream_with_threads(chunks: Iterator[Tensor], threads: int) -> Iterator[Tensor]:
    """A streaming sampler's chunks (``sample_sr3``), each made with ``threads`` intra-op threads;
    the caller handles them (writes frames) with torch's own count."""
    while True:
        with intra_op_threads(threads):
            chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk


def pair_batch_for(resolution: int, device: torch.device, workers: int = 1) -> int:
    """Frames per BTU-Net call by default: a worker's share of the memory budget, at most 16 on the CPU
    (cache-sized)."""
    batch = max_batch_for(resolution, device, workers)
    return min(batch, _CPU_PAIR_FRAMES) if device.type == "cpu" else batch


def resize_pose_maps(poses: Tensor, size: int) -> Tensor:
    """Pose maps in tensor form (..., 3, H, W) resized to (size, size) with NEAREST sampling.

    ``mode="nearest"`` picks source pixel floor(i * H / size), the same pixel as
    ``cv2.INTER_NEAREST`` in :func:`btdm_engine.imageio.resize_labels`, which the training
    datasets use, so labels never blend and inference sees what training saw.
    """
    if poses.shape[-2:] == (size, size):
        return poses
    lead = poses.shape[:-3]
    flat = poses.reshape(-1, *poses.shape[-3:])
    out = F.interpolate(flat, size=(size, size), mode="nearest")
    return out.reshape(*lead, 3, size, size)


def image_to_tensor(image: np.ndarray, size: int, where: str = "appearance") -> Tensor:
    """RGB uint8 (H, W, 3) -> float32 (3, size, size) in [-1, 1].

    Resized like the training frames (:func:`btdm_engine.imageio.resize_rgb`: area when
    shrinking, bicubic when enlarging).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise AnimatorError(f"{where}: expected an RGB uint8 array (H, W, 3), got {desc}")
    h, w = image.shape[:2]
    if h != w:
        raise AnimatorError(f"{where}: expected a square image (the networks are square), got {h}x{w}")
    rgb = resize_rgb(image.astype(np.float32) / 255.0, (size, size))
    return rearrange(torch.from_numpy(np.ascontiguousarray(rgb)) * 2.0 - 1.0, "h w c -> c h w")


def iuv_to_network(iuv: np.ndarray, size: int, where: str = "iuv") -> Tensor:
    """uint8 IUV maps (..., H, W, 3) -> tensor form (..., 3, size, size), resized NEAREST first."""
    validate_iuv(iuv, where=where)
    lead = iuv.shape[:-3]
    flat = iuv.reshape(-1, *iuv.shape[-3:])
    small = np.stack([resize_labels(m, (size, size)) for m in flat])
    return iuv_to_tensor(small.reshape(*lead, size, size, 3))


def tensor_to_images(x: Tensor) -> np.ndarray:
    """Float frames (B, 3, H, W) in [-1, 1] -> RGB uint8 (B, H, W, 3)."""
    x = ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return rearrange(x, "b c h w -> b h w c").numpy()


def prepare_pose_maps(pose_maps: np.ndarray | Tensor, size: int, chunk: int = 64) -> Tensor:
    """Pose maps -> tensor form at the network resolution (T, 3, size, size), float32, CPU.

    Accepts uint8 IUV arrays (T, H, W, 3) (numpy or torch) or a float tensor already in tensor
    form (T, 3, H, W). Converted ``chunk`` frames at a time, so full-resolution float copies of
    a long sequence never exist at once.
    """
    if isinstance(pose_maps, Tensor) and pose_maps.dtype == torch.uint8:
        pose_maps = pose_maps.cpu().numpy()
    if isinstance(pose_maps, np.ndarray):
        if pose_maps.ndim != 4 or pose_maps.shape[-1] != 3:
            raise AnimatorError(f"pose_maps: expected uint8 IUV maps (T, H, W, 3), got shape {tuple(pose_maps.shape)}")
        height, width = pose_maps.shape[1:3]
        convert = lambda part: iuv_to_network(part, size, where="pose_maps")  # noqa: E731
    elif isinstance(pose_maps, Tensor) and pose_maps.is_floating_point():
        if pose_maps.ndim != 4 or pose_maps.shape[1] != 3:
            raise AnimatorError(
                f"pose_maps: expected a tensor-form (T, 3, H, W) float tensor, got {tuple(pose_maps.shape)}"
            )
        height, width = pose_maps.shape[2:]
        convert = lambda part: resize_pose_maps(part.detach().float().cpu(), size)  # noqa: E731
    else:
        raise AnimatorError(
            f"pose_maps: expected a uint8 IUV array (T, H, W, 3) or a float tensor (T, 3, H, W), got "
            f"{getattr(pose_maps, 'dtype', type(pose_maps).__name__)}"
        )
    if len(pose_maps) == 0:
        raise AnimatorError("pose_maps: the sequence is empty")
    if height != width:
        raise AnimatorError(f"pose_maps: expected square maps (the networks are square), got {height}x{width}")
    return torch.cat([convert(pose_maps[i : i + chunk]) for i in range(0, len(pose_maps), chunk)])


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bfloat16 on CUDA and on CPUs with native bf16, else float32."""
    if precision not in PRECISIONS:
        raise AnimatorError(f"precision {precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()):
        return "bfloat16"
    return "float32"


class _Autocast(nn.Module):
    """Runs the wrapped network under bf16 autocast (CUDA or CPU) and hands back float32 outputs."""

    def __init__(self, model: nn.Module, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type
        self.config = getattr(model, "config", None)

    def forward(self, *args: Any) -> Any:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.model(*args)
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()

    def prepare_sampling(self, *args: Any) -> Callable[..., Tensor] | None:
        """The wrapped BTU-Net's ``prepare_sampling``, encoding and every later call under autocast
        (None for a network without one: the sampler then calls ``forward``)."""
        if not hasattr(self.model, "prepare_sampling"):
            return None
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            prepared = self.model.prepare_sampling(*args)

        def call(*call_args: Any) -> Tensor:
            with torch.autocast(self.device_type, dtype=torch.bfloat16):
                return prepared(*call_args).float()

        return call


def _autocast_for(model: nn.Module, device: torch.device, precision: str = "auto") -> nn.Module:
    """The network as sampling calls it: under bf16 autocast when ``precision`` resolves to bfloat16."""
    if resolve_precision(precision, device) == "bfloat16":
        return _Autocast(model, device.type).eval()
    return model


def finetune_btunet(
    model: nn.Module,
    appearance: Tensor,
    appearance_pose: Tensor,
    schedule: ScheduleConfig,
    *,
    steps: int,
    lr: float = _JOB.finetune_lr,
    generator: torch.Generator,
    batch: int = 4,
    callback: Callback | None = None,
    cancel: object = None,
) -> nn.Module:
    """Single-image test-time fine-tuning (paper sec. 3.3) on a COPY of ``model``.

    The training set is Y = {c}, S = {g(c)}: every step is eq. 4 on the pair (c, c) with poses
    (g(c), g(c)) and appearance c, ``batch`` copies with independent levels and noise. The paper
    uses 300 steps at lr 1e-5 (app. B.1); Adam is our choice (the paper names no optimizer).

    Args:
        model: the trained BTU-Net; left untouched.
        appearance: c (3, H, W) in [-1, 1] on the model's device.
        appearance_pose: g(c) (3, H, W) in tensor form, same device.
        schedule: the model's schedule.
        steps, lr, batch: optimisation settings.
        generator: draws levels and noise; dropout draws are seeded from it too.
        callback: ``callback("finetune", step, steps)``.
        cancel: checked before every step; raises :class:`Cancelled`.

    Returns:
        The fine-tuned copy, in eval mode.
    """
    check_int(steps, "finetune_steps", AnimatorError, lo=0)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise AnimatorError(f"finetune_lr must be a positive number, got {lr!r}")
    check_int(batch, "finetune batch", AnimatorError, lo=1)
    is_cancelled = cancel_checker(cancel)
    # Train in the contiguous layout whatever the caller's copy uses, so fine-tuning here and in
    # `btdm finetune` (which loads the checkpoint as saved) give the same weights bit for bit.
    tuned = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    tuned.train()
    optimizer = torch.optim.Adam(tuned.parameters(), lr=lr)
    device = appearance.device
    c = repeat(appearance, "c h w -> b c h w", b=batch)
    g = repeat(appearance_pose, "c h w -> b c h w", b=batch)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    devices = [device.index or 0] if device.type == "cuda" else []
    # Dropout draws from torch's global RNG: fork it and seed it from the generator, so the
    # caller's global RNG is untouched and the same seed gives the same fine-tuned weights.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        for step in range(steps):
            if is_cancelled():
                raise Cancelled("fine-tuning cancelled")
            with amp:
                loss = bidirectional_loss(tuned, c, c, g, g, c, schedule, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if callback is not None:
                callback("finetune", step + 1, steps)
    return tuned.eval()


class Animator:
    """BTU-Net (+ optional SR3) with their schedules: pose maps in, RGB frames out.

    Build with :meth:`from_pretrained` (a folder holding ``btunet/`` and optionally ``sr3/``
    checkpoints) or directly from loaded networks.
    """

    def __init__(
        self,
        btunet: nn.Module,
        schedule: ScheduleConfig,
        sr3: nn.Module | None = None,
        sr3_schedule: ScheduleConfig | None = None,
        *,
        device: str | torch.device | None = None,
        meta: dict[str, Any] | None = None,
        cascade: list[tuple[nn.Module, ScheduleConfig]] | None = None,
    ) -> None:
        if (sr3 is None) != (sr3_schedule is None):
            raise AnimatorError("sr3 and sr3_schedule must be given together")
        if cascade and sr3 is None:
            raise AnimatorError("cascade stages need a first SR3 stage (sr3)")
        res = btunet.config.resolution
        for k, net in enumerate([] if sr3 is None else [sr3] + [m for m, _ in cascade or []]):
            if net.config.low_resolution != res:
                before = "the BTU-Net" if k == 0 else f"SR3 stage {k}"
                raise AnimatorError(
                    f"SR3 stage {k + 1} expects {net.config.low_resolution} px input but {before} makes {res} px frames"
                )
            res = net.config.resolution
        self.btunet = btunet.eval()
        self.schedule = schedule
        self.sr3 = None if sr3 is None else sr3.eval()
        self.sr3_schedule = sr3_schedule
        # the SR3 stages after the first (model folders' sr3-2/, ...), each fed the one before
        self.cascade = [(net.eval(), sched) for net, sched in cascade or []]
        self.meta = meta or {}
        self.device = torch.device("cpu")
        self.to(default_device() if device is None else device)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], device: str | torch.device | None = None) -> Animator:
        """Load ``directory/btunet`` and, when present, its SR3 stages ``directory/sr3``, ``sr3-2``, ...
        (checkpoint folders; :func:`sr3_stage_dirs`)."""
        root = Path(directory)
        if not root.is_dir():
            raise AnimatorError(f"model folder {root} does not exist")
        if not (root / "btunet").is_dir():
            raise AnimatorError(f"{root}: no btunet/ checkpoint folder inside")
        btunet, schedule, meta = load_checkpoint(root / "btunet", kind="btunet")
        stages = [load_checkpoint(folder, kind="sr3") for folder in sr3_stage_dirs(root)]
        sr3, sr3_schedule, sr3_meta = stages[0] if stages else (None, None, {})
        return cls(btunet, schedule, sr3, sr3_schedule, device=device,
                   meta={"btunet": meta, "sr3": sr3_meta, "cascade": [m for _, _, m in stages[1:]]},
                   cascade=[(net, sched) for net, sched, _ in stages[1:]])

    def to(self, device: str | torch.device) -> Animator:
        """Move the networks to ``device`` (returns self).

        On the CPU the weights are kept channels-last (NHWC), which oneDNN's convolutions run
        faster on; results agree with the contiguous layout to float rounding.
        """
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise AnimatorError(f"device {device} requested but CUDA is not available")
        layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        self.btunet.to(device, memory_format=layout)
        for net, _ in self.sr3_stages:
            net.to(device, memory_format=layout)
        self.device = device
        return self

    @property
    def low_resolution(self) -> int:
        """The BTU-Net's frame size."""
        return int(self.btunet.config.resolution)

    @property
    def sr3_stages(self) -> list[tuple[nn.Module, ScheduleConfig]]:
        """Every SR3 stage in order (none, ``sr3`` alone, or ``sr3`` then the cascade's)."""
        if self.sr3 is None:
            return []
        assert self.sr3_schedule is not None
        return [(self.sr3, self.sr3_schedule), *self.cascade]

    @property
    def resolution(self) -> int:
        """The output frame size: the last SR3 stage's when there is one, else the BTU-Net's."""
        stages = self.sr3_stages
        return int(stages[-1][0].config.resolution) if stages else self.low_resolution

    def sr_steps_for(self, steps: int, sr_steps: int | None = None, stage: int = 0) -> int:
        """A job's steps for SR3 stage ``stage`` (0 = ``sr3/``, 1 = ``sr3-2/``, ...): ``sr_steps``
        when given (every stage); else the stage checkpoint's own choice (``extra.sampling.sr_steps``
        in its config.json: the shipped residual SR3 says 1, its x0 prediction from pure noise, the
        conditional mean, which scored best on held-out people,
        docs/results/default_model_residual.md); else ``steps``."""
        if sr_steps is not None:
            return sr_steps
        meta = self.meta.get("sr3", {}) if stage == 0 else (self.meta.get("cascade") or [{}] * stage)[stage - 1]
        extra = meta.get("extra") or {}
        own = (extra.get("sampling") or {}).get("sr_steps") if isinstance(extra, dict) else None
        if own is None:
            return steps
        where = f"{SR3_STAGE_DIRS[stage]}/config.json extra.sampling.sr_steps"
        check_int(own, where, AnimatorError, lo=1, hi=int(JOB_LIMITS["sr_steps"][1]))
        return int(own)

    def sr3_calls(self, frames: int, steps: int, sr_steps: int | None = None, batch: int | None = None,
                  workers: int | None = None) -> int:
        """The SR3 network calls (every stage) that :meth:`super_resolve` makes for ``frames`` frames
        with these arguments: the ``total`` of its ``"sr3"`` callbacks."""
        workers, _ = sampling_workers(self.device, workers)
        return sum(
            math.ceil(frames / (batch or max_batch_for(int(net.config.resolution), self.device, workers)))
            * self.sr_steps_for(steps, sr_steps, k)
            for k, (net, _) in enumerate(self.sr3_stages)
        )

    def animate(
        self,
        pose_maps: np.ndarray | Tensor,
        appearance: np.ndarray | None = None,
        appearance_iuv: np.ndarray | None = None,
        **options: Any,
    ) -> np.ndarray:
        """Generate all frames at once: uint8 RGB (T, R, R, 3), R = :attr:`resolution`.

        Arguments (``steps``, ``sr_steps``, ``seed``, ``finetune_steps``, ``finetune_lr``,
        ``sampler``, ``eta``, ``max_batch``, ``callback``, ``cancel``, ``device``, ...) as in
        :meth:`animate_iter`.
        """
        return np.stack(list(self.animate_iter(pose_maps, appearance, appearance_iuv, **options)))

    @property
    def uses_warp(self) -> bool:
        """Whether the networks take the texture-transfer prior (``warp_channels`` in their configs)."""
        return bool(getattr(self.btunet.config, "warp_channels", 0))

    def animate_iter(
        self,
        pose_maps: np.ndarray | Tensor,
        appearance: np.ndarray | None = None,
        appearance_iuv: np.ndarray | None = None,
        *,
        views: Sequence[tuple[np.ndarray, np.ndarray]] = (),
        steps: int = _JOB.steps,
        sr_steps: int | None = _JOB.sr_steps,
        seed: int = _JOB.seed,
        finetune_steps: int = _JOB.finetune_steps,
        finetune_lr: float = _JOB.finetune_lr,
        finetune_batch: int = 4,
        sampler: str = _JOB.sampler,
        eta: float = _JOB.eta,
        max_batch: int | None = _JOB.max_batch,
        sr_batch: int | None = None,
        sr_low_res_logsnr: float | None = None,
        sr_noise: str = _JOB.noise,
        noise: str = _JOB.noise,
        callback: Callback | None = None,
        cancel: object = None,
        device: str | torch.device | None = None,
        precision: str = "auto",
        workers: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Generate frames one at a time (uint8 RGB (R, R, 3)), streaming the SR3 stage.

        The job in its stages: :meth:`prepare`, :meth:`finetune`, :meth:`sample_low`,
        :meth:`super_resolve` (the service's worker drives the same stages, adding resuming).

        Args:
            pose_maps: uint8 IUV maps (T, H, W, 3), square, any size (resized NEAREST to the
                BTU-Net's resolution), or a float tensor in the IUV tensor form (T, 3, H, W).
                A warp-conditioned model looks its prior up at this size (give the output size).
            appearance: the appearance image c, RGB uint8 (H, W, 3), square; None for
                person-specific / unconditional models (the null token).
            appearance_iuv: g(c), the IUV map of ``appearance`` (H, W, 3) uint8: used by
                fine-tuning and by a warp-conditioned model's texture-transfer prior (without it,
                such a model gets the blank prior and draws from c alone).
            views: further pictures of the same person, ``(image, iuv)`` pairs (uint8 (H, W, 3)
                and its IUV map), e.g. renders at other frames of the shot: their pixels join c's
                UV texture, so the prior shows what c hides (a warp-conditioned model only; needs
                g(c)). c alone conditions the networks and fine-tuning.
            steps: BTU-Net denoising steps (paper: 50).
            sr_steps: SR3 denoising steps (None: the SR3 checkpoint's own choice, else ``steps``;
                :meth:`sr_steps_for`).
            seed: the seed of every random draw.
            finetune_steps: single-image fine-tuning iterations before sampling (paper: 300),
                on a copy of the BTU-Net; 0 = none.
            finetune_lr, finetune_batch: fine-tuning settings (paper lr: 1e-5).
            sampler: ``"bidirectional"`` (algorithm 1) or ``"unidirectional"`` (the baseline).
            eta: 0 = DDIM, 1 = ancestral sampling (both stages).
            max_batch: frames per BTU-Net call (None: from a memory budget).
            sr_batch: frames per SR3 call (None: from a memory budget).
            sr_low_res_logsnr: SR3 conditioning-augmentation level at inference (None: clean).
            sr_noise: ``"shared"`` (one SR3 noise for every frame: no flicker of invented
                detail) or ``"independent"`` (a draw per frame), see :func:`sample_sr3`.
            noise: the BTU-Net sampler's noise across frames, ``"shared"`` (one Y^K for every
                frame: far less flicker, docs/results/ablation_wide.md) or ``"independent"`` (a
                draw per frame), see :func:`sample_bidirectional`.
            callback: ``callback(stage, step, total)``, stages ``"finetune"``, the sampler's
                name, ``"sr3"``.
            cancel: ``threading.Event`` or callable; raises :class:`Cancelled` within one step.
            device: move the networks there first (None: where they are).
            precision: network arithmetic for sampling: ``"auto"`` (bf16 autocast on CUDA and on
                CPUs with native bf16, else float32), ``"float32"`` or ``"bfloat16"``. Fine-tuning
                always trains in float32.
            workers: threads that run a step's network calls side by side, each with
                ``torch.get_num_threads() // workers`` intra-op threads while sampling
                (:func:`sampling_workers`; None: one per CPU thread, 1 on CUDA). The frames do
                not depend on it.
        """
        if device is not None:
            self.to(device)
        resolve_precision(precision, self.device)  # an unknown name fails before any work
        # the one job validator and the job's cross-field rules, the CLI's and the service's (btdm_engine/jobspec.py)
        spec = JobSpec(steps=steps, sr_steps=sr_steps, seed=seed, finetune_steps=finetune_steps,
                       finetune_lr=finetune_lr, sampler=sampler, eta=eta, noise=noise, max_batch=max_batch)
        spec.check(AnimatorError).check_inputs(
            AnimatorError, appearance=appearance is not None, appearance_iuv=appearance_iuv is not None,
            has_sr3=self.sr3 is not None, texture_prior=self.uses_warp,
            view_frames=range(len(views)))  # each view comes with its own IUV map: only their count matters
        check_choice(sr_noise, "sr_noise", NOISE_MODES, AnimatorError)
        if self.sr3 is None and (sr_batch is not None or sr_low_res_logsnr is not None):
            raise AnimatorError("sr_batch / sr_low_res_logsnr given but this Animator has no SR3 model")

        job = self.prepare(pose_maps, appearance, appearance_iuv, views)
        btunet = self.btunet
        if finetune_steps > 0:
            btunet = self.finetune(job, steps=finetune_steps, lr=finetune_lr, seed=seed, batch=finetune_batch,
                                   callback=callback, cancel=cancel)
        low = self.sample_low(job, btunet, steps=steps, seed=seed, sampler=sampler, eta=eta, noise=noise,
                              max_batch=max_batch, precision=precision, workers=workers, callback=callback,
                              cancel=cancel)
        del btunet
        if self.sr3 is None:
            yield from tensor_to_images(low)
            return
        for chunk in self.super_resolve(job, low, steps=steps, sr_steps=sr_steps, seed=seed, eta=eta,
                                        batch=sr_batch, low_res_logsnr=sr_low_res_logsnr, noise=sr_noise,
                                        precision=precision, workers=workers, callback=callback, cancel=cancel):
            yield from tensor_to_images(chunk)

    # -- the job's stages, in order (each with its own seed: ``_stage_seed(seed, 0 | 1 | 2)``)

    def prepare(
        self, pose_maps: np.ndarray | Tensor, appearance: np.ndarray | None = None,
        appearance_iuv: np.ndarray | None = None, views: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    ) -> GenerationInputs:
        """Stage 0: the networks' inputs: pose maps at the BTU-Net's size (NEAREST), c, g(c), and for
        a warp-conditioned model the texture-transfer prior of every frame (appended to the pose maps),
        from the UV texture of c and any further ``views`` (see :meth:`animate_iter`)."""
        res = self.low_resolution
        dev = self.device
        poses = prepare_pose_maps(pose_maps, res)
        c = None if appearance is None else image_to_tensor(appearance, res)
        g = None
        if appearance_iuv is not None:
            if appearance is None or not isinstance(appearance_iuv, np.ndarray) or appearance_iuv.shape != appearance.shape:
                raise AnimatorError(
                    f"appearance_iuv: expected one uint8 (H, W, 3) map the size of appearance "
                    f"{getattr(appearance, 'shape', None)}, got "
                    f"{getattr(appearance_iuv, 'shape', type(appearance_iuv).__name__)}"
                )
            g = iuv_to_network(appearance_iuv, res, where="appearance_iuv")
        texture = iuv = None
        if views and not self.uses_warp:
            raise AnimatorError(f"views: {len(views)} further views given, but this model takes no texture-transfer "
                                "prior, which is all they feed")
        if self.uses_warp:
            iuv = _as_iuv_array(pose_maps)
            texture = (UVTexture.blank() if appearance is None
                       else texture_from_image(appearance, appearance_iuv, views=views))
            poses = torch.cat([poses, warp_maps(texture, iuv, res)], dim=1)
            if g is not None:
                assert appearance_iuv is not None
                g = torch.cat([g, warp_maps(texture, appearance_iuv[None], res)[0]])
        return GenerationInputs(
            poses=poses.to(dev), appearance=None if c is None else c.to(dev),
            appearance_pose=None if g is None else g.to(dev),
            texture=texture, pose_maps=iuv,
        )

    def finetune(
        self, job: GenerationInputs, *, steps: int, lr: float = _JOB.finetune_lr, seed: int = _JOB.seed, batch: int = 4,
        callback: Callback | None = None, cancel: object = None,
    ) -> nn.Module:
        """Stage 1: single-image fine-tuning (sec. 3.3: Y = {c}, S = {g(c)}) on a copy of the BTU-Net,
        in the layout sampling uses on this device."""
        JobSpec(finetune_steps=steps).check_inputs(AnimatorError, appearance=job.appearance is not None,
                                                   appearance_iuv=job.appearance_pose is not None)
        tuned = finetune_btunet(
            self.btunet, job.appearance, job.appearance_pose, self.schedule, steps=steps, lr=lr,
            generator=_generator(seed, 0), batch=batch, callback=callback, cancel=cancel,
        )
        return tuned.to(memory_format=torch.channels_last if self.device.type == "cpu" else torch.contiguous_format)

    def sample_low(
        self, job: GenerationInputs, btunet: nn.Module | None = None, *, steps: int = _JOB.steps, seed: int = _JOB.seed,
        sampler: str = _JOB.sampler, eta: float = _JOB.eta, noise: str = _JOB.noise, max_batch: int | None = _JOB.max_batch,
        precision: str = "auto", workers: int | None = None, callback: Callback | None = None, cancel: object = None,
    ) -> Tensor:
        """Stage 2: the low-resolution sequence (T, 3, r, r) in [-1, 1], by algorithm 1 (or the
        autoregressive baseline) with ``btunet`` (None: the Animator's own)."""
        dev = self.device
        workers, intra = sampling_workers(dev, workers)
        net = _autocast_for(self.btunet if btunet is None else btunet, dev, precision)
        common = dict(steps=steps, schedule=self.schedule, generator=_generator(seed, 1), eta=eta,
                      callback=callback, cancel=cancel, noise=noise)
        if sampler == "bidirectional":
            batch = max_batch if max_batch is not None else pair_batch_for(self.low_resolution, dev, workers)
            with intra_op_threads(intra):
                return sample_bidirectional(net, job.poses, job.appearance, max_batch=batch, workers=workers, **common)
        if sampler == "unidirectional":  # one frame after the other: nothing to run side by side
            return sample_unidirectional(net, job.poses, job.appearance, **common)
        raise AnimatorError(f"sampler {sampler!r} is unknown; allowed: {', '.join(SAMPLERS)}")

    def super_resolve(
        self, job: GenerationInputs, low: Tensor, *, start: int = 0, steps: int = _JOB.steps,
        sr_steps: int | None = _JOB.sr_steps, seed: int = _JOB.seed, eta: float = _JOB.eta, batch: int | None = None,
        low_res_logsnr: float | None = None, noise: str = _JOB.noise, precision: str = "auto",
        workers: int | None = None, callback: Callback | None = None, cancel: object = None,
    ) -> Iterator[Tensor]:
        """Stage 3: SR3 over frames ``start..`` of ``low``, streamed in chunks (n, 3, R, R) in [-1, 1].

        Every SR3 stage of the model runs in turn on each chunk, the next stage reading the chunks
        of the one before as they come (a cascade never holds the sequence at any size above the
        BTU-Net's). A warp-conditioned stage reads each chunk's prior at its own output size. Steps
        per stage: :meth:`sr_steps_for`; seeds: stage 2 for ``sr3/``, 3 for ``sr3-2/``, ...;
        ``callback("sr3", call, total)`` counts the calls of every stage (:meth:`sr3_calls`).
        """
        stages = self.sr3_stages
        if not stages:
            raise AnimatorError("this Animator has no SR3 model")
        dev = self.device
        workers, intra = sampling_workers(dev, workers)
        frames = low.shape[0] - start
        total = self.sr3_calls(frames, steps, sr_steps, batch, workers)
        calls = 0

        def counted(_stage: str, _step: int, _total: int | None) -> None:
            nonlocal calls
            calls += 1
            if callback is not None:
                callback("sr3", calls, total)

        chunks: Tensor | Iterator[Tensor] = low[start:].to(dev)
        for k, (net, schedule) in enumerate(stages):
            size = int(net.config.resolution)
            warp = None
            if job.texture is not None and getattr(net.config, "warp_channels", 0):
                texture, iuv = job.texture, job.pose_maps
                assert iuv is not None
                warp = functools.partial(_warp_frames, texture, iuv, start, size)
            chunks = sample_sr3(
                _autocast_for(net, dev, precision), chunks, steps=self.sr_steps_for(steps, sr_steps, k),
                schedule=schedule, generator=_generator(seed, 2 + k), resolution=size, eta=eta,
                batch=batch if batch is not None else max_batch_for(size, dev, workers), num_frames=frames,
                low_res_logsnr=low_res_logsnr, noise=noise, callback=counted, cancel=cancel, workers=workers,
                warp=warp,
            )
        yield from stream_with_threads(chunks, intra)


def _warp_frames(texture: UVTexture, iuv: np.ndarray, offset: int, size: int, a: int, b: int) -> Tensor:
    """The prior of frames ``offset + a .. offset + b - 1`` at ``size`` px (a stage's ``warp``)."""
    return warp_maps(texture, iuv[offset + a : offset + b], size)


@dataclass
class GenerationInputs:
    """What :meth:`Animator.prepare` makes of a job's inputs, for the stages after it.

    poses: (T, C, r, r) conditioning maps at the BTU-Net's size on the device: the pose maps in
        tensor form, then for a warp-conditioned model the prior (w_t, confidence).
    appearance: c (3, r, r) or None; appearance_pose: g(c)'s conditioning map (C, r, r) or None.
    texture: the appearance's UV texture (warp-conditioned models; blank without g(c)).
    pose_maps: the uint8 IUV maps as given (T, H, W, 3), for the prior at the output size.
    """

    poses: Tensor
    appearance: Tensor | None
    appearance_pose: Tensor | None
    texture: UVTexture | None
    pose_maps: np.ndarray | None


def _as_iuv_array(pose_maps: np.ndarray | Tensor) -> np.ndarray:
    """Pose maps as uint8 IUV (T, H, W, 3), from either form :func:`prepare_pose_maps` accepts."""
    if isinstance(pose_maps, Tensor):
        if pose_maps.dtype == torch.uint8:
            return pose_maps.cpu().numpy()
        return tensor_to_iuv(pose_maps.detach().float().cpu())
    return pose_maps


__all__ = [
    "PRECISIONS",
    "SAMPLERS",
    "Animator",
    "AnimatorError",
    "GenerationInputs",
    "cpu_has_bf16",
    "default_device",
    "finetune_btunet",
    "image_to_tensor",
    "intra_op_threads",
    "iuv_to_network",
    "max_batch_for",
    "pair_batch_for",
    "prepare_pose_maps",
    "resize_pose_maps",
    "resolve_precision",
    "sampling_workers",
    "sr3_stage_dirs",
    "stream_with_threads",
    "tensor_to_images",
]
