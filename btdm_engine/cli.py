"""The `btdm` command: one entry point, subcommands contributed by the engine's packages.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` on it. Heavy imports (torch, pyrender) happen inside ``func`` so that
``btdm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in the order `btdm --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "btdm_engine.commands.demo",
    "btdm_engine.motion.cli",
    "btdm_engine.posemaps.cli",
    "btdm_engine.commands.animate",
    "btdm_engine.commands.finetune",
    "btdm_engine.commands.train",
    "btdm_engine.commands.evaluate",
    "btdm_engine.commands.synth",
    "btdm_engine.commands.serve",
    "btdm_engine.commands.addon",
    "btdm_engine.commands.previs",
)


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="btdm",
        description=(
            "BTDM pre-vis: turn a body motion into DensePose-style IUV pose maps and "
            "temporally coherent generated frames (Bidirectional Temporal Diffusion Model)."
        ),
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from btdm_engine import __version__

    return f"btdm {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, OSError, ValueError) as exc:  # user errors: bad files, folders, values
        print(f"{_command_name(args)}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_command_name(args)}: interrupted", file=sys.stderr)
        return 130


def _command_name(args: argparse.Namespace) -> str:
    """``btdm motion make`` rather than ``btdm motion``: the command plus its action, if it has one."""
    action = getattr(args, "action", None) or getattr(args, "synth_command", None)
    return f"btdm {args.command} {action}" if action else f"btdm {args.command}"


if __name__ == "__main__":
    sys.exit(main())
