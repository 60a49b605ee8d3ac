"""The Animator (BTU-Net + SR3 tiny, end to end) and the ``btdm animate`` command."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from btdm_engine.checkpoints import save_checkpoint
from btdm_engine.cli import CliError
from btdm_engine.commands import animate as animate_cmd
from btdm_engine.diffusion import Cancelled, ScheduleConfig, bidirectional_loss
from btdm_engine.models import SR3, BTUNet, BTUNetConfig, SR3Config
from btdm_engine.pipeline import (
    Animator,
    AnimatorError,
    finetune_btunet,
    image_to_tensor,
    iuv_to_network,
    prepare_pose_maps,
    sampling_workers,
)
from btdm_engine.posemaps.encoding import iuv_to_tensor, write_iuv_png

SIZE = 128  # SR3 tiny output; the BTU-Net tiny runs at 32
FAST = 64  # the faster SR3 (tiny, 32 -> 64 px) most tests use to stay within the CPU budget


def trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill the zero-initialised layers with small random values, so every input matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_checkpoint(root / "btunet", trained_like(BTUNet(BTUNetConfig.preset("tiny")), 1), "btunet", ScheduleConfig())
    save_checkpoint(root / "sr3", trained_like(SR3(SR3Config.preset("tiny")), 2), "sr3", ScheduleConfig(shift=1.0))
    return root


@pytest.fixture(scope="module")
def fast_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same BTU-Net with an SR3 of the tiny preset shrunk to a 64 px output."""
    root = tmp_path_factory.mktemp("fast")
    (root / "btunet").mkdir()
    for name in ("config.json", "model.safetensors"):
        (root / "btunet" / name).write_bytes((model_dir / "btunet" / name).read_bytes())
    torch.manual_seed(3)
    config = SR3Config.preset("tiny").replace(resolution=FAST, channel_mult=(1, 2, 2))
    save_checkpoint(root / "sr3", trained_like(SR3(config), 3), "sr3", ScheduleConfig())
    return root


@pytest.fixture(scope="module")
def btunet_only_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("btunet_only")
    (root / "btunet").mkdir()
    for name in ("config.json", "model.safetensors"):
        (root / "btunet" / name).write_bytes((model_dir / "btunet" / name).read_bytes())
    return root


def pose_sequence(num_frames: int, size: int = SIZE) -> np.ndarray:
    """A blocky 'person' of four parts sliding right, with U/V ramps: valid uint8 IUV maps."""
    maps = np.zeros((num_frames, size, size, 3), np.uint8)
    ramp = np.linspace(0, 255, size // 2).astype(np.uint8)
    for t in range(num_frames):
        x0 = size // 4 + 3 * t
        for k, part in enumerate((2, 23, 9, 14)):
            rows = slice(size // 8 + k * size // 6, size // 8 + (k + 1) * size // 6)
            maps[t, rows, x0 : x0 + size // 2, 0] = part
            maps[t, rows, x0 : x0 + size // 2, 1] = ramp
            maps[t, rows, x0 : x0 + size // 2, 2] = ramp[::-1]
    return maps


def appearance_image(size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def animator(fast_dir: Path) -> Animator:
    return Animator.from_pretrained(fast_dir, device="cpu")


# ------------------------------------------------------------------------------------ Animator


def test_two_step_smoke_run_btunet_and_sr3(model_dir: Path) -> None:
    animator = Animator.from_pretrained(model_dir, device="cpu")  # both tiny presets
    seen: list[tuple] = []
    frames = animator.animate(pose_sequence(3), appearance_image(), steps=2, sr_steps=2, seed=0,
                              max_batch=2, sr_batch=2, callback=lambda *a: seen.append(a))
    assert frames.shape == (3, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert frames.std() > 5  # not a flat image
    assert seen == [("bidirectional", 1, 2), ("bidirectional", 2, 2), ("sr3", 1, 4), ("sr3", 2, 4),
                    ("sr3", 3, 4), ("sr3", 4, 4)]
    assert animator.low_resolution == 32 and animator.resolution == SIZE
    assert animator.meta["sr3"]["kind"] == "sr3"


def test_every_task_and_sampler_gives_frames(animator: Animator, btunet_only_dir: Path) -> None:
    poses = pose_sequence(2)
    # person-specific / unconditional: no c, the learnt null token
    assert animator.animate(poses, None, steps=1, sr_steps=1).shape == (2, FAST, FAST, 3)
    assert animator.animate(poses, appearance_image(), steps=1, sr_steps=1, sampler="unidirectional").shape == (2, FAST, FAST, 3)
    low = Animator.from_pretrained(btunet_only_dir, device="cpu")
    assert low.sr3 is None and low.resolution == 32
    out = low.animate(poses, appearance_image(), steps=2)
    assert out.shape == (2, 32, 32, 3)
    # a tensor-form input works too and gives the same frames
    tensor_form = iuv_to_tensor(poses)
    assert np.array_equal(low.animate(tensor_form, appearance_image(), steps=2), out)
    with pytest.raises(AnimatorError, match="no SR3 model"):
        low.animate(poses, None, steps=1, sr_steps=1)


def test_same_seed_same_frames_and_streaming_matches(animator: Animator) -> None:
    poses, c = pose_sequence(3), appearance_image()
    kwargs = dict(steps=2, sr_steps=1, eta=1.0, sr_batch=2)
    a = animator.animate(poses, c, seed=5, **kwargs)
    b = animator.animate(poses, c, seed=5, **kwargs)
    other = animator.animate(poses, c, seed=6, **kwargs)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - other.astype(int)).mean() > 1.0
    stream = animator.animate_iter(poses, c, seed=5, **kwargs)
    first = next(stream)
    assert first.shape == (FAST, FAST, 3)
    assert np.array_equal(np.stack([first, *stream]), a)


def test_workers_run_side_by_side_with_one_intra_op_thread_each(animator: Animator) -> None:
    poses, c = pose_sequence(4), appearance_image()
    threads = torch.get_num_threads()
    seen: list[tuple[str, int]] = []
    kwargs = dict(steps=2, sr_steps=2, seed=3, max_batch=2, sr_batch=2, precision="float32")
    one = animator.animate(poses, c, workers=1, **kwargs)
    two = animator.animate(poses, c, workers=2, callback=lambda stage, *_: seen.append((stage, torch.get_num_threads())),
                           **kwargs)
    # the same frames (float32 kernels may round differently on fewer intra-op threads: a grey level at most)
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1
    assert {n for _, n in seen} == {max(1, threads // 2)}  # while sampling: threads split among workers
    assert torch.get_num_threads() == threads  # and restored afterwards
    assert sampling_workers(torch.device("cpu")) == (threads, 1)
    assert sampling_workers(torch.device("cpu"), 1) == (1, threads)
    with pytest.raises(AnimatorError, match="workers"):
        animator.animate(poses, c, workers=0, **kwargs)


def test_inputs_are_resized_nearest_and_validated(animator: Animator) -> None:
    poses = pose_sequence(2)
    small = prepare_pose_maps(poses, 32)
    assert small.shape == (2, 3, 32, 32)
    # nearest: every value already existed at full resolution (labels never blend)
    assert set(small.unique().tolist()) <= set(iuv_to_tensor(poses).unique().tolist())
    assert torch.equal(small, iuv_to_network(poses, 32))
    assert image_to_tensor(appearance_image(), 32).shape == (3, 32, 32)
    with pytest.raises(AnimatorError, match="square"):
        animator.animate(poses[:, :, :100], None, steps=1)
    with pytest.raises(ValueError, match="part index I=30"):
        animator.animate(np.full((1, SIZE, SIZE, 3), 30, np.uint8), None, steps=1)
    with pytest.raises(AnimatorError, match="allowed: bidirectional, unidirectional"):
        animator.animate(poses, None, steps=1, sampler="autoregressive")
    with pytest.raises(AnimatorError, match="needs both appearance and appearance_iuv"):
        animator.animate(poses, appearance_image(), steps=1, finetune_steps=2)
    with pytest.raises(AnimatorError, match="only used by fine-tuning"):
        animator.animate(poses, appearance_image(), poses[0], steps=1)
    with pytest.raises(AnimatorError, match="expected an RGB uint8"):
        animator.animate(poses, appearance_image().astype(np.float32), steps=1)


def test_cancel_stops_the_pipeline(animator: Animator) -> None:
    event = threading.Event()
    calls: list[tuple] = []

    def on_step(*a: object) -> None:
        calls.append(a)
        event.set()

    with pytest.raises(Cancelled):
        animator.animate(pose_sequence(2), None, steps=5, sr_steps=5, callback=on_step, cancel=event)
    assert calls == [("bidirectional", 1, 5)]


# ------------------------------------------------------------------------------------ fine-tuning


def _finetune_loss(model: torch.nn.Module, c: torch.Tensor, g: torch.Tensor, schedule: ScheduleConfig) -> float:
    """Eq. 4 on (c, c) averaged over fixed draws (same levels and noise for every model)."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        losses = [bidirectional_loss(model, c, c, g, g, c, schedule, gen).item() for _ in range(3)]
    return float(np.mean(losses))


def test_finetuning_works_on_a_copy_and_lowers_its_loss(animator: Animator) -> None:
    poses = pose_sequence(1)
    c = image_to_tensor(appearance_image(), 32).expand(4, -1, -1, -1)
    g = iuv_to_network(poses[0], 32).expand(4, -1, -1, -1)
    before_weights = {k: v.clone() for k, v in animator.btunet.state_dict().items()}
    before = _finetune_loss(animator.btunet, c, g, animator.schedule)
    tuned = finetune_btunet(animator.btunet, c[0], g[0], animator.schedule, steps=10, lr=2e-3,
                            generator=torch.Generator().manual_seed(0), batch=2)
    after = _finetune_loss(tuned, c, g, animator.schedule)
    assert tuned is not animator.btunet and not tuned.training
    assert after < 0.7 * before, (before, after)
    for name, tensor in animator.btunet.state_dict().items():
        assert torch.equal(tensor, before_weights[name]), name  # the loaded model is untouched
    # through the Animator: fine-tuned frames differ, the weights stay, and it is seeded
    kwargs = dict(steps=2, seed=0, finetune_lr=1e-3, finetune_batch=1)
    low = Animator(animator.btunet, animator.schedule, device="cpu")  # no SR3: only the BTU-Net matters here
    plain = low.animate(poses, appearance_image(), **kwargs)
    tuned_a = low.animate(poses, appearance_image(), poses[0], finetune_steps=2, **kwargs)
    tuned_b = low.animate(poses, appearance_image(), poses[0], finetune_steps=2, **kwargs)
    assert np.array_equal(tuned_a, tuned_b)
    assert not np.array_equal(plain, tuned_a)
    for name, tensor in animator.btunet.state_dict().items():
        assert torch.equal(tensor, before_weights[name]), name


# ------------------------------------------------------------------------------------ CLI


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="btdm")
    sub = parser.add_subparsers(dest="command", required=True)
    animate_cmd.register(sub)
    args = parser.parse_args(["animate", *argv])
    return args.func(args)


def test_cli_animates_a_posemap_folder_end_to_end(fast_dir: Path, tmp_path: Path) -> None:
    maps = pose_sequence(3)
    for t, iuv in enumerate(maps):
        write_iuv_png(tmp_path / "pm" / "iuv" / f"{t:06d}.png", iuv)
    cv2.imwrite(str(tmp_path / "c.png"), appearance_image()[..., ::-1])
    write_iuv_png(tmp_path / "c_iuv.png", maps[0])
    out = tmp_path / "out"
    argv = ["--posemaps", str(tmp_path / "pm"), "--appearance", str(tmp_path / "c.png"), "--model", str(fast_dir),
            "--out", str(out), "--steps", "2", "--sr-steps", "1", "--seed", "3", "--mp4", "--no-progress",
            "--device", "cpu"]
    assert _run_cli(argv) == 0
    files = sorted((out / "frames").iterdir())
    assert [f.name for f in files] == ["000000.png", "000001.png", "000002.png"]
    first = cv2.imread(str(files[0]))
    assert first.shape == (FAST, FAST, 3)
    assert (out / "animation.mp4").stat().st_size > 0
    # the CLI's frames are the Animator's frames for the same inputs and seed
    direct = Animator.from_pretrained(fast_dir, device="cpu").animate(maps, appearance_image(), steps=2, sr_steps=1, seed=3)
    assert np.array_equal(first[..., ::-1], direct[0])

    with pytest.raises(CliError, match="already holds 3 frames"):
        _run_cli(argv)
    assert _run_cli([*argv, "--overwrite", "--finetune-steps", "1", "--appearance-iuv", str(tmp_path / "c_iuv.png")]) == 0
    with pytest.raises(CliError, match="needs --appearance and --appearance-iuv"):
        _run_cli([*argv, "--overwrite", "--finetune-steps", "1"])
    with pytest.raises(SystemExit):  # argparse lists the allowed samplers
        _run_cli([*argv, "--sampler", "sideways"])


def test_cli_renders_a_motion_clip(btunet_only_dir: Path, tmp_path: Path) -> None:
    from btdm_engine.motion.library import make_motion

    clip = make_motion("walk", seconds=0.2, fps=10, width=64, height=64)
    clip.save(tmp_path / "walk.npz")
    out = tmp_path / "out"
    argv = ["--clip", str(tmp_path / "walk.npz"), "--model", str(btunet_only_dir), "--out", str(out),
            "--steps", "1", "--no-progress", "--device", "cpu", "--mp4"]
    assert _run_cli(argv) == 0
    frames = sorted((out / "frames").iterdir())
    assert len(frames) == clip.num_frames == 2
    assert cv2.imread(str(frames[0])).shape == (32, 32, 3)  # the BTU-Net's size: no SR3 in this folder
    assert (out / "animation.mp4").is_file()
    with pytest.raises(AnimatorError, match="no SR3 model"):
        _run_cli([*argv, "--overwrite", "--sr-steps", "2"])


def test_embedded_default_model_animates_without_model_or_appearance(tmp_path: Path, capsys) -> None:
    from btdm_engine.motion.library import make_motion
    from btdm_engine.weights import default_appearance, default_model_dir

    root = default_model_dir()
    assert (root / "MODEL_CARD.md").is_file()
    image, iuv = default_appearance()
    animator = Animator.from_pretrained(root, device="cpu")
    assert (animator.low_resolution, animator.resolution) == (32, 256)
    assert cv2.imread(str(image)).shape[:2] == cv2.imread(str(iuv)).shape[:2]

    clip = make_motion("dance", seconds=0.2, fps=10, width=128, height=128)
    clip.save(tmp_path / "dance.npz")
    out = tmp_path / "out"
    assert _run_cli(["--clip", str(tmp_path / "dance.npz"), "--out", str(out), "--steps", "1", "--sr-steps", "1",
                     "--no-progress", "--device", "cpu"]) == 0
    assert "using the embedded model" in capsys.readouterr().err
    frames = sorted((out / "frames").iterdir())
    assert len(frames) == 2 and cv2.imread(str(frames[0])).shape == (256, 256, 3)


def test_sr3_steps_default_to_the_checkpoints_own_choice() -> None:
    """sr_steps None: the SR3 checkpoint's ``extra.sampling.sr_steps`` (the shipped residual SR3 asks
    for 1), else the BTU-Net's steps; a value given always wins; a bad value names the field."""
    from btdm_engine.weights import default_model_dir

    animator = Animator.from_pretrained(default_model_dir(), device="cpu")
    extra = animator.meta["sr3"].setdefault("extra", {})
    extra["sampling"] = {"sr_steps": 1}
    assert animator.sr_steps_for(25) == 1 and animator.sr_steps_for(25, 4) == 4
    extra.pop("sampling")
    assert animator.sr_steps_for(25) == 25
    extra["sampling"] = {"sr_steps": 0}
    with pytest.raises(AnimatorError, match=r"extra\.sampling\.sr_steps"):
        animator.sr_steps_for(25)
