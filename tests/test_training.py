"""Trainers: loss goes down, every mode trains and saves a usable checkpoint, SIGKILL + resume
loses nothing, half-written snapshots are never picked, single-image fine-tuning matches the Animator.

Networks are the tiny presets shrunk further with ``model_overrides`` (16 px BTU-Net, 16 -> 32 px
SR3) so that the whole file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from btdm_engine.checkpoints import load_checkpoint
from btdm_engine.diffusion.schedule import ScheduleConfig
from btdm_engine.models import build_model
from training.config import TrainConfig, TrainConfigError
from training.toy_data import write_toy_dataset
from training.trainer import (
    ResumableSampler,
    TrainingError,
    batch_loss,
    build_dataset,
    data_loader,
    model_config,
    snapshot_dirs,
    step_generators,
    train,
    training_sequences,
)

MICRO_BTUNET = {
    "resolution": 16, "model_channels": 16, "channel_mult": [1, 2], "attention_resolutions": [8],
    "norm_groups": 8, "pose_encoder_channels": 8, "appearance_encoder_channels": 8,
}  # fmt: skip
MICRO_SR3 = {"resolution": 32, "low_resolution": 16, "model_channels": 8, "channel_mult": [1, 2, 2], "norm_groups": 8}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), num_characters=4, num_frames=8, size=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(toy: Path, kind: str = "btunet", **kw) -> TrainConfig:
    base = dict(
        kind=kind, data=str(toy), model_overrides=MICRO_BTUNET if kind == "btunet" else MICRO_SR3,
        steps=4, batch_size=4, lr=1e-3, checkpoint_every=2, sample_every=0, log_every=1, sample_steps=2, sample_frames=3,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


@torch.no_grad()
def fixed_batch_loss(model: torch.nn.Module, batches: list[dict], config: TrainConfig, schedule: ScheduleConfig) -> float:
    """Mean training loss over fixed batches with fixed noise, to compare weights before and after."""
    was_training = model.training
    model.eval()
    cpu = torch.device("cpu")
    with torch.random.fork_rng(devices=[]):
        losses = [float(batch_loss(model, b, config, schedule, step_generators(1234, 0, i, cpu), cpu))
                  for i, b in enumerate(batches)]
    model.train(was_training)
    return sum(losses) / len(losses)


def test_training_lowers_the_loss_on_fixed_batches(toy: Path, tmp_path: Path) -> None:
    config = _config(toy, steps=24, lr=2e-3, checkpoint_every=24)
    sequences, _ = training_sequences(config)
    dataset = build_dataset(config, sequences, model_config(config))
    batches = [torch.utils.data.default_collate([dataset[i + 4 * b] for i in range(4)]) for b in range(3)]
    schedule = ScheduleConfig.from_dict(config.schedule)
    torch.manual_seed(config.seed)  # train() initialises the network exactly like this
    initial = build_model("btunet", model_config(config).to_dict())
    before = fixed_batch_loss(initial, batches, config, schedule)

    result = train(config, tmp_path / "run", progress=False)
    after = fixed_batch_loss(result.model, batches, config, schedule)
    assert result.step == 24
    assert after < 0.8 * before, (before, after)
    # the EMA checkpoint is a project checkpoint that records how it was trained
    ema, _, meta = load_checkpoint(tmp_path / "run" / "checkpoint", kind="btunet")
    assert meta["extra"]["task"] == "single_image" and meta["extra"]["training"]["step"] == 24
    for name, value in ema.state_dict().items():
        torch.testing.assert_close(value, result.ema.state_dict()[name])


@pytest.mark.parametrize(
    "kind, mode, task",
    [("btunet", "unidirectional", "single_image"), ("btunet", "person", "person_specific"),
     ("btunet", "unconditional", "unconditional"), ("sr3", "bidirectional", "super_resolution")],
)  # fmt: skip
def test_every_mode_trains_logs_and_previews(toy: Path, tmp_path: Path, kind: str, mode: str, task: str) -> None:
    extra = {"characters": ("char01",)} if mode == "person" else {}
    config = _config(toy, kind, mode=mode, steps=2, sample_every=2, **extra)
    result = train(config, tmp_path / "run", progress=False)
    assert result.step == 2 and np.isfinite(result.last_loss)
    _, _, meta = load_checkpoint(tmp_path / "run" / "checkpoint", kind=kind)
    assert meta["extra"]["task"] == task
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert (tmp_path / "run" / "samples" / "step_0000002.png").stat().st_size > 0
    assert (tmp_path / "run" / "samples" / "step_0000002.mp4").stat().st_size > 0
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_run_checkpoints_assemble_into_an_animator_model(toy: Path, tmp_path: Path) -> None:
    from btdm_engine.pipeline import Animator

    train(_config(toy, steps=2), tmp_path / "bt", progress=False)
    train(_config(toy, "sr3", steps=2), tmp_path / "sr", progress=False)
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(tmp_path / "bt" / "checkpoint", model / "btunet")
    os.symlink(tmp_path / "sr" / "checkpoint", model / "sr3")
    animator = Animator.from_pretrained(model, device="cpu")
    poses = np.zeros((3, 32, 32, 3), np.uint8)
    poses[:, 8:24, 10:20] = (2, 100, 100)
    frames = animator.animate(poses, np.full((32, 32, 3), 200, np.uint8), steps=2, sr_steps=2, seed=0)
    assert frames.shape == (3, 32, 32, 3) and frames.dtype == np.uint8


def test_loader_workers_keep_their_frame_cache_and_still_draw_per_epoch(toy: Path, tmp_path: Path, monkeypatch) -> None:
    # The trainer's DataLoader workers live for the whole run, so cache_frames lasts past the first
    # epoch; the sampler's (epoch, index) keys reach them, where a set_epoch in this process would not.
    from training import datasets

    log = tmp_path / "reads.log"
    read_rgb = datasets.read_rgb

    def logged(path, *args):  # forked workers inherit this and append one line per frame read
        with open(log, "a") as f:
            f.write("read\n")
        return read_rgb(path, *args)

    monkeypatch.setattr(datasets, "read_rgb", logged)
    config = _config(toy, cache_frames=True, hflip_prob=0.5)
    sequences, _ = training_sequences(config)

    def run(workers: int) -> tuple[list[list[Tensor]], list[int]]:
        dataset = build_dataset(config, sequences, model_config(config))
        sampler = ResumableSampler(dataset, 1, 0, config.seed)
        loader = data_loader(dataset, sampler, TrainConfig.from_dict({**config.to_dict(), "num_workers": workers}))
        batches, reads = [], []
        for epoch in range(3):
            log.write_text("")
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)  # what the trainer once relied on: it never reaches a live worker
            batches.append([torch.cat([b["y"], b["appearance"]]) for b in loader])
            reads.append(len(log.read_text().splitlines()))
        return batches, reads

    alone, _ = run(0)
    together, reads = run(1)
    assert all(torch.equal(a, b) for ea, eb in zip(alone, together, strict=True) for a, b in zip(ea, eb, strict=True))
    assert not torch.equal(torch.cat(alone[0]), torch.cat(alone[1]))  # each epoch its own order and draws
    assert reads[0] > 0 and reads[1] + reads[2] < reads[0]  # after the first epoch, mostly from the cache


def test_new_run_and_resume_rules(toy: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(TrainingError, match="not empty; pass --resume"):
        train(_config(toy), tmp_path / "busy", progress=False)
    with pytest.raises(TrainingError, match="no train_config.json"):
        train(_config(toy), tmp_path / "nothing", resume=True, progress=False)
    with pytest.raises(TrainConfigError, match=r"cannot change lr when resuming"):
        _config(toy).resumed_with(lr=0.5)
    assert _config(toy).resumed_with(steps=10).steps == 10
    with pytest.raises(TrainConfigError, match="unknown mode 'sideways'; allowed: bidirectional"):
        _config(toy, mode="sideways")
    with pytest.raises(TrainConfigError, match=r"model_overrides: unknown BTUNetConfig field\(s\) colour"):
        model_config(_config(toy, model_overrides={"colour": 1}))


def test_person_mode_needs_a_person(toy: Path, tmp_path: Path) -> None:
    # Without a selected person the "person-specific" model would silently learn everyone.
    with pytest.raises(TrainConfigError, match=r"mode 'person'.*no person is selected.*characters.*--character NAME"):
        _config(toy, mode="person")
    assert _config(toy, mode="person", characters=("char01",)).characters == ("char01",)
    with pytest.raises(TrainConfigError, match="mode 'person'"):  # saved configs are checked alike
        TrainConfig.from_dict({**_config(toy).to_dict(), "mode": "person"})
    from btdm_engine.cli import main

    assert main(["train", "btunet", "--data", str(toy), "--out", str(tmp_path / "run"), "--mode", "person"]) == 2
    assert not (tmp_path / "run").exists()


def _toy_as_densepose_videos(toy: Path, root: Path) -> Path:
    """The toy sequences as DensePose-processed videos (detectron2's IUV channel order)."""
    from btdm_engine.posemaps.encoding import read_iuv_png, write_iuv_png

    for seq in sorted((toy / "sequences").iterdir()):
        video = root / "train" / seq.name
        (video / "densepose").mkdir(parents=True)
        shutil.copytree(seq / "rgb", video / "frames")
        for png in sorted((seq / "iuv").glob("*.png")):
            write_iuv_png(video / "densepose" / png.name, read_iuv_png(png), order="densepose")
    return root


def test_densepose_videos_train_without_a_flip_by_default(toy: Path, tmp_path: Path) -> None:
    from training.datasets import DatasetError
    from training.video import DETECTRON2_PART_SWAP, SYMMETRY_FILE

    videos = _toy_as_densepose_videos(toy, tmp_path / "videos")
    config = _config(videos, steps=1, checkpoint_every=1)
    assert config.hflip_prob is None
    sequences, _ = training_sequences(config)
    assert build_dataset(config, sequences, model_config(config)).hflip_prob == 0.0
    result = train(config, tmp_path / "run", progress=False)
    assert result.step == 1 and np.isfinite(result.last_loss)
    # asking for the flip without the set's symmetry table is refused, naming the way out
    with pytest.raises(DatasetError, match=r"cannot be flipped without a symmetry table.*densepose_symmetry\.json"):
        train(_config(videos, steps=1, hflip_prob=0.5), tmp_path / "flipped", progress=False)
    # with the table beside the videos the flip is back on by default
    table = {"format_version": 1, "labels": list(DETECTRON2_PART_SWAP), "u": [None] * 24, "v": [None] * 24}
    (videos / SYMMETRY_FILE).write_text(json.dumps(table))
    sequences, _ = training_sequences(config)
    assert build_dataset(config, sequences, model_config(config)).hflip_prob == 0.5


# --------------------------------------------------------------------------------------------
# SIGKILL and resume



def _cli_args(toy: Path, run: Path, steps: int, *extra: str) -> list[str]:
    return [
        "train", "btunet", "--data", str(toy), "--out", str(run), "--steps", str(steps), "--batch-size", "4",
        "--lr", "1e-3", "--checkpoint-every", "2", "--sample-every", "0", "--log-every", "1", "--no-progress",
        "--model-config", json.dumps(MICRO_BTUNET), *extra,
    ]  # fmt: skip


def _run_cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen([sys.executable, "-m", "btdm_engine.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def test_sigkill_then_resume_continues_exactly(toy: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _run_cli(_cli_args(toy, run, steps=1000))
    deadline = time.monotonic() + 120
    try:
        while not (run / "snapshots" / "step_0000004" / "COMPLETE").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no snapshot within 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    complete = [s for s, _ in snapshot_dirs(run)]
    last = complete[-1]
    assert last >= 4 and last % 2 == 0

    # Debris a crash could leave: a snapshot still being written, and a step folder without
    # its COMPLETE marker. Neither may be picked.
    fake_tmp = run / "snapshots" / f".step_{last + 2:07d}.tmp-12345"
    (fake_tmp / "checkpoint").mkdir(parents=True)
    (fake_tmp / "training_state.json").write_text("{")
    fake_incomplete = run / "snapshots" / f"step_{last + 4:07d}"
    fake_incomplete.mkdir()
    (fake_incomplete / "training_state.json").write_text("{")

    saved = load_file(str(run / "snapshots" / f"step_{last:07d}" / "training_state.safetensors"))
    config = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text()))

    # Resuming to the saved step itself does nothing but restore: the weights are the saved ones.
    restored = train(config.resumed_with(steps=last), run, resume=True, progress=False)
    assert restored.resumed_from == last and restored.step == last
    for name, value in restored.model.state_dict().items():
        assert torch.equal(value, saved[f"model.{name}"]), name

    # Continue two steps: the counter goes on from the snapshot, the CSV has no duplicate steps.
    resumed = train(config.resumed_with(steps=last + 2), run, resume=True, progress=False)
    assert resumed.resumed_from == last and resumed.step == last + 2
    steps = [int(r["step"]) for r in csv.DictReader((run / "log.csv").read_text().splitlines())]
    assert steps == list(range(1, last + 3))

    # ...and lands where an uninterrupted run lands.
    reference = train(config.resumed_with(steps=last + 2), tmp_path / "reference", progress=False)
    for name, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    _, _, meta = load_checkpoint(run / "checkpoint")
    assert meta["extra"]["training"]["step"] == last + 2


def test_cli_resume_refuses_changed_options(toy: Path, tmp_path: Path) -> None:
    from training import command as train_cmd

    parser = argparse.ArgumentParser(prog="btdm")
    train_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(_cli_args(toy, tmp_path / "run", 2))
    assert args.func(args) == 0
    args = parser.parse_args(_cli_args(toy, tmp_path / "run", 4, "--resume", "--lr", "0.5"))
    with pytest.raises(TrainConfigError, match="cannot change lr"):
        args.func(args)
    args = parser.parse_args(["train", "btunet", "--data", str(toy), "--out", str(tmp_path / "run"), "--resume", "--steps", "3",
                              "--no-progress"])
    assert args.func(args) == 0  # only --steps given: the saved options are kept
    assert [s for s, _ in snapshot_dirs(tmp_path / "run")] == [2, 3]


# --------------------------------------------------------------------------------------------
# Single-image fine-tuning


def test_finetune_command_matches_the_animator(toy: Path, tmp_path: Path) -> None:
    from btdm_engine.commands import finetune as finetune_cmd
    from btdm_engine.imageio import read_rgb
    from btdm_engine.pipeline import Animator
    from btdm_engine.posemaps.encoding import read_iuv_png

    train(_config(toy, steps=2), tmp_path / "run", progress=False)
    model = tmp_path / "model"
    model.mkdir()
    os.symlink(tmp_path / "run" / "checkpoint", model / "btunet")
    image = toy / "sequences" / "c03_s00" / "rgb" / "000000.png"
    iuv = toy / "sequences" / "c03_s00" / "iuv" / "000000.png"

    parser = argparse.ArgumentParser(prog="btdm")
    finetune_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", "--model", str(model), "--appearance", str(image), "--appearance-iuv", str(iuv),
                              "--steps", "3", "--lr", "1e-3", "--seed", "7", "--device", "cpu",
                              "--out", str(tmp_path / "tuned")])  # fmt: skip
    assert args.func(args) == 0
    tuned, _, meta = load_checkpoint(tmp_path / "tuned" / "btunet")
    original, _, _ = load_checkpoint(model / "btunet")
    assert meta["extra"]["finetune"]["steps"] == 3
    assert any(not torch.equal(v, original.state_dict()[k]) for k, v in tuned.state_dict().items())

    # Same seed: frames from the saved fine-tuned model == the Animator fine-tuning on the fly.
    rgb = np.round(read_rgb(image) * 255).astype(np.uint8)
    poses = np.stack([read_iuv_png(toy / "sequences" / "c03_s00" / "iuv" / f"{t:06d}.png") for t in range(3)])
    on_the_fly = Animator.from_pretrained(model, device="cpu").animate(
        poses, rgb, read_iuv_png(iuv), steps=2, seed=7, finetune_steps=3, finetune_lr=1e-3
    )
    from_saved = Animator.from_pretrained(tmp_path / "tuned", device="cpu").animate(poses, rgb, steps=2, seed=7)
    np.testing.assert_array_equal(on_the_fly, from_saved)

    args = parser.parse_args(["finetune", "--model", str(model), "--appearance", str(image), "--appearance-iuv", str(iuv),
                              "--steps", "1", "--out", str(tmp_path / "tuned")])  # fmt: skip
    with pytest.raises(ValueError, match="not empty"):
        args.func(args)


# --------------------------------------------------------------------------------------------
# The embedded default model's recipe


def test_default_model_recipe_assembles_a_loadable_model(toy: Path, tmp_path: Path) -> None:
    from btdm_engine.pipeline import Animator
    from training.default_model import assemble

    # A synthetic set records its whole preset in the manifest; the card names it, not the dict.
    toy = shutil.copytree(toy, tmp_path / "data")
    manifest = json.loads((toy / "manifest.json").read_text())
    manifest.setdefault("info", {})["preset"] = {"name": "wide", "characters": 64}
    (toy / "manifest.json").write_text(json.dumps(manifest))
    runs = {"btunet": tmp_path / "btunet", "sr3": tmp_path / "sr3"}
    out = tmp_path / "model"
    with pytest.raises(ValueError, match="no finished checkpoint"):
        assemble(toy, runs, out)
    assert not out.exists()
    train(_config(toy, steps=2), runs["btunet"], progress=False)
    train(_config(toy, "sr3", steps=2), runs["sr3"], progress=False)
    assemble(toy, runs, out)
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "appearance.png", "appearance_iuv.png", "btunet", "sr3"]
    animator = Animator.from_pretrained(out, device="cpu")
    assert (animator.low_resolution, animator.resolution) == (16, 32)
    card = (out / "MODEL_CARD.md").read_text()
    assert "| btunet |" in card and "| sr3 |" in card and "test split" in card
    assert "characters" in card and "held-out figures" not in card
    assert "(`btdm synth build --preset wide`:" in card and "'characters'" not in card
    assemble(toy, runs, out, notes="## Measured\n\nheld-out figures here\n")  # the notes close the card
    assert (out / "MODEL_CARD.md").read_text().rstrip().endswith("held-out figures here")
    assemble(toy, runs, out)  # replacing an existing folder leaves no staging debris
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assemble(toy, runs, out, sampling={"sr_steps": 1})  # how a job samples the SR3 when it does not say
    assert Animator.from_pretrained(out, device="cpu").sr_steps_for(25) == 1
    # an inference-only model field (how much of a residual SR3's correction the body keeps) lands in
    # sr3/config.json's model, where the loader checks it: this toy SR3 is not residual
    assemble(toy, runs, out, sampling={"sr_steps": 1}, sr3_inference={"body_correction": 0.5})
    assert json.loads((out / "sr3" / "config.json").read_text())["model"]["body_correction"] == 0.5
    with pytest.raises(ValueError, match=r"body_correction: 0\.5 needs a residual network"):
        Animator.from_pretrained(out, device="cpu")


def test_default_model_recipe_assembles_a_cascade(toy: Path, tmp_path: Path) -> None:
    """runs with an ``sr3-2`` stage (the 256 px default's 128 -> 256 SR3) make a cascade folder: both
    stages, each sampled as ``sampling`` says, the card naming the chain of sizes."""
    from btdm_engine.pipeline import Animator
    from training.default_model import assemble

    runs = {"btunet": tmp_path / "btunet", "sr3": tmp_path / "sr3", "sr3-2": tmp_path / "sr3-2"}
    train(_config(toy, steps=2), runs["btunet"], progress=False)
    train(_config(toy, "sr3", steps=2, model_overrides={**MICRO_SR3, "resolution": 24}), runs["sr3"], progress=False)
    train(_config(toy, "sr3", steps=2, model_overrides={**MICRO_SR3, "low_resolution": 24}), runs["sr3-2"],
          progress=False)
    out = assemble(toy, runs, tmp_path / "model", sampling={"sr_steps": 1})
    assert sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md", "appearance.png", "appearance_iuv.png", "btunet",
                                                    "sr3", "sr3-2"]
    animator = Animator.from_pretrained(out, device="cpu")
    assert [int(net.config.resolution) for net, _ in animator.sr3_stages] == [24, 32] and animator.resolution == 32
    assert [animator.sr_steps_for(25, None, k) for k in (0, 1)] == [1, 1]
    card = (out / "MODEL_CARD.md").read_text()
    assert "a cascade of 2 residual `tiny-warp` SR3s\n(16 -> 24 -> 32 px, 1.06 M parameters each)" in card
    assert "| sr3 |" in card and "| sr3-2 |" in card



def test_warm_start_takes_matching_weights_and_leaves_reset_ones_fresh(toy: Path, tmp_path: Path) -> None:
    """init_from: a run's checkpoint seeds a new run (here a residual SR3 from a plain one) where names
    and shapes match; init_reset prefixes keep their fresh initialisation (the residual head: zero)."""
    from training.trainer import warm_start

    train(_config(toy, "sr3", steps=2), tmp_path / "plain", progress=False)
    source, _, _ = load_checkpoint(tmp_path / "plain" / "checkpoint", kind="sr3")
    config = _config(toy, "sr3", model_overrides={**MICRO_SR3, "residual": True},
                     init_from=str(tmp_path / "plain"), init_reset=("unet.out.2.",))
    model = build_model("sr3", model_config(config).to_dict())
    warm_start(model, config)
    for name, value in model.state_dict().items():
        if name.startswith("unet.out.2."):
            assert not value.any(), name  # the residual head starts at zero
        else:
            torch.testing.assert_close(value, source.state_dict()[name])
    result = train(config, tmp_path / "warm", progress=False)  # and the run trains from there
    assert result.step == config.steps and np.isfinite(result.last_loss)
    with pytest.raises(TrainingError, match="no sr3 weights there"):
        warm_start(model, _config(toy, "sr3", init_from=str(tmp_path)))
    with pytest.raises(TrainConfigError, match="init_reset applies to a warm start"):
        _config(toy, "sr3", init_reset=("unet.",))
