"""A cascade of SR3 stages (model folders with ``sr3/`` then ``sr3-2/``): BTU-Net 32 px -> SR3 48 px ->
SR3 64 px, warp-conditioned and residual like the shipped default, on untrained-but-perturbed tiny
networks. The Animator runs every stage on each chunk, streams, resumes from any chunk with the
same frames, counts progress over every stage, and refuses a stage whose input size does not match."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from btdm_engine.checkpoints import save_checkpoint
from btdm_engine.diffusion import ScheduleConfig
from btdm_engine.imageio import resize_labels
from btdm_engine.models import SR3, BTUNet, BTUNetConfig, SR3Config
from btdm_engine.pipeline import Animator, AnimatorError, sr3_stage_dirs, tensor_to_images
from btdm_engine.posemaps.encoding import read_iuv_png
from btdm_engine.service.worker import ModelEntry, ModelRegistry
from btdm_engine.weights import default_model_dir
from tests.test_pipeline import trained_like

OUT = 64


def _sr3(low: int, high: int, seed: int) -> SR3:
    config = SR3Config.preset("tiny-warp").replace(resolution=high, low_resolution=low, residual=True)
    return trained_like(SR3(config), seed)


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cascade")
    torch.manual_seed(0)
    save_checkpoint(root / "btunet", trained_like(BTUNet(BTUNetConfig.preset("tiny-warp")), 1), "btunet",
                    ScheduleConfig())
    save_checkpoint(root / "sr3", _sr3(32, 48, 2), "sr3", ScheduleConfig(shift=1.0),
                    extra={"sampling": {"sr_steps": 2}})
    save_checkpoint(root / "sr3-2", _sr3(48, OUT, 3), "sr3", ScheduleConfig(shift=1.0),
                    extra={"sampling": {"sr_steps": 1}})
    return root


@pytest.fixture(scope="module")
def inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5 pose maps (the shipped appearance's IUV map, sliding right 2 px a frame) and c."""
    g = resize_labels(read_iuv_png(default_model_dir() / "appearance_iuv.png"), (OUT, OUT))
    maps = np.stack([np.roll(g, 2 * t, axis=1) for t in range(5)])
    appearance = np.full((OUT, OUT, 3), 200, np.uint8)
    appearance[g[..., 0] > 0] = (40, 90, 160)
    appearance[g[..., 1] > 128] = (220, 60, 40)  # a second colour the prior carries
    return maps, appearance, g


def test_model_folder_loads_every_stage_in_order(cascade_dir: Path) -> None:
    assert [p.name for p in sr3_stage_dirs(cascade_dir)] == ["sr3", "sr3-2"]
    animator = Animator.from_pretrained(cascade_dir, device="cpu")
    assert (animator.low_resolution, animator.resolution) == (32, OUT)
    assert [int(net.config.resolution) for net, _ in animator.sr3_stages] == [48, OUT]
    # each stage's own step count (config.json extra.sampling.sr_steps), or the job's for all
    assert [animator.sr_steps_for(25, None, k) for k in (0, 1)] == [2, 1]
    assert [animator.sr_steps_for(25, 4, k) for k in (0, 1)] == [4, 4]
    # 5 frames in chunks of 2: 3 calls per step and stage
    assert animator.sr3_calls(5, 25, None, batch=2) == 3 * 2 + 3 * 1
    info = ModelRegistry._read_info(ModelEntry("c", cascade_dir))
    assert (info["resolution"], info["low_resolution"], info["has_sr3"]) == (OUT, 32, True)


def test_cascade_frames_stream_and_resume_identically(cascade_dir: Path, inputs) -> None:
    maps, appearance, g = inputs
    animator = Animator.from_pretrained(cascade_dir, device="cpu")
    seen: list[tuple[str, int, int | None]] = []
    frames = animator.animate(maps, appearance, g, steps=2, seed=5, sr_batch=2, precision="float32", workers=1,
                              callback=lambda *a: seen.append(a))
    assert frames.shape == (5, OUT, OUT, 3) and frames.dtype == np.uint8
    sr = [s for s in seen if s[0] == "sr3"]
    total = animator.sr3_calls(5, 2, None, batch=2)
    assert [s[1] for s in sr] == list(range(1, total + 1)) and {s[2] for s in sr} == {total}
    # with the chunk size left to the memory budget too
    seen.clear()
    animator.animate(maps[:2], appearance, g, steps=2, seed=5, precision="float32", workers=2,
                     callback=lambda *a: seen.append(a))
    sr = [s for s in seen if s[0] == "sr3"]
    assert len(sr) == animator.sr3_calls(2, 2, workers=2) and sr[-1][1:] == (len(sr), len(sr))

    # the stages as the service's worker drives them, resuming at frame 2 (a chunk boundary)
    job = animator.prepare(maps, appearance, g)
    low = animator.sample_low(job, steps=2, seed=5, precision="float32", workers=1)
    rest = torch.cat(list(animator.super_resolve(job, low, start=2, steps=2, seed=5, batch=2, precision="float32",
                                                 workers=1)))
    np.testing.assert_array_equal(tensor_to_images(rest), frames[2:])
    # shared noise: the frames do not depend on the chunk size (up to the convolutions' float
    # rounding, which differs with the batch: a level in a few pixels)
    other = animator.animate(maps, appearance, g, steps=2, seed=5, sr_batch=3, precision="float32", workers=1)
    diff = np.abs(other.astype(int) - frames.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_cascade_stages_matter(cascade_dir: Path, inputs, tmp_path: Path) -> None:
    """The second stage reads the first stage's frames: dropping it changes the output's size, and a
    different first stage changes the final frames."""
    maps, appearance, g = inputs
    base = Animator.from_pretrained(cascade_dir, device="cpu")
    kw = dict(steps=2, seed=5, precision="float32", workers=1)
    frames = base.animate(maps[:2], appearance, g, **kw)
    first_only = Animator(base.btunet, base.schedule, base.sr3, base.sr3_schedule, device="cpu")
    assert first_only.animate(maps[:2], appearance, g, **kw).shape[1] == 48
    other_first = _sr3(32, 48, 9)
    swapped = Animator(base.btunet, base.schedule, other_first, base.sr3_schedule, device="cpu",
                       cascade=base.cascade, meta=base.meta)
    assert not np.array_equal(swapped.animate(maps[:2], appearance, g, **kw), frames)


def test_cascade_stage_sizes_must_chain(cascade_dir: Path, tmp_path: Path) -> None:
    base = Animator.from_pretrained(cascade_dir, device="cpu")
    with pytest.raises(AnimatorError, match="SR3 stage 2 expects 40 px input but SR3 stage 1 makes 48 px"):
        Animator(base.btunet, base.schedule, base.sr3, base.sr3_schedule, cascade=[(_sr3(40, OUT, 4), ScheduleConfig())])
    with pytest.raises(AnimatorError, match="need a first SR3 stage"):
        Animator(base.btunet, base.schedule, cascade=base.cascade)
    # a folder whose sr3-2/ expects another size names the stage
    broken = tmp_path / "broken"
    for name in ("btunet", "sr3"):
        (broken / name).mkdir(parents=True)
        for f in (cascade_dir / name).iterdir():
            (broken / name / f.name).write_bytes(f.read_bytes())
    save_checkpoint(broken / "sr3-2", _sr3(40, OUT, 4), "sr3", ScheduleConfig())
    with pytest.raises(AnimatorError, match="SR3 stage 2 expects 40 px"):
        Animator.from_pretrained(broken, device="cpu")
    # a gap ends the cascade: sr3-3/ without sr3-2/ is not read
    save_checkpoint(tmp_path / "gap" / "sr3-3", _sr3(48, OUT, 4), "sr3", ScheduleConfig())
    assert sr3_stage_dirs(tmp_path / "gap") == []
    assert json.loads((cascade_dir / "sr3-2" / "config.json").read_text())["model"]["low_resolution"] == 48


def test_btdm_finetune_keeps_every_sr3_stage(cascade_dir: Path, inputs, tmp_path: Path) -> None:
    """`btdm finetune` rewrites btunet/ and carries the SR3 stages over unchanged, the cascade's too."""
    import argparse

    from btdm_engine.commands import finetune as finetune_cmd
    from btdm_engine.posemaps.encoding import write_iuv_png
    from btdm_engine.posemaps.preview import write_rgb_png

    _maps, appearance, g = inputs
    write_rgb_png(tmp_path / "c.png", appearance)
    write_iuv_png(tmp_path / "c_iuv.png", g)
    parser = argparse.ArgumentParser(prog="btdm")
    finetune_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", "--model", str(cascade_dir), "--appearance", str(tmp_path / "c.png"),
                              "--appearance-iuv", str(tmp_path / "c_iuv.png"), "--steps", "1", "--device", "cpu",
                              "--out", str(tmp_path / "tuned")])  # fmt: skip
    assert args.func(args) == 0
    for name in ("sr3", "sr3-2"):
        for f in ("config.json", "model.safetensors"):
            assert (tmp_path / "tuned" / name / f).read_bytes() == (cascade_dir / name / f).read_bytes()
    assert Animator.from_pretrained(tmp_path / "tuned", device="cpu").resolution == OUT
    # c and g(c) become the folder's own appearance (what `btdm animate --model` uses without one)
    from btdm_engine.imageio import read_rgb

    np.testing.assert_array_equal(np.round(read_rgb(tmp_path / "tuned" / "appearance.png") * 255), appearance)
    np.testing.assert_array_equal(read_iuv_png(tmp_path / "tuned" / "appearance_iuv.png"), g)


def test_a_model_folders_own_appearance_is_used_without_one(cascade_dir: Path, inputs, tmp_path: Path) -> None:
    """A model folder that ships appearance.png + appearance_iuv.png (as training.default_model writes)
    lends them to `btdm animate --model DIR` and to `btdm serve --model NAME=DIR` when a job gives none."""
    import shutil

    from btdm_engine.cli import main as btdm
    from btdm_engine.posemaps.encoding import write_iuv_png
    from btdm_engine.posemaps.preview import write_rgb_png

    maps, appearance, g = inputs
    folder = tmp_path / "model"
    shutil.copytree(cascade_dir, folder)
    write_rgb_png(folder / "appearance.png", appearance)
    write_iuv_png(folder / "appearance_iuv.png", g)
    for t, m in enumerate(maps[:2]):
        write_iuv_png(tmp_path / "poses" / f"{t:06d}.png", m)
    common = ["animate", "--model", str(folder), "--posemaps", str(tmp_path / "poses"), "--steps", "2",
              "--seed", "1", "--device", "cpu", "--precision", "float32", "--no-progress"]
    assert btdm([*common, "--out", str(tmp_path / "own")]) == 0
    assert btdm([*common, "--appearance", str(folder / "appearance.png"), "--appearance-iuv",
                 str(folder / "appearance_iuv.png"), "--out", str(tmp_path / "given")]) == 0
    for t in range(2):
        own = (tmp_path / "own" / "frames" / f"{t:06d}.png").read_bytes()
        assert own == (tmp_path / "given" / "frames" / f"{t:06d}.png").read_bytes()

    registry = ModelRegistry.with_default("cpu", {"mine": folder, "bare": cascade_dir})
    assert registry.entry("mine").default_appearance == (folder / "appearance.png", folder / "appearance_iuv.png")
    assert registry.entry("bare").default_appearance is None
    assert {i["name"]: i["has_default_appearance"] for i in registry.infos()} == {"default": True, "mine": True,
                                                                                 "bare": False}
