"""What ``btdm animate``, its ``--engine`` path (:mod:`.remote`) and ``btdm demo`` share: the
progress bars and the ``--frames`` option."""

from __future__ import annotations

from typing import Any

from btdm_engine import limits
from btdm_engine.cli import CliError

__all__ = ["Progress", "parse_frames"]


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
