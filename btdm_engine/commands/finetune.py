"""``btdm finetune``: single-image fine-tuning (paper sec. 3.3) saved as a new model folder.

Runs exactly the fine-tuning ``Animator.animate(..., finetune_steps=N, seed=S)`` runs (the Animator's
``prepare`` and ``finetune`` stages: :func:`btdm_engine.pipeline.finetune_btunet`, eq. 4 on the pair
(c, c) with poses (g(c), g(c)), the same generator derivation from the seed), then writes
``OUT/btunet``, copies the SR3 stages (``sr3/``, ``sr3-2/``, ...) and writes c and g(c) as the
folder's own ``appearance.png`` / ``appearance_iuv.png``. Animating with ``--model OUT`` (c and g(c)
then come from the folder) and no further fine-tuning therefore gives the frames the Animator would
give with ``finetune_steps=N`` on the original model and the same seed.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from btdm_engine import limits
from btdm_engine.constants import DEVICES, IUV_ORDERS
from btdm_engine.errors import NonFiniteError, UsageError
from btdm_engine.fileio import atomic_dir, make_folder
from btdm_engine.weights import sr3_stage_dirs


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``finetune`` subcommand."""
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on one appearance image (paper sec. 3.3) and save it",
        description=(
            "Fine-tune the BTU-Net of MODEL (a folder with btunet/ and optionally sr3/) on the appearance image c "
            "and its pose map g(c), as single-image animation does at test time (paper: 300 steps, lr 1e-5), and "
            "write the result to OUT (btunet/ fine-tuned, sr3/ copied)."
        ),
    )
    p.add_argument("--model", type=Path, required=True, help="model folder with btunet/ (and sr3/)")
    p.add_argument("--appearance", type=Path, required=True, help="appearance image c (square PNG/JPG, RGB or RGBA)")
    p.add_argument("--appearance-iuv", type=Path, required=True, help="the IUV pose map of c, g(c) (same size)")
    p.add_argument("--iuv-order", choices=IUV_ORDERS, default="btdm",
                   help="channel order of the IUV PNG: btdm (red = I) or densepose (detectron2: blue = I)")
    p.add_argument("--background", default="white", help="colour an RGBA image is composited on (white, black, grey, R,G,B)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (paper: 300)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate (paper: 1e-5)")
    p.add_argument("--batch", type=int, default=4, help="copies of (c, c) per step, with independent noise")
    p.add_argument("--seed", type=int, default=0, help="seed (the same derivation as Animator's seed)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--out", type=Path, required=True, help="new model folder (must not exist or be empty)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy, all of these: `btdm --help` imports this module, and torch and cv2 stay out of it
    import torch  # lazy: torch
    from tqdm import tqdm  # lazy: tqdm

    from btdm_engine.checkpoints import load_checkpoint, non_finite_tensors, save_checkpoint  # lazy: torch
    from btdm_engine.imageio import MIN_APPEARANCE_SIDE, parse_colour, read_rgb  # lazy: cv2
    from btdm_engine.pipeline import Animator  # lazy: torch
    from btdm_engine.posemaps.encoding import read_iuv_png, write_iuv_png  # lazy: torch, cv2
    from btdm_engine.posemaps.preview import write_rgb_png  # lazy: torch, cv2

    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive finite number, got {args.lr}")
    limits.check("finetune_steps", args.steps, "--steps")
    limits.check("batch", args.batch, "--batch")
    if os.path.lexists(args.out) and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a file, not a folder; choose a new --out")
    if args.out.exists() and any(args.out.iterdir()):
        raise UsageError(f"{args.out}: exists and is not empty; choose a new --out")
    if not (args.model / "btunet").is_dir():
        raise UsageError(f"{args.model}: no btunet/ checkpoint folder inside")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but CUDA is not available")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")

    image = read_rgb(args.appearance, parse_colour(args.background), min_side=MIN_APPEARANCE_SIDE)
    iuv = read_iuv_png(args.appearance_iuv, order=args.iuv_order)
    if image.shape[:2] != iuv.shape[:2]:
        raise UsageError(f"{args.appearance_iuv}: {iuv.shape[1]}x{iuv.shape[0]} px, "
                         f"but {args.appearance} is {image.shape[1]}x{image.shape[0]}")
    model, schedule, meta = load_checkpoint(args.model / "btunet", kind="btunet", device=device)
    # The Animator's own stages: its inputs (c, g(c), and for a warp-conditioned BTU-Net the texture
    # prior of c on g(c)) and its fine-tuning (stage 0 of its seed), so results match `btdm animate`'s.
    animator = Animator(model, schedule, device=device)
    job = animator.prepare(iuv[None], np.round(image * 255).astype(np.uint8), iuv)
    bar = tqdm(total=args.steps, desc="finetune", unit="step", dynamic_ncols=True)
    tuned = animator.finetune(job, steps=args.steps, lr=args.lr, seed=args.seed, batch=args.batch,
                              callback=lambda stage, step, total: bar.update(1))
    bar.close()
    bad = non_finite_tensors(tuned.state_dict())
    if bad:
        raise NonFiniteError(
            f"fine-tuning diverged: after {args.steps} steps at lr {args.lr:g} the weights hold NaN or inf "
            f"({', '.join(bad[:3])}); nothing was written to {args.out}. Lower --lr (paper: 1e-5)"
        )

    extra = dict(meta.get("extra", {}))
    extra["finetune"] = {
        "source": str(args.model), "appearance": str(args.appearance), "appearance_iuv": str(args.appearance_iuv),
        "steps": args.steps, "lr": args.lr, "batch": args.batch, "seed": args.seed,
    }  # fmt: skip
    make_folder(args.out, f"--out {args.out}: cannot write the model")
    save_checkpoint(args.out / "btunet", tuned.to("cpu"), "btunet", schedule, extra=extra)
    for stage in sr3_stage_dirs(args.model):  # the SR3 stages, unchanged (a cascade's sr3-2/, ... too)
        with atomic_dir(args.out / stage.name) as tmp:
            shutil.copytree(stage, tmp, dirs_exist_ok=True)
    # the person it was tuned on is the folder's own appearance (weights.model_appearance): `btdm animate
    # --model OUT` and `btdm serve --model NAME=OUT` use it when a job gives none
    write_rgb_png(args.out / "appearance.png", np.round(image * 255).astype(np.uint8))
    write_iuv_png(args.out / "appearance_iuv.png", iuv)
    print(f"fine-tuned {args.steps} steps on {args.appearance}; model written to {args.out}", file=sys.stderr)
    return 0
