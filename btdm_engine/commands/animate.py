"""``btdm animate``: pose maps (from a motion clip or PNG files) + appearance -> generated frames.

Writes ``OUT/frames/NNNNNN.png`` (RGB, atomically, streamed as SR3 finishes each chunk) and,
with ``--mp4``, ``OUT/animation.mp4``. The job's rules are :mod:`btdm_engine.jobspec`'s, in the
flags' words. Heavy imports (torch, cv2, pyrender; the HTTP client of ``--engine``) happen where
they are used, so that ``btdm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from btdm_engine import limits
from btdm_engine.cli import CliError, check_device
from btdm_engine.commands.common import Progress, parse_frames, read_picture, view_frames
from btdm_engine.constants import IUV_ORDERS, NOISE_MODES, PRECISIONS, SAMPLERS, THREADS_HELP
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import StagedRun
from btdm_engine.jobspec import METHODS, JobSpec
from btdm_engine.motion.clip import MotionClip
from btdm_engine.posemaps.export import read_posemap_folder
from btdm_engine.weights import default_appearance, default_model_dir, model_appearance

_DEFAULT = JobSpec()
_SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(JobSpec))
# What the job's rules call each field and input here: its flag.
_FLAGS = {name: "--" + name.replace("_", "-") for name in (*_SPEC_FIELDS, "appearance", "appearance_iuv",
                                                           "appearance_frame")} | {"views": "--view"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``animate`` subcommand to the ``btdm`` dispatcher."""
    p = subparsers.add_parser(
        "animate",
        help="generate frames from pose maps with BTU-Net (+ SR3)",
        description=(
            "Generate a temporally coherent animation with the Bidirectional Temporal Diffusion "
            "Model: pose maps from a motion clip (--clip, rendered with the IUV renderer) or from "
            "IUV PNG files (--posemaps DIR: DIR/iuv/NNNNNN.png or DIR/NNNNNN.png), an optional "
            "appearance image, and a model folder with btunet/ (and optionally sr3/) checkpoints. "
            "Writes OUT/frames/NNNNNN.png and, with --mp4, OUT/animation.mp4."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--clip", metavar="CLIP.npz", help="motion clip to render pose maps from")
    source.add_argument("--posemaps", metavar="DIR", help="folder of IUV PNGs (DIR/iuv/*.png or DIR/*.png)")
    p.add_argument("--appearance", metavar="IMG.png",
                   help="appearance image c (square RGB/RGBA PNG); omit for person-specific / unconditional models")
    p.add_argument("--appearance-iuv", metavar="IUV.png",
                   help="IUV map g(c) of the appearance image: the texture-transfer prior of a warp-conditioned "
                   "model (the embedded one) and --method texture read it, and --finetune-steps")
    p.add_argument("--appearance-frame", type=int, default=None, metavar="K",
                   help="the appearance image shows the body as frame K (zero-based) does: with --plate the "
                   "camera's whole view at K (cut with K's window), else framed like the pose maps; fine-tuning "
                   "then uses frame K's pose map as g(c) (no --appearance-iuv)")
    p.add_argument("--view", nargs=2, action="append", default=[], metavar=("K", "IMG.png"),
                   help="another picture of the same person in the same light (a frame or render of the same shot), showing "
                   "the body as frame K does (as --appearance-frame: "
                   "with --plate the camera's whole view at K); its pixels join the appearance's UV texture, so the "
                   "texture-transfer prior (--method texture, the embedded model) shows what the appearance hides. "
                   "Repeat for several (at most the views limit, 16)")
    p.add_argument("--iuv-order", choices=IUV_ORDERS, default=_DEFAULT.iuv_order,
                   help="channel layout of the IUV PNGs read (default btdm; densepose for detectron2 files)")
    p.add_argument("--method", choices=METHODS, default=_DEFAULT.method,
                   help="diffusion (default): BTU-Net + SR3; texture: the appearance's pixels moved onto every pose "
                   "map through the UV atlas (DensePose texture transfer, no network: seconds, an instant preview; "
                   "needs g(c): --appearance-iuv or --appearance-frame)")
    p.add_argument("--size", type=int, default=None, metavar="PX",
                   help="with --method texture: the frame size (default 256); diffusion makes the model's size")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="model folder holding btunet/ and optionally sr3/ (default: the embedded tiny model, "
                   "which also brings its appearance image when --appearance is not given)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in OUT (only once the new one is complete; until then it is built in "
                   "OUT/incomplete/)")
    p.add_argument("--frames", default=None, metavar="START:STOP",
                   help="with --posemaps: animate only frames START..STOP-1 (default: every frame, none missing)")
    p.add_argument("--mp4", action="store_true", help="also write OUT/animation.mp4")
    p.add_argument("--plate", action="store_true",
                   help="with --clip: generate inside a square window that follows the body through the clip's own "
                   "(shot) camera, and also write OUT/plates/NNNNNN.png, RGBA at the camera's resolution, "
                   "transparent outside the person, to lay over the shot")
    p.add_argument("--fps", type=float, default=None,
                   help="video frame rate (default: the clip's, or 30 for --posemaps)")
    p.add_argument("--steps", type=int, default=_DEFAULT.steps,
                   help=f"BTU-Net denoising steps (default {_DEFAULT.steps}, as the paper)")
    p.add_argument("--sr-steps", type=int, default=None, metavar="N", help="SR3 denoising steps (default: --steps)")
    p.add_argument("--seed", type=int, default=_DEFAULT.seed, help="random seed (same seed, same frames)")
    p.add_argument("--finetune-steps", type=int, default=_DEFAULT.finetune_steps, metavar="N",
                   help="single-image fine-tuning iterations before sampling (paper: 300; default 0)")
    p.add_argument("--finetune-lr", type=float, default=_DEFAULT.finetune_lr,
                   help=f"fine-tuning learning rate (default {_DEFAULT.finetune_lr:g})")
    p.add_argument("--sampler", choices=SAMPLERS, default=_DEFAULT.sampler,
                   help="bidirectional recursive sampling (algorithm 1) or the unidirectional baseline")
    p.add_argument("--eta", type=float, default=_DEFAULT.eta, help="0 = deterministic DDIM, 1 = ancestral sampling")
    p.add_argument("--noise", choices=NOISE_MODES, default=_DEFAULT.noise,
                   help="noise across frames in both stages: one draw every frame shares (default: far less "
                   "flicker) or one per frame (algorithm 1 read literally)")
    p.add_argument("--max-batch", type=int, default=None, metavar="N",
                   help="frames per network call (default: from a memory budget)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="network arithmetic when sampling: auto = bf16 autocast on CUDA and on CPUs with native bf16 "
                   "(about 2x faster there, within a few grey levels of float32), else float32")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--engine", default=None, metavar="URL",
                   help="send the job to a running `btdm serve` (e.g. http://127.0.0.1:8765) instead of computing "
                   "here; --model then names one of the server's models (GET /v1/models)")
    engine_token = p.add_mutually_exclusive_group()
    engine_token.add_argument("--token", default=None, help="the engine's bearer token (with --engine)")
    engine_token.add_argument("--token-file", default=None, metavar="FILE",
                              help="read the engine's bearer token from FILE (with --engine)")
    p.set_defaults(func=run)


def _read_posemaps(folder: Path, order: str, frames: str | None) -> Any:
    return read_posemap_folder(folder, order, parse_frames(frames))


def _render_clip(path: Path, size: int, progress: bool, plate: bool = False) -> tuple[Any, float, Any]:
    """Pose maps (T, size, size, 3) of a clip, its fps, and with ``plate`` the shot plan they were drawn through."""
    from btdm_engine.body.model import load_body_model  # torch
    from btdm_engine.posemaps.renderer import IUVRenderer  # pyrender, OpenGL

    clip = MotionClip.load(path)
    plan = None
    if plate:
        from btdm_engine.motion.shot import plan_shot  # cv2

        plan = plan_shot(clip, size)
        clip = plan.square_clip
    elif clip.width != clip.height:
        print(f"note: {path.name} is filmed {clip.width}x{clip.height}; the square frames show all of it, "
              "letterboxed (pass --plate to follow the body and write plates at the shot's resolution)",
              file=sys.stderr)
    body = load_body_model(clip.body_model)
    with IUVRenderer(body, size, size) as renderer:
        maps = np.stack(list(renderer.render_clip(clip, size=size, progress=progress)))
    return maps, float(clip.fps), plan


def _at_frame(k: int, image: Any, pose_maps: Any, plan: Any, flag: str) -> tuple[Any, Any]:
    """(image, its IUV map) for a picture that shows frame K (:func:`~btdm_engine.motion.shot.picture_at_frame`)."""
    from btdm_engine.motion.shot import picture_at_frame  # scipy

    try:
        return picture_at_frame(plan, k, image, pose_maps[k])
    except ValueError as exc:
        raise CliError(f"{flag} and --plate: {exc}") from None


def job_spec(args: argparse.Namespace) -> JobSpec:
    """The job the flags ask for (the flags' defaults are :class:`JobSpec`'s)."""
    return JobSpec(**{name: getattr(args, name) for name in _SPEC_FIELDS})


def _flags(args: argparse.Namespace) -> dict[str, str]:
    """The job rules' names for the fields: the flags (job frames count from ``--frames START`` when given)."""
    return _FLAGS if args.frames is None else {**_FLAGS, "frame_start": "--frames START"}


def _check_limits(args: argparse.Namespace) -> JobSpec:
    """The job's values against btdm_engine.limits (a --limit raises one), and --size, --device; the job."""
    spec = job_spec(args).check(CliError, _FLAGS)
    if args.size is not None:
        limits.check("pixels", args.size * args.size, "--size")
    args.device = check_device(args.device)
    return spec


def run(args: argparse.Namespace) -> int:
    """Run ``btdm animate``; returns the exit status."""
    if args.engine is not None:
        # the --engine path: the stdlib HTTP client (http, ssl: a tenth of a second at every `btdm --help`)
        from btdm_engine.commands.remote import animate_remote

        if args.method == "texture" or args.size is not None:
            raise CliError("--method texture and --size run here, without an engine: drop --engine")
        return animate_remote(args)
    if args.token is not None or args.token_file is not None:
        raise CliError("--token / --token-file need --engine URL")

    texture_method = args.method == "texture"
    if args.model is None:
        model_dir = default_model_dir()
        if args.appearance is None and args.appearance_frame is None and not args.view:
            args.appearance, shipped_iuv = default_appearance()
            if args.appearance_iuv is None:
                args.appearance_iuv = shipped_iuv
            what = "" if texture_method else f"the embedded model {model_dir} and "
            print(f"using {what}its appearance image {args.appearance}", file=sys.stderr)
    else:
        model_dir = args.model
        mine = args.appearance is not None or args.appearance_frame is not None or args.view  # the user's person
        own = None if mine else model_appearance(model_dir)
        if own is not None:  # the folder's own c and g(c), as the embedded model's are used above
            args.appearance = own[0]
            if args.appearance_iuv is None:
                args.appearance_iuv = own[1]
            print(f"using {model_dir}'s appearance image {args.appearance}", file=sys.stderr)
    if args.size is not None and not texture_method:
        raise CliError("--size applies to --method texture; diffusion makes the model's own size")
    if args.plate and args.clip is None:
        raise CliError("--plate needs --clip (the shot camera comes with the motion clip)")
    spec = _check_limits(args)
    # the job's cross-field rules (btdm_engine/jobspec.py), again once the model's facts are known
    given = {"appearance": args.appearance is not None, "appearance_iuv": args.appearance_iuv is not None,
             "appearance_frame": args.appearance_frame, "view_frames": view_frames(args.view)}
    spec.check_inputs(CliError, _flags(args), **given)
    if args.frames is not None and args.posemaps is None:
        raise CliError("--frames needs --posemaps (a clip is cut with btdm posemaps --start/--end)")
    out = Path(args.out)
    frames_dir = out / "frames"
    existing = sorted(frames_dir.glob("[0-9]*.png")) if frames_dir.is_dir() else []
    if existing and not args.overwrite:
        raise CliError(f"{frames_dir} already holds {len(existing)} frames; pass --overwrite or choose another --out")

    # The arguments were checked before torch loads (a second); inputs are read before the (slow) pose-map
    # rendering, so a bad file fails at once.
    from btdm_engine.pipeline import Animator, AnimatorError  # torch
    from btdm_engine.posemaps.encoding import read_iuv_png  # torch (the tensor form), cv2

    appearance = None if args.appearance is None else read_picture(Path(args.appearance), "--appearance")
    appearance_iuv = None
    if args.appearance_iuv is not None:
        appearance_iuv = read_iuv_png(args.appearance_iuv, order=args.iuv_order)
    shown_views = [(k, read_picture(Path(image), f"--view {k}"))
                   for k, (_, image) in zip(given["view_frames"], args.view, strict=True)]
    if not args.plate:  # the service's rule: without plates a picture of the person is framed like the square maps
        pictures = [("--appearance", appearance)] if appearance is not None else []
        for flag, image in pictures + [(f"--view {k}", image) for k, image in shown_views]:
            if image.shape[0] != image.shape[1]:
                raise CliError(f"{flag}: expected a square image (the networks are square), got "
                               f"{image.shape[1]}x{image.shape[0]}; a picture of the whole shot-camera view "
                               "needs --clip with --plate")
    animator = None if texture_method else Animator.from_pretrained(model_dir, device=args.device)
    size = (args.size or 256) if animator is None else animator.resolution
    reads_iuv = animator is None or animator.uses_warp or args.finetune_steps > 0
    if appearance_iuv is not None and not reads_iuv:  # the service refuses it (rule iuv_unused); here a note
        print(f"note: {model_dir} takes no texture-transfer prior; --appearance-iuv is used by --finetune-steps only",
              file=sys.stderr)
        appearance_iuv = None
    if animator is not None:  # what the model lacks (an SR3 stage for --sr-steps): the Animator's error, as before
        spec.check_inputs(AnimatorError, _flags(args), **{**given, "appearance_iuv": appearance_iuv is not None},
                          model=f"model {model_dir}", has_sr3=animator.sr3 is not None,
                          texture_prior=animator.uses_warp)
    task = None if animator is None else animator.meta.get("btunet", {}).get("extra", {}).get("task")
    if appearance is None and task == "single_image":
        print(f"warning: {model_dir} was trained with an appearance image c (task single_image) and none was given "
              "(--appearance); its learnt null token stands in for c, so expect a generic figure", file=sys.stderr)
    progress = not args.no_progress
    plan = None
    if args.clip is not None:
        pose_maps, fps, plan = _render_clip(Path(args.clip), size, progress, plate=args.plate)
    else:
        pose_maps, fps = _read_posemaps(Path(args.posemaps), args.iuv_order, args.frames), 30.0
    fps = args.fps if args.fps is not None else fps
    spec.check_inputs(CliError, _flags(args), **given, frames=len(pose_maps))  # K and the views' frames
    if args.appearance_frame is not None:
        appearance, appearance_iuv = _at_frame(args.appearance_frame, appearance, pose_maps, plan,
                                               "--appearance with --appearance-frame")
        appearance_iuv = appearance_iuv if reads_iuv else None
    views = [_at_frame(k, image, pose_maps, plan, f"--view {k}") for k, image in shown_views]

    if animator is not None and animator.uses_warp and appearance is not None and appearance_iuv is None:
        print("note: no IUV map for the appearance image (--appearance-iuv, or --appearance-frame K for a picture "
              "of the shot at frame K), so the texture-transfer prior is blank: the model draws the person from "
              "the image alone, with its colours but not its prints or layout on the body", file=sys.stderr)

    # Written to OUT/incomplete/ and published over an earlier run only when complete.
    run = StagedRun(out, subdirs=("frames", "plates"), files=("animation.mp4",))
    staging, removed = run.begin()
    if removed:
        print(f"note: removed {staging} left by an interrupted earlier run", file=sys.stderr)
    try:
        count, video = _generate(args, staging, animator, model_dir, pose_maps, appearance, appearance_iuv,
                                 views, plan, fps, progress)
    except BaseException:
        run.abandon()  # what this run made goes (OUT/incomplete/, and OUT if it made it); an earlier run stays
        raise
    run.publish(count, {"method": args.method} if animator is None else {"seed": args.seed, "steps": args.steps})
    frames_dir, plates_dir = out / "frames", out / "plates"
    video = None if video is None else out / "animation.mp4"
    print(f"frames: {count} in {frames_dir} ({pose_maps.shape[2]}x{pose_maps.shape[1]})" if animator is None
          else f"frames: {count} in {frames_dir} ({size}x{size})")
    if plan is not None:
        print(f"plates: {count} in {plates_dir} ({plan.width}x{plan.height} RGBA)")
    if video is not None:
        print(f"video:  {video}")
    return 0


class SaturatedOutputError(BtdmError, ValueError):
    """A network's frame came out saturated (pure black / white) where its pose map shows a person."""


def check_frame(frame: Any, pose_map: Any, k: int, model_dir: Any) -> None:
    """Refuse a generated frame that holds only pure 0 and 255 values though pose map ``k`` shows a person.

    A real frame always has some in-between tone where the person is; a frame of nothing but
    saturated values (all black, typically) means the model's output is not an image: weights
    diverged, corrupt or scaled wrong (NaN becomes black, too).
    """
    if int(np.count_nonzero(pose_map[..., 0])) < 4:
        return  # no person in this frame: a plain background may be exactly uniform
    if not np.all((frame == 0) | (frame == 255)):
        return
    what = "all black" if not frame.any() else "all white" if (frame == 255).all() else "only pure 0/255 values"
    raise SaturatedOutputError(
        f"{model_dir}: frame {k} came out saturated ({what}) though its pose map shows a person: the model's output "
        "is not an image (diverged, corrupt or wrongly scaled weights?); the run was stopped and nothing published")


def _generate(args: argparse.Namespace, staging: Path, animator: Any, model_dir: Any, pose_maps: Any,
              appearance: Any, appearance_iuv: Any, views: list[tuple[Any, Any]], plan: Any, fps: float,
              progress: bool) -> tuple[int, Any]:
    """Generate the frames into ``staging`` (published by the caller); returns (frame count, video or None)."""
    from btdm_engine.posemaps.preview import write_mp4, write_rgb_png, write_rgba_png  # torch, cv2

    frames_dir = staging / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    plates_dir = staging / "plates"
    if plan is not None:
        plates_dir.mkdir(parents=True, exist_ok=True)
    bars = Progress(progress)
    count = 0

    if animator is None:
        from btdm_engine.posemaps.texture import texture_from_image, transfer_frames  # torch

        frames: Any = transfer_frames(texture_from_image(appearance, appearance_iuv, views=views), pose_maps)
    else:
        frames = animator.animate_iter(
            pose_maps, appearance, appearance_iuv, views=views, steps=args.steps,
            sr_steps=args.sr_steps, seed=args.seed,
            finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr, sampler=args.sampler,
            precision=args.precision,
            eta=args.eta, noise=args.noise, sr_noise=args.noise, max_batch=args.max_batch, callback=bars,
        )

    def written() -> Any:
        nonlocal count
        for frame in frames:
            if animator is not None:
                check_frame(frame, pose_maps[count], count, model_dir)
            write_rgb_png(frames_dir / f"{count:06d}.png", frame)
            if plan is not None:
                write_rgba_png(plates_dir / f"{count:06d}.png", plan.composite(count, frame, pose_maps[count]))
            count += 1
            yield frame

    try:
        if args.mp4:
            video = write_mp4(written(), staging / "animation.mp4", fps=fps)
        else:
            video = None
            for _ in written():
                pass
    finally:
        bars.close()
    return count, video
