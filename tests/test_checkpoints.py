"""Checkpoints: safetensors + config.json round trips, strict and clear rejection of bad folders."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from btdm_engine.checkpoints import CheckpointError, load_checkpoint, read_checkpoint_config, save_checkpoint
from btdm_engine.diffusion import ScheduleConfig
from btdm_engine.models import SR3, BTUNet, BTUNetConfig, SR3Config

SCHEDULE = ScheduleConfig(logsnr_min=-18.0, num_train_steps=500)


def random_btunet(seed: int = 0) -> BTUNet:
    """Tiny BTU-Net with every parameter random (zero-initialised layers too), as after training."""
    torch.manual_seed(seed)
    model = BTUNet(BTUNetConfig.preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BTUNet]:
    model = random_btunet()
    folder = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "btunet", model, "btunet", SCHEDULE,
                             extra={"task": "single_image", "step": 7})
    return folder, model


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_round_trip_gives_identical_outputs(saved: tuple[Path, BTUNet]) -> None:
    folder, model = saved
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    loaded, schedule, meta = load_checkpoint(folder, kind="btunet")
    assert isinstance(loaded, BTUNet) and not loaded.training
    assert loaded.config == model.config and schedule == SCHEDULE
    assert meta["kind"] == "btunet" and meta["format_version"] == 1 and meta["extra"] == {"task": "single_image", "step": 7}
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    gen = torch.Generator().manual_seed(0)
    x_a, x_b, pose_a, pose_b, c = (torch.rand(2, 3, 32, 32, generator=gen) for _ in range(5))
    lam = torch.tensor([-3.0, 4.0])
    with torch.no_grad():
        expected = model(x_a, x_b, lam, pose_a, pose_b, c)
        got = loaded(x_a, x_b, lam, pose_a, pose_b, c)
    assert all(torch.equal(e, g) for e, g in zip(expected, got))


def test_sr3_round_trip_and_overwrite(tmp_path: Path) -> None:
    torch.manual_seed(1)
    sr3 = SR3(SR3Config.preset("tiny")).eval()
    folder = tmp_path / "sr3"
    save_checkpoint(folder, random_btunet(), "btunet", ScheduleConfig())
    save_checkpoint(folder, sr3, "sr3", ScheduleConfig(shift=1.0))  # replaces the BTU-Net checkpoint
    loaded, schedule, meta = load_checkpoint(folder)
    assert isinstance(loaded, SR3) and meta["kind"] == "sr3" and schedule.shift == 1.0
    for name, tensor in sr3.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with pytest.raises(CheckpointError, match="holds a 'sr3' model, expected 'btunet'"):
        load_checkpoint(folder, kind="btunet")


def test_missing_folder_and_missing_files(tmp_path: Path, saved: tuple[Path, BTUNet]) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    ckpt = _copy(saved[0], tmp_path / "a")
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_checkpoint(ckpt)
    ckpt = _copy(saved[0], tmp_path / "b")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_checkpoint(ckpt)


def test_bad_config_json_is_named(tmp_path: Path, saved: tuple[Path, BTUNet]) -> None:
    def edited(name: str, change) -> Path:
        ckpt = _copy(saved[0], tmp_path / name)
        doc = json.loads((ckpt / "config.json").read_text())
        change(doc)
        (ckpt / "config.json").write_text(json.dumps(doc))
        return ckpt

    ckpt = _copy(saved[0], tmp_path / "json")
    (ckpt / "config.json").write_text('{"kind": "btunet",\n "model": }')
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON at line 2"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"unknown key.*width_multiplier"):
        load_checkpoint(edited("key", lambda d: d["model"].update(width_multiplier=2)))
    with pytest.raises(CheckpointError, match=r"bad 'schedule'.*warp"):
        load_checkpoint(edited("sched", lambda d: d["schedule"].update(warp=1)))
    with pytest.raises(CheckpointError, match="unknown model kind 'vae'; allowed: btunet, sr3"):
        load_checkpoint(edited("kind", lambda d: d.update(kind="vae")))
    with pytest.raises(CheckpointError, match="format_version 2 is not supported"):
        load_checkpoint(edited("version", lambda d: d.update(format_version=2)))
    with pytest.raises(CheckpointError, match="unknown key.*optimizer"):
        read_checkpoint_config(edited("top", lambda d: d.update(optimizer={})))


def test_truncated_and_pickled_weights_are_rejected_without_unpickling(tmp_path: Path, saved: tuple[Path, BTUNet]) -> None:
    ckpt = _copy(saved[0], tmp_path / "trunc")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(ckpt)

    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    ckpt = _copy(saved[0], tmp_path / "pickle")
    (ckpt / "model.safetensors").write_bytes(pickle.dumps({"weights": Payload()}))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(ckpt)
    assert not marker.exists()  # the payload never ran

    ckpt = _copy(saved[0], tmp_path / "torchsave")
    torch.save(saved[1].state_dict(), ckpt / "model.safetensors")  # a torch zip-pickle under our name
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(ckpt)


def test_tensor_mismatches_are_listed_by_name(tmp_path: Path, saved: tuple[Path, BTUNet]) -> None:
    def with_weights(name: str, change) -> Path:
        ckpt = _copy(saved[0], tmp_path / name)
        tensors = load_file(ckpt / "model.safetensors")
        change(tensors)
        save_file(tensors, ckpt / "model.safetensors")
        return ckpt

    with pytest.raises(CheckpointError, match=r"mis-shaped.*direction\.weight \(2, 64\) != \(2, 128\)"):
        load_checkpoint(with_weights("shape", lambda t: t.update({"direction.weight": torch.zeros(2, 64)})))
    with pytest.raises(CheckpointError, match=r"missing tensors direction\.weight"):
        load_checkpoint(with_weights("missing", lambda t: t.pop("direction.weight")))
    with pytest.raises(CheckpointError, match=r"unexpected tensors ema\.decay"):
        load_checkpoint(with_weights("extra", lambda t: t.update({"ema.decay": torch.zeros(1)})))
    with pytest.raises(CheckpointError, match=r"wrong dtypes.*direction\.weight torch\.float16 != torch\.float32"):
        load_checkpoint(with_weights("dtype", lambda t: t.update({"direction.weight": t["direction.weight"].half()})))


def test_save_rejects_bad_arguments_and_never_leaves_a_complete_looking_half_write(tmp_path: Path) -> None:
    model = random_btunet()
    with pytest.raises(CheckpointError, match="allowed: btunet, sr3"):
        save_checkpoint(tmp_path / "x", model, "unet", SCHEDULE)
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "x", model, "btunet", SCHEDULE, extra={"when": object()})
    assert not (tmp_path / "x").exists()

    folder = save_checkpoint(tmp_path / "ckpt", model, "btunet", SCHEDULE)
    # Make the weights' final name unwritable (a directory): the rewrite fails half-way.
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()
    with pytest.raises(OSError):
        save_checkpoint(folder, model, "btunet", SCHEDULE)
    assert not (folder / "config.json").exists()  # incomplete, and it says so
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]  # no temp file left
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        load_checkpoint(folder)


def test_loading_a_model_leaves_torch_dynamo_unimported() -> None:
    """Reading a checkpoint builds its network on the meta device first (its size checked before anything is
    allocated); torch's meta kernels of normal_, mul and exp import torch._dynamo, 1.5 s of every `btdm
    animate` and `btdm serve` start here, to compute nothing. `models.on_meta` leaves those out: loading the
    embedded model, and sizing every preset, import no torch._dynamo. Sizes stay right (the parameter counts
    of the meta and the real network agree)."""
    import subprocess
    import sys

    code = """
import json, sys
from btdm_engine.models import build_model, on_meta
from btdm_engine.models.btunet import PRESETS as BTUNET
from btdm_engine.models.sr3 import PRESETS as SR3
from btdm_engine.pipeline import Animator
from btdm_engine.weights import default_model_dir
Animator.from_pretrained(default_model_dir())
counts = {}
for kind, presets in (("btunet", BTUNET), ("sr3", SR3)):
    for name, config in presets.items():
        with on_meta():
            model = build_model(kind, config.to_dict())
        assert all(p.is_meta for p in model.parameters())
        counts[f"{kind}/{name}"] = sum(p.numel() for p in model.parameters())
print(json.dumps({"dynamo": "torch._dynamo" in sys.modules, "counts": counts}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["dynamo"] is False
    from btdm_engine.models import build_model
    from btdm_engine.models.btunet import PRESETS as BTUNET

    tiny = build_model("btunet", BTUNET["tiny"].to_dict())
    assert result["counts"]["btunet/tiny"] == sum(p.numel() for p in tiny.parameters())
