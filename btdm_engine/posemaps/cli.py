"""``btdm posemaps``: render a motion clip's IUV pose maps to a PNG sequence and a preview MP4."""

from __future__ import annotations

import argparse
import sys

from btdm_engine.motion.clip import MotionClip
from btdm_engine.posemaps.export import export_posemaps


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``posemaps`` subcommand to the ``btdm`` dispatcher."""
    p = subparsers.add_parser(
        "posemaps",
        help="render DensePose-style IUV pose maps of a motion clip",
        description=(
            "Render a MotionClip's DensePose-style IUV pose maps to DIR/iuv/NNNNNN.png "
            "(zero-based frame index; RGB = part I, U*255, V*255) and a colour-coded "
            "DIR/preview.mp4. Frames already written are skipped, so an interrupted run resumes."
        ),
    )
    p.add_argument("clip", metavar="CLIP.npz", help="motion clip file")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--size", type=int, default=256, metavar="PX",
                   help="render SIZE x SIZE pixels by rescaling the clip camera (default 256)")
    p.add_argument("--mp4", action=argparse.BooleanOptionalAction, default=True,
                   help="write the colour-coded preview.mp4 (default: yes)")
    p.add_argument("--start", type=int, default=0, metavar="N", help="first frame (default 0)")
    p.add_argument("--end", type=int, default=None, metavar="M",
                   help="stop before this frame (default: the clip's length)")
    p.add_argument("--uv-processed", default=None, metavar="MAT",
                   help="DensePose UV_Processed.mat to use as atlas (licensed SMPL bodies)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from btdm_engine.body.model import load_body_model  # lazy: torch
    from btdm_engine.posemaps.densepose_uv import load_atlas  # lazy: scipy.io, a tenth of a second at `btdm --help`

    clip = MotionClip.load(args.clip)
    body = load_body_model(clip.body_model)
    atlas = load_atlas(body, args.uv_processed)
    result = export_posemaps(
        clip,
        args.out,
        size=args.size,
        mp4=args.mp4,
        start=args.start,
        end=args.end,
        body=body,
        atlas=atlas,
        progress=not args.no_progress,
    )
    if result.empty:
        shown = ", ".join(str(t) for t in result.empty[:10]) + (" ..." if len(result.empty) > 10 else "")
        print(f"warning: {len(result.empty)} of {result.rendered} rendered frame(s) show no body at all "
              f"(out of the camera's view): {shown}", file=sys.stderr)
    if result.replaced:
        print(f"inputs changed: deleted {result.replaced} outdated pose maps in {result.iuv_dir}")
    print(
        f"pose maps: {len(result.frames)} frames in {result.iuv_dir} "
        f"({result.rendered} rendered, {result.skipped} already complete)"
    )
    if result.preview is not None:
        print(f"preview:   {result.preview}")
    return 0
