"""Schedule (eq. 2) and losses (eq. 4, unidirectional baseline, SR3)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from btdm_engine.diffusion import (
    LossError,
    ScheduleConfig,
    ScheduleConfigError,
    alpha_sigma,
    bidirectional_loss,
    q_sample,
    sr3_loss,
    unidirectional_loss,
)
from btdm_engine.models import BTUNet, BTUNetConfig

SCHEDULE = ScheduleConfig()


# ------------------------------------------------------------------------------------ schedule


def test_logsnr_is_strictly_decreasing_with_exact_endpoints() -> None:
    t = torch.linspace(0, 1, 10_001, dtype=torch.float64)
    lam = SCHEDULE.logsnr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    assert lam[0].item() == pytest.approx(20.0, abs=1e-4)
    assert lam[-1].item() == pytest.approx(-20.0, abs=1e-4)
    # the middle of the cosine schedule is lambda = 0 (alpha = sigma) when the range is symmetric
    assert SCHEDULE.logsnr(0.5).item() == pytest.approx(0.0, abs=1e-5)
    shifted = ScheduleConfig(logsnr_min=-15.0, logsnr_max=10.0, shift=-1.5)
    ends = shifted.logsnr(torch.tensor([0.0, 1.0]))
    assert ends.tolist() == pytest.approx([8.5, -16.5], abs=1e-4)


def test_alpha_sigma_are_unit_norm_and_follow_the_sigmoid() -> None:
    lam = torch.cat([torch.linspace(-25, 25, 501), torch.tensor([math.inf, -math.inf])])
    alpha, sigma = alpha_sigma(lam)
    assert torch.allclose(alpha.square() + sigma.square(), torch.ones_like(lam), atol=1e-6)
    assert torch.allclose(alpha.square(), torch.sigmoid(lam))
    # log SNR really is log(alpha^2 / sigma^2) (eq. 2)
    finite = lam[:-2]
    assert torch.allclose(torch.log(alpha[:-2].square() / sigma[:-2].square()), finite, atol=1e-3)
    assert alpha[-2].item() == 1.0 and sigma[-2].item() == 0.0  # lambda = +inf: clean
    assert alpha[-1].item() == 0.0 and sigma[-1].item() == 1.0  # lambda = -inf: pure noise


def test_any_step_count_walks_the_training_curve() -> None:
    for steps in (1, 7, 50, 1000):
        levels = SCHEDULE.sampling_logsnrs(steps)
        assert levels.shape == (steps + 1,)
        assert math.isinf(levels[-1].item()) and levels[-1].item() > 0
        assert bool((levels[1:] > levels[:-1]).all())  # every step removes noise
        assert levels[0].item() == pytest.approx(-20.0, abs=1e-4)
    # 50 steps visit exactly the training levels k = 1000, 980, ..., 20 (t = k / K)
    k = torch.arange(1000, 0, -20)
    assert torch.equal(SCHEDULE.sampling_logsnrs(50)[:-1], SCHEDULE.train_logsnr(k))


def test_training_levels_are_uniform_over_one_to_k_and_seeded() -> None:
    config = ScheduleConfig(num_train_steps=10)
    draw = config.sample_train_logsnr(20_000, torch.Generator().manual_seed(3))
    grid = config.train_logsnr(torch.arange(1, 11))
    matches = (draw[:, None] == grid[None, :])
    assert bool(matches.any(dim=1).all())  # every draw is one of the K levels
    counts = matches.sum(dim=0).float()
    assert counts.min() > 1800 and counts.max() < 2200  # ~2000 each: uniform in k
    again = config.sample_train_logsnr(20_000, torch.Generator().manual_seed(3))
    assert torch.equal(draw, again)
    with pytest.raises(ScheduleConfigError, match="1..10"):
        config.train_logsnr(torch.tensor([0]))


def test_q_sample_has_the_right_mean_and_spread() -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.6)
    for lam in (-3.0, 0.0, 2.0):
        noise = torch.randn(x0.shape, generator=gen)
        y = q_sample(x0, torch.tensor(lam), noise)
        alpha, sigma = (v.item() for v in alpha_sigma(torch.tensor(lam)))
        assert y.mean().item() == pytest.approx(alpha * 0.6, abs=0.01)
        assert y.std().item() == pytest.approx(sigma, abs=0.01)
    # per-sample levels broadcast over (B, C, H, W)
    x0 = torch.ones(2, 3, 4, 4)
    y = q_sample(x0, torch.tensor([20.0, -20.0]), torch.zeros_like(x0))
    assert torch.allclose(y[0], torch.ones(3, 4, 4), atol=1e-4)
    assert torch.allclose(y[1], torch.zeros(3, 4, 4), atol=1e-4)
    with pytest.raises(ValueError, match="noise shape"):
        q_sample(x0, torch.tensor(0.0), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        q_sample(x0, torch.zeros(3), torch.zeros_like(x0))


def test_schedule_config_round_trip_and_strict_errors() -> None:
    config = ScheduleConfig(logsnr_min=-18.0, shift=0.5, num_train_steps=500)
    assert ScheduleConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ScheduleConfigError, match="unknown schedule config key.*bogus"):
        ScheduleConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ScheduleConfigError, match="allowed: cosine"):
        ScheduleConfig(kind="linear")
    with pytest.raises(ScheduleConfigError, match="below"):
        ScheduleConfig(logsnr_min=5.0, logsnr_max=5.0)
    with pytest.raises(ScheduleConfigError, match="steps must be a positive int"):
        config.sampling_logsnrs(0)
    with pytest.raises(ScheduleConfigError, match=r"\[0, 1\]"):
        config.logsnr(1.5)


# ------------------------------------------------------------------------------------ losses


class Recorder(nn.Module):
    """A BTU-Net-shaped module that records its inputs and returns fixed predictions."""

    def __init__(self, out_a: Tensor | None = None, out_b: Tensor | None = None) -> None:
        super().__init__()
        self.out_a, self.out_b = out_a, out_b
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: dict[str, Tensor | None] = {}

    def forward(self, x_a, x_b, logsnr, pose_a, pose_b, appearance=None, direction_a=None, appearance_mask=None):
        self.seen = dict(x_a=x_a, x_b=x_b, logsnr=logsnr, pose_a=pose_a, pose_b=pose_b,
                         appearance=appearance, direction_a=direction_a, appearance_mask=appearance_mask)
        a = torch.zeros_like(x_a) if self.out_a is None else self.out_a
        b = torch.zeros_like(x_b) if self.out_b is None else self.out_b
        return a * self.scale, b * self.scale


def _pair(batch: int = 4, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y_t, y_prev, s_t, s_prev, c = (torch.rand(batch, 3, 8, 8, generator=gen) * 2 - 1 for _ in range(5))
    return y_t, y_prev, s_t, s_prev, c


def test_bidirectional_loss_is_eq4_from_one_pair_pass() -> None:
    y_t, y_prev, s_t, s_prev, c = _pair()
    model = Recorder()
    loss = bidirectional_loss(model, y_t, y_prev, s_t, s_prev, c, SCHEDULE, torch.Generator().manual_seed(1))
    # a zero prediction costs 1/2 (|y_t|^2 + |y_{t-1}|^2), pixel means
    expected = 0.5 * (y_t.square().mean() + y_prev.square().mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    seen = model.seen
    lam = seen["logsnr"]
    assert lam.shape == (4,)
    assert bool((lam[:, None] == SCHEDULE.train_logsnr(torch.arange(1, 1001))[None]).any(1).all())
    # both frames at the SAME level, each with its own noise
    alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in alpha_sigma(lam))
    eps_a = (seen["x_a"] - alpha * y_t) / sigma
    eps_b = (seen["x_b"] - alpha * y_prev) / sigma
    assert eps_a.std().item() == pytest.approx(1.0, abs=0.2)
    assert eps_b.std().item() == pytest.approx(1.0, abs=0.2)
    assert abs(torch.corrcoef(torch.stack([eps_a.flatten(), eps_b.flatten()]))[0, 1].item()) < 0.15
    # branch a = y_t with s_t and d_f; branch b = y_{t-1} with s_{t-1} (gets d_b inside BTU-Net)
    assert torch.equal(seen["pose_a"], s_t) and torch.equal(seen["pose_b"], s_prev)
    assert torch.equal(seen["direction_a"], torch.zeros(4, dtype=torch.long))
    assert torch.equal(seen["appearance"], c)
    # a perfect x0 predictor has zero loss; seeded draws repeat
    perfect = Recorder(y_t, y_prev)
    assert bidirectional_loss(perfect, y_t, y_prev, s_t, s_prev, c, SCHEDULE, torch.Generator()).item() == 0.0
    twin = Recorder()
    again = bidirectional_loss(twin, y_t, y_prev, s_t, s_prev, c, SCHEDULE, torch.Generator().manual_seed(1))
    assert torch.equal(twin.seen["x_a"], seen["x_a"]) and torch.equal(twin.seen["x_b"], seen["x_b"])
    assert again.item() == loss.item()


def test_bidirectional_loss_trains_the_real_btunet() -> None:
    torch.manual_seed(0)
    model = BTUNet(BTUNetConfig.preset("tiny"))
    gen = torch.Generator().manual_seed(0)
    y_t, y_prev, s_t, s_prev, c = (torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(5))
    mask = torch.tensor([True, False])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):  # the zero-initialised residual outputs pass no gradient before a step
        optimizer.zero_grad()
        loss = bidirectional_loss(model, y_t, y_prev, s_t, s_prev, c, SCHEDULE, gen, appearance_mask=mask)
        loss.backward()
        optimizer.step()
        assert math.isfinite(loss.item()) and loss.item() > 0
    grads = {n: p.grad for n, p in model.named_parameters()}
    # the loss reaches d_f/d_b, E_p, lambda and E_a (sample 0 uses c): every conditioning path
    for prefix in ("direction.", "pose_encoder.", "appearance_encoder.", "logsnr_mlp."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)), prefix


def test_unidirectional_loss_conditions_on_the_clean_previous_frame() -> None:
    y_t, y_prev, s_t, s_prev, c = _pair()
    model = Recorder(out_b=torch.full((4, 3, 8, 8), 5.0))  # branch b's output must not count
    loss = unidirectional_loss(model, y_t, y_prev, s_t, s_prev, None, SCHEDULE, torch.Generator().manual_seed(2))
    assert loss.item() == pytest.approx(y_t.square().mean().item(), rel=1e-6)
    assert torch.equal(model.seen["x_b"], y_prev)  # y_{t-1}^0, not noised
    assert not torch.equal(model.seen["x_a"], y_t)
    assert model.seen["appearance"] is None
    assert torch.equal(model.seen["direction_a"], torch.zeros(4, dtype=torch.long))
    assert unidirectional_loss(Recorder(out_a=y_t), y_t, y_prev, s_t, s_prev, c, SCHEDULE, torch.Generator()).item() == 0.0


def test_truncated_snr_weighting_and_unknown_weighting() -> None:
    y_t, y_prev, s_t, s_prev, c = _pair(batch=64)
    plain = bidirectional_loss(Recorder(), y_t, y_prev, s_t, s_prev, c, SCHEDULE, torch.Generator().manual_seed(4))
    weighted = bidirectional_loss(
        Recorder(), y_t, y_prev, s_t, s_prev, c, SCHEDULE, torch.Generator().manual_seed(4), weighting="truncated_snr"
    )
    assert weighted.item() > plain.item()  # max(SNR, 1) >= 1, and > 1 for half the levels
    with pytest.raises(LossError, match="allowed: x0, truncated_snr"):
        bidirectional_loss(Recorder(), y_t, y_prev, s_t, s_prev, c, SCHEDULE, torch.Generator(), weighting="eps")
    with pytest.raises(LossError, match="y_prev shape"):
        bidirectional_loss(Recorder(), y_t, y_prev[:2], s_t, s_prev, c, SCHEDULE, torch.Generator())


class SR3Recorder(nn.Module):
    def __init__(self, out: Tensor | None = None) -> None:
        super().__init__()
        self.out = out
        self.seen: dict[str, Tensor] = {}

    def forward(self, x, logsnr, low_res, low_res_logsnr=None):
        self.seen = dict(x=x, logsnr=logsnr, low_res=low_res, low_res_logsnr=low_res_logsnr)
        return torch.zeros_like(x) if self.out is None else self.out


def test_sr3_loss_augments_the_low_res_condition() -> None:
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(256, 3, 8, 8, generator=gen) * 2 - 1
    lr = torch.rand(256, 3, 4, 4, generator=gen) * 2 - 1
    model = SR3Recorder()
    loss = sr3_loss(model, hr, lr, SCHEDULE, torch.Generator().manual_seed(5), aug_min_logsnr=1.0, aug_max_logsnr=6.0)
    assert loss.item() == pytest.approx(hr.square().mean().item(), rel=1e-6)
    aug = model.seen["low_res_logsnr"]
    assert aug.shape == (256,) and aug.min() >= 1.0 and aug.max() <= 6.0 and aug.std() > 1.0
    # the condition really carries noise of the level the model is told
    alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in alpha_sigma(aug))
    eps = (model.seen["low_res"] - alpha * lr) / sigma
    assert eps.std().item() == pytest.approx(1.0, abs=0.05)
    assert sr3_loss(SR3Recorder(hr), hr, lr, SCHEDULE, torch.Generator()).item() == 0.0
    with pytest.raises(LossError, match="must not exceed"):
        sr3_loss(model, hr, lr, SCHEDULE, torch.Generator(), aug_min_logsnr=5.0, aug_max_logsnr=1.0)
