"""``btdm motion``: make procedural motions, import and inspect BVH/FBX/skeleton files, list, describe,
preview clips."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from btdm_engine import limits
from btdm_engine.body.skeleton import JOINT_NAMES
from btdm_engine.constants import UP_AXES
from btdm_engine.errors import UsageError
from btdm_engine.motion.bonemaps import SKELETONS
from btdm_engine.motion.clip import MotionClip
from btdm_engine.motion.library import MOTIONS, describe, make_motion
from btdm_engine.motion.sources import import_motion, read_skeleton_animation


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``motion`` command: ``make``, ``import``, ``inspect``, ``list``, ``info`` and ``preview``."""
    p = subparsers.add_parser(
        "motion",
        help="make, import and inspect motion clips (.npz)",
        description=(
            "Motion clips hold an SMPL body motion and the camera that films it; every other "
            "command (posemaps, animate) reads them."
        ),
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    make = sub.add_parser(
        "make",
        help="procedural motion from the built-in library",
        description=(
            "Generate a procedural motion (see `btdm motion list`) on the mannequin, standing on "
            "the floor and framed by a static camera in front of it."
        ),
    )
    make.add_argument("name", metavar="NAME", help="motion name, e.g. walk, spin, jumping_jacks")
    make.add_argument("--seconds", type=float, default=4.0, help="clip length in seconds (default 4)")
    make.add_argument("--fps", type=float, default=30.0, help="frames per second (default 30)")
    make.add_argument("--speed", type=float, default=1.0, help="tempo multiplier (default 1)")
    make.add_argument("--seed", type=int, default=0, help="natural variation seed (default 0)")
    make.add_argument("--size", type=int, default=256, help="camera image size in pixels, square (default 256)")
    make.add_argument("--body", default="mannequin", help="body model: mannequin or an SMPL .pkl path")
    make.add_argument("--out", type=Path, required=True, metavar="CLIP.npz", help="clip file to write")
    make.set_defaults(func=_make)

    imp = sub.add_parser(
        "import",
        help="retarget a BVH, FBX or skeleton-animation file onto SMPL",
        description=(
            "Import a motion onto the SMPL skeleton: BVH (mocap from any source), FBX (Mixamo and "
            "others, through Blender's own importer: needs the bpy module) or a skeleton-animation "
            ".npz (what the Blender add-on sends) or an AMASS-style SMPL, SMPL-H or SMPL-X .npz (poses, trans, betas, "
            "mocap_framerate; its body rotations and shape are kept exactly). Rigs: " + ", ".join(SKELETONS[1:]) + " by name, "
            "or any rig with --bone-map. The file's rest pose (T- or A-pose, any facing), units and "
            "up axis are accounted for; each assumption that could be wrong is printed as a warning."
        ),
    )
    _source_arguments(imp)
    imp.add_argument("--fit-shape", action="store_true",
                     help="fit the body's shape (betas) to the rig's bone lengths and report the residual")
    imp.add_argument("--fps", type=float, default=None, help="resample to this frame rate (default: keep)")
    imp.add_argument("--size", type=int, default=256, help="camera image size in pixels, square (default 256)")
    imp.add_argument("--body", default="mannequin", help="body model: mannequin or an SMPL .pkl path")
    imp.add_argument("--out", type=Path, required=True, metavar="CLIP.npz", help="clip file to write")
    imp.set_defaults(func=_import)

    ins = sub.add_parser(
        "inspect",
        help="show how a motion file would import, without writing anything",
        description=("Print the bones found, the bone map chosen (SMPL joint <- bone), the units and up "
                     "axis, frame count and fps of a BVH, FBX or skeleton-animation file. Writes nothing."),
    )
    _source_arguments(ins)
    ins.set_defaults(func=_inspect)

    lst = sub.add_parser("list", help="list the built-in procedural motions",
                         description="List the built-in procedural motions with a line on each.")
    lst.set_defaults(func=_list)

    info = sub.add_parser("info", help="describe a clip file", description="Print what a MotionClip .npz holds: frames, fps, "
                          "body model, shape, camera, and the root path.")
    info.add_argument("clip", type=Path, metavar="CLIP.npz", help="clip file to describe")
    info.set_defaults(func=_info)

    sheet = sub.add_parser(
        "preview",
        help="stick-figure contact sheet of clips, seen by their own cameras",
        description=(
            "Draw a few evenly spaced frames of each clip as stick figures (person's left red, "
            "right blue), projected with the clip's camera: one row per clip, written as a PNG."
        ),
    )
    sheet.add_argument("clips", type=Path, nargs="+", metavar="CLIP.npz", help="clip files, one row each")
    sheet.add_argument("--frames", type=int, default=8, help="frames per row (default 8)")
    sheet.add_argument("--tile", type=int, default=192, help="tile size in pixels (default 192)")
    sheet.add_argument("--out", type=Path, required=True, metavar="SHEET.png", help="PNG file to write")
    sheet.set_defaults(func=_preview)


def _source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, metavar="FILE",
                   help="motion file: .bvh, .fbx, skeleton-animation .npz or AMASS-style SMPL .npz")
    p.add_argument("--skeleton", default="auto", choices=SKELETONS,
                   help="bone-map preset (default auto: the preset that maps the most joints; it says which)")
    p.add_argument("--bone-map", type=Path, default=None, metavar="MAP.json",
                   help='custom bone map, a JSON object {"pelvis": "Hips", "left_hip": "L_Thigh", ...}')
    p.add_argument("--scale", type=float, default=None,
                   help="metres per file unit (default: detected: m, cm, mm or inches, from the skeleton height)")
    p.add_argument("--up", default=None, choices=UP_AXES,
                   help="the file's up axis (default: the file's convention, checked against the rest skeleton)")
    p.add_argument("--armature", default=None, metavar="NAME", help="the armature to read from an FBX with several")


def _retarget(args: argparse.Namespace, **extra):
    return import_motion(args.file, bone_map_file=args.bone_map, armature=args.armature, skeleton=args.skeleton,
                         scale=args.scale, up=args.up, **extra)


def _warn(args: argparse.Namespace, lines: list[str]) -> None:
    for line in lines:
        print(f"btdm motion {args.action}: warning: {args.file.name}: {line}", file=sys.stderr)


def _check_size(size: int) -> None:
    if size <= 0:
        raise UsageError(f"--size must be a positive number of pixels, got {size}")


def _make(args: argparse.Namespace) -> int:
    _check_size(args.size)
    limits.check_fps(args.fps, "--fps")
    clip = make_motion(args.name, seconds=args.seconds, fps=args.fps, speed=args.speed, seed=args.seed,
                       width=args.size, height=args.size, body_model=args.body)
    path = clip.save(args.out)
    print(f"wrote {path}: {args.name}, {clip.num_frames} frames at {clip.fps:g} fps ({clip.duration:.2f} s)")
    return 0


def _import(args: argparse.Namespace) -> int:
    _check_size(args.size)
    if args.fps is not None:
        limits.check_fps(args.fps, "--fps")
    done = _retarget(args, fit_shape=args.fit_shape, fps=args.fps, width=args.size, height=args.size,
                     body_model=args.body)
    _warn(args, done.warnings)
    clip = done.clip
    path = clip.save(args.out)
    r = done.report
    fit = f", shape fit {r['fit_rms_mm']:.1f} mm RMS ({r['fit_max_mm']:.1f} max)" if "fit_rms_mm" in r else ""
    gender = f", {r['gender']}" if "gender" in r else ""
    print(f"wrote {path}: {clip.num_frames} frames at {clip.fps:g} fps ({clip.duration:.2f} s), "
          f"{r['skeleton']} skeleton{gender}, {r['units']} units ({r['scale']:g} m/unit), {r['up']} up{fit}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    anim = read_skeleton_animation(args.file, armature=args.armature)
    done = _retarget(args)
    _warn(args, done.warnings)
    r = done.report
    print(f"file:      {args.file}")
    print(f"bones:     {anim.num_bones}: {', '.join(anim.names)}")
    print(f"frames:    {anim.num_frames} at {anim.fps:g} fps ({anim.num_frames / anim.fps:.2f} s)")
    picked = " (picked by auto)" if args.skeleton == "auto" and args.bone_map is None else ""
    print(f"skeleton:  {r['skeleton']}{picked}")
    print(f"units:     {r['units']}, {r['scale']:g} metres per unit")
    print(f"up axis:   {r['up']}; rest pose faces {r['facing_deg']:+.0f} degrees from +Z about the up axis")
    camera = f"shot camera {anim.cam_width}x{anim.cam_height}" if anim.has_camera else "none"
    print(f"camera:    {camera}")
    print("bone map:  SMPL joint <- bone")
    for joint in JOINT_NAMES:
        print(f"  {joint:15s} <- {r['map'].get(joint, '(none: follows its parent)')}")
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in MOTIONS:
        print(f"{name:14s} {describe(name)}")
    return 0


def _info(args: argparse.Namespace) -> int:
    clip = MotionClip.load(args.clip)
    K = clip.K[0]
    cam_pos = -clip.world_to_cam[0, :3, :3].T @ clip.world_to_cam[0, :3, 3]
    static = bool(np.allclose(clip.world_to_cam, clip.world_to_cam[:1]) and np.allclose(clip.K, clip.K[:1]))
    travel = np.linalg.norm(clip.trans[-1] - clip.trans[0])
    print(f"file:        {args.clip}")
    print(f"format:      version {clip.format_version}")
    print(f"frames:      {clip.num_frames} at {clip.fps:g} fps ({clip.duration:.2f} s)")
    print(f"body model:  {clip.body_model}, betas {np.array2string(clip.betas, precision=2)}")
    print(f"root travel: {travel:.2f} m (start {np.round(clip.trans[0], 2)}, end {np.round(clip.trans[-1], 2)})")
    print(f"image:       {clip.width} x {clip.height} px")
    print(f"camera:      {'static' if static else 'moving'}, fx {K[0, 0]:.1f} fy {K[1, 1]:.1f} "
          f"cx {K[0, 2]:.1f} cy {K[1, 2]:.1f}, first position {np.round(cam_pos, 2)} m")
    return 0


def _preview(args: argparse.Namespace) -> int:
    from btdm_engine.motion.preview import contact_sheet  # lazy: cv2

    if args.frames <= 0 or args.tile < 16:
        raise UsageError(f"--frames must be positive and --tile at least 16, got {args.frames} and {args.tile}")
    clips = {path.stem: MotionClip.load(path) for path in args.clips}
    path = contact_sheet(clips, args.out, frames=args.frames, tile=args.tile)
    print(f"wrote {path}: {len(clips)} clip(s) x {args.frames} frames")
    return 0
