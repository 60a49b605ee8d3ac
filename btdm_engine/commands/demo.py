"""``btdm demo``: the README's first command, on embedded defaults and nothing downloaded.

Makes procedural motions (a walk and a spin by default) with the motion library, saves each
clip, renders its DensePose-style pose maps to a PNG sequence and a colour-coded preview MP4,
and puts sample frames of every motion on one contact sheet with the part legend. Then it
animates one motion with the embedded default model (:mod:`btdm_engine.weights`): pose maps ->
BTU-Net with the bidirectional recursive sampler -> SR3, written as a PNG sequence, an MP4 and a
strip of pose maps over generated frames.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from btdm_engine import limits
from btdm_engine.commands.common import Progress
from btdm_engine.constants import PRECISIONS, THREADS_HELP
from btdm_engine.errors import UsageError
from btdm_engine.motion import MOTIONS, make_motion
from btdm_engine.posemaps.atlas import build_atlas
from btdm_engine.posemaps.export import export_posemaps
from btdm_engine.weights import default_appearance, default_model_dir

DEFAULT_MOTIONS: tuple[str, ...] = ("walk", "spin")
SHEET_FRAMES = 6  # sample frames per motion on the contact sheet


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand to the ``btdm`` dispatcher."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the embedded defaults: pose maps, previews, generated frames",
        description=(
            "Run the pipeline on built-in defaults: procedural motions -> MotionClip files -> "
            "IUV pose maps (PNG sequences) -> colour previews (MP4) and a contact sheet (PNG); then "
            "one motion (--generate) animated by the embedded default model (BTU-Net + bidirectional "
            "sampler + SR3) into OUT/generated/. Rerunning resumes: pose maps already written are kept."
        ),
    )
    p.add_argument("--out", default="out/demo", metavar="DIR",
                   help="output folder (default out/demo)")
    p.add_argument("--motions", nargs="+", default=list(DEFAULT_MOTIONS), metavar="NAME",
                   help="library motions to make (default: walk spin)")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each motion (default 4)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate (default 30)")
    p.add_argument("--size", type=int, default=256, metavar="PX",
                   help="pose-map size in pixels (default 256)")
    p.add_argument("--seed", type=int, default=0, help="motion variation seed (default 0)")
    p.add_argument("--generate", default="dance", metavar="NAME",
                   help="motion to animate with the embedded model (default dance)")
    p.add_argument("--generate-seconds", type=float, default=2.0, metavar="S",
                   help="length of the generated animation (default 2)")
    p.add_argument("--steps", type=int, default=25, help="BTU-Net denoising steps (default 25; the paper: 50)")
    p.add_argument("--sr-steps", type=int, default=None,
                   help="SR3 denoising steps (default: the model's own choice, else 10)")
    p.add_argument("--no-generate", action="store_true", help="pose maps only; skip the generated frames")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="network arithmetic when sampling (default auto: bf16 autocast where the CPU or GPU has it)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from btdm_engine.body import load_body_model  # lazy: torch (btdm_engine.body.model)
    from btdm_engine.posemaps.encoding import read_iuv_png  # lazy: torch, cv2
    from btdm_engine.posemaps.preview import colorize_iuv, contact_sheet, part_legend, write_rgb_png  # lazy: torch, cv2

    unknown = [m for m in args.motions if m not in MOTIONS]
    if unknown:
        raise UsageError(f"unknown motion(s) {', '.join(unknown)}; allowed: {', '.join(MOTIONS)}")
    if not args.no_generate and args.generate not in MOTIONS:
        raise UsageError(f"--generate: unknown motion {args.generate!r}; allowed: {', '.join(MOTIONS)}")
    if args.steps < 1 or (args.sr_steps is not None and args.sr_steps < 1):
        raise UsageError(f"--steps and --sr-steps must be >= 1, got {args.steps} and {args.sr_steps}")
    if args.size < 16:
        raise UsageError(f"--size must be at least 16 pixels, got {args.size}")
    limits.check("steps", args.steps, "--steps")
    if args.sr_steps is not None:
        limits.check("steps", args.sr_steps, "--sr-steps")
    limits.check("size", args.size, "--size")
    limits.check_fps(args.fps, "--fps")
    for label, seconds in (("--seconds", args.seconds), ("--generate-seconds", args.generate_seconds)):
        if not (seconds > 0 and seconds * args.fps < float("inf")):
            raise UsageError(f"{label} must be a positive number of seconds, got {seconds}")
        limits.check("frames", round(seconds * args.fps), f"{label} {seconds:g} x --fps {args.fps:g}")
    if not args.no_generate:
        default_appearance()  # a stripped install fails now, not after the pose maps
    out = Path(args.out)
    body = load_body_model("mannequin")
    atlas = build_atlas(body)
    tiles, labels = [], []
    for name in args.motions:
        clip = make_motion(name, seconds=args.seconds, fps=args.fps, seed=args.seed,
                           width=args.size, height=args.size)
        clip_path = clip.save(out / name / "clip.npz")
        result = export_posemaps(clip, out / name, size=args.size, mp4=True, body=body,
                                 atlas=atlas, progress=not args.no_progress)
        print(f"{name}: clip {clip_path} ({clip.num_frames} frames at {clip.fps:g} fps)")
        print(f"{name}: pose maps {result.iuv_dir}/ ({result.rendered} rendered, "
              f"{result.skipped} already there); preview {result.preview}")
        picks = np.linspace(0, clip.num_frames - 1, SHEET_FRAMES).round().astype(int)
        for t in picks:
            tiles.append(colorize_iuv(read_iuv_png(result.png(int(t)))))
            labels.append(f"{name} {t / clip.fps:.2f}s")

    sheet = contact_sheet(tiles, cols=SHEET_FRAMES, labels=labels)
    legend = part_legend()
    width = max(sheet.shape[1], legend.shape[1])
    pad = [np.pad(img, ((0, 0), (0, width - img.shape[1]), (0, 0))) for img in (sheet, legend)]
    sheet_path = write_rgb_png(out / "contact_sheet.png", np.concatenate(pad, axis=0))
    print(f"contact sheet: {sheet_path}")
    if not args.no_generate:
        _generate(args, out / "generated", body, atlas)
    return 0


def _generate(args: argparse.Namespace, out: Path, body: Any, atlas: Any) -> None:
    """Animate ``args.generate`` with the embedded model and its shipped appearance image."""
    from btdm_engine.imageio import read_rgb  # lazy: cv2
    from btdm_engine.pipeline import Animator  # lazy: torch
    from btdm_engine.posemaps.encoding import read_iuv_png  # lazy: torch, cv2
    from btdm_engine.posemaps.preview import colorize_iuv, contact_sheet, write_mp4, write_rgb_png  # lazy: torch, cv2
    from btdm_engine.posemaps.renderer import IUVRenderer  # lazy: pyrender, OpenGL

    animator = Animator.from_pretrained(default_model_dir())
    image_path, iuv_path = default_appearance()
    appearance = np.round(read_rgb(image_path) * 255).astype(np.uint8)
    appearance_iuv = read_iuv_png(iuv_path) if animator.uses_warp else None  # g(c), the prior's map
    size = animator.resolution
    clip = make_motion(args.generate, seconds=args.generate_seconds, fps=args.fps, seed=args.seed, width=size, height=size)
    clip.save(out / "clip.npz")
    with IUVRenderer(body, size, size, atlas=atlas) as renderer:
        poses = np.stack(list(renderer.render_clip(clip, size=size, progress=not args.no_progress)))
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    for stale in frames_dir.glob("[0-9]*.png"):
        stale.unlink()
    bars = Progress(not args.no_progress)
    picks = np.linspace(0, clip.num_frames - 1, SHEET_FRAMES).round().astype(int)
    kept: dict[int, np.ndarray] = {}  # only the strip's frames stay in memory
    count = 0

    sr_steps = animator.sr_steps_for(10, args.sr_steps) if animator.sr3 is not None else None

    def stream():
        nonlocal count
        frames = animator.animate_iter(poses, appearance, appearance_iuv, steps=args.steps, sr_steps=sr_steps,
                                       seed=args.seed, callback=bars, precision=args.precision)
        for t, frame in enumerate(frames):
            write_rgb_png(frames_dir / f"{t:06d}.png", frame)
            if t in picks:
                kept[t] = frame
            count += 1
            yield frame

    try:
        video = write_mp4(stream(), out / "animation.mp4", fps=clip.fps)
    finally:
        bars.close()
    tiles = [colorize_iuv(poses[t]) for t in picks] + [kept[t] for t in picks]
    labels = [f"pose {t}" for t in picks] + [f"frame {t}" for t in picks]
    strip = write_rgb_png(out / "strip.png", contact_sheet([np.asarray(x) for x in tiles], cols=SHEET_FRAMES, labels=labels))
    print(f"generated: {count} frames of {args.generate} at {size}x{size} in {frames_dir} "
          f"(appearance {image_path.name}, {args.steps} + {sr_steps} steps); video {video}; strip {strip}")
