"""``btdm eval``: score generated frames against ground truth (SSIM, LPIPS, tLPIPS, tOF, FID, ...).

Writes a JSON report (``--out``) and prints the paper's table. LPIPS/tLPIPS and FID are computed
only from weight files the user provides; without them the output says they were skipped and the
JSON records ``null`` with the reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from btdm_engine.constants import FLOW_SOURCES, IUV_ORDERS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` subcommand."""
    p = subparsers.add_parser(
        "eval",
        help="score generated sequences against ground truth (paper table metrics)",
        description=(
            "Compare predicted frames with ground truth. PRED and GT are a folder of <digits>.png frames "
            "or a folder of sequence folders (each with frames or an rgb/ sub-folder; a dataset root with "
            "manifest.json works). With --iuv (same layout, iuv/ sub-folders), only the foreground (I > 0) counts."
        ),
    )
    p.add_argument("--pred", type=Path, required=True, help="generated frames")
    p.add_argument("--gt", type=Path, required=True, help="ground-truth frames")
    p.add_argument("--iuv", type=Path, default=None, help="pose maps for foreground-only evaluation")
    p.add_argument("--iuv-order", choices=IUV_ORDERS, default="btdm",
                   help="IUV PNG channel order: btdm (red = I, ours) or densepose (blue = I, detectron2 files)")
    p.add_argument("--lpips-weights", type=Path, default=None, help="LPIPS safetensors file (see btdm_engine.metrics.lpips)")
    p.add_argument("--inception-weights", type=Path, default=None,
                   help="FID Inception safetensors file (see btdm_engine.metrics.fid)")
    p.add_argument("--size", type=int, default=None, help="evaluate at SIZE x SIZE (default: frames must already match)")
    p.add_argument("--background", default="white",
                   help="background colour for RGBA frames and masking: white, black, grey or R,G,B")
    p.add_argument("--foreground", choices=("pose", "person"), default="pose",
                   help="with --iuv: the pose maps' body (pose, the paper's), or the whole person: the body and the "
                   "ground truth's alpha > 0, so hair and loose clothes count (person; RGBA ground truth)")
    p.add_argument("--flow-source", choices=FLOW_SOURCES, default="gt", help="whose flow the warping error warps with")
    p.add_argument("--name", default="prediction", help="row label in the printed table")
    p.add_argument("--out", type=Path, required=True, help="JSON report to write")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="score a dataset whose manifest says it is still being built (as btdm train's flag)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from btdm_engine.imageio import parse_colour  # lazy: cv2
    from btdm_engine.metrics.evaluate import evaluate, format_table, write_report  # lazy: torch

    report = evaluate(
        args.pred,
        args.gt,
        args.iuv,
        lpips_weights=args.lpips_weights,
        inception_weights=args.inception_weights,
        size=args.size,
        background=parse_colour(args.background),
        iuv_order=args.iuv_order,
        flow_source=args.flow_source,
        progress=lambda line: print(line, file=sys.stderr),
        allow_incomplete=args.allow_incomplete,
        foreground=args.foreground,
    )
    write_report(report, args.out)
    print(format_table([(args.name, report)]))
    print(f"{report['num_sequences']} sequence(s), {report['num_frames']} frames; report written to {args.out}")
    return 0
