"""The one config helper (btdm_engine.dataconfig), the configs built on it, the shared constants and
the `btdm train` flags generated from TrainConfig."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from btdm_engine import constants, dataconfig
from btdm_engine.dataconfig import check_bool, check_choice, check_int, check_number, check_numbers, option

REPO = Path(__file__).resolve().parents[1]


class OwnError(ValueError):
    pass


@dataclass(frozen=True)
class Leaf:
    name: str
    size: float = 1.0


@dataclass(frozen=True)
class Tree:
    leaves: tuple[Leaf, ...]
    root: Leaf
    pair: tuple[int, int] = (1, 2)
    extra: Leaf | None = None
    notes: dict[str, int] = dataclasses.field(default_factory=dict)
    level: int = option(0, help="how deep", choices=None)


def test_nested_round_trip_through_json() -> None:
    tree = Tree(leaves=(Leaf("a"), Leaf("b", 2.5)), root=Leaf("r"), extra=Leaf("x"), notes={"k": 1})
    doc = dataconfig.to_dict(tree)
    assert doc == {"leaves": [{"name": "a", "size": 1.0}, {"name": "b", "size": 2.5}], "root": {"name": "r", "size": 1.0},
                   "pair": [1, 2], "extra": {"name": "x", "size": 1.0}, "notes": {"k": 1}, "level": 0}
    again = dataconfig.from_dict(Tree, json.loads(json.dumps(doc)), OwnError)
    assert again == tree and isinstance(again.leaves, tuple) and isinstance(again.pair, tuple)
    assert dataconfig.from_dict(Tree, {**doc, "extra": None}, OwnError).extra is None
    assert dataclasses.fields(Tree)[-1].metadata["help"] == "how deep"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(colour=1), r"^tree: unknown field\(s\) colour; allowed: extra, leaves, level, notes, pair, root$"),
        (lambda d: d.pop("root"), r"^tree: missing field\(s\) root$"),
        (lambda d: d["leaves"][1].update(bark=1), r"^tree\.leaves\[1\]: unknown field\(s\) bark; allowed: name, size$"),
        (lambda d: d["leaves"][0].pop("name"), r"^tree\.leaves\[0\]: missing field\(s\) name$"),
        (lambda d: d.update(leaves={"name": "a"}), r"^tree\.leaves must be a list, got dict$"),
        (lambda d: d.update(root=[1]), r"^tree\.root: expected a JSON object of fields, got list$"),
    ],
)
def test_from_dict_refuses_unknown_and_missing_keys_with_the_callers_error(edit, message: str) -> None:
    doc = dataconfig.to_dict(Tree(leaves=(Leaf("a"), Leaf("b")), root=Leaf("r")))
    edit(doc)
    with pytest.raises(OwnError, match=message):
        dataconfig.from_dict(Tree, doc, OwnError, where="tree")


def test_check_helpers_name_the_field_and_value() -> None:
    assert check_int(3, "steps", OwnError, lo=1) == 3
    assert check_int(np.int64(3), "seed", OwnError, lo=0, numpy=True) == 3
    for bad in (True, 2.0, "3", 0, np.int64(3)):
        with pytest.raises(OwnError, match=rf"^steps must be an int >= 1, got {re.escape(repr(bad))}$"):
            check_int(bad, "steps", OwnError, lo=1)
    with pytest.raises(OwnError, match=r"^size must be an int in \[8, 64\], got 65$"):
        check_int(65, "size", OwnError, lo=8, hi=64)
    assert check_number(1, "lr", OwnError, lo=0.0, lo_open=True) == 1.0
    for bad in (0, math.nan, math.inf, False, "1"):
        with pytest.raises(OwnError, match=r"^lr must be a finite number > 0\.0, got"):
            check_number(bad, "lr", OwnError, lo=0.0, lo_open=True)
    with pytest.raises(OwnError, match=r"^p must be a number in \[0, 1\], got 1\.5$"):
        check_number(1.5, "p", OwnError, lo=0, hi=1)
    with pytest.raises(OwnError, match=r"^shift must be a finite number, got nan$"):
        check_number(math.nan, "shift", OwnError)
    assert check_numbers([0, 0.5], "betas", OwnError, length=2, lo=0, hi=1, hi_open=True) == (0.0, 0.5)
    with pytest.raises(OwnError, match=r"^betas must be 2 numbers in \[0, 1\), got \[0\.5, 1\]$"):
        check_numbers([0.5, 1], "betas", OwnError, length=2, lo=0, hi=1, hi_open=True)
    with pytest.raises(OwnError, match="^cache must be true or false, got 1$"):
        check_bool(1, "cache", OwnError)
    with pytest.raises(OwnError, match="^unknown fit 'squash'; allowed: pad, crop$"):
        check_choice("squash", "fit", constants.FIT_MODES, OwnError)


# --------------------------------------------------------------------------------------------
# The project's configs on the helper: formats unchanged


def test_shipped_model_configs_read_and_write_back_byte_for_byte() -> None:
    from btdm_engine.diffusion.schedule import ScheduleConfig
    from btdm_engine.models import MODEL_KINDS

    for kind in constants.MODEL_KINDS:
        path = REPO / "btdm_engine" / "weights" / "default" / kind / "config.json"
        text = path.read_text()
        doc = json.loads(text)
        model = MODEL_KINDS[kind][1].from_dict(doc["model"])
        schedule = ScheduleConfig.from_dict(doc["schedule"])
        written = {**doc, "model": model.to_dict(), "schedule": schedule.to_dict()}
        assert json.dumps(written, indent=2, sort_keys=True, allow_nan=False) + "\n" == text


def test_a_saved_run_config_of_the_previous_format_still_reads() -> None:
    from training.config import TrainConfig

    saved = {  # RUN/train_config.json as written before the helper (every field explicit)
        "kind": "btunet", "data": "data/mini", "preset": "tiny", "model_overrides": {"channel_mult": [1, 2]},
        "mode": "bidirectional", "steps": 1500, "batch_size": 8, "lr": 0.0003, "weight_decay": 0.0, "betas": [0.9, 0.999],
        "warmup_steps": 0, "grad_clip": 1.0, "ema_decay": 0.999, "appearance_dropout": 0.0, "split": "train",
        "characters": [], "hflip_prob": 0.5, "background": [1.0, 1.0, 1.0], "fit": "pad", "cache_frames": False,
        "schedule": {}, "checkpoint_every": 500, "sample_every": 1000, "log_every": 10, "keep_snapshots": 2,
        "sample_steps": 20, "sample_frames": 8, "seed": 0, "num_workers": 0, "device": "auto",
    }  # fmt: skip
    config = TrainConfig.from_dict(saved)
    assert config.betas == (0.9, 0.999) and config.characters == () and config.hflip_prob == 0.5
    # written back with the fields added since (warm start) at their defaults, the rest as saved
    later = {"init_from": "", "init_reset": []}
    expected = {k: v for k, v in saved.items() if k not in ("num_workers", "device")} | later
    expected |= {"num_workers": 0, "device": "auto"}
    assert json.dumps(config.to_dict()) == json.dumps(expected)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_synthetic_recipes_and_specs_round_trip() -> None:
    from synthetic_data.presets import PRESETS, Preset, Shard, plan
    from synthetic_data.spec import CharacterSpec, SpecError, sample_character

    for preset in PRESETS.values():
        assert Preset.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset
    shard = plan(PRESETS["tiny"])[0]
    assert Shard.from_job(json.loads(json.dumps(shard.to_job()))) == shard
    spec = sample_character(11)
    assert CharacterSpec.from_json(spec.to_json()) == spec
    doc = spec.to_dict()
    doc["garments"][0]["cloth"]["stretch"] = 1.0
    with pytest.raises(SpecError, match=r"^character\.garments\[0\]\.cloth: unknown field\(s\) stretch"):
        CharacterSpec.from_dict(doc)
    job = shard.to_job()
    del job["preset"]["render"]["samples"], job["preset"]["render"]["device"]
    job["preset"]["render"]["resolution"] = "64"  # a string where an int belongs is named, not a TypeError
    with pytest.raises(SpecError, match=r"^render\.resolution must be an int in \[8, 4096\], got '64'$"):
        Shard.from_job(job)
    with pytest.raises(SpecError, match=r"^shard job\.preset: missing field\(s\) cloth$"):
        Shard.from_job({**shard.to_job(), "preset": {k: v for k, v in shard.to_job()["preset"].items() if k != "cloth"}})


# --------------------------------------------------------------------------------------------
# Shared constants


def test_constants_match_the_modules_that_use_them() -> None:
    from btdm_engine.checkpoints import KINDS
    from btdm_engine.models import MODEL_KINDS, BTUNetConfig, SR3Config
    from btdm_engine.pipeline import SAMPLERS
    from btdm_engine.posemaps.encoding import PNG_ORDERS

    assert tuple(MODEL_KINDS) == constants.MODEL_KINDS == KINDS
    assert tuple(BTUNetConfig.PRESET_FIELDS) == tuple(SR3Config.PRESET_FIELDS) == constants.MODEL_PRESETS
    assert tuple(SAMPLERS) == constants.SAMPLERS
    assert tuple(PNG_ORDERS) == constants.IUV_ORDERS


def test_help_stays_free_of_torch() -> None:
    code = ("import sys; from btdm_engine.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'cv2', 'training.trainer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------
# `btdm train` flags come from TrainConfig


def _train_parser():
    import argparse

    from training import command as train_cmd

    parser = argparse.ArgumentParser(prog="btdm")
    train_cmd.register(parser.add_subparsers(dest="command"))
    return parser, train_cmd


def test_every_train_config_field_is_a_flag_with_its_help() -> None:
    from training.config import TrainConfig

    parser, train_cmd = _train_parser()
    flags = {name: (flag, kw) for name, flag, kw in train_cmd.config_flags()}
    offered = set(flags) | {"kind", "data"}
    assert offered | {"betas", "schedule"} == {f.name for f in dataclasses.fields(TrainConfig)}
    # the flag names users and scripts know
    assert flags["hflip_prob"][0] == "--hflip" and flags["characters"][0] == "--character"
    assert flags["model_overrides"][0] == "--model-config" and flags["batch_size"][0] == "--batch-size"
    assert flags["mode"][1]["choices"] == constants.TRAIN_MODES and flags["steps"][1]["help"].endswith("(default 1000)")
    text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for flag, _ in flags.values():
        assert flag in text


def test_train_flags_build_the_config(tmp_path: Path) -> None:
    parser, train_cmd = _train_parser()
    args = parser.parse_args([
        "train", "btunet", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "base",
        "--model-config", '{"model_channels": 16}', "--mode", "person", "--steps", "7", "--batch-size", "2", "--lr", "0.5",
        "--weight-decay", "0.1", "--warmup-steps", "3", "--grad-clip", "0", "--ema-decay", "0.9", "--split", "test",
        "--character", "a", "--character", "b", "--hflip", "0", "--background", "black", "--fit", "crop", "--cache-frames",
        "--checkpoint-every", "4", "--sample-every", "0", "--log-every", "2", "--keep-snapshots", "3", "--sample-steps", "5",
        "--sample-frames", "6", "--seed", "9", "--init-from", "runs/old", "--init-reset", "unet.out.",
        "--init-reset", "pose_encoder.", "--num-workers", "1", "--device", "cpu",
    ])  # fmt: skip
    config = train_cmd.config_from_args(args)
    assert dataconfig.to_dict(config) == {
        "kind": "btunet", "data": str(tmp_path), "preset": "base", "model_overrides": {"model_channels": 16},
        "mode": "person", "steps": 7, "batch_size": 2, "lr": 0.5, "weight_decay": 0.1, "betas": [0.9, 0.999],
        "warmup_steps": 3, "grad_clip": 0.0, "ema_decay": 0.9, "appearance_dropout": 0.0, "split": "test",
        "characters": ["a", "b"], "hflip_prob": 0.0, "background": [0.0, 0.0, 0.0], "fit": "crop", "cache_frames": True,
        "schedule": {}, "checkpoint_every": 4, "sample_every": 0, "log_every": 2, "keep_snapshots": 3,
        "sample_steps": 5, "sample_frames": 6, "seed": 9, "init_from": "runs/old",
        "init_reset": ["unet.out.", "pose_encoder."], "num_workers": 1, "device": "cpu",
    }  # fmt: skip
    bare = train_cmd.config_from_args(parser.parse_args(["train", "sr3", "--data", "d", "--out", "o"]))
    from training.config import TrainConfig

    assert bare == TrainConfig(kind="sr3", data="d")
