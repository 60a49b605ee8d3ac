"""The embedded default model: the weights `btdm demo` and `btdm animate` use when no --model is given.

``default/`` is a model folder in the usual layout (``btunet/`` and ``sr3/`` checkpoint folders,
see :mod:`btdm_engine.checkpoints`) plus the appearance image it was shown with
(``appearance.png`` and its pose map ``appearance_iuv.png``) and ``MODEL_CARD.md``, which says
how it was trained (data, steps, seeds, commands) and what it can and cannot do. It is made by
:mod:`training.default_model` from the synthetic ``wide`` set, entirely on this project's own
code: nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from btdm_engine.constants import SR3_STAGE_DIRS

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"


class NoDefaultModelError(FileNotFoundError):
    """The embedded default model is missing (a stripped install): name what to do instead."""


def default_model_dir() -> Path:
    """The embedded model folder; raises :class:`NoDefaultModelError` when it is not installed."""
    if not (DEFAULT_MODEL_DIR / "btunet" / "config.json").is_file():
        raise NoDefaultModelError(
            f"the embedded default model is missing ({DEFAULT_MODEL_DIR / 'btunet'}); pass --model DIR, or "
            "rebuild it with `python -m training.default_model`"
        )
    return DEFAULT_MODEL_DIR


def sr3_stage_dirs(folder: str | os.PathLike[str]) -> list[Path]:
    """A model folder's SR3 stage folders in order (``constants.SR3_STAGE_DIRS``: ``sr3/``, ``sr3-2/``,
    ...), up to the first missing one."""
    found: list[Path] = []
    for name in SR3_STAGE_DIRS:
        if not (Path(folder) / name).exists():
            break
        found.append(Path(folder) / name)
    return found


def model_appearance(folder: str | os.PathLike[str]) -> tuple[Path, Path] | None:
    """(``appearance.png``, ``appearance_iuv.png``) a model folder ships with, or None without both:
    what `btdm animate --model DIR` and `btdm serve --model NAME=DIR` use when a job gives no
    appearance (the recipes of training.default_model write them)."""
    image, iuv = Path(folder) / "appearance.png", Path(folder) / "appearance_iuv.png"
    return (image, iuv) if image.is_file() and iuv.is_file() else None


def default_appearance() -> tuple[Path, Path]:
    """(appearance image, its IUV pose map) shipped with the default model."""
    root = default_model_dir()
    for path in (root / "appearance.png", root / "appearance_iuv.png"):
        if not path.is_file():
            raise NoDefaultModelError(f"the embedded default model has no {path.name} ({path})")
    own = model_appearance(root)
    assert own is not None
    return own
