"""What ``btdm animate``, its ``--engine`` path (:mod:`.remote`) and ``btdm demo`` share: the
progress bars, the ``--frames`` and ``--view`` options and how a picture of the person is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from btdm_engine import limits
from btdm_engine.cli import CliError
from btdm_engine.errors import BtdmError

__all__ = ["Progress", "parse_frames", "read_picture", "view_frames"]


class Progress:
    """One tqdm bar per stage, fed by the samplers' ``callback(stage, step, total)``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, step: int, total: int | None) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm  # lazy: tqdm costs 60 ms at every `btdm --help`

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=stage, unit="step")
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def parse_frames(frames: str | None) -> tuple[int, int] | None:
    """``--frames START:STOP`` as (start, stop); None when not given."""
    if frames is None:
        return None
    start, sep, stop = frames.partition(":")
    if not (sep and start.isdigit() and stop.isdigit()):
        raise CliError(f"--frames {frames!r}: expected START:STOP, e.g. 0:48")
    return int(start), int(stop)


def view_frames(views: list[list[str]]) -> list[int]:
    """The job frames K of ``btdm animate --view K IMG`` (its ``args.view``), checked: each a number
    >= 0 and given once (the service's views zip holds one picture per frame), no more than the
    views limit."""
    limits.check("views", len(views), "--view (pictures)")
    frames = []
    for k, image in views:
        try:
            frames.append(int(k))
        except ValueError:
            raise CliError(f"--view {k} {image}: K must be a job frame number (zero-based), got {k!r}") from None
        if frames[-1] < 0:
            raise CliError(f"--view {k} {image}: K must be >= 0 (a zero-based job frame)")
        if frames[-1] in frames[:-1]:
            raise CliError(f"--view {k} {image}: frame {frames[-1]} has a picture already (one --view per frame)")
    return frames


def read_picture(path: Path, flag: str) -> np.ndarray:
    """A picture of the person (``--appearance``, ``--view K IMG``): an 8- or 16-bit PNG or a JPEG (turned
    upright), alpha composited onto white as the training frames are, as uint8 (H, W, 3) RGB; errors
    name ``flag``."""
    from btdm_engine.imageio import MIN_APPEARANCE_SIDE, read_rgb  # lazy: cv2

    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: " + ("a folder, not an image" if path.is_dir() else "no such file"))
    try:
        return np.round(read_rgb(path, min_side=MIN_APPEARANCE_SIDE) * 255.0).astype(np.uint8)
    except BtdmError as exc:
        raise CliError(f"{flag}: {exc}") from None
