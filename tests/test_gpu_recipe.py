"""The GPU training recipe at toy size on the CPU: pack, train (the real trainer), export, assemble.

The train-and-assemble test runs the recipe's command line in a fresh interpreter that sees only
packages the GPU machine has (torch, numpy, opencv, einops, safetensors, tensorboard, ... and the
project), so a stray import of the service or Blender stack would fail here first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from device_only import device_only_python
from safetensors.torch import load_file

from btdm_engine.checkpoints import load_checkpoint
from btdm_engine.imageio import read_rgb, resize_labels, resize_rgb
from btdm_engine.posemaps.encoding import read_iuv_png
from training.dataset_format import DatasetManifest, validate_dataset
from training.gpu_recipe import (
    MIB,
    GpuRecipeError,
    assemble_model,
    export_shards,
    pack_dataset,
    read_shards,
    resize_frame,
)
from training.toy_data import write_toy_dataset

# one torch thread: two threads on this busy two-core machine run several times slower (conftest)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 4 characters (3 train, 1 held out), 2 sequences each, 6 frames of 64 px
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "data", num_characters=4, sequences_per_character=2,
                             num_frames=6, size=64)  # fmt: skip


@pytest.fixture(scope="module")
def pack(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pack") / "pack"
    pack_dataset(toy, out, size=32, test_sequences=1, check_tree=False)
    return out


# ------------------------------------------------------------------------------------------ pack


def test_pack_is_a_valid_dataset_of_the_train_characters_at_the_new_size(toy: Path, pack: Path) -> None:
    manifest = validate_dataset(pack, verify_checksums=True)
    source = DatasetManifest.load(toy)
    assert manifest.resolution == (32, 32)
    assert [r.id for r in manifest.split("train")] == [r.id for r in source.split("train")]
    held_out = {r.character for r in source.split("test")}
    assert {r.character for r in manifest.split("train")}.isdisjoint(held_out)
    assert len(manifest.split("test")) == 1 and manifest.split("test")[0].character in held_out
    assert manifest.info["generator"].startswith("training.gpu_recipe")


def test_packed_frames_are_what_training_would_read_from_the_source(toy: Path, pack: Path) -> None:
    src = DatasetManifest.load(toy).sequence_dir("c00_s01")
    dst = DatasetManifest.load(pack).sequence_dir("c00_s01")
    for background in ((1.0, 1.0, 1.0), (0.0, 0.2, 0.9)):  # premultiplied shrink: right on any background
        expected = resize_rgb(read_rgb(src / "rgb" / "000003.png", background), (32, 32))
        got = read_rgb(dst / "rgb" / "000003.png", background)
        assert np.abs(got - expected).max() <= 2.5 / 255
    iuv = resize_labels(read_iuv_png(src / "iuv" / "000003.png"), (32, 32))
    assert np.array_equal(read_iuv_png(dst / "iuv" / "000003.png"), iuv)


def test_resize_frame_keeps_alpha_and_blacks_out_transparent_pixels() -> None:
    img = np.zeros((8, 8, 4), np.uint8)
    img[:4, :, :] = (10, 200, 30, 255)
    img[4:, :, :3] = 123  # invisible colour under alpha 0
    out = resize_frame(img, 4)
    assert out.shape == (4, 4, 4)
    assert (out[:2] == (10, 200, 30, 255)).all() and (out[2:] == 0).all()


def test_pack_over_its_limit_is_refused_and_leaves_nothing(toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "pack"
    with pytest.raises(GpuRecipeError, match=r"over its limit of 0\.0 MiB .*--max-frames"):
        pack_dataset(toy, out, size=32, limit_bytes=20_000, check_tree=False)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_pack_refuses_bad_requests(toy: Path, pack: Path, tmp_path: Path) -> None:
    with pytest.raises(GpuRecipeError, match="already exists"):
        pack_dataset(toy, pack, size=32, check_tree=False)
    with pytest.raises(GpuRecipeError, match=r"size must be an int in 8\.\.64"):
        pack_dataset(toy, tmp_path / "a", size=128, check_tree=False)
    with pytest.raises(GpuRecipeError, match="motion\\(s\\) dance not in the train split"):
        pack_dataset(toy, tmp_path / "b", size=32, motions=["dance"], check_tree=False)
    with pytest.raises(GpuRecipeError, match="not a pack this recipe wrote"):
        pack_dataset(toy, toy, size=32, replace=True, check_tree=False)


def test_pack_of_an_unfinished_build_is_refused(toy: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "building"
    shutil.copytree(toy, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["info"]["complete"] = False
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(GpuRecipeError, match="marked incomplete"):
        pack_dataset(copy, tmp_path / "p", size=32, check_tree=False)


def test_pack_limit_counts_the_checkout_that_travels_with_it(toy: Path, tmp_path: Path) -> None:
    report = pack_dataset(toy, tmp_path / "p", size=32, check_tree=True)
    assert report.tree_bytes is not None and report.tree_bytes > 0
    assert report.limit_bytes <= 64 * MIB - report.tree_bytes
    assert report.bytes <= report.limit_bytes


# --------------------------------------------------------------------------- train, export, assemble


def test_train_export_assemble_round_trip_with_device_imports_only(pack: Path, tmp_path: Path) -> None:
    run, export = tmp_path / "run", tmp_path / "out"
    # a budget (0.2 min) with a 3-step calibration, then the resumed run: the real trainer on the
    # CPU, a tiny model, float32 shards of at most 0.5 MiB
    argv = ["train", "--data", str(pack), "--run", str(run), "--export", str(export), "--minutes", "0.2",
            "--calibration-steps", "3", "--preset", "tiny", "--model-config", '{"model_channels": 16}',
            "--batch-size", "2", "--device", "cpu", "--dtype", "float32", "--shard-mib", "0.5", "--max-files", "8",
            "--warmup-steps", "0"]  # fmt: skip
    # The recipe's clock is a fake that moves 0.5 s each time it is read (a step, a phase), so the
    # budget's arithmetic (rate, second phase, deadline) gives the same run on any machine at any
    # load; with the wall clock a busy machine spent the budget on the calibration alone.
    proc = device_only_python(f"""
        import sys, time, types
        import training.gpu_recipe as recipe
        ticks = iter(range(10**9))
        recipe.time = types.SimpleNamespace(**{{**vars(time), "monotonic": lambda: 0.5 * next(ticks)}})
        sys.exit(recipe.main({argv!r}))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained to step" in proc.stdout
    summary = json.loads((export / "train.json").read_text())
    shards = sorted(export.glob("btunet-*-of-*.safetensors"))
    assert 2 <= len(shards) <= 8 and all(p.stat().st_size <= 0.5 * MIB for p in shards)
    assert summary["export_dtype"] == "float32"
    assert summary["phases"][0]["steps"] == 3 and len(summary["phases"]) == 2
    assert summary["checkpoint_step"] > 3 and summary["trained_s"] < 1.1 * 12 + 5
    assert summary["train_config"]["model_overrides"] == {"model_channels": 16}
    assert (export / "preview.png").is_file() == ("preview.png" in summary["files"])

    model_dir = assemble_model(export, tmp_path / "model")
    trained, _, _ = load_checkpoint(run / "checkpoint")
    assembled, _, meta = load_checkpoint(model_dir / "btunet")
    for name, tensor in trained.state_dict().items():
        assert torch.equal(tensor, assembled.state_dict()[name]), name
    assert meta["extra"]["gpu_recipe"]["shards"] == len(shards)
    assert meta["extra"]["training"]["step"] == summary["checkpoint_step"]
    assert assembled.config.resolution == 32 and assembled.config.model_channels == 16
    with pytest.raises(GpuRecipeError, match="already exists"):
        assemble_model(export, model_dir)
    assemble_model(export, model_dir, replace=True)

    # a missing or altered shard is refused
    with pytest.raises(GpuRecipeError, match=r"shard\(s\) 2 of \d+ missing"):
        read_shards([p for p in shards if "-00002-" not in p.name])
    altered = tmp_path / "altered"
    altered.mkdir()
    for p in shards:
        (altered / p.name).write_bytes(p.read_bytes())
    first = altered / shards[0].name
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(GpuRecipeError, match="do not hash to the export id"):
        read_shards(altered)


def test_train_refuses_a_deadline_too_close_to_train(pack: Path, tmp_path: Path) -> None:
    import time

    from training.gpu_recipe import train_recipe

    with pytest.raises(GpuRecipeError, match="too few to train"):
        train_recipe(pack, tmp_path / "run", tmp_path / "out", until=time.time() + 20, settings={"device": "cpu"})
    assert not (tmp_path / "run").exists()


def test_bf16_export_fits_a_tighter_limit_and_assembles_to_the_rounded_weights(tmp_path: Path) -> None:
    from btdm_engine.checkpoints import save_checkpoint
    from btdm_engine.diffusion.schedule import ScheduleConfig
    from btdm_engine.models import BTUNet, BTUNetConfig

    torch.manual_seed(0)
    net = BTUNet(BTUNetConfig.preset("tiny"))
    ckpt = save_checkpoint(tmp_path / "ckpt", net, "btunet", ScheduleConfig(), extra={"training": {"step": 7}})
    fp32 = sum(t.numel() * 4 for t in net.state_dict().values())
    # auto picks bf16 when float32 does not fit 4 files of 1 MiB
    shards = export_shards(ckpt, tmp_path / "out", shard_bytes=1 * MIB, max_files=4, total_bytes=4 * MIB)
    assert fp32 > 4 * MIB and len(shards) <= 4 and all(s.bytes <= 1 * MIB for s in shards)
    assert load_file(str(tmp_path / "out" / shards[0].name))
    model = assemble_model(tmp_path / "out", tmp_path / "model")
    assembled, _, _ = load_checkpoint(model / "btunet")
    for name, tensor in net.state_dict().items():
        assert torch.equal(assembled.state_dict()[name], tensor.to(torch.bfloat16).float()), name
    with pytest.raises(GpuRecipeError, match="already holds shards"):
        export_shards(ckpt, tmp_path / "out")
    with pytest.raises(GpuRecipeError, match=r"need \d+ shard\(s\).*limits are 2 files"):
        export_shards(ckpt, tmp_path / "small", dtype="float32", shard_bytes=1 * MIB, max_files=2, total_bytes=4 * MIB)
    with pytest.raises(GpuRecipeError, match="alone is"):
        export_shards(ckpt, tmp_path / "tiny_shards", shard_bytes=64 * 1024)


def test_assemble_refuses_an_sr3_of_another_resolution(tmp_path: Path) -> None:
    from btdm_engine.checkpoints import save_checkpoint
    from btdm_engine.diffusion.schedule import ScheduleConfig
    from btdm_engine.models import SR3, BTUNet, BTUNetConfig, SR3Config

    net = BTUNet(BTUNetConfig.preset("tiny"))
    save_checkpoint(tmp_path / "ckpt", net, "btunet", ScheduleConfig())
    export_shards(tmp_path / "ckpt", tmp_path / "out")
    sr3 = SR3(SR3Config.preset("tiny").replace(low_resolution=16))
    save_checkpoint(tmp_path / "sr3", sr3, "sr3", ScheduleConfig())
    with pytest.raises(GpuRecipeError, match="SR3 taking 16 px input"):
        assemble_model(tmp_path / "out", tmp_path / "model", sr3=tmp_path / "sr3")
    assert not (tmp_path / "model").exists()
