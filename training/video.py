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

**Horizontal flips.** detectron2's DensePose charts are not mirror copies of each other (unlike
this project's atlas, which :func:`btdm_engine.posemaps.parts.flip_iuv` flips exactly), so a
flipped DensePose pose map is only truthful through per-part symmetry tables. Training on these
videos therefore does not flip by default (``hflip_prob`` unset), and an explicit flip probability
is refused, unless the set comes with its table: ``<root>/densepose_symmetry.json``
(:data:`SYMMETRY_FILE`), which :class:`DensePoseSymmetry` reads and
:func:`symmetry_from_detectron2` makes from detectron2's ``UV_symmetry_transforms.mat``::

    {"format_version": 1,
     "labels": [0, 1, 2, 4, 3, ...],   # 25 ints: the part each label I becomes (0, background, stays 0);
                                       # a mirror swaps parts in pairs
     "u": [TABLE or null, ... x 24],   # per part 1..24: TABLE[v][u] is the new U in [0, 1], for the old
     "v": [TABLE or null, ... x 24]}   # V and U codes v, u in 0..255 (256 x 256); null keeps U (or V)

A flipped pixel of part I with codes (U, V) becomes part ``labels[I]`` with U = ``u[I-1][V][U]`` and
V = ``v[I-1][V][U]`` (detectron2's ``DensePoseDataPointsTransform``); with the table present the
flip is on by default, as for the synthetic set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from btdm_engine.dataconfig import check_keys, is_int
from btdm_engine.fileio import atomic_write_text, read_json
from training.dataset_format import DatasetFormatError, SequenceFrames

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SPLITS = ("train", "test", "val")
SYMMETRY_FILE = "densepose_symmetry.json"
SYMMETRY_VERSION = 1
NUM_PARTS = 24
# detectron2's DensePoseTransformData.POINT_LABEL_SYMMETRIES: the part each label becomes in a mirror.
DETECTRON2_PART_SWAP: tuple[int, ...] = (0, 1, 2, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 18, 17, 20, 19,
                                         22, 21, 24, 23)
_STEM = re.compile(r"^\d+$")


class DensePoseSymmetry:
    """A DensePose symmetry table (format in the module docstring), ready to flip IUV maps.

    ``labels`` (25,) and ``u``, ``v`` (25, 256, 256) are uint8 lookup tables indexed by the old
    label (row 0, background, maps to 0) and, for ``u`` and ``v``, the old V and U codes.
    """

    def __init__(self, labels: np.ndarray, u: np.ndarray, v: np.ndarray, source: str = "") -> None:
        self.labels, self.u, self.v, self.source = labels, u, v, source

    @classmethod
    def load(cls, path: str | Path) -> DensePoseSymmetry:
        """Read and check a table file; errors name the file and the field."""
        path = Path(path)
        if not path.is_file():
            raise DatasetFormatError(f"{path}: missing (a DensePose symmetry table)")
        return cls.from_dict(read_json(path, DatasetFormatError), str(path))

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> DensePoseSymmetry:
        """Check a parsed table document (``where`` names it in errors)."""
        doc = check_keys(doc, ("format_version", "labels", "u", "v"), DatasetFormatError, where=where,
                         required=("format_version", "labels", "u", "v"))
        if doc["format_version"] != SYMMETRY_VERSION:
            raise DatasetFormatError(
                f"{where}: format_version {doc['format_version']!r} is not supported (expected {SYMMETRY_VERSION})")
        labels = doc["labels"]
        ok = isinstance(labels, list) and len(labels) == NUM_PARTS + 1 and all(
            is_int(i) and 0 <= i <= NUM_PARTS for i in labels)
        if not ok or labels[0] != 0:
            raise DatasetFormatError(
                f"{where}: field 'labels' must be {NUM_PARTS + 1} part labels in 0..{NUM_PARTS}, the label each "
                f"label becomes, starting with 0 for the background; got {labels!r}")
        for i, j in enumerate(labels):
            if labels[j] != i:
                raise DatasetFormatError(
                    f"{where}: field 'labels': part {i} becomes {j} but {j} becomes {labels[j]}; a mirror swaps parts "
                    "in pairs")
        tables = {name: _uv_tables(doc[name], name, where) for name in ("u", "v")}
        return cls(np.asarray(labels, np.uint8), tables["u"], tables["v"], where)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document :meth:`from_dict` reads (tables as numbers in [0, 1])."""
        return {"format_version": SYMMETRY_VERSION, "labels": [int(i) for i in self.labels],
                "u": [np.round(t / 255.0, 6).tolist() for t in self.u[1:]],
                "v": [np.round(t / 255.0, 6).tolist() for t in self.v[1:]]}  # fmt: skip

    def flip(self, iuv: np.ndarray) -> np.ndarray:
        """Mirror uint8 ``(..., H, W, 3)`` IUV maps left-right through the table (a new array)."""
        iuv = np.asarray(iuv)
        if iuv.dtype != np.uint8 or iuv.ndim < 3 or iuv.shape[-1] != 3:
            raise DatasetFormatError(f"DensePose flip: expected uint8 (..., H, W, 3), got {iuv.dtype} {tuple(iuv.shape)}")
        out = np.ascontiguousarray(iuv[..., ::-1, :])
        i, u, v = out[..., 0], out[..., 1], out[..., 2]
        if int(i.max(initial=0)) > NUM_PARTS:
            raise DatasetFormatError(f"DensePose flip: part label {int(i.max())} > {NUM_PARTS}")
        return np.stack([self.labels[i], self.u[i, v, u], self.v[i, v, u]], axis=-1)


def _uv_tables(value: Any, name: str, where: str) -> np.ndarray:
    """24 tables (or nulls) as a (25, 256, 256) uint8 lookup with row 0 for the background."""
    if not isinstance(value, list) or len(value) != NUM_PARTS:
        raise DatasetFormatError(f"{where}: field {name!r} must be a list of {NUM_PARTS} tables (or nulls), one per part")
    identity = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :] if name == "u" else
                               np.arange(256, dtype=np.uint8)[:, None], (256, 256))
    out = np.zeros((NUM_PARTS + 1, 256, 256), np.uint8)
    for k, table in enumerate(value):
        if table is None:
            out[k + 1] = identity
            continue
        try:
            arr = np.asarray(table, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.empty(0)
        if arr.shape != (256, 256) or not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise DatasetFormatError(
                f"{where}: field {name!r}[{k}] (part {k + 1}) must be null or 256 rows of 256 numbers in [0, 1]")
        out[k + 1] = np.round(arr * 255.0).astype(np.uint8)
    return out


def symmetry_from_detectron2(mat_path: str | Path) -> DensePoseSymmetry:
    """The table from detectron2's ``UV_symmetry_transforms.mat`` (``U_transforms``/``V_transforms``).

    Save it beside the videos with ``write_symmetry(symmetry_from_detectron2(MAT), ROOT / SYMMETRY_FILE)``.
    """
    import scipy.io  # lazy: scipy only to read detectron2's .mat file

    mat = scipy.io.loadmat(str(mat_path))
    doc: dict[str, Any] = {"format_version": SYMMETRY_VERSION, "labels": list(DETECTRON2_PART_SWAP)}
    for key, name in (("U_transforms", "u"), ("V_transforms", "v")):
        if key not in mat or np.asarray(mat[key]).shape != (1, NUM_PARTS):
            raise DatasetFormatError(f"{mat_path}: expected {key} with 1 x {NUM_PARTS} tables (detectron2's layout)")
        doc[name] = [np.asarray(mat[key][0, k], dtype=np.float64).tolist() for k in range(NUM_PARTS)]
    return DensePoseSymmetry.from_dict(doc, str(mat_path))


def write_symmetry(symmetry: DensePoseSymmetry, path: str | Path) -> Path:
    """Write a table as JSON (atomically)."""
    return atomic_write_text(Path(path), json.dumps(symmetry.to_dict(), separators=(",", ":")) + "\n")


class DensePoseVideoSet:
    """A folder of DensePose-processed videos (layout in the module docstring).

    ``symmetry`` is the set's flip table when ``<root>/densepose_symmetry.json`` exists, else None.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetFormatError(f"{self.root}: not a folder")
        table = self.root / SYMMETRY_FILE
        self.symmetry = DensePoseSymmetry.load(table) if table.is_file() else None
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
            out.extend(_video_runs(video_id, folder, self.symmetry))
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


def _video_runs(video_id: str, folder: Path, symmetry: DensePoseSymmetry | None) -> list[SequenceFrames]:
    frames = _numbered(folder / "frames", FRAME_SUFFIXES, video_id)
    poses = _numbered(folder / "densepose", (".png",), video_id)
    if not frames:
        raise DatasetFormatError(f"{folder / 'frames'}: no frames (video {video_id!r})")
    lonely = sorted(set(frames) ^ set(poses))
    if lonely:
        n = lonely[0]
        which = (f"frame {frames[n].name} has no pose map in densepose/" if n in frames
                 else f"pose map {poses[n].name} has no frame in frames/")
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
            flip_table=symmetry,
        )
        for run in runs
    ]
