"""``btdm train btunet|sr3``: train a generator network on a dataset folder (resumable, DDP-ready).

The run folder's ``checkpoint/`` is the latest EMA model in the project checkpoint format. To
assemble a model folder for ``Animator.from_pretrained`` / ``btdm animate --model DIR``::

    mkdir -p MODEL && cp -r RUN_BTUNET/checkpoint MODEL/btunet && cp -r RUN_SR3/checkpoint MODEL/sr3

(``sr3/`` is optional; the BTU-Net and SR3 runs must agree: SR3's low resolution is the
BTU-Net's resolution, e.g. both ``tiny`` (32 -> 128) or both ``base``/``paper`` (64 -> 256)).

Several processes or GPUs: ``torchrun --nproc_per_node N -m btdm_engine.cli train ...``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from btdm_engine.errors import UsageError

# Options whose argparse default is None so that a resumed run knows which ones were given.
_CONFIG_OPTIONS = {
    "preset": "preset", "mode": "mode", "steps": "steps", "batch_size": "batch_size", "lr": "lr",
    "weight_decay": "weight_decay", "warmup_steps": "warmup_steps", "grad_clip": "grad_clip",
    "ema_decay": "ema_decay", "appearance_dropout": "appearance_dropout", "split": "split",
    "hflip": "hflip_prob", "fit": "fit", "checkpoint_every": "checkpoint_every",
    "sample_every": "sample_every", "log_every": "log_every", "keep_snapshots": "keep_snapshots",
    "sample_steps": "sample_steps", "sample_frames": "sample_frames", "seed": "seed",
    "num_workers": "num_workers", "device": "device",
}  # fmt: skip


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
    p.add_argument("kind", choices=("btunet", "sr3"), help="which network to train")
    p.add_argument("--data", type=Path, required=True, help="dataset folder (manifest.json layout, or DensePose videos)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest snapshot")
    p.add_argument("--preset", choices=("tiny", "base", "paper"), default=None, help="model size (default tiny)")
    p.add_argument("--model-config", type=str, default=None, metavar="JSON",
                   help='override single model config fields, e.g. \'{"model_channels": 16}\'')
    p.add_argument("--mode", choices=("bidirectional", "unidirectional", "person", "unconditional"), default=None,
                   help="BTU-Net objective: eq. 4 with c, the autoregressive baseline, eq. 4 without c on one person "
                   "(--character), or unconditional (default bidirectional)")
    p.add_argument("--steps", type=int, default=None, help="total optimisation steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=None, help="samples per process per step (default 8)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-4; the paper: 1e-5 at batch 32)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 0)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear learning-rate warm-up (default 0)")
    p.add_argument("--grad-clip", type=float, default=None, help="max gradient norm, 0 = off (default 1)")
    p.add_argument("--ema-decay", type=float, default=None, help="EMA decay of the saved weights (default 0.999)")
    p.add_argument("--appearance-dropout", type=float, default=None, help="probability of dropping c per sample (default 0)")
    p.add_argument("--split", default=None, help="manifest split to train on (default train)")
    p.add_argument("--character", action="append", default=None, help="train only on this character (repeatable)")
    p.add_argument("--hflip", type=float, default=None, help="probability of the truthful horizontal flip (default 0.5)")
    p.add_argument("--background", default=None, help="colour RGBA frames are composited on: white, black, grey or R,G,B")
    p.add_argument("--fit", choices=("pad", "crop"), default=None, help="how non-square frames become square (default pad)")
    p.add_argument("--cache-frames", action="store_true", help="keep resized frames in memory")
    p.add_argument("--checkpoint-every", type=int, default=None, help="snapshot interval in steps (default 500)")
    p.add_argument("--sample-every", type=int, default=None, help="preview interval in steps, 0 = never (default 1000)")
    p.add_argument("--log-every", type=int, default=None, help="log interval in steps (default 10)")
    p.add_argument("--keep-snapshots", type=int, default=None, help="snapshots kept on disk (default 2)")
    p.add_argument("--sample-steps", type=int, default=None, help="denoising steps of previews (default 20)")
    p.add_argument("--sample-frames", type=int, default=None, help="frames in previews (default 8)")
    p.add_argument("--seed", type=int, default=None, help="seed of initialisation, data order and noise (default 0)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per process (default 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default auto (CUDA when present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--checksums", action="store_true", help="verify every file's SHA-256 against the manifest before training")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="train on a dataset whose manifest says it is still being built")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the arguments describe (for --resume: the saved one plus what was given)."""
    from btdm_engine.imageio import parse_colour
    from training.config import TrainConfig
    from training.trainer import CONFIG_FILE

    given = {field: getattr(args, opt) for opt, field in _CONFIG_OPTIONS.items() if getattr(args, opt) is not None}
    if args.model_config is not None:
        try:
            overrides = json.loads(args.model_config)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--model-config: not valid JSON ({exc.msg})") from exc
        given["model_overrides"] = overrides
    if args.character is not None:
        given["characters"] = tuple(args.character)
    if args.background is not None:
        given["background"] = parse_colour(args.background)
    if args.cache_frames:
        given["cache_frames"] = True
    data = str(args.data)
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
    return TrainConfig(kind=args.kind, data=data, **given)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from btdm_engine import limits
    from training.trainer import train

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
