"""Samplers: algorithm 1 batched == literal loop, oracle recovery, pairing, seeds, cancel, SR3 streaming."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from btdm_engine.diffusion import (
    Cancelled,
    SamplerError,
    ScheduleConfig,
    alpha_sigma,
    ddim_step,
    frame_chunks,
    sample_bidirectional,
    sample_bidirectional_loop,
    sample_sr3,
    sample_unidirectional,
)
from btdm_engine.models import BTUNet, BTUNetConfig

SCHEDULE = ScheduleConfig()
RES = 8


def coded_poses(num_frames: int, res: int = RES) -> Tensor:
    """Pose maps whose channel 0 is a constant code of the frame index, so a model can tell frames apart."""
    poses = torch.zeros(num_frames, 3, res, res)
    for t in range(num_frames):
        poses[t, 0] = frame_code(t, num_frames)
    return poses


def frame_code(t: int, num_frames: int) -> float:
    return -1.0 + 2.0 * (t + 1) / (num_frames + 1)


def decode(pose: Tensor, num_frames: int) -> Tensor:
    codes = torch.tensor([frame_code(t, num_frames) for t in range(num_frames)])
    return (pose[:, 0, 0, 0, None] - codes[None]).abs().argmin(dim=1)


class Spy(nn.Module):
    """BTU-Net-shaped module: output depends on both branches; records every call."""

    def __init__(self, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.calls: list[dict[str, Tensor]] = []
        self.eval()

    def forward(self, x_a, x_b, logsnr, pose_a, pose_b, appearance=None, direction_a=None, appearance_mask=None):
        self.calls.append(dict(a=decode(pose_a, self.num_frames), b=decode(pose_b, self.num_frames),
                               x_a=x_a.clone(), x_b=x_b.clone(), logsnr=logsnr.clone(), d=direction_a.clone()))
        c = 0.0 if appearance is None else appearance
        d = direction_a.float().reshape(-1, 1, 1, 1)
        return (torch.tanh(0.7 * x_a + 0.4 * x_b + 0.2 * c + 0.1 * d),
                torch.tanh(0.7 * x_b + 0.4 * x_a + 0.2 * c + 0.1 * (1 - d)))


class Oracle(nn.Module):
    """Returns the true x0 of each branch's frame (identified by its pose code)."""

    def __init__(self, targets: Tensor) -> None:
        super().__init__()
        self.targets = targets
        self.eval()

    def forward(self, x_a, x_b, logsnr, pose_a, pose_b, appearance=None, direction_a=None, appearance_mask=None):
        n = self.targets.shape[0]
        return self.targets[decode(pose_a, n)], self.targets[decode(pose_b, n)]


def tiny_btunet() -> BTUNet:
    """The real tiny BTU-Net with its zero-initialised layers (residual outputs, attention
    projections) filled with small random values, so that, like a trained network and unlike a
    fresh one, its output depends on the neighbour frame, the direction and the appearance."""
    torch.manual_seed(0)
    model = BTUNet(BTUNetConfig.preset("tiny")).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def test_the_test_network_reads_its_neighbour_and_direction() -> None:
    model = tiny_btunet()
    x_a, x_b, pose = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    lam = torch.zeros(2)
    with torch.no_grad():
        base = model(x_a, x_b, lam, pose, pose)[0]
        other_b = model(x_a, torch.zeros_like(x_b), lam, pose, pose)[0]
        backward = model(x_a, x_b, lam, pose, pose, None, torch.ones(2, dtype=torch.long))[0]
    assert (base - other_b).abs().mean() > 1e-3
    assert (base - backward).abs().mean() > 1e-3


# ------------------------------------------------------------------------------------ algorithm 1


@pytest.mark.parametrize("noise", ["independent", "shared"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("num_frames", [1, 2, 5])
def test_batched_sampler_equals_the_literal_algorithm_1_loop(num_frames: int, eta: float, noise: str) -> None:
    model = tiny_btunet()
    gen = torch.Generator().manual_seed(11)
    poses = torch.rand(num_frames, 3, 32, 32, generator=gen) * 2 - 1
    c = torch.rand(3, 32, 32, generator=gen) * 2 - 1
    kwargs = dict(steps=3, schedule=SCHEDULE, eta=eta, noise=noise)
    batched = sample_bidirectional(model, poses, c, max_batch=2, generator=torch.Generator().manual_seed(5), **kwargs)
    loop = sample_bidirectional_loop(model, poses, c, generator=torch.Generator().manual_seed(5), **kwargs)
    assert batched.shape == (num_frames, 3, 32, 32)
    assert torch.allclose(batched, loop, atol=1e-5), (batched - loop).abs().max()


def test_shared_noise_starts_and_steps_every_frame_from_the_same_draws() -> None:
    # With equal poses and a network that ignores its neighbour, shared noise gives equal frames
    # (independent noise does not); with different poses the frames still differ.
    class PoseOnly(nn.Module):
        def forward(self, y_a, y_b, logsnr, pose_a, pose_b, c, direction):
            x0 = torch.tanh(pose_a + 0.1 * y_a)
            return x0, x0

    poses = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)).repeat(4, 1, 1, 1) * 2 - 1
    for sampler in (sample_bidirectional, sample_unidirectional):
        for eta in (0.0, 1.0):
            shared, independent = (sampler(PoseOnly().eval(), poses, None, steps=4, schedule=SCHEDULE, eta=eta,
                                           generator=torch.Generator().manual_seed(9), noise=noise)
                                   for noise in ("shared", "independent"))
            assert all(torch.equal(shared[0], shared[t]) for t in range(1, 4)), sampler.__name__
            assert not torch.equal(independent[0], independent[1]), sampler.__name__
    different = poses.clone()
    different[2] = -different[2]
    out = sample_bidirectional(PoseOnly().eval(), different, None, steps=4, schedule=SCHEDULE,
                               generator=torch.Generator().manual_seed(9), noise="shared")
    assert not torch.equal(out[0], out[2])
    with pytest.raises(SamplerError, match="noise 'none' is unknown"):
        sample_bidirectional(PoseOnly().eval(), poses, None, steps=2, schedule=SCHEDULE,
                             generator=torch.Generator().manual_seed(9), noise="none")


def test_batched_equals_loop_starting_backward_without_appearance() -> None:
    model = tiny_btunet()
    poses = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    kwargs = dict(steps=3, schedule=SCHEDULE, eta=0.5, start_direction="backward")
    batched = sample_bidirectional(model, poses, None, generator=torch.Generator().manual_seed(1), **kwargs)
    loop = sample_bidirectional_loop(model, poses, None, generator=torch.Generator().manual_seed(1), **kwargs)
    assert torch.allclose(batched, loop, atol=1e-5)


def test_steps_alternate_and_pair_each_frame_with_its_neighbour_at_the_same_level() -> None:
    num_frames, steps = 5, 4
    spy = Spy(num_frames)
    sample_bidirectional(spy, coded_poses(num_frames), None, steps=steps, schedule=SCHEDULE,
                         generator=torch.Generator().manual_seed(0), max_batch=2)
    assert len(spy.calls) == steps * 3  # ceil(5 / 2) network calls per step, never one per frame
    levels = SCHEDULE.sampling_logsnrs(steps)
    for step in range(steps):
        calls = spy.calls[step * 3 : step * 3 + 3]
        a = torch.cat([c["a"] for c in calls])
        b = torch.cat([c["b"] for c in calls])
        d = torch.cat([c["d"] for c in calls])
        assert a.tolist() == list(range(num_frames))
        # Never a frame with itself (a pair training never shows): the end without a neighbour
        # in this step's direction reads its other neighbour with the opposite direction.
        if step % 2 == 0:  # forward: t reads t-1 under d_f; frame 1 reads frame 2 under d_b
            assert b.tolist() == [1, 0, 1, 2, 3] and d.tolist() == [1, 0, 0, 0, 0]
        else:  # backward: t reads t+1 under d_b; frame T reads frame T-1 under d_f
            assert b.tolist() == [1, 2, 3, 4, 3] and d.tolist() == [1, 1, 1, 1, 0]
        state = torch.cat([c["x_a"] for c in calls])
        neighbours = torch.cat([c["x_b"] for c in calls])
        assert torch.equal(neighbours, state[b])  # the neighbour at the same level k, before the update
        assert all(bool((c["logsnr"] == levels[step]).all()) for c in calls)


def test_a_one_frame_sequence_pairs_its_frame_with_itself() -> None:
    spy = Spy(1)
    sample_bidirectional(spy, coded_poses(1), None, steps=2, schedule=SCHEDULE, generator=torch.Generator().manual_seed(0))
    assert [(c["a"].tolist(), c["b"].tolist(), c["d"].tolist()) for c in spy.calls] == [([0], [0], [0]), ([0], [0], [1])]


@pytest.mark.parametrize("with_appearance", [True, False])
@pytest.mark.parametrize("cache_bytes", [1 << 30, 0])
def test_prepared_sampling_equals_the_plain_pair_pass(with_appearance: bool, cache_bytes: int) -> None:
    # The sampler's fast path (E_p and E_a encoded once, branch b dropped after its last
    # attention block) must give branch a's x0 exactly as BTUNet.forward does.
    model = tiny_btunet()
    gen = torch.Generator().manual_seed(4)
    poses = torch.rand(6, 3, 32, 32, generator=gen) * 2 - 1
    c = torch.rand(3, 32, 32, generator=gen) * 2 - 1 if with_appearance else None
    idx_a, idx_b = torch.tensor([0, 3, 5, 2]), torch.tensor([1, 2, 4, 3])
    x_a, x_b = torch.randn(4, 3, 32, 32, generator=gen), torch.randn(4, 3, 32, 32, generator=gen)
    lam = torch.full((4,), -1.5)
    direction = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        plain = model(x_a, x_b, lam, poses[idx_a], poses[idx_b], None if c is None else c.expand(4, -1, -1, -1), direction)[0]
        prepared = model.prepare_sampling(poses, c, cache_bytes)
        assert (prepared.pose_cache is None) == (cache_bytes == 0)
        fast = prepared(x_a, x_b, lam, idx_a, idx_b, direction)
    assert fast.shape == plain.shape
    assert torch.allclose(fast, plain, atol=2e-5), (fast - plain).abs().max()


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_oracle_denoiser_recovers_the_target_exactly(eta: float) -> None:
    targets = torch.rand(4, 3, RES, RES, generator=torch.Generator().manual_seed(0)) * 2 - 1
    poses = coded_poses(4)
    for sampler in (sample_bidirectional, sample_bidirectional_loop, sample_unidirectional):
        out = sampler(Oracle(targets), poses, None, steps=6, schedule=SCHEDULE,
                      generator=torch.Generator().manual_seed(3), eta=eta)
        assert torch.equal(out, targets), sampler.__name__


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_keeps_the_marginal_of_eq_2(eta: float) -> None:
    # With the true x0, any eta maps samples of q(x_s | x0) to samples of q(x_t | x0).
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.3)
    lam_s, lam_t = torch.tensor(-1.0), torch.tensor(2.5)
    a_s, s_s = alpha_sigma(lam_s)
    a_t, s_t = alpha_sigma(lam_t)
    eps = torch.randn(x0.shape, generator=gen)
    x_t = ddim_step(a_s * x0 + s_s * eps, x0, lam_s, lam_t, eta, torch.randn(x0.shape, generator=gen))
    assert x_t.mean().item() == pytest.approx((a_t * 0.3).item(), abs=0.01)
    assert x_t.std().item() == pytest.approx(s_t.item(), abs=0.01)
    if eta == 0.0:  # deterministic DDIM keeps the very same eps
        assert torch.allclose(x_t, a_t * x0 + s_t * eps, atol=1e-5)
    assert torch.equal(ddim_step(eps, x0, lam_s, torch.tensor(float("inf")), eta, None), x0)


def test_same_seed_same_frames_different_seed_different_frames() -> None:
    model = tiny_btunet()
    poses = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    run = lambda seed, eta: sample_bidirectional(model, poses, None, steps=2, schedule=SCHEDULE,  # noqa: E731
                                                 generator=torch.Generator().manual_seed(seed), eta=eta)
    assert torch.equal(run(1, 1.0), run(1, 1.0))
    assert not torch.allclose(run(1, 1.0), run(2, 1.0), atol=1e-3)
    assert not torch.allclose(run(1, 0.0), run(2, 0.0), atol=1e-3)


# ------------------------------------------------------------------------------------ progress, cancel


def test_callbacks_report_every_step_in_order() -> None:
    seen: list[tuple] = []
    sample_bidirectional(Spy(3), coded_poses(3), None, steps=4, schedule=SCHEDULE,
                         generator=torch.Generator(), callback=lambda *a: seen.append(a))
    assert seen == [("bidirectional", i, 4) for i in range(1, 5)]
    seen.clear()
    sample_unidirectional(Spy(3), coded_poses(3), None, steps=2, schedule=SCHEDULE,
                          generator=torch.Generator(), callback=lambda *a: seen.append(a))
    assert seen == [("unidirectional", i, 6) for i in range(1, 7)]


def test_cancel_stops_within_one_step() -> None:
    spy = Spy(5)
    event = threading.Event()

    def on_step(stage: str, step: int, total: int) -> None:
        if step == 2:
            event.set()

    with pytest.raises(Cancelled):
        sample_bidirectional(spy, coded_poses(5), None, steps=10, schedule=SCHEDULE, max_batch=2,
                             generator=torch.Generator(), callback=on_step, cancel=event)
    assert len(spy.calls) == 2 * 3  # two full steps, not one network call more
    spy = Spy(5)
    with pytest.raises(Cancelled):
        sample_bidirectional_loop(spy, coded_poses(5), None, steps=10, schedule=SCHEDULE,
                                  generator=torch.Generator(), cancel=lambda: len(spy.calls) >= 7)
    assert len(spy.calls) == 7
    spy = Spy(4)
    with pytest.raises(Cancelled):
        sample_unidirectional(spy, coded_poses(4), None, steps=10, schedule=SCHEDULE,
                              generator=torch.Generator(), cancel=lambda: len(spy.calls) >= 3)
    assert len(spy.calls) == 3
    with pytest.raises(SamplerError, match="cancel must be"):
        sample_bidirectional(Spy(1), coded_poses(1), None, steps=1, schedule=SCHEDULE,
                             generator=torch.Generator(), cancel="yes")


def test_bad_arguments_are_named() -> None:
    poses = coded_poses(2)
    gen = torch.Generator()
    with pytest.raises(SamplerError, match="allowed: forward, backward"):
        sample_bidirectional(Spy(2), poses, None, steps=1, schedule=SCHEDULE, generator=gen, start_direction="up")
    with pytest.raises(SamplerError, match="eta must lie"):
        sample_bidirectional(Spy(2), poses, None, steps=1, schedule=SCHEDULE, generator=gen, eta=1.5)
    with pytest.raises(SamplerError, match=r"poses must be a \(T, C >= 3, H, W\)"):
        sample_bidirectional(Spy(2), poses[0], None, steps=1, schedule=SCHEDULE, generator=gen)
    with pytest.raises(SamplerError, match="appearance must be"):
        sample_bidirectional(Spy(2), poses, torch.zeros(3, 4, 4), steps=1, schedule=SCHEDULE, generator=gen)
    with pytest.raises(SamplerError, match="max_batch"):
        sample_bidirectional(Spy(2), poses, None, steps=1, schedule=SCHEDULE, generator=gen, max_batch=0)
    with pytest.raises(SamplerError, match="training mode"):
        sample_bidirectional(Spy(2).train(), poses, None, steps=1, schedule=SCHEDULE, generator=gen)


# ------------------------------------------------------------------------------------ SR3


class SR3Oracle(nn.Module):
    """Knows the high-res targets; finds each frame from its (clean) low-res input."""

    def __init__(self, targets: Tensor, low: Tensor) -> None:
        super().__init__()
        self.targets, self.low = targets, low
        self.calls = 0
        self.eval()

    def forward(self, x, logsnr, low_res, low_res_logsnr=None):
        self.calls += 1
        dist = (low_res[:, None] - self.low[None]).flatten(2).abs().sum(-1)
        return self.targets[dist.argmin(dim=1)]


class SR3Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x, logsnr, low_res, low_res_logsnr=None):
        self.calls += 1
        up = F.interpolate(low_res, size=x.shape[-2:], mode="bicubic", align_corners=False)
        return torch.tanh(up + 0.3 * x)


def test_sr3_oracle_recovers_targets_and_streams_in_chunks() -> None:
    gen = torch.Generator().manual_seed(0)
    targets = torch.rand(5, 3, 16, 16, generator=gen) * 2 - 1
    low = F.avg_pool2d(targets, 2)
    chunks = list(sample_sr3(SR3Oracle(targets, low), low, steps=4, schedule=SCHEDULE, resolution=16,
                             generator=torch.Generator().manual_seed(1), eta=1.0, batch=2))
    assert [c.shape[0] for c in chunks] == [2, 2, 1]
    assert torch.equal(torch.cat(chunks), targets)


def test_sr3_consumes_its_input_lazily_and_matches_the_tensor_path() -> None:
    low = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pulled: list[int] = []

    def frames():
        for i, frame in enumerate(low):
            pulled.append(i)
            yield frame

    seen: list[tuple] = []
    stream = sample_sr3(SR3Toy().eval(), frames(), steps=3, schedule=SCHEDULE, resolution=16, num_frames=5,
                        generator=torch.Generator().manual_seed(2), batch=2, callback=lambda *a: seen.append(a))
    first = next(stream)
    assert first.shape == (2, 3, 16, 16) and len(pulled) <= 3  # never reads the whole sequence ahead
    streamed = torch.cat([first, *stream])
    whole = torch.cat(list(sample_sr3(SR3Toy().eval(), low, steps=3, schedule=SCHEDULE, resolution=16,
                                      generator=torch.Generator().manual_seed(2), batch=2)))
    assert torch.equal(streamed, whole)
    assert seen == [("sr3", i, 9) for i in range(1, 10)]


def test_sr3_cancel_and_augmentation() -> None:
    low = torch.zeros(4, 3, 8, 8)
    toy = SR3Toy().eval()
    event = threading.Event()
    stream = sample_sr3(toy, low, steps=5, schedule=SCHEDULE, resolution=16, generator=torch.Generator(),
                        batch=2, cancel=event, callback=lambda *a: event.set())
    with pytest.raises(Cancelled):
        list(stream)
    assert toy.calls == 1
    # conditioning augmentation at inference: the model sees a noised low-res frame and its level
    seen: dict[str, Tensor] = {}

    class Probe(SR3Toy):
        def forward(self, x, logsnr, low_res, low_res_logsnr=None):
            seen.update(low_res=low_res, level=low_res_logsnr)
            return super().forward(x, logsnr, low_res, low_res_logsnr)

    list(sample_sr3(Probe().eval(), low, steps=1, schedule=SCHEDULE, resolution=16, generator=torch.Generator(),
                    batch=4, low_res_logsnr=1.0))
    assert torch.equal(seen["level"], torch.full((4,), 1.0))
    assert seen["low_res"].std().item() == pytest.approx(alpha_sigma(torch.tensor(1.0))[1].item(), abs=0.05)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sr3_shares_its_noise_across_frames_and_batches(eta: float) -> None:
    # Shared noise: equal low-res frames come out equal (no per-frame flicker of invented detail),
    # and the frames do not depend on how they are batched. Independent noise does neither.
    frame = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    low = torch.cat([frame, frame, frame, frame * 0.5, frame])

    def run(batch: int, noise: str) -> Tensor:
        return torch.cat(list(sample_sr3(SR3Toy().eval(), low, steps=3, schedule=SCHEDULE, resolution=16, eta=eta,
                                         generator=torch.Generator().manual_seed(7), batch=batch, noise=noise,
                                         low_res_logsnr=2.0)))

    shared = run(2, "shared")
    assert all(torch.equal(shared[0], shared[i]) for i in (1, 2, 4))
    assert not torch.allclose(shared[0], shared[3])
    assert torch.equal(shared, run(5, "shared")) and torch.equal(shared, run(1, "shared"))
    independent = run(2, "independent")
    assert not torch.allclose(independent[0], independent[1])
    with pytest.raises(SamplerError, match="noise 'fresh' is unknown"):
        next(sample_sr3(SR3Toy().eval(), low, steps=1, schedule=SCHEDULE, resolution=16,
                        generator=torch.Generator(), noise="fresh"))


# ------------------------------------------------------------------------ calls side by side


def test_frame_chunks_are_even_capped_and_fill_the_workers() -> None:
    assert frame_chunks(60, 16, 2) == [(0, 15), (15, 30), (30, 45), (45, 60)]  # not 16 + 16 + 16 + 12
    assert frame_chunks(5, 2) == [(0, 1), (1, 3), (3, 5)]
    assert frame_chunks(3, None, 4) == [(0, 1), (1, 2), (2, 3)]  # never a chunk without frames
    assert frame_chunks(7, None) == [(0, 7)]
    for frames in range(1, 40):
        for batch in (None, 1, 3, 16):
            for workers in (1, 2, 3, 8):
                chunks = frame_chunks(frames, batch, workers)
                sizes = [stop - start for start, stop in chunks]
                assert [start for start, _ in chunks] == [0, *(stop for _, stop in chunks[:-1])]
                assert chunks[-1][1] == frames and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
                assert batch is None or max(sizes) <= batch
                assert len(chunks) % workers == 0 or len(chunks) == frames
    with pytest.raises(SamplerError, match="workers"):
        frame_chunks(5, 2, 0)


class Meeting:
    """Wraps a network so that its calls must meet in twos (a barrier): they can only return if two
    run at the same time, on two threads. Records the threads and whether autograd was on."""

    def __init__(self, net: nn.Module) -> None:
        self.net, self.barrier = net, threading.Barrier(2, timeout=20)
        self.threads: set[int] = set()
        self.grad: list[bool] = []
        self.training = False

    def __call__(self, *args):
        self.threads.add(threading.get_ident())
        self.grad.append(torch.is_grad_enabled())
        self.barrier.wait()
        return self.net(*args)


@pytest.mark.parametrize("noise", ["independent", "shared"])
def test_bidirectional_calls_run_side_by_side_and_give_the_same_frames(noise: str) -> None:
    poses = coded_poses(6)
    kwargs = dict(steps=3, schedule=SCHEDULE, eta=1.0, max_batch=3, noise=noise)
    alone = sample_bidirectional(Spy(6), poses, None, generator=torch.Generator().manual_seed(4), **kwargs)
    meeting = Meeting(Spy(6))
    together = sample_bidirectional(meeting, poses, None, generator=torch.Generator().manual_seed(4), workers=2, **kwargs)
    assert torch.equal(together, alone)
    assert len(meeting.threads) == 2 and threading.get_ident() not in meeting.threads
    assert meeting.grad == [False] * 6  # two calls per step, both without autograd
    # a cancel seen by a worker ends the run within the step
    spy, event = Spy(5), threading.Event()
    with pytest.raises(Cancelled):
        sample_bidirectional(spy, coded_poses(5), None, steps=10, schedule=SCHEDULE, max_batch=2, workers=2,
                             generator=torch.Generator(), callback=lambda *a: event.set(), cancel=event)
    assert len(spy.calls) == 4  # one step of 4 chunks (ceil(5 / 2) rounded up to 2 workers)


@pytest.mark.parametrize("noise", ["independent", "shared"])
def test_sr3_chunks_run_side_by_side_and_give_the_same_frames(noise: str) -> None:
    low = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kwargs = dict(steps=3, schedule=SCHEDULE, resolution=16, eta=1.0, batch=2, noise=noise, low_res_logsnr=2.0)
    seen: list[tuple] = []
    alone = list(sample_sr3(SR3Toy().eval(), low, generator=torch.Generator().manual_seed(3), **kwargs))
    meeting = Meeting(SR3Toy().eval())
    meeting.barrier = threading.Barrier(2, timeout=1)
    with pytest.raises(threading.BrokenBarrierError):  # 3 chunks: the last one has nobody to meet
        list(sample_sr3(meeting, low, generator=torch.Generator().manual_seed(3), workers=2, **kwargs))
    meeting = Meeting(SR3Toy().eval())
    together = list(sample_sr3(meeting, low[:4], generator=torch.Generator().manual_seed(3), workers=2,
                               callback=lambda *a: seen.append(a), **kwargs))
    assert len(meeting.threads) == 2 and meeting.grad == [False] * 6
    assert [c.shape[0] for c in together] == [2, 2]
    assert torch.equal(torch.cat(together), torch.cat(alone)[:4])  # chunk for chunk, the frames of one thread
    assert seen == [("sr3", i, 6) for i in range(1, 7)]
    two = list(sample_sr3(SR3Toy().eval(), low, generator=torch.Generator().manual_seed(3), workers=2, **kwargs))
    assert [c.shape[0] for c in two] == [2, 2, 1] and torch.equal(torch.cat(two), torch.cat(alone))
