"""``btdm synth``: build, check and look at the synthetic ground-truth set (paper section 4.1, appendix D).

Subcommands::

    btdm synth build --preset mini --out data/mini [--workers 2] [--ray ADDRESS]
    btdm synth validate data/mini [--checksums]
    btdm synth sheet data/mini --out sheet.png [--motion walk] [--frames 0,12,24]
    btdm synth presets
    btdm synth spec --seed 3

Also installed as the ``btdm-synth`` console script (``main``). Part of the application layer:
``btdm_engine.cli`` registers it by name (``APPLICATION_COMMAND_MODULES``); the engine itself never
imports ``synthetic_data``. Heavy imports (cv2) happen inside the handlers so ``btdm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys

from btdm_engine.constants import CYCLES_DEVICES
from btdm_engine.errors import BtdmError, UsageError
from synthetic_data.build import BuildFailed, build_dataset
from synthetic_data.presets import PRESETS, get_preset
from synthetic_data.spec import sample_character

__all__ = ["main", "register"]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``synth`` and its subcommands to the ``btdm`` parser."""
    parser = subparsers.add_parser(
        "synth",
        help="build the synthetic soft-cloth ground-truth dataset with Blender",
        description="Synthetic ground truth: different people performing exactly the same motion, "
        "with simulated cloth, Cycles renders and the engine's own IUV pose maps.",
    )
    _add_subcommands(parser)
    return parser


def _add_subcommands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="synth_command", metavar="SUBCOMMAND")
    sub.required = True

    b = sub.add_parser(
        "build", help="build or resume a dataset (one shard per character and motion)",
        description="Build or resume a dataset: one shard per (character, motion), each simulated and rendered in its own "
        "worker process (or Ray task). Finished sequences are kept; an interrupted build resumes where it stopped.")
    b.add_argument("--preset", required=True, help="tiny, mini or paper (see `btdm synth presets`)")
    b.add_argument("--out", required=True, help="dataset folder (created; an interrupted build resumes)")
    b.add_argument("--workers", type=int, default=None, help="shards at once (default: cores / 2)")
    b.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run shards as Ray tasks on this cluster ('auto', 'ray://host:10001', or 'local')")
    b.add_argument("--device", choices=CYCLES_DEVICES, default=None, help="Cycles device (default: the preset's, CPU)")
    b.add_argument("--only", nargs="+", metavar="SEQUENCE", default=None, help="build just these sequence ids")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    v = sub.add_parser(
        "validate", help="check a dataset folder against its manifest",
        description="Check a dataset folder against its manifest.json: layout, frame sizes, clips, and (with --checksums) "
        "every file's SHA-256.")
    v.add_argument("root", help="dataset folder")
    v.add_argument("--checksums", action="store_true", help="recompute every file's SHA-256")
    v.set_defaults(func=_validate)

    s = sub.add_parser(
        "sheet", help="contact sheet: several characters, same frames, with pose maps",
        description="Write a contact sheet PNG: several characters at the same frames of the same motion, each over its IUV "
        "pose map.")
    s.add_argument("root", help="dataset folder")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--motion", default=None, help="motion name (default: the first)")
    s.add_argument("--frames", default=None, help="comma-separated frame indices")
    s.add_argument("--characters", type=int, default=4, help="how many characters (rows)")
    s.add_argument("--scale", type=int, default=1, help="enlarge cells by this factor")
    s.set_defaults(func=_sheet)

    p = sub.add_parser("presets", help="list the dataset presets",
                       description="List the dataset presets (characters, motions, frames, resolution, samples).")
    p.set_defaults(func=_presets)

    c = sub.add_parser(
        "spec", help="print the character spec a seed gives (JSON)",
        description="Print the character spec (body shape, skin, hair, garments, textures, lights, camera) that a seed gives, "
        "as JSON.")
    c.add_argument("--seed", type=int, required=True)
    c.set_defaults(func=_spec)


def _build(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset)
    if args.device:
        preset = preset.with_overrides(render_device=args.device)
    try:
        report = build_dataset(preset, args.out, workers=args.workers, ray_address=args.ray,
                               progress=not args.no_progress, only=args.only)
    except BuildFailed as exc:
        print(f"btdm synth build: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: built {len(report.built)}, already there {len(report.skipped)}, "
          f"in {report.seconds:.0f} s")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from training.dataset_format import validate_dataset  # lazy: loads cv2; btdm --help stays cv2-free

    manifest = validate_dataset(args.root, verify_checksums=args.checksums)
    frames = sum(r.num_frames for r in manifest.sequences.values())
    complete = manifest.info.get("complete", True)
    summary = (f"{len(manifest.sequences)} sequences, {frames} frames, "
               f"{manifest.resolution[0]}x{manifest.resolution[1]} px")
    if not complete:
        pending = manifest.info.get("pending", [])
        print(f"btdm synth validate: error: {args.root}: INCOMPLETE, {len(pending)} sequence(s) pending "
              f"({', '.join(map(str, pending[:5]))}{' ...' if len(pending) > 5 else ''}); the {summary} present "
              "are valid. Finish it with btdm synth build (it resumes)", file=sys.stderr)
        return 1
    print(f"{args.root}: OK, {summary}")
    return 0


def _sheet(args: argparse.Namespace) -> int:
    from synthetic_data.sheet import dataset_contact_sheet  # lazy: loads cv2; btdm --help stays cv2-free

    frames = None
    if args.frames:
        try:
            frames = [int(x) for x in args.frames.split(",")]
        except ValueError:
            raise UsageError(f"--frames: expected comma-separated integers, got {args.frames!r}") from None
    path = dataset_contact_sheet(args.root, args.out, args.motion, frames, args.characters, args.scale)
    print(path)
    return 0


def _presets(args: argparse.Namespace) -> int:
    for p in PRESETS.values():
        seqs = p.characters * len(p.motions)
        print(f"{p.name:6s} {p.characters} characters ({p.characters - p.test_characters} train / {p.test_characters} test)"
              f" x {len(p.motions)} motions ({', '.join(m.name for m in p.motions)}) = {seqs} sequences of "
              f"{p.frames} frames at {p.fps:g} fps, {p.render.resolution} px, {p.render.samples} samples")
    return 0


def _spec(args: argparse.Namespace) -> int:
    print(json.dumps(sample_character(args.seed).to_dict(), indent=1, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``btdm-synth`` console script: the same subcommands without the ``btdm synth`` prefix."""
    parser = argparse.ArgumentParser(prog="btdm-synth", description=__doc__.split("\n")[0])
    _add_subcommands(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (BtdmError, OSError) as exc:
        print(f"btdm-synth {args.synth_command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"btdm-synth {args.synth_command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
