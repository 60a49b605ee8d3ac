"""Metrics on known inputs: SSIM/PSNR, optical-flow metrics, foreground masking, LPIPS/FID loaders, btdm eval."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from einops import rearrange, repeat
from safetensors.torch import save_file
from scipy.ndimage import correlate1d

from btdm_engine.metrics import (
    LPIPS,
    FIDInceptionV3,
    MetricWeightsError,
    evaluate,
    format_table,
    frechet_distance,
    inception_features,
    optical_flow,
    psnr,
    ssim,
    tof,
    warping_error,
)
from btdm_engine.metrics.evaluate import EvaluationError
from btdm_engine.metrics.image import fill_background
from btdm_engine.posemaps.encoding import write_iuv_png

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------
# Helpers


def _texture(rng: np.random.Generator, size: int = 220) -> np.ndarray:
    """Smooth random texture in [0, 1]: trackable by optical flow."""
    tex = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 2.0)
    return (tex - tex.min()) / (tex.max() - tex.min())


def _moving_sequence(tex: np.ndarray, shift: int, frames: int = 4, size: int = 96) -> torch.Tensor:
    """(T, 3, size, size) crops of ``tex`` whose window moves right by ``shift`` px per frame,
    so the content moves LEFT: the true flow is (-shift, 0)."""
    crops = [tex[20 : 20 + size, 20 + t * shift : 20 + t * shift + size] for t in range(frames)]
    seq = torch.from_numpy(np.stack(crops)).float()
    return repeat(seq, "t h w -> t c h w", c=3).contiguous()


def _write_png(path: Path, rgb01: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = np.round(np.clip(rgb01, 0, 1) * 255).astype(np.uint8)[..., ::-1]
    assert cv2.imwrite(str(path), np.ascontiguousarray(bgr))


def _write_sequence(folder: Path, seq: torch.Tensor) -> None:
    for t, frame in enumerate(rearrange(seq, "t c h w -> t h w c").numpy()):
        _write_png(folder / f"{t:06d}.png", frame)


# --------------------------------------------------------------------------------------------
# SSIM / PSNR


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Wang et al. 2004 eq. 13 written directly with scipy (valid 11x11 Gaussian window, sigma 1.5)."""
    x = np.arange(11) - 5.0
    w = np.exp(-(x**2) / (2 * 1.5**2))
    w /= w.sum()

    def blur(img: np.ndarray) -> np.ndarray:
        out = correlate1d(correlate1d(img, w, axis=-1, mode="constant"), w, axis=-2, mode="constant")
        return out[..., 5:-5, 5:-5]

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2, 3))


def test_ssim_matches_direct_formula_and_identity() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((2, 3, 40, 48))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, _ssim_reference(a, b), rtol=1e-10)
    assert 0.5 < got.min() < 0.99
    same = ssim(torch.from_numpy(a).float(), torch.from_numpy(a).float())
    torch.testing.assert_close(same, torch.ones(2), atol=1e-6, rtol=0)


def test_psnr_known_values() -> None:
    a = torch.full((1, 3, 16, 16), 0.5)
    assert math.isinf(float(psnr(a, a)[0]))
    # A uniform error of 0.1 gives MSE 0.01 and PSNR 20 dB.
    assert float(psnr(a, a + 0.1)[0]) == pytest.approx(20.0, abs=1e-4)


def test_metric_input_errors_are_clear() -> None:
    a = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(a, torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match="bool"):
        psnr(a, a, mask=torch.ones(1, 16, 16))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


# --------------------------------------------------------------------------------------------
# Optical-flow metrics


def test_flow_recovers_a_known_shift_and_tof_measures_it() -> None:
    tex = _texture(np.random.default_rng(1))
    moving2, moving3, static = _moving_sequence(tex, 2), _moving_sequence(tex, 3), _moving_sequence(tex, 0)
    grey = [np.round(f[0].numpy() * 255).astype(np.uint8) for f in moving2[:2]]
    flow = optical_flow(grey[0], grey[1])[10:-10, 10:-10]
    np.testing.assert_allclose(flow.mean(axis=(0, 1)), [-2.0, 0.0], atol=0.05)

    assert tof(moving2, moving2) == 0.0  # DIS is deterministic: identical sequences, identical flows
    assert tof(moving2, static) == pytest.approx(2.0, abs=0.15)
    assert tof(moving3, moving2) == pytest.approx(1.0, abs=0.15)


def test_warping_error_follows_the_true_motion() -> None:
    tex = _texture(np.random.default_rng(2))
    moving, static = _moving_sequence(tex, 2), _moving_sequence(tex, 0)
    assert warping_error(moving, moving) < 1e-5
    # A frozen prediction of a moving scene: warped by the true (gt) motion it does not line up...
    frozen = warping_error(static, moving, flow_source="gt")
    assert frozen > 1e-3
    # ...while judged by its own (zero) flow it is perfectly self-consistent.
    assert warping_error(static, moving, flow_source="pred") < 1e-6
    with pytest.raises(ValueError, match="allowed: gt, pred"):
        warping_error(static, moving, flow_source="mean")


def test_foreground_mask_ignores_the_background() -> None:
    rng = np.random.default_rng(3)
    tex = _texture(rng)
    gt = _moving_sequence(tex, 2)
    mask = torch.zeros(gt.shape[0], *gt.shape[2:], dtype=torch.bool)
    mask[:, 30:70, 25:75] = True
    # The prediction is exact on the person and garbage (moving noise) in the background.
    pred = torch.where(mask[:, None], gt, torch.rand(gt.shape, generator=torch.Generator().manual_seed(0)))
    assert float(ssim(pred, gt).mean()) < 0.5
    y, g = fill_background(pred, mask, (1, 1, 1)), fill_background(gt, mask, (1, 1, 1))
    torch.testing.assert_close(ssim(y, g, mask), torch.ones(gt.shape[0], dtype=torch.float32), atol=1e-6, rtol=0)
    assert torch.isinf(psnr(y, g, mask)).all()
    assert tof(y, g, mask) == 0.0
    # A frame whose mask is empty contributes NaN (skipped), never a made-up value.
    empty = torch.zeros_like(mask)
    assert torch.isnan(ssim(y, g, empty)).all()


# --------------------------------------------------------------------------------------------
# LPIPS and FID weight loading

# torchvision's alexnet().features convolutions and LPIPS v0.1's lin layers, written out
# independently of btdm_engine so the test checks the documented layout.
_ALEX_LAYOUT = {
    "features.0": (64, 3, 11, 11),
    "features.3": (192, 64, 5, 5),
    "features.6": (384, 192, 3, 3),
    "features.8": (256, 384, 3, 3),
    "features.10": (256, 256, 3, 3),
}
_ALEX_LINS = (64, 192, 384, 256, 256)


def _write_alex_lpips(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in _ALEX_LAYOUT.items():
        fan_in = shape[1] * shape[2] * shape[3]
        tensors[f"{name}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        tensors[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    for k, c in enumerate(_ALEX_LINS):
        tensors[f"lin{k}.weight"] = torch.rand((1, c, 1, 1), generator=g) / c
    save_file(tensors, str(path))
    return tensors


def test_lpips_loads_user_weights_strictly(tmp_path: Path) -> None:
    path = tmp_path / "lpips_alex.safetensors"
    tensors = _write_alex_lpips(path)
    model = LPIPS.from_file(path)
    assert model.net == "alex"
    torch.testing.assert_close(model.state_dict()["lin2.weight"], tensors["lin2.weight"])
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.all(model(x, x) == 0)
    d = model(x, x.flip(-1))
    assert torch.all(d > 0) and torch.isfinite(d).all()

    broken = dict(tensors)
    del broken["lin3.weight"]
    save_file(broken, str(tmp_path / "missing.safetensors"))
    with pytest.raises(MetricWeightsError, match=r"missing\.safetensors.*missing 1 tensors.*lin3\.weight"):
        LPIPS.from_file(tmp_path / "missing.safetensors")
    reshaped = dict(tensors)
    reshaped["features.3.weight"] = torch.zeros(192, 64, 3, 3)
    save_file(reshaped, str(tmp_path / "shape.safetensors"))
    with pytest.raises(MetricWeightsError, match=r"features\.3\.weight.*\(192, 64, 3, 3\).*\(192, 64, 5, 5\)"):
        LPIPS.from_file(tmp_path / "shape.safetensors")
    save_file({"foo": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(MetricWeightsError, match="not an LPIPS weight file"):
        LPIPS.from_file(tmp_path / "other.safetensors")
    with pytest.raises(MetricWeightsError, match="not found"):
        LPIPS.from_file(tmp_path / "absent.safetensors")


def test_lpips_vgg_layout_uses_torchvision_indices() -> None:
    keys = {k for k in LPIPS("vgg").state_dict() if k.startswith("features.") and k.endswith(".weight")}
    convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    assert keys == {f"features.{i}.weight" for i in convs}


def _write_fid_inception(path: Path, seed: int = 0) -> None:
    """Random FID-Inception weights in pytorch-fid's layout (He-initialised so features are not
    vanishing), plus the 1008-class fc head the official file carries and the loader ignores."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, value in FIDInceptionV3().state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("conv.weight"):
            fan_in = value[0].numel()
            tensors[key] = torch.randn(value.shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif key.endswith("running_var"):
            tensors[key] = torch.rand(value.shape, generator=g) + 0.5
        elif key.endswith(("running_mean", "bn.bias")):
            tensors[key] = torch.randn(value.shape, generator=g) * 0.1
        else:  # bn.weight
            tensors[key] = torch.ones(value.shape)
    tensors["fc.weight"] = torch.zeros(1008, 2048)
    tensors["fc.bias"] = torch.zeros(1008)
    save_file(tensors, str(path))


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(LPIPS alex file, FID Inception file) with random weights in the documented layouts."""
    folder = tmp_path_factory.mktemp("weights")
    _write_alex_lpips(folder / "lpips_alex.safetensors")
    _write_fid_inception(folder / "fid_inception.safetensors")
    return folder / "lpips_alex.safetensors", folder / "fid_inception.safetensors"


def test_fid_inception_loads_user_weights_and_scores(weight_files: tuple[Path, Path]) -> None:
    shapes = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_6e.branch7x7_2.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    model = FIDInceptionV3.from_file(weight_files[1])
    g = torch.Generator().manual_seed(0)
    real = torch.rand(3, 3, 48, 48, generator=g)
    fake = (real * 0.5 + 0.25).flip(-1)
    fr, ff = inception_features(model, real), inception_features(model, fake)
    assert fr.shape == (3, 2048) and fr.std() > 1e-3
    assert frechet_distance(fr, fr) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(fr, rowvar=False)))
    assert frechet_distance(fr, ff) > 0.0


def test_frechet_distance_matches_the_sqrtm_formula() -> None:
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(4)
    for n in (6, 50):  # fewer and more samples than dimensions: both code paths
        a = rng.normal(size=(n, 12))
        b = rng.normal(size=(n + 3, 12)) * 1.3 + 0.2
        s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        root = np.real(sqrtm(s1 @ s2))
        ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
        assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


# --------------------------------------------------------------------------------------------
# evaluate() and btdm eval


def _eval_folders(root: Path) -> tuple[Path, Path, Path]:
    """A two-sequence gt/pred/iuv set in the dataset layout (pred = gt, background changed)."""
    rng = np.random.default_rng(5)
    for name, shift in (("seq_a", 2), ("seq_b", 1)):
        gt = _moving_sequence(_texture(rng), shift, frames=3, size=64)
        iuv = np.zeros((64, 64, 3), np.uint8)
        iuv[16:48, 20:44] = (2, 128, 64)
        pred = gt.clone()
        pred[:, :, :8] = 0.0  # wrong only in the background (rows 0..7)
        _write_sequence(root / "gt" / name / "rgb", gt)
        _write_sequence(root / "pred" / name, pred)
        for t in range(3):
            write_iuv_png(root / "gt" / name / "iuv" / f"{t:06d}.png", iuv)
    return root / "pred", root / "gt", root / "gt"


def test_evaluate_foreground_only_and_skips_metrics_without_weights(tmp_path: Path) -> None:
    pred, gt, iuv = _eval_folders(tmp_path)
    masked = evaluate(pred, gt, iuv)
    m = masked["metrics"]
    assert masked["num_sequences"] == 2 and masked["num_frames"] == 6
    assert m["ssim"] == pytest.approx(1.0, abs=1e-6) and math.isinf(m["psnr"]) and m["tof"] == 0.0
    assert m["lpips"] is None and m["tlpips"] is None and m["fid"] is None
    assert "no LPIPS weights" in masked["skipped"]["lpips"] and "no Inception weights" in masked["skipped"]["fid"]
    full = evaluate(pred, gt)
    assert full["metrics"]["ssim"] < 0.99 and math.isfinite(full["metrics"]["psnr"])

    table = format_table([("ours", masked)])
    assert "SSIM↑" in table and "n/a" in table and "fid skipped: no Inception weights" in table


def test_btdm_eval_command_writes_json_with_and_without_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture, weight_files: tuple[Path, Path]
) -> None:
    from btdm_engine.commands import evaluate as eval_cmd

    pred, gt, iuv = _eval_folders(tmp_path)
    parser = argparse.ArgumentParser(prog="btdm")
    eval_cmd.register(parser.add_subparsers(dest="command"))

    out = tmp_path / "metrics.json"
    args = parser.parse_args(["eval", "--pred", str(pred), "--gt", str(gt), "--iuv", str(iuv), "--out", str(out)])
    assert args.func(args) == 0
    report = json.loads(out.read_text())  # standard JSON: inf is written as "inf"
    assert report["metrics"]["psnr"] == "inf" and report["metrics"]["lpips"] is None
    captured = capsys.readouterr()
    assert "lpips skipped: no LPIPS weights" in captured.out and "fid skipped: no Inception weights" in captured.out

    # One sequence (3 frames) with both weight files: every metric is a number.
    out2 = tmp_path / "metrics_w.json"
    args = parser.parse_args(
        ["eval", "--pred", str(pred / "seq_a"), "--gt", str(gt / "seq_a" / "rgb"), "--out", str(out2),
         "--lpips-weights", str(weight_files[0]), "--inception-weights", str(weight_files[1])]
    )  # fmt: skip
    assert args.func(args) == 0
    written = json.loads(out2.read_text())
    m = written["metrics"]
    assert m["lpips"] > 0 and m["tlpips"] >= 0 and isinstance(m["fid"], float)
    assert written["skipped"] == {} and written["num_frames"] == 3 and written["lpips_net"] == "alex"


def test_evaluate_names_missing_ground_truth(tmp_path: Path) -> None:
    pred, gt, _ = _eval_folders(tmp_path)
    (gt / "seq_b" / "rgb" / "000002.png").unlink()
    with pytest.raises(EvaluationError, match=r"seq_b.*000002\.png"):
        evaluate(pred, gt)
    (pred / "seq_a" / "000001.png").unlink()
    with pytest.raises(EvaluationError, match="consecutive"):
        evaluate(pred, gt)


def test_person_foreground_adds_the_truths_alpha_to_the_pose_maps_body(tmp_path: Path) -> None:
    """``foreground="person"``: hair or a skirt beyond the body's surface (alpha > 0, I = 0) is scored;
    with the paper's ``"pose"`` it is not. Ground truth without alpha is refused for ``person``."""
    rng = np.random.default_rng(3)
    iuv = np.zeros((64, 64, 3), np.uint8)
    iuv[16:48, 24:40] = (2, 128, 64)  # the body
    for t in range(3):
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[..., :3] = 255
        rgba[16:48, 24:40] = (*rng.integers(0, 255, 3), 255)
        rgba[40:56, 16:48] = (30, 90, 200, 255)  # a skirt, wider than the body and below it
        (tmp_path / "gt").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "gt" / f"{t:06d}.png"), rgba[..., [2, 1, 0, 3]])  # RGBA, as OpenCV's BGRA
        pred = rgba[..., :3].copy()
        pred[40:56, 16:24] = 255  # drawn as two legs: the skirt's sides missing
        pred[40:56, 40:48] = 255
        _write_png(tmp_path / "pred" / f"{t:06d}.png", pred.astype(np.float32) / 255)
        write_iuv_png(tmp_path / "iuv" / f"{t:06d}.png", iuv)
    pose = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "iuv")
    person = evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "iuv", foreground="person")
    assert pose["foreground"] == "pose" and person["foreground"] == "person"
    assert pose["metrics"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert person["metrics"]["ssim"] < 0.95 and math.isfinite(person["metrics"]["psnr"])
    _write_png(tmp_path / "gt" / "000001.png", np.ones((64, 64, 3), np.float32))  # an RGB frame
    with pytest.raises(EvaluationError, match=r"000001\.png: no alpha channel; foreground 'person' needs RGBA"):
        evaluate(tmp_path / "pred", tmp_path / "gt", tmp_path / "iuv", foreground="person")
