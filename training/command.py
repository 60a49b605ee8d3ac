"""``btdm train btunet|sr3``: train a generator network on a dataset folder (resumable, DDP-ready).

Part of the application layer: ``btdm_engine.cli`` registers it by name (``APPLICATION_COMMAND_MODULES``);
the engine itself never imports ``training``. Torch-free at import, so ``btdm --help`` stays instant.

The run folder's ``checkpoint/`` is the latest EMA model in the project checkpoint format. To
assemble a model folder for ``Animator.from_pretrained`` / ``btdm animate --model DIR``::

    mkdir -p MODEL && cp -r RUN_BTUNET/checkpoint MODEL/btunet && cp -r RUN_SR3/checkpoint MODEL/sr3

(``sr3/`` is optional; the BTU-Net and SR3 runs must agree: SR3's low resolution is the
BTU-Net's resolution, e.g. both ``tiny`` (32 -> 128) or both ``base``/``paper`` (64 -> 256)).

Several processes or GPUs: ``torchrun --nproc_per_node N -m btdm_engine.cli train ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Any

from btdm_engine import limits
from btdm_engine.constants import MODEL_KINDS
from btdm_engine.errors import UsageError
from training.config import TrainConfig

# Every TrainConfig field is a flag ``--field-name VALUE`` with the field's help and choices, except
# these: other flag names and forms (turned into the field's value by _CONVERT) ...
_FLAG_FORMS: dict[str, tuple[str, dict[str, Any]]] = {
    "model_overrides": ("--model-config", {"metavar": "JSON",
                                           "help": 'override single model config fields, e.g. \'{"model_channels": 16}\''}),
    "characters": ("--character", {"action": "append", "metavar": "NAME"}),
    "hflip_prob": ("--hflip", {"metavar": "P"}),
    "init_from": ("--init-from", {"metavar": "FOLDER"}),
    "init_reset": ("--init-reset", {"action": "append", "metavar": "PREFIX"}),
    "background": ("--background", {"metavar": "COLOUR",
                                    "help": "colour RGBA frames are composited on: white, black, grey or R,G,B"}),
}  # fmt: skip
# ... and fields given otherwise (kind: the positional argument; data: --data) or left to the saved config.
_NOT_FLAGS = ("kind", "data", "betas", "schedule")


def _json_object(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--model-config: not valid JSON ({exc.msg})") from exc


def _colour(text: str) -> tuple[float, float, float]:
    from btdm_engine.imageio import parse_colour  # lazy: imageio loads cv2; btdm --help stays cv2-free

    return parse_colour(text)


_CONVERT: dict[str, Callable[[Any], Any]] = {"model_overrides": _json_object, "characters": tuple, "init_reset": tuple,
                                                 "background": _colour}


def config_flags() -> list[tuple[str, str, dict[str, Any]]]:
    """``(field, flag, add_argument keywords)`` of every TrainConfig field ``btdm train`` offers.

    Every flag defaults to None, so that a resumed run knows which options were given.
    """
    hints = typing.get_type_hints(TrainConfig)
    flags = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS:
            continue
        flag, form = _FLAG_FORMS.get(f.name, ("--" + f.name.replace("_", "-"), {}))
        kw: dict[str, Any] = {"help": f.metadata["help"], **form, "default": None}
        kind = hints[f.name]
        if typing.get_origin(kind) is UnionType:  # X | None: an X
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if kind is bool:
            kw.update(action="store_const", const=True)
        elif f.name not in _CONVERT:  # a plain value: --steps 10
            kw["type"] = kind
            if f.default is not None:
                kw["help"] += f" (default {f.default})"
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        flags.append((f.name, flag, kw))
    return flags


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train the BTU-Net or SR3 on a dataset (resumable; torchrun for several processes)",
        description=(
            "Train a generator network. RUN/checkpoint is the latest EMA model (a btunet/ or sr3/ checkpoint "
            "folder for Animator.from_pretrained); RUN/log.csv, RUN/tb (TensorBoard) and RUN/samples/ follow "
            "progress. A killed run continues with --resume from its last snapshot."
        ),
    )
    p.add_argument("kind", choices=MODEL_KINDS, help="which network to train")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (manifest.json layout, or DensePose videos)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest snapshot")
    for name, flag, kw in config_flags():
        p.add_argument(flag, dest=name, **kw)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--checksums", action="store_true", help="verify every file's SHA-256 against the manifest before training")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="train on a dataset whose manifest says it is still being built")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the arguments describe (for --resume: the saved one plus what was given)."""
    from training.trainer import CONFIG_FILE  # lazy: the trainer loads torch; btdm --help stays torch-free

    given = {
        name: _CONVERT.get(name, lambda v: v)(getattr(args, name))
        for name, _, _ in config_flags()
        if getattr(args, name) is not None
    }
    if args.resume:
        saved_path = args.out / CONFIG_FILE
        if not saved_path.is_file():
            raise UsageError(f"{args.out}: cannot resume, no {CONFIG_FILE}")
        saved = TrainConfig.from_dict(json.loads(saved_path.read_text(encoding="utf-8")))
        if saved.kind != args.kind:
            raise UsageError(f"{args.out} is a {saved.kind} run, not {args.kind}")
        if Path(saved.data).resolve() != args.data.resolve():
            raise UsageError(f"{args.out} was trained on {saved.data}, not {args.data}")
        return saved.resumed_with(**given)
    return TrainConfig(kind=args.kind, data=str(args.data), **given)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist  # lazy: torch only when a run starts, not for btdm --help

    from training.trainer import train  # lazy: the trainer loads torch

    if args.steps is not None:
        limits.check("finetune_steps", args.steps, "--steps")
    if args.batch_size is not None:
        limits.check("batch", args.batch_size, "--batch-size")
    config = config_from_args(args)
    try:
        result = train(config, args.out, resume=args.resume, progress=not args.no_progress,
                       verify_checksums=args.checksums, allow_incomplete=args.allow_incomplete)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"step {result.step}: EMA checkpoint in {args.out / 'checkpoint'}")
    return 0
