"""Samplers: plain, stateless functions over an x0-predicting network (k-diffusion style).

Every sampler walks the same grid of log-SNR levels (:meth:`ScheduleConfig.sampling_logsnrs`)
and moves from one level to the next with :func:`ddim_step`, which turns the network's x0
prediction into the next state: deterministic DDIM for ``eta = 0``, the DDPM posterior
(ancestral sampling) for ``eta = 1``. The network is wrapped once (:class:`PairDenoiser`) so
every sampler shares one contract.

- :func:`sample_bidirectional`: algorithm 1 (paper app. A), one batched network call per step.
- :func:`sample_bidirectional_loop`: algorithm 1 written frame by frame, as the paper does; the
  reference the batched sampler is tested against.
- :func:`sample_unidirectional`: the autoregressive baseline (paper table 3).
- :func:`sample_sr3`: SR3 super-resolution, streaming chunks of frames.

Randomness: every draw comes from the ``generator`` argument, on the generator's device, and
is then moved to the data's device, so a seed gives the same frames on CPU and GPU (up to float
error). The batched and the literal sampler consume the generator identically: one ``(T, ...)``
initial noise tensor, then (``eta > 0``) one ``(T, ...)`` noise tensor per step except the last.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import einops
import torch
from torch import Tensor, nn

from btdm_engine.constants import DEFAULT_NOISE, NOISE_MODES
from btdm_engine.dataconfig import check_int
from btdm_engine.diffusion.common import D_BACKWARD, D_FORWARD, DIRECTIONS, PairNetwork, draw_noise
from btdm_engine.diffusion.schedule import ScheduleConfig, alpha_sigma, q_sample
from btdm_engine.errors import BtdmError

Callback = Callable[[str, int, "int | None"], None]
"""``callback(stage, step, total)``: called after every network step; ``step`` counts from 1."""

_T = TypeVar("_T")
_R = TypeVar("_R")


def _check_noise(noise: str) -> None:
    if noise not in NOISE_MODES:
        raise SamplerError(f"noise {noise!r} is unknown; allowed: {', '.join(NOISE_MODES)}")


def _frame_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device, noise: str) -> Tensor:
    """Noise for T frames (``shape[0]``): a draw per frame, or one (1, ...) draw shared by every frame."""
    return draw_noise(shape, generator, device) if noise == "independent" else _broadcast_noise(shape, 1, generator, device)


class Cancelled(Exception):
    """Raised by a sampler (or the fine-tuning loop) when its ``cancel`` signal is set."""


class SamplerError(BtdmError, ValueError):
    """A sampler argument that cannot be used (wrong shape, unknown option, bad value)."""


# --------------------------------------------------------------------------------------------
# Shared pieces


def cancel_checker(cancel: object) -> Callable[[], bool]:
    """Normalise ``cancel`` (None, a ``threading.Event``, or a callable returning bool)."""
    if cancel is None:
        return lambda: False
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return is_set
    if callable(cancel):
        return cancel  # type: ignore[return-value]
    raise SamplerError(
        f"cancel must be None, a threading.Event or a callable returning bool, got {type(cancel).__name__}"
    )


def _check_cancel(is_cancelled: Callable[[], bool], stage: str) -> None:
    if is_cancelled():
        raise Cancelled(f"{stage} sampling cancelled")


def _check_eval(model: object) -> None:
    # Dropout in training mode would draw from torch's global RNG, breaking "same seed, same frames".
    if isinstance(model, nn.Module) and model.training:
        raise SamplerError("the model is in training mode (dropout active); call model.eval() first")


def _check_eta(eta: float) -> float:
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise SamplerError(f"eta must lie in [0, 1] (0 = DDIM, 1 = ancestral), got {eta}")
    return eta


def _check_positive_int(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    check_int(value, name, SamplerError, lo=1)


def ddim_step(x: Tensor, x0: Tensor, logsnr_s: Tensor, logsnr_t: Tensor, eta: float, noise: Tensor | None) -> Tensor:
    """Move ``x`` from level lambda_s to the cleaner level lambda_t > lambda_s given x0.

    1. lambda -> alpha, sigma (eq. 2); the eps that ``x0`` implies at lambda_s.
    2. DDIM (Song et al. 2020a, eq. 12) in log-SNR form: x_t = alpha_t x0 + sqrt(sigma_t^2 - c^2) eps
       + c z, with c^2 = eta^2 (1 - r) sigma_t^2 and r = exp(lambda_s - lambda_t) = SNR_s / SNR_t.
       eta = 1 makes this the DDPM posterior q(x_t | x_s, x0) (Kingma et al. 2021, eq. 33),
       eta = 0 the deterministic DDIM update.
    3. lambda_t = +inf (the last step) returns x0 itself.

    The levels are 0-dim tensors; the samplers pass CPU ones (they broadcast against ``x`` on any
    device), so the last-step test reads no accelerator memory.
    """
    if math.isinf(float(logsnr_t)):
        return x0
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    eps = (x - alpha_s * x0) / sigma_s
    one_minus_r = -torch.expm1(logsnr_s - logsnr_t)
    c = eta * sigma_t * one_minus_r.sqrt()
    out = alpha_t * x0 + (sigma_t.square() - c.square()).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise SamplerError("ddim_step with eta > 0 needs a noise tensor")
        out = out + c * noise
    return out


def frame_chunks(num_frames: int, max_batch: int | None, workers: int = 1) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``num_frames`` frames for batched network calls.

    At most ``max_batch`` frames each (None: no limit), sizes as even as possible, and, where
    there are frames enough, a multiple of ``workers`` in number, so that when the calls of a
    step run on ``workers`` threads (:func:`worker_pool`) no thread waits for a short last chunk.
    60 frames, ``max_batch`` 16 and 2 workers give 4 chunks of 15, not 16 + 16 + 16 + 12.
    """
    _check_positive_int("max_batch", max_batch, allow_none=True)
    _check_positive_int("workers", workers)
    count = math.ceil(num_frames / (max_batch or num_frames))
    count = min(num_frames, math.ceil(count / workers) * workers)
    return [(i * num_frames // count, (i + 1) * num_frames // count) for i in range(count)]


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Callable[[Callable[[_T], _R], Sequence[_T]], list[_R]]]:
    """``map(fn, items)`` that runs the independent network calls of one step on ``workers`` threads.

    Data parallelism for the CPU: torch releases the GIL inside its kernels, so two calls on two
    threads with one intra-op thread each keep two cores busy, where one call on two intra-op
    threads spends much of its time forking and joining OpenMP teams around the small kernels of
    these networks (bench/bench_cpu.py measures both). Every call runs without autograd (the
    caller's ``no_grad`` is per thread); results come back in the order of ``items``; the first
    exception (e.g. :class:`Cancelled`) is raised in the caller once the running calls end.
    With ``workers == 1`` the calls run in the calling thread.
    """
    _check_positive_int("workers", workers)

    def call(fn: Callable[[_T], _R], item: _T) -> _R:
        with torch.no_grad():
            return fn(item)

    if workers == 1:
        yield lambda fn, items: [fn(item) for item in items]
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="btdm-sampler") as pool:
        yield lambda fn, items: list(pool.map(functools.partial(call, fn), items))


# Pose-encoder maps a sampler may keep for a whole sequence (E_p runs once instead of every step).
POSE_CACHE_BYTES = 1 << 30


class PairDenoiser:
    """The BTU-Net wrapped once for sampling: fixed pose/appearance conditioning, branch a's x0.

    ``__call__(x_a, x_b, idx_a, idx_b, logsnr, direction)`` runs the weight-shared pair pass on
    ``x_a`` (branch a: frames ``idx_a``, the ones being updated) and ``x_b`` (branch b: their
    neighbours ``idx_b``) with those frames' pose maps, the shared appearance, lambda and branch
    a's direction (an int for all, or a long tensor per sample), and returns branch a's x0
    prediction (float32), clipped to [-1, 1] (the data range; static thresholding as in Imagen)
    unless ``clip_x0`` is False.

    A network with ``prepare_sampling`` (the BTU-Net) encodes the pose maps and c once for the
    whole run and skips the part of branch b that nothing reads; anything else with the
    :class:`PairNetwork` contract (or whose ``prepare_sampling`` returns None) is called as is.
    """

    def __init__(self, model: PairNetwork, poses: Tensor, appearance: Tensor | None, clip_x0: bool = True) -> None:
        _check_eval(model)
        self.model = model
        self.poses = poses
        self.appearance = appearance
        self.clip_x0 = clip_x0
        self.calls = 0
        self._lock = threading.Lock()  # calls may come from several sampler threads (worker_pool)
        prepare = getattr(model, "prepare_sampling", None)
        self._prepared = prepare(poses, appearance, POSE_CACHE_BYTES) if callable(prepare) else None

    def __call__(
        self, x_a: Tensor, x_b: Tensor, idx_a: Tensor, idx_b: Tensor, logsnr: Tensor, direction: int | Tensor
    ) -> Tensor:
        b = x_a.shape[0]
        device = x_a.device
        levels = torch.full((b,), float(logsnr), dtype=torch.float32, device=device)  # CPU scalar in: no sync
        if isinstance(direction, Tensor):
            directions = direction.to(device=device, dtype=torch.long)
        else:
            directions = torch.full((b,), direction, dtype=torch.long, device=device)
        if self._prepared is not None:
            x0_a = self._prepared(x_a, x_b, levels, idx_a, idx_b, directions)
        else:
            appearance = None
            if self.appearance is not None:
                appearance = einops.repeat(self.appearance, "c h w -> b c h w", b=b)
            x0_a, _ = self.model(x_a, x_b, levels, self.poses[idx_a], self.poses[idx_b], appearance, directions)
        with self._lock:
            self.calls += 1
        x0_a = x0_a.float()
        return x0_a.clamp(-1.0, 1.0) if self.clip_x0 else x0_a


def _check_inputs(poses: Tensor, appearance: Tensor | None) -> None:
    # poses: the pose maps in tensor form, then any warp channels (a warp-conditioned BTU-Net)
    if not isinstance(poses, Tensor) or poses.ndim != 4 or poses.shape[1] < 3 or poses.shape[0] < 1:
        shape = tuple(poses.shape) if isinstance(poses, Tensor) else type(poses).__name__
        raise SamplerError(f"poses must be a (T, C >= 3, H, W) tensor with T >= 1, got {shape}")
    if appearance is not None:
        if not isinstance(appearance, Tensor) or appearance.shape != (3, *poses.shape[2:]):
            shape = tuple(appearance.shape) if isinstance(appearance, Tensor) else type(appearance).__name__
            raise SamplerError(
                f"appearance must be a (3, H, W) tensor matching poses {tuple(poses.shape[2:])}, got {shape}"
            )
        if appearance.device != poses.device:
            raise SamplerError(f"appearance is on {appearance.device} but poses on {poses.device}")


def _frame_shape(poses: Tensor) -> tuple[int, int, int, int]:
    """(T, 3, H, W): the frames that conditioning maps (T, C, H, W) ask for."""
    return (poses.shape[0], 3, poses.shape[2], poses.shape[3])


def _prepare(
    model: PairNetwork, poses: Tensor, appearance: Tensor | None, steps: int, schedule: ScheduleConfig, eta: float,
    cancel: object, clip_x0: bool,
) -> tuple[PairDenoiser, Callable[[], bool], float, Tensor]:
    """What every pair sampler checks and builds first: the wrapped network, the cancel check, eta, and the
    ``steps + 1`` log-SNR levels, kept on the CPU so reading one (``ddim_step``'s last-step test, the
    network's level) never waits for an accelerator."""
    _check_inputs(poses, appearance)
    _check_positive_int("steps", steps)
    eta = _check_eta(eta)
    denoise = PairDenoiser(model, poses, appearance, clip_x0)
    return denoise, cancel_checker(cancel), eta, schedule.sampling_logsnrs(steps)


def _is_forward(step: int, start_direction: str) -> bool:
    if start_direction not in DIRECTIONS:
        raise SamplerError(f"start_direction {start_direction!r} is unknown; allowed: {', '.join(DIRECTIONS)}")
    # Algorithm 1: forward when K - k is odd, i.e. steps alternate starting with start_direction.
    return (step % 2 == 0) == (start_direction == "forward")


def _neighbours(idx: Tensor, num_frames: int, forward: bool) -> tuple[Tensor, Tensor]:
    """Algorithm 1's neighbour and branch a's direction for frames ``idx`` (0-based) in one step.

    A forward step pairs frame t with t-1 under d_f, a backward step with t+1 under d_b. The
    frame at the leading end has no such neighbour (algorithm 1 leaves y_0 / y_{T+1}
    undefined); pairing it with itself would be a case training never shows (its pairs are
    always two distinct consecutive frames with independent noise), so it is paired with its
    one real neighbour in the opposite direction: frame 1 from (y_1, y_2) with d_b, frame T from
    (y_T, y_{T-1}) with d_f, both exactly training pairs. A one-frame sequence pairs with itself.
    """
    if forward:
        nbr, direction, end, other = idx - 1, D_FORWARD, 0, D_BACKWARD
    else:
        nbr, direction, end, other = idx + 1, D_BACKWARD, num_frames - 1, D_FORWARD
    at_end = idx == end
    if num_frames == 1:
        nbr = idx.clone()
    else:
        nbr = torch.where(at_end, 2 * idx - nbr, nbr)  # the neighbour on the other side
    directions = torch.where(
        at_end & (num_frames > 1), torch.full_like(idx, other), torch.full_like(idx, direction)
    )
    return nbr, directions


# --------------------------------------------------------------------------------------------
# Bidirectional recursive sampling (paper app. A, algorithm 1)


@torch.no_grad()
def sample_bidirectional(
    model: PairNetwork,
    poses: Tensor,
    appearance: Tensor | None = None,
    *,
    steps: int = 50,
    schedule: ScheduleConfig,
    generator: torch.Generator,
    eta: float = 0.0,
    max_batch: int | None = None,
    callback: Callback | None = None,
    cancel: object = None,
    start_direction: str = "forward",
    clip_x0: bool = True,
    noise: str = DEFAULT_NOISE,
    workers: int = 1,
) -> Tensor:
    """Generate T frames with bidirectional recursive sampling, one batched call per step.

    Args:
        model: the BTU-Net (eval mode) or anything with its ``forward`` contract.
        poses: pose maps (T, 3, H, W) in the IUV tensor form, on the device to run on.
        appearance: c (3, H, W) in [-1, 1], or None for the learnt null token (person-specific
            and unconditional models).
        steps: number of denoising steps (the paper uses 50 at test time).
        schedule: the schedule the model was trained with.
        generator: the source of every random draw.
        eta: 0 = deterministic DDIM update, 1 = ancestral (DDPM posterior) sampling.
        max_batch: frames per network call (None: all T in one call); memory grows with it.
            The calls of a step split the frames evenly (:func:`frame_chunks`).
        callback: ``callback("bidirectional", step, steps)`` after each step.
        cancel: a ``threading.Event`` or callable; checked before every network call, raises
            :class:`Cancelled`.
        start_direction: ``"forward"`` (algorithm 1) or ``"backward"``.
        clip_x0: clip x0 predictions to [-1, 1].
        noise: ``"shared"`` (default, :data:`~btdm_engine.constants.DEFAULT_NOISE`): one draw of
            Y^K and of every ancestral step's noise, the same for every frame (algorithm 1 only
            says "initial noisy inputs Y^K"). With DDIM the frames then differ only where their
            poses and neighbours make them differ, not by their starting noise: on the wide set's
            held-out people the warping error fell 80 % and tOF 62 % for 2 % of SSIM against
            ``"independent"``, a draw per frame (docs/results/ablation_wide.md).
        workers: threads that run a step's network calls side by side (:func:`worker_pool`);
            the model must be safe to call from several threads (inference-only modules are).
            The frames do not depend on it.

    Returns:
        The denoised frames (T, 3, H, W), float32 in [-1, 1] when ``clip_x0``.

    In a forward step frame t is updated from the pair (y_t^k, y_{t-1}^k) with direction d_f, in
    a backward step from (y_t^k, y_{t+1}^k) with d_b; the neighbour is read at the same level k
    (the state before the step), so all frames of a step are independent given that state and
    form one batch. The first (forward) or last (backward) frame, which has no such neighbour,
    is updated from its other neighbour with the opposite direction (:func:`_neighbours`).
    """
    _is_forward(0, start_direction)
    _check_noise(noise)
    denoise, is_cancelled, eta, logsnrs = _prepare(model, poses, appearance, steps, schedule, eta, cancel, clip_x0)
    num_frames = poses.shape[0]
    device = poses.device
    chunks = frame_chunks(num_frames, max_batch, workers)

    # 1. Y^K: pure noise for every frame (lambda_min makes alpha ~ 0).
    x = _frame_noise(_frame_shape(poses), generator, device, noise)
    with worker_pool(workers) as run:
        for i in range(steps):
            forward = _is_forward(i, start_direction)
            x0 = torch.empty_like(x)

            # 2. x0 for every frame from the pair (frame, neighbour), all read from the state at
            # level k: the chunks of a step are independent and may run side by side.
            def pair_call(span: tuple[int, int], x: Tensor = x, x0: Tensor = x0, i: int = i,
                          forward: bool = forward) -> None:
                _check_cancel(is_cancelled, "bidirectional")
                start, stop = span
                idx_a = torch.arange(start, stop, device=device)
                idx_b, directions = _neighbours(idx_a, num_frames, forward)  # the state shifted by one frame
                x0[start:stop] = denoise(x[start:stop], x[idx_b], idx_a, idx_b, logsnrs[i], directions)

            run(pair_call, chunks)
            # 3. level k -> k-1 for all frames at once (DDIM / ancestral, ddim_step).
            step_noise = _frame_noise(tuple(x.shape), generator, device, noise) if eta > 0 and i < steps - 1 else None
            x = ddim_step(x, x0, logsnrs[i], logsnrs[i + 1], eta, step_noise)
            if callback is not None:
                callback("bidirectional", i + 1, steps)
    return x


@torch.no_grad()
def sample_bidirectional_loop(
    model: PairNetwork,
    poses: Tensor,
    appearance: Tensor | None = None,
    *,
    steps: int = 50,
    schedule: ScheduleConfig,
    generator: torch.Generator,
    eta: float = 0.0,
    callback: Callback | None = None,
    cancel: object = None,
    start_direction: str = "forward",
    clip_x0: bool = True,
    noise: str = DEFAULT_NOISE,
) -> Tensor:
    """Algorithm 1 literally: one network call per frame and step (reference implementation).

    Same arguments and same result as :func:`sample_bidirectional` (up to float error); it
    exists to show and test that the batched sampler is the paper's algorithm. Frames are 1-based
    in the comments, as in the paper.
    """
    _is_forward(0, start_direction)
    _check_noise(noise)
    denoise, is_cancelled, eta, logsnrs = _prepare(model, poses, appearance, steps, schedule, eta, cancel, clip_x0)
    num_frames = poses.shape[0]
    device = poses.device

    y = _frame_noise(_frame_shape(poses), generator, device, noise)  # Y^K
    for i in range(steps):  # "for k = K-1 to 0"
        noise_needed = eta > 0 and i < steps - 1
        y_next = torch.empty_like(y)
        x0 = torch.empty_like(y)
        last = num_frames - 1
        if _is_forward(i, start_direction):
            # "for t = 1 to T: y_t^{k-1} = f(y_t^k, y_{t-1}^k, lambda(k), s_t, d_f)"; frame 1 has no
            # y_0 and is updated from (y_1^k, y_2^k) with d_b (a one-frame sequence: with itself).
            for t in range(num_frames):
                _check_cancel(is_cancelled, "bidirectional")
                nbr, d = (t - 1, D_FORWARD) if t > 0 else (min(1, last), D_BACKWARD if last else D_FORWARD)
                a, b = torch.tensor([t], device=device), torch.tensor([nbr], device=device)
                x0[t] = denoise(y[t : t + 1], y[nbr : nbr + 1], a, b, logsnrs[i], d)[0]
        else:
            # "for t = T to 1: y^{k-1} = f(y^k_t, y^k_{t+1}, lambda(k), s_t, d_b)"; frame T has no
            # y_{T+1} and is updated from (y_T^k, y_{T-1}^k) with d_f.
            for t in range(last, -1, -1):
                _check_cancel(is_cancelled, "bidirectional")
                nbr, d = (t + 1, D_BACKWARD) if t < last else (max(last - 1, 0), D_FORWARD if last else D_BACKWARD)
                a, b = torch.tensor([t], device=device), torch.tensor([nbr], device=device)
                x0[t] = denoise(y[t : t + 1], y[nbr : nbr + 1], a, b, logsnrs[i], d)[0]
        step_noise = _frame_noise(tuple(y.shape), generator, device, noise) if noise_needed else None
        for t in range(num_frames):
            y_next[t] = ddim_step(y[t], x0[t], logsnrs[i], logsnrs[i + 1], eta,
                                  None if step_noise is None else step_noise[t])
        y = y_next
        if callback is not None:
            callback("bidirectional", i + 1, steps)
    return y


# --------------------------------------------------------------------------------------------
# Unidirectional (autoregressive) baseline


@torch.no_grad()
def sample_unidirectional(
    model: PairNetwork,
    poses: Tensor,
    appearance: Tensor | None = None,
    *,
    steps: int = 50,
    schedule: ScheduleConfig,
    generator: torch.Generator,
    eta: float = 0.0,
    callback: Callback | None = None,
    cancel: object = None,
    clip_x0: bool = True,
    noise: str = DEFAULT_NOISE,
) -> Tensor:
    """The autoregressive baseline: p(Y) = prod_t p(y_t | y_{t-1}, s_t) (paper sec. 3, table 3).

    Frame t (t >= 2) is denoised through all ``steps`` levels in branch a (direction d_f) while
    branch b holds the FINISHED previous frame y_{t-1}^0 with its pose s_{t-1}, exactly as
    :func:`btdm_engine.diffusion.losses.unidirectional_loss` trains it. Frame 1 has no finished
    predecessor and is paired with itself at the same level, as in :func:`sample_bidirectional`.
    Frames depend on each other sequentially, so this costs T * steps network calls of one frame.

    Randomness (``noise="independent"``): one (T, ...) initial noise tensor, then per frame and
    step (eta > 0, not the last step) one (1, ...) noise tensor. ``"shared"``: one seed drawn from
    ``generator``, from which every frame replays the same initial and step noise (as in
    :func:`sample_bidirectional`). ``callback("unidirectional", n, T * steps)``.
    """
    _check_noise(noise)
    denoise, is_cancelled, eta, logsnrs = _prepare(model, poses, appearance, steps, schedule, eta, cancel, clip_x0)
    num_frames = poses.shape[0]
    device = poses.device
    total = num_frames * steps

    shared_seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if noise == "shared" else None
    init = draw_noise(_frame_shape(poses), generator, device) if shared_seed is None else None
    frames = torch.empty(_frame_shape(poses), device=device)
    done = 0
    for t in range(num_frames):
        if shared_seed is not None:  # every frame starts from (and steps with) the same draws
            generator = torch.Generator(generator.device).manual_seed(shared_seed)
            x = draw_noise((1, *_frame_shape(poses)[1:]), generator, device)
        else:
            x = init[t : t + 1]
        idx_a = torch.tensor([t], device=device)
        idx_b = torch.tensor([max(t - 1, 0)], device=device)
        for i in range(steps):
            _check_cancel(is_cancelled, "unidirectional")
            cond = x if t == 0 else frames[t - 1 : t]
            x0 = denoise(x, cond, idx_a, idx_b, logsnrs[i], D_FORWARD)
            noise = draw_noise(tuple(x.shape), generator, device) if eta > 0 and i < steps - 1 else None
            x = ddim_step(x, x0, logsnrs[i], logsnrs[i + 1], eta, noise)
            done += 1
            if callback is not None:
                callback("unidirectional", done, total)
        frames[t] = x[0]
    return frames


# --------------------------------------------------------------------------------------------
# SR3 super-resolution


def _broadcast_noise(shape: tuple[int, ...], draw: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """Noise of ``shape`` from ``draw`` frames' worth of draws (``shape[0]``, or 1 shared by every frame)."""
    return draw_noise((draw, *shape[1:]), generator, device).expand(shape).contiguous()


def _iter_batches(low_res: Tensor | Iterable[Tensor], batch: int) -> Iterator[Tensor]:
    """Regroup single frames (3, h, w) or chunks (n, 3, h, w) into batches of ``batch`` frames."""
    if isinstance(low_res, Tensor):
        if low_res.ndim != 4:
            raise SamplerError(f"low_res must be (T, 3, h, w), got {tuple(low_res.shape)}")
        yield from low_res.split(batch)
        return
    pending: list[Tensor] = []
    count = 0
    for item in low_res:
        if not isinstance(item, Tensor) or item.ndim not in (3, 4):
            shape = tuple(item.shape) if isinstance(item, Tensor) else type(item).__name__
            raise SamplerError(f"low_res items must be (3, h, w) or (n, 3, h, w) tensors, got {shape}")
        item = item.unsqueeze(0) if item.ndim == 3 else item
        pending.append(item)
        count += item.shape[0]
        while count >= batch:
            joined = torch.cat(pending)
            yield joined[:batch]
            rest = joined[batch:]
            pending = [rest] if rest.shape[0] else []
            count = rest.shape[0]
    if count:
        yield torch.cat(pending)


@torch.no_grad()
def sample_sr3(
    model: Callable[..., Tensor],
    low_res: Tensor | Iterable[Tensor],
    *,
    steps: int = 50,
    schedule: ScheduleConfig,
    generator: torch.Generator,
    resolution: int | None = None,
    eta: float = 0.0,
    batch: int = 8,
    low_res_logsnr: float | None = None,
    num_frames: int | None = None,
    callback: Callback | None = None,
    cancel: object = None,
    clip_x0: bool = True,
    noise: str = DEFAULT_NOISE,
    workers: int = 1,
    warp: Callable[[int, int], Tensor] | None = None,
) -> Iterator[Tensor]:
    """Super-resolve frames with SR3 (Saharia et al. 2022b), streaming ``batch`` frames at a time.

    Args:
        model: the SR3 network (eval mode): ``model(x, logsnr, low_res, low_res_logsnr) -> x0``.
        low_res: (T, 3, h, w) in [-1, 1], or an iterable of (3, h, w) frames / (n, 3, h, w) chunks
            (consumed lazily, so a long sequence is never held at high resolution).
        steps, schedule, generator, eta, clip_x0: as in :func:`sample_bidirectional`.
        resolution: output size; None takes ``model.config.resolution``.
        batch: frames per network call and per yielded chunk.
        low_res_logsnr: noise-conditioning augmentation level applied to the low-res frames at
            inference (the model was trained with it, :func:`~btdm_engine.diffusion.losses.sr3_loss`);
            None passes them clean.
        num_frames: T for the callback's total when ``low_res`` has no ``len``.
        callback: ``callback("sr3", step, total)`` after each network call, ``total`` =
            ceil(T / batch) * steps (None when T is unknown).
        noise: ``"shared"`` (default): every frame gets the same noise (initial, augmentation
            and per step), so the detail SR3 invents is the same from frame to frame where the
            low-resolution frames agree, instead of a fresh draw per frame that flickers; the
            frames then also do not depend on ``batch``. ``"independent"``: a draw per frame.
        workers: ``workers`` chunks are denoised side by side, each on its own thread
            (:func:`worker_pool`); the frames do not depend on it, and at most ``workers * batch``
            high-resolution frames exist at a time.
        warp: for a warp-conditioned SR3, ``warp(start, stop)`` gives frames ``start..stop-1``'s
            texture-transfer prior at the output resolution ((n, C, R, R), frame 0 = the first of
            ``low_res``), made per chunk so a long sequence never holds it whole; the model is then
            called ``model(x, logsnr, low_res, low_res_logsnr, warp)``.

    Yields:
        (n, 3, resolution, resolution) float32 chunks in input order, n <= batch.

    Randomness: every chunk draws from its own generator, in this order: (n, ...) initial noise,
    (n, ...) augmentation noise when ``low_res_logsnr`` is set, and (n, ...) noise per step
    (eta > 0, not the last step). ``"shared"`` seeds every chunk's generator with one seed drawn
    from ``generator`` and draws (1, ...) tensors broadcast over the chunk; ``"independent"``
    draws one seed per chunk from ``generator``, in chunk order.
    """
    _check_positive_int("steps", steps)
    _check_positive_int("batch", batch)
    _check_positive_int("workers", workers)
    _check_noise(noise)
    eta = _check_eta(eta)
    _check_eval(model)
    is_cancelled = cancel_checker(cancel)
    if resolution is None:
        config = getattr(model, "config", None)
        resolution = getattr(config, "resolution", None)
        if resolution is None:
            raise SamplerError("sample_sr3 needs resolution= (the model has no config.resolution)")
    _check_positive_int("resolution", resolution)
    if num_frames is None and hasattr(low_res, "__len__"):
        num_frames = len(low_res)  # type: ignore[arg-type]
    total = None if num_frames is None else math.ceil(num_frames / batch) * steps
    logsnrs = schedule.sampling_logsnrs(steps)
    shared_seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if noise == "shared" else None
    done = 0
    batches = _iter_batches(low_res, batch)
    start = 0

    def new_chunk(lr: Tensor) -> _SR3Chunk:
        nonlocal start
        chunk = _SR3Chunk(lr, resolution, generator, shared_seed, low_res_logsnr)
        if warp is not None:
            chunk.warp = warp(start, start + lr.shape[0]).to(device=lr.device, dtype=torch.float32)
        start += lr.shape[0]
        return chunk

    with worker_pool(workers) as run:
        while wave := [new_chunk(lr) for lr in itertools.islice(batches, workers)]:
            for i in range(steps):
                _check_cancel(is_cancelled, "sr3")

                def sr3_call(chunk: _SR3Chunk, i: int = i) -> Tensor:
                    _check_cancel(is_cancelled, "sr3")
                    levels = torch.full((chunk.x.shape[0],), float(logsnrs[i]), device=chunk.x.device)
                    if chunk.warp is None:
                        return model(chunk.x, levels, chunk.low_res, chunk.aug).float()
                    return model(chunk.x, levels, chunk.low_res, chunk.aug, chunk.warp).float()

                for chunk, x0 in zip(wave, run(sr3_call, wave), strict=True):
                    x0 = x0.clamp(-1.0, 1.0) if clip_x0 else x0
                    step_noise = chunk.noise(tuple(chunk.x.shape)) if eta > 0 and i < steps - 1 else None
                    chunk.x = ddim_step(chunk.x, x0, logsnrs[i], logsnrs[i + 1], eta, step_noise)
                    done += 1
                    if callback is not None:
                        callback("sr3", done, total)
            for chunk in wave:
                yield chunk.x


class _SR3Chunk:
    """One chunk of frames in :func:`sample_sr3`: its state x, its (augmented) low-res frames and its noise."""

    def __init__(self, low_res: Tensor, resolution: int, generator: torch.Generator, shared_seed: int | None,
                 low_res_logsnr: float | None) -> None:
        if low_res.shape[1] != 3:
            raise SamplerError(f"low_res frames must have 3 channels, got {tuple(low_res.shape)}")
        n, device = low_res.shape[0], low_res.device
        if shared_seed is None:  # independent: a seed per chunk, drawn in chunk order
            seed, draw = int(torch.randint(0, 2**62, (1,), generator=generator)), n
        else:  # shared: the same draws for every chunk, each broadcast over the chunk's frames
            seed, draw = shared_seed, 1
        own = torch.Generator(generator.device).manual_seed(seed)
        self.noise = functools.partial(_broadcast_noise, draw=draw, generator=own, device=device)
        self.x = self.noise((n, 3, resolution, resolution))
        self.low_res = low_res.float()
        self.warp: Tensor | None = None
        self.aug = None
        if low_res_logsnr is not None:
            # Conditioning augmentation (Ho et al. 2022, CDM): the level the model saw in training.
            self.aug = torch.full((n,), float(low_res_logsnr), device=device)
            self.low_res = q_sample(self.low_res, self.aug, self.noise(tuple(self.low_res.shape)))
