"""The `btdm` command: one entry point, subcommands contributed by the engine's packages and,
as the application layer, by ``training`` and ``synthetic_data`` (imported by name, see
``APPLICATION_COMMAND_MODULES``).

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` on it. Heavy imports (torch, pyrender) happen inside ``func`` so that
``btdm --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from btdm_engine import __version__, limits, procs
from btdm_engine.dataconfig import is_int
from btdm_engine.errors import BtdmError, UsageError
from btdm_engine.fileio import describe_os_error

# The engine's modules that contribute subcommands, in the order `btdm --help` lists them.
ENGINE_COMMAND_MODULES: tuple[str, ...] = (
    "btdm_engine.commands.demo",
    "btdm_engine.motion.cli",
    "btdm_engine.posemaps.cli",
    "btdm_engine.commands.animate",
    "btdm_engine.commands.finetune",
    "btdm_engine.commands.evaluate",
    "btdm_engine.commands.serve",
    "btdm_engine.commands.addon",
    "btdm_engine.commands.previs",
)

# The application layer: commands that live beside the packages they drive (training, the
# Blender dataset builder), outside the engine. The engine never imports these packages; only
# the `btdm` command does, here, by name, when it builds its parser (their handlers import the
# heavy parts when run).
APPLICATION_COMMAND_MODULES: tuple[str, ...] = (
    "training.command",
    "synthetic_data.command",
)

COMMAND_MODULES: tuple[str, ...] = ENGINE_COMMAND_MODULES + APPLICATION_COMMAND_MODULES


class CliError(UsageError):
    """A user-facing error about the command line: printed as one line, exit status 2, no traceback."""


DEVICE_FORMS = "cpu, cuda or cuda:N"


def check_device(text: str | None, flag: str = "--device") -> str | None:
    """A ``--device`` value the engine can use (None or "auto" = choose), else a UsageError naming the forms."""
    if text is None or text == "auto":
        return None
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise CliError(f"{flag} {text!r}: expected {DEVICE_FORMS}")
    if text.startswith("cuda"):
        import torch  # lazy: torch stays out of `btdm --help`

        if not torch.cuda.is_available():
            raise CliError(f"{flag} {text}: CUDA is not available on this machine")
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise CliError(f"{flag} {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


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
    _add_limit_flag(sub)
    return parser


def _add_limit_flag(sub: argparse._SubParsersAction) -> None:
    """Give every leaf command ``--limit NAME=VALUE`` (btdm_engine.limits), in one place."""
    for parser in sub.choices.values():
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for action in nested:
                _add_limit_flag(action)
        elif not any("--limit" in a.option_strings for a in parser._actions):
            parser.add_argument(
                "--limit", action="append", default=[], metavar="NAME=N",
                help="raise a safety limit for this run (repeatable); names and defaults: "
                + ", ".join(f"{k}={v}" for k, v in limits.DEFAULTS.items()),
            )


def _version() -> str:
    return f"btdm {__version__}"


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a shared machine spinning threads steal the
    # core another process needs, and torch then runs several times slower (bench/bench_cpu.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Freed activations stay in the heap for the next network call instead of being page-faulted in
    # again (a quarter of the CPU time of a generation otherwise, btdm_engine.procs).
    procs.keep_freed_memory()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with cli_logging():
            limits.override(getattr(args, "limit", None))
            _set_threads(getattr(args, "threads", None))
            return int(args.func(args) or 0)
    except (BtdmError, OSError) as exc:  # the project's own errors and the file system's; a bug shows its traceback
        message = describe_os_error(exc) if isinstance(exc, OSError) and not isinstance(exc, BtdmError) else exc
        print(f"{_command_name(args)}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{_command_name(args)}: interrupted", file=sys.stderr)
        return 130


# Packages whose INFO messages a command shows; other libraries' show from WARNING up.
LOGGED_PACKAGES = ("btdm_engine", "training", "synthetic_data")


class _CliLogHandler(logging.StreamHandler):
    """Log records as plain lines on stderr: the project's from INFO up, other libraries' from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and record.name.partition(".")[0] not in LOGGED_PACKAGES:
            return False
        return super().filter(record)


@contextmanager
def cli_logging() -> Iterator[None]:
    """For one command: library messages (``logging``) as plain lines on stderr, as its own output is.

    The handler and the root level are removed and restored afterwards, so a command run in-process
    (tests, a script) leaves logging as it found it. ``btdm serve`` replaces this with its own
    timestamped configuration.
    """
    root = logging.getLogger()
    handler = _CliLogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))  # NOTSET (0) already lets everything through
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _set_threads(threads: int | None) -> None:
    """``--threads N`` of the commands that run networks: torch's intra-op CPU threads."""
    if threads is None:
        return
    if not is_int(threads) or not 1 <= threads <= 1024:
        raise CliError(f"--threads must be between 1 and 1024, got {threads!r}")
    import torch  # lazy: torch stays out of `btdm --help`

    torch.set_num_threads(threads)


def _command_name(args: argparse.Namespace) -> str:
    """``btdm motion make`` rather than ``btdm motion``: the command plus its action, if it has one."""
    action = getattr(args, "action", None) or getattr(args, "synth_command", None)
    return f"btdm {args.command} {action}" if action else f"btdm {args.command}"


if __name__ == "__main__":
    sys.exit(main())
