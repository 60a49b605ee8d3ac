"""DensePose-processed real video (UBC Fashion and the like) as training sequences.

Expected layout (one folder per video, grouped by split)::

    <root>/
      train/<video_id>/frames/<digits>.png|.jpg     video frames, any size (RGB or RGBA)
      train/<video_id>/densepose/<digits>.png       DensePose IUV of the same frame, FULL-FRAME (same
                                                    size as the frame, background I = 0), exactly as
                                                    detectron2's DensePose writes it with cv2.imwrite:
                                                    file red = V*255, green = U*255, blue = I
      test/<video_id>/...

or a single video (person-specific training) directly: ``<root>/frames/`` and
``<root>/densepose/``, exposed as the ``train`` split with the folder's name as its id.

Every frame needs its pose map with the same stem (``000123.jpg`` <-> ``000123.png``) and vice
versa. Frame numbers may have gaps (frames where DensePose found nobody and were dropped): each
run of consecutive numbers becomes its own sequence ``<video_id>@<first frame number>``, so a
training pair (t-1, t) is always two truly consecutive frames. A video is one person: the
character is the video id, and the split comes from the folder. Frames of any aspect ratio are
fitted to the square network resolution by the dataset (``fit`` in
:class:`training.datasets.PairDatasetConfig`).

Per-instance DensePose outputs (IUV in the person's box) must be pasted into full frames first.
"""

from __future__ import annotations

import re
from pathlib import Path

from training.dataset_format import DatasetFormatError, SequenceFrames

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SPLITS = ("train", "test", "val")
_STEM = re.compile(r"^\d+$")


class DensePoseVideoSet:
    """A folder of DensePose-processed videos (layout in the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetFormatError(f"{self.root}: not a folder")
        self.videos: dict[str, dict[str, Path]] = {}
        if (self.root / "frames").is_dir() or (self.root / "densepose").is_dir():
            self.videos["train"] = {self.root.name: self.root}
        else:
            for split in VIDEO_SPLITS:
                folder = self.root / split
                if folder.is_dir():
                    self.videos[split] = {p.name: p for p in sorted(folder.iterdir()) if p.is_dir()}
            if not self.videos:
                raise DatasetFormatError(
                    f"{self.root}: expected frames/ + densepose/ (one video) or {'/, '.join(VIDEO_SPLITS)}/ folders of videos"
                )

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.videos)

    def sequence_frames(self, split: str = "train") -> list[SequenceFrames]:
        """The consecutive-frame runs of every video in ``split``, ready for the training datasets."""
        if split not in self.videos:
            raise DatasetFormatError(f"{self.root}: no split {split!r}; present: {', '.join(self.videos) or 'none'}")
        out: list[SequenceFrames] = []
        for video_id, folder in self.videos[split].items():
            out.extend(_video_runs(video_id, folder))
        if not out:
            raise DatasetFormatError(f"{self.root / split}: no videos")
        return out


def _numbered(folder: Path, suffixes: tuple[str, ...], video_id: str) -> dict[int, Path]:
    if not folder.is_dir():
        raise DatasetFormatError(f"{folder}: missing (video {video_id!r})")
    found: dict[int, Path] = {}
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        if p.suffix.lower() not in suffixes or not _STEM.match(p.stem):
            raise DatasetFormatError(f"{p}: unexpected file; expected <digits>{'|'.join(suffixes)} (video {video_id!r})")
        index = int(p.stem)
        if index in found:
            raise DatasetFormatError(f"{p}: frame number {index} appears twice ({found[index].name}) (video {video_id!r})")
        found[index] = p
    return found


def _video_runs(video_id: str, folder: Path) -> list[SequenceFrames]:
    frames = _numbered(folder / "frames", FRAME_SUFFIXES, video_id)
    poses = _numbered(folder / "densepose", (".png",), video_id)
    if not frames:
        raise DatasetFormatError(f"{folder / 'frames'}: no frames (video {video_id!r})")
    lonely = sorted(set(frames) ^ set(poses))
    if lonely:
        n = lonely[0]
        which = f"frame {frames[n].name} has no pose map in densepose/" if n in frames else f"pose map {poses[n].name} has no frame in frames/"
        raise DatasetFormatError(f"{folder}: {which} (video {video_id!r})")
    runs: list[list[int]] = []
    for n in sorted(frames):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return [
        SequenceFrames(
            id=video_id if len(runs) == 1 else f"{video_id}@{run[0]}",
            character=video_id,
            rgb=tuple(frames[n] for n in run),
            iuv=tuple(poses[n] for n in run),
            iuv_order="densepose",
        )
        for run in runs
    ]
