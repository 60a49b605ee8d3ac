"""BTU-Net and SR3 networks (btdm_engine.models): contracts, pair symmetry, wiring, training."""

from __future__ import annotations

import json

import pytest
import torch

from btdm_engine.models import (
    CLEAN_LOGSNR,
    SR3,
    BTUNet,
    BTUNetConfig,
    BTUNetInputError,
    ModelConfigError,
    SR3Config,
    SR3InputError,
    build_model,
)
from btdm_engine.models.flops import count_flops, count_parameters, example_inputs

R = 32  # tiny preset resolution


def _seeded_tiny(seed: int = 0) -> BTUNet:
    torch.manual_seed(seed)
    return BTUNet(BTUNetConfig.preset("tiny"))


def _pair_inputs(batch: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def frames() -> torch.Tensor:
        return torch.rand(batch, 3, R, R, generator=g) * 2 - 1

    # pose maps like iuv_to_tensor's: part index I/24 mapped to [-1, 1], background -1
    parts = torch.randint(0, 25, (batch, 1, R, R), generator=g).float() / 24 * 2 - 1
    uv = torch.rand(batch, 2, R, R, generator=g) * 2 - 1
    pose_a = torch.cat([parts, uv], dim=1)
    pose_b = torch.cat([parts.roll(1, dims=-1), uv.roll(1, dims=-1)], dim=1)
    return dict(
        x_a=frames(), x_b=frames(), logsnr=torch.rand(batch, generator=g) * 20 - 10,
        pose_a=pose_a, pose_b=pose_b, appearance=frames(),
    )


@pytest.fixture(scope="module")
def woken() -> BTUNet:
    """Tiny BTU-Net after a few Adam steps.

    Every residual branch and attention output starts at zero (guided-diffusion init), so at
    init x_b, c and the direction vectors cannot reach the output yet; a few optimiser steps
    on a conditional loss (mixed appearance mask, mixed directions) move every parameter off
    that point. The wiring tests run on this model.
    """
    model = _seeded_tiny(3)
    inp = _pair_inputs(2, seed=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        x0_a, x0_b = model(
            **inp, direction_a=torch.tensor([0, 1]), appearance_mask=torch.tensor([True, False])
        )
        target = torch.randn(2, 2, 3, R, R, generator=g)
        loss = (x0_a - target[0]).pow(2).mean() + (x0_b - target[1]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# --- shapes and input checks -------------------------------------------------------------


@pytest.mark.parametrize("task", ["conditional", "no_appearance", "masked"])
def test_btunet_output_shapes_per_task(task: str) -> None:
    model = _seeded_tiny().eval()
    inp = _pair_inputs(3)
    kwargs: dict[str, torch.Tensor | None] = {}
    if task == "no_appearance":
        inp["appearance"] = None  # type: ignore[assignment]
    if task == "masked":
        kwargs["appearance_mask"] = torch.tensor([True, False, True])
    with torch.no_grad():
        x0_a, x0_b = model(**inp, **kwargs)
    assert x0_a.shape == x0_b.shape == (3, 3, R, R)
    assert torch.isfinite(x0_a).all() and torch.isfinite(x0_b).all()
    assert not torch.allclose(x0_a, x0_b)


def test_sr3_tiny_output_shape_and_conditioning() -> None:
    torch.manual_seed(0)
    model = SR3(SR3Config.preset("tiny")).eval()
    assert (model.config.low_resolution, model.config.resolution) == (32, 128)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 128, 128, generator=g)
    low = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    lam = torch.tensor([-3.0, 4.0])
    with torch.no_grad():
        out = model(x, lam, low)
        clean = model(x, lam, low, torch.full((2,), CLEAN_LOGSNR))
        other_low = model(x, lam, low.flip(-1))
    assert out.shape == (2, 3, 128, 128)
    torch.testing.assert_close(out, clean)  # None means the fixed clean level
    # the concatenated low-res frame reaches the output even at init (through the input conv)
    assert (out - other_low).abs().max() > 1e-3


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(x_b=torch.zeros(1, 3, 16, 16)), "x_b has shape"),
        (dict(pose_a=torch.zeros(1, 4, R, R)), "pose_a has shape"),
        (dict(logsnr=torch.zeros(2)), "logsnr has shape"),
        (dict(direction_a=torch.tensor([2])), "direction_a holds"),
        (dict(direction_a=torch.tensor([0.0])), "direction_a has dtype"),
        (dict(appearance=None, appearance_mask=torch.tensor([True])), "appearance_mask given"),
    ],
)
def test_btunet_rejects_bad_inputs(change: dict, message: str) -> None:
    model = _seeded_tiny()
    inp = _pair_inputs(1)
    inp.update(change)
    with pytest.raises(BTUNetInputError, match=message):
        model(**inp)


def test_sr3_rejects_bad_low_res() -> None:
    model = SR3(SR3Config.preset("tiny"))
    with pytest.raises(SR3InputError, match="low_res has shape"):
        model(torch.zeros(1, 3, 128, 128), torch.zeros(1), torch.zeros(1, 3, 64, 64))


# --- the pair: symmetry and wiring -------------------------------------------------------


@pytest.mark.parametrize("use_woken", [False, True])
def test_pair_symmetry_swaps_outputs(use_woken: bool, woken: BTUNet) -> None:
    model = woken if use_woken else _seeded_tiny().eval()
    inp = _pair_inputs(2)
    direction = torch.tensor([0, 1])
    with torch.no_grad():
        x0_a, x0_b = model(**inp, direction_a=direction)
        s_a, s_b = model(
            inp["x_b"], inp["x_a"], inp["logsnr"], inp["pose_b"], inp["pose_a"],
            inp["appearance"], 1 - direction,
        )
    torch.testing.assert_close(s_a, x0_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_b, x0_a, atol=1e-5, rtol=1e-5)


def test_direction_vectors_matter(woken: BTUNet) -> None:
    inp = _pair_inputs(2)
    d = torch.tensor([0, 1])
    with torch.no_grad():
        x0_a, x0_b = woken(**inp, direction_a=d)
        # swap the frames but NOT the direction vectors: not a mirror image any more
        s_a, s_b = woken(
            inp["x_b"], inp["x_a"], inp["logsnr"], inp["pose_b"], inp["pose_a"], inp["appearance"], d
        )
    assert (s_a - x0_b).abs().max() > 1e-3
    assert (s_b - x0_a).abs().max() > 1e-3
    # the default direction is d_f for branch a
    with torch.no_grad():
        default_a, _ = woken(**inp)
        forward_a, _ = woken(**inp, direction_a=torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(default_a, forward_a, atol=0, rtol=0)
    # the two learnt vectors d_f, d_b are distinct from the start (random init)
    fresh = _seeded_tiny()
    assert (fresh.direction.weight[0] - fresh.direction.weight[1]).abs().max() > 0.1


def test_branch_a_reads_branch_b_and_appearance(woken: BTUNet) -> None:
    """x0_a depends on x_b (spatiotemporal block) and on c (appearance block), per sample.

    Measured by autograd: near init the attention is almost uniform over positions and the
    dependence is small in size, but any path gives a non-zero gradient, and per-sample
    independence gives exact zeros.
    """
    inp = _pair_inputs(2)
    x_b = inp["x_b"].clone().requires_grad_(True)
    c = inp["appearance"].clone().requires_grad_(True)
    x0_a, _ = woken(**{**inp, "x_b": x_b, "appearance": c})
    grad_b, grad_c = torch.autograd.grad(x0_a[0].sum(), [x_b, c])
    assert grad_b[0].abs().sum() > 0  # branch a reads branch b
    assert grad_c[0].abs().sum() > 0  # and the appearance image
    assert torch.count_nonzero(grad_b[1]) == 0 and torch.count_nonzero(grad_c[1]) == 0  # no leakage
    # the change is not float noise: moving x_b moves x0_a far beyond rounding
    with torch.no_grad():
        moved, _ = woken(**{**inp, "x_b": torch.full_like(inp["x_b"], 0.8)})
    assert (moved[0] - x0_a[0]).abs().max() > 1e-5


def test_masked_appearance_equals_none(woken: BTUNet) -> None:
    inp = _pair_inputs(3)
    mask = torch.tensor([False, True, False])
    with torch.no_grad():
        m_a, m_b = woken(**inp, appearance_mask=mask)
        n_a, n_b = woken(**{**inp, "appearance": None})
        c_a, c_b = woken(**inp)
    for masked, none, cond in ((m_a, n_a, c_a), (m_b, n_b, c_b)):
        torch.testing.assert_close(masked[~mask], none[~mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masked[mask], cond[mask], atol=1e-5, rtol=1e-5)
        assert (none[mask] - cond[mask]).abs().max() > 1e-5


# --- configs -----------------------------------------------------------------------------


@pytest.mark.parametrize("config_cls", [BTUNetConfig, SR3Config])
@pytest.mark.parametrize("preset", ["tiny", "base", "paper"])
def test_config_json_round_trip(config_cls: type, preset: str) -> None:
    config = config_cls.preset(preset)
    again = config_cls.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_config_errors_name_the_problem() -> None:
    d = BTUNetConfig.preset("tiny").to_dict()
    with pytest.raises(ModelConfigError, match=r"unknown key\(s\) \['bogus'\]"):
        BTUNetConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(ModelConfigError, match=r"missing key\(s\) \['resolution'\]"):
        BTUNetConfig.from_dict({k: v for k, v in d.items() if k != "resolution"})
    with pytest.raises(ModelConfigError, match=r"unknown preset 'huge'; allowed: \['base', 'paper', 'tiny', 'tiny-warp'\]"):
        BTUNetConfig.preset("huge")
    with pytest.raises(ModelConfigError, match="unknown preset"):
        SR3Config.preset("huge")
    with pytest.raises(ModelConfigError, match="attention_resolutions"):
        BTUNetConfig.preset("tiny").replace(attention_resolutions=(12,))
    with pytest.raises(ModelConfigError, match="num_heads"):
        BTUNetConfig.preset("tiny").replace(num_heads=3)
    with pytest.raises(ModelConfigError, match="resolution"):
        BTUNetConfig.preset("tiny").replace(resolution=36)
    with pytest.raises(ModelConfigError, match="dropout"):
        SR3Config.from_dict({**SR3Config.preset("tiny").to_dict(), "dropout": 2.0})
    with pytest.raises(ModelConfigError, match=r"unknown model kind 'vae'; allowed: \['btunet', 'sr3'\]"):
        build_model("vae", d)


def test_build_model_from_config_dict() -> None:
    torch.manual_seed(0)
    model = build_model("btunet", BTUNetConfig.preset("tiny").to_dict())
    assert isinstance(model, BTUNet) and model.config == BTUNetConfig.preset("tiny")
    assert isinstance(build_model("sr3", SR3Config.preset("tiny").to_dict()), SR3)


# --- determinism, gradients, training ----------------------------------------------------


def test_same_seed_same_weights_and_outputs() -> None:
    a, b = _seeded_tiny(7).eval(), _seeded_tiny(7).eval()
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(_seeded_tiny(8).direction.weight, a.direction.weight)
    inp = _pair_inputs(2)
    with torch.no_grad():
        out_a, out_b = a(**inp), b(**inp)
    assert torch.equal(out_a[0], out_b[0]) and torch.equal(out_a[1], out_b[1])


def test_every_parameter_gets_a_gradient(woken: BTUNet) -> None:
    """DDP needs every parameter in the graph; after the fixture's steps every grad is non-zero.

    A conditional forward with a mixed mask uses both E_a and the null tokens; with
    ``appearance=None`` E_a is (by design) unused, with no mask the null tokens are.
    """
    fresh = _seeded_tiny(3)
    moved = {n for n, p in woken.named_parameters() if not torch.equal(p, fresh.get_parameter(n))}
    unmoved = sorted({n for n, _ in woken.named_parameters()} - moved)
    assert not unmoved, f"parameters never updated: {unmoved}"

    model = _seeded_tiny()
    x0_a, x0_b = model(
        **_pair_inputs(2), direction_a=torch.tensor([1, 0]), appearance_mask=torch.tensor([True, False])
    )
    (x0_a.square().mean() + x0_b.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"


def test_sr3_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = SR3(SR3Config.preset("tiny").replace(attention_resolutions=(16,)))
    (args, kwargs) = example_inputs(model, 1, generator=torch.Generator().manual_seed(0))
    model(*args, **kwargs).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters outside the graph: {missing}"


def test_overfits_one_pair() -> None:
    """Eq. 4 on a single noisy pair: the x0-prediction MSE falls by more than 20x."""
    model = _seeded_tiny(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, R), torch.linspace(-1, 1, R), indexing="ij")

    def person(cx: float) -> torch.Tensor:  # a coloured disc on a grey background
        disc = ((xx - cx) ** 2 + yy**2) < 0.2
        colour = torch.tensor([0.9, -0.2, 0.3]).view(3, 1, 1)
        return torch.where(disc, colour, torch.tensor(-0.5)).unsqueeze(0)

    y_t, y_prev = person(0.1), person(0.0)
    lam = torch.tensor([0.0])
    alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()  # eq. 2
    g = torch.Generator().manual_seed(1)
    x_t = alpha * y_t + sigma * torch.randn(1, 3, R, R, generator=g)
    x_prev = alpha * y_prev + sigma * torch.randn(1, 3, R, R, generator=g)
    pose_t, pose_prev = (y_t > 0).float() * 2 - 1, (y_prev > 0).float() * 2 - 1

    def loss() -> torch.Tensor:
        x0_t, x0_prev = model(x_t, x_prev, lam, pose_t, pose_prev, y_prev)
        return 0.5 * ((x0_t - y_t).square().mean() + (x0_prev - y_prev).square().mean())

    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    with torch.no_grad():
        start = loss().item()
    for _ in range(40):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    with torch.no_grad():
        end = loss().item()
    assert end < start / 20, (start, end)


def test_flop_and_parameter_counts_are_consistent() -> None:
    model = _seeded_tiny()
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    one, two = count_flops(model, 1), count_flops(model, 2)
    assert one > 0 and two == 2 * one  # linear in batch
    # E_a is skipped when there is no appearance
    assert count_flops(model, 1, conditional=False) < one


def test_channels_last_and_bf16_autocast(woken: BTUNet) -> None:
    """Same numbers in channels-last memory; bf16 autocast (CPU here, CUDA in training) runs."""
    inp = _pair_inputs(2)
    with torch.no_grad():
        ref_a, ref_b = woken(**inp)
        cl = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in inp.items()}
        woken.to(memory_format=torch.channels_last)
        try:
            cl_a, cl_b = woken(**cl)
        finally:
            woken.to(memory_format=torch.contiguous_format)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf_a, bf_b = woken(**inp)
    torch.testing.assert_close(cl_a, ref_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cl_b, ref_b, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(bf_a.float()).all() and torch.isfinite(bf_b.float()).all()
    # bf16 keeps ~3 significant digits; the predictions stay close to float32's
    assert (bf_a.float() - ref_a).abs().mean() < 0.05 * ref_a.abs().mean()
    assert (bf_b.float() - ref_b).abs().mean() < 0.05 * ref_b.abs().mean()


@pytest.mark.parametrize("masked", [False, True])
def test_cpu_bf16_attention_matches_float32_sdpa(masked: bool) -> None:
    """CPU bf16 inference takes two bf16 matmuls instead of SDPA's float32 kernel: same attention
    to bf16 rounding, masked keys ignored, and training (grad enabled) keeps SDPA."""
    from btdm_engine.models.layers import MultiHeadAttention

    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 16, 2).eval()
    torch.nn.init.normal_(attn.to_out.weight, std=0.2)
    q, kv = torch.randn(3, 40, 32), torch.randn(3, 12, 16)
    mask = torch.rand(3, 12) < 0.6 if masked else None
    if mask is not None:
        mask[:, 0] = True
    with torch.no_grad():
        ref = attn(q, kv, kv, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = attn(q, kv, kv, mask)
            if mask is not None:  # a masked key's value must not leak in
                poisoned = kv.clone()
                poisoned[~mask] = 1e3
                assert torch.allclose(attn(q, kv, poisoned, mask).float(), fast.float())
    assert fast.dtype == torch.bfloat16
    assert (fast.float() - ref).abs().max() < 0.03 * ref.abs().max()


def test_residual_sr3_starts_at_the_prior_on_the_body_and_the_low_res_frame_around_it() -> None:
    """``residual``: x0 = base + U-Net; the head starts at zero, so an untrained network returns the
    base: the texture transfer's w_t on every body pixel (confidence >= FILLED, whether seen,
    mirrored or guessed), the upsampled low-res frame around the body and for a blank prior."""
    import numpy as np

    from btdm_engine.models.sr3 import residual_base
    from btdm_engine.posemaps.texture import UVTexture, build_texture, warp_maps

    torch.manual_seed(0)
    model = SR3(SR3Config.preset("tiny-warp").replace(residual=True)).eval()
    image = np.full((128, 128, 3), 255, np.uint8)
    iuv = np.zeros((128, 128, 3), np.uint8)
    iuv[30:100, 50:80] = (2, 60, 90)  # one part seen in c, in red
    image[30:100, 50:80] = (200, 20, 20)
    target = np.zeros((1, 128, 128, 3), np.uint8)
    target[0, 20:110, 40:90] = (2, 60, 90)  # the same part, bigger
    target[0, 20:40, 40:60] = (15, 30, 30)  # a part c never showed: guessed, still body
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 128, 128, generator=g)
    low = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    up = torch.nn.functional.interpolate(low, size=128, mode="bicubic", align_corners=False)
    for texture in (build_texture([(image, iuv)]), UVTexture.blank()):
        warp = warp_maps(texture, target, 128)
        with torch.no_grad():
            out = model(x, torch.tensor([0.0]), low, warp=warp)
        torch.testing.assert_close(out, residual_base(up, warp))
        body = torch.from_numpy(target[0, ..., 0] > 0)
        if texture.empty:  # nothing known: the low-res frame everywhere
            torch.testing.assert_close(out, up)
        else:
            torch.testing.assert_close(out[0][:, body], warp[0, :3][:, body])
            torch.testing.assert_close(out[0][:, ~body], up[0][:, ~body])
    with pytest.raises(ModelConfigError, match="residual"):
        SR3Config.preset("tiny-warp").replace(residual="yes")


def test_body_correction_shrinks_the_residual_correction_towards_the_prior_on_the_body_only() -> None:
    """``body_correction`` b: x0 = base + (1 - (1 - b) a) U-Net, so on the body (a = 1) the frame is
    b * (the full correction) + (1 - b) * the prior, and around the body (a = 0) the full correction."""
    import numpy as np

    from btdm_engine.models.sr3 import body_coverage
    from btdm_engine.posemaps.texture import build_texture, warp_maps

    torch.manual_seed(0)
    full = SR3(SR3Config.preset("tiny-warp").replace(residual=True)).eval()
    torch.nn.init.normal_(full.unet.out[-1].weight, std=0.05)  # a trained-like, nonzero correction
    shrunk = SR3(full.config.replace(body_correction=0.25)).eval()
    shrunk.load_state_dict(full.state_dict())
    image = np.full((128, 128, 3), 255, np.uint8)
    iuv = np.zeros((128, 128, 3), np.uint8)
    iuv[30:100, 50:80] = (2, 60, 90)
    image[30:100, 50:80] = (200, 20, 20)
    warp = warp_maps(build_texture([(image, iuv)]), iuv[None], 128)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 128, 128, generator=g)
    low = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        a, b = full(x, torch.tensor([0.0]), low, warp=warp), shrunk(x, torch.tensor([0.0]), low, warp=warp)
    coverage = body_coverage(warp)[0, 0]
    body, around = coverage == 1, coverage == 0
    assert body.any() and around.any()
    prior = warp[0, :3]
    assert not torch.allclose(a[0][:, body], prior[:, body])  # the correction is there to shrink
    torch.testing.assert_close(b[0][:, body], 0.25 * a[0][:, body] + 0.75 * prior[:, body])
    torch.testing.assert_close(b[0][:, around], a[0][:, around])
    with pytest.raises(ModelConfigError, match="body_correction.*residual"):
        SR3Config.preset("tiny-warp").replace(body_correction=0.5)
    with pytest.raises(ModelConfigError, match="body_correction"):
        SR3Config.preset("tiny-warp").replace(residual=True, body_correction=1.5)
