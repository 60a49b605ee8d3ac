"""The on-disk dataset layout (synthetic set and converted real video): reader, validator, writer.

Layout (``format_version`` 1)::

    <root>/
      manifest.json
      sequences/<id>/
        rgb/000000.png ... rgb/{N-1:06d}.png   frames: 8-bit RGB or RGBA PNG (alpha is composited
                                                onto the training background colour when read)
        iuv/000000.png ... iuv/{N-1:06d}.png   pose maps: IUV PNG in the project's "btdm" order
                                                (red = I, green = round(255 U), blue = round(255 V)),
                                                written with btdm_engine.posemaps.encoding.write_iuv_png
        clip.npz                               the MotionClip (btdm_engine.motion.MotionClip) that
                                                drove the frames; exactly N frames
        meta.json                              a JSON object of free-form facts about the sequence
                                                (character, garment, motion, seeds, ...)

Frame names are six digits, zero-based and without gaps; rgb/ and iuv/ hold the same N frames and
nothing else (hidden files such as ``.name.tmp`` left by an interrupted atomic write are
ignored). Every rgb and iuv frame is ``resolution`` = [height, width] pixels.

``manifest.json``::

    {
      "format_version": 1,
      "resolution": [256, 256],                # [height, width] of every frame, pixels
      "fps": 30.0,
      "splits": {"train": ["s000", ...], "test": ["s017", ...]},
      "sequences": {
        "s000": {
          "character": "char_03",              # the person; the split is by character
          "motion": "dance_02",                # optional
          "num_frames": 120,
          "checksums": {"rgb/000000.png": "<sha256 hex>", ..., "iuv/...": "...",
                        "clip.npz": "...", "meta.json": "..."}
        }, ...
      },
      "info": {...}                            # optional free-form object (generator, preset, seed)
    }

Rules the validator enforces (errors name the file, the field and the sequence):

* ``splits`` has ``train`` and ``test`` (``val`` optional); every sequence is in exactly one
  split; a character's sequences all lie in one split, so test people are never seen in
  training.
* sequence ids match ``[A-Za-z0-9][A-Za-z0-9_.-]*``; ``num_frames >= 1``; ``checksums`` lists
  exactly the sequence's files (rgb and iuv frames, ``clip.npz``, ``meta.json``) with lowercase
  SHA-256 hex digests.
* With files checked: the folders and files exist as listed, frame sizes equal ``resolution``
  (first frame of each folder), ``meta.json`` is a JSON object and ``clip.npz`` loads as a
  MotionClip of ``num_frames`` frames; with ``verify_checksums`` every file's digest is
  recomputed.

Writers build :class:`SequenceRecord` with :meth:`SequenceRecord.from_folder` after the sequence's
files are complete and call :func:`write_manifest` last (atomically), so a dataset with a manifest
is complete.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from btdm_engine import limits
from btdm_engine.dataconfig import check_int, check_keys, check_number, is_int
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_write_text, read_json
from btdm_engine.imageio import ImageReadError, image_size, read_image

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SEQUENCES_DIR = "sequences"
SPLIT_NAMES = ("train", "test", "val")
REQUIRED_SPLITS = ("train", "test")
FRAME_DIGITS = 6
IUV_ORDER = "btdm"

# Files hashed and sequences decoded by DatasetManifest.spot_check when not every checksum is verified.
SPOT_CHECK_BUDGET = 2000

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_MANIFEST_KEYS = {"format_version", "resolution", "fps", "splits", "sequences", "info"}
_SEQUENCE_KEYS = {"character", "motion", "num_frames", "checksums"}


class DatasetFormatError(BtdmError, ValueError):
    """A dataset folder or manifest that breaks the layout; names the file, field and sequence."""


class DatasetLimitError(DatasetFormatError, limits.LimitError):
    """A manifest declares more frames or sequences than btdm_engine.limits allows."""


def frame_name(index: int) -> str:
    """File name of frame ``index``: six digits, zero-based (``000007.png``)."""
    return f"{index:0{FRAME_DIGITS}d}.png"


def expected_files(num_frames: int) -> list[str]:
    """The relative paths a sequence of ``num_frames`` frames must hold, in checksum order."""
    frames = [frame_name(i) for i in range(num_frames)]
    return [f"rgb/{f}" for f in frames] + [f"iuv/{f}" for f in frames] + ["clip.npz", "meta.json"]


def sha256_file(path: str | Path) -> str:
    """Lowercase SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class SequenceRecord:
    """One sequence's manifest entry."""

    id: str
    character: str
    num_frames: int
    checksums: Mapping[str, str] = field(repr=False, hash=False)
    motion: str | None = None

    @classmethod
    def from_folder(cls, root: str | Path, seq_id: str, character: str, motion: str | None = None) -> SequenceRecord:
        """Count the frames of ``root/sequences/<seq_id>`` and hash its files.

        The folder must already be complete: rgb/ and iuv/ with the same consecutive frames,
        ``clip.npz`` and ``meta.json``.
        """
        folder = Path(root) / SEQUENCES_DIR / seq_id
        rgb = _frame_files(folder / "rgb", seq_id)
        iuv = _frame_files(folder / "iuv", seq_id)
        if rgb != iuv:
            raise DatasetFormatError(
                f"{folder}: rgb/ has {len(rgb)} frames and iuv/ {len(iuv)}; they must hold the same frame names"
            )
        _check_consecutive(rgb, folder / "rgb")
        checksums = {}
        for rel in expected_files(len(rgb)):
            path = folder / rel
            if not path.is_file():
                raise DatasetFormatError(f"{path}: missing (sequence {seq_id!r})")
            checksums[rel] = sha256_file(path)
        record = cls(id=seq_id, character=character, num_frames=len(rgb), checksums=checksums, motion=motion)
        record.check(f"sequence {seq_id!r}")
        return record

    def check(self, where: str) -> None:
        """Validate the record's own fields (not the files)."""
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise DatasetFormatError(f"{where}: sequence id {self.id!r} must match {_ID.pattern}")
        if not isinstance(self.character, str) or not self.character:
            raise DatasetFormatError(f"{where}: field 'character' must be a non-empty string, got {self.character!r}")
        if self.motion is not None and not isinstance(self.motion, str):
            raise DatasetFormatError(f"{where}: field 'motion' must be a string, got {self.motion!r}")
        check_int(self.num_frames, f"{where}: field 'num_frames'", DatasetFormatError, lo=1)
        if self.num_frames > limits.get("frames"):
            raise DatasetLimitError(
                f"{where}: field 'num_frames' is {self.num_frames}, over the frames limit of {limits.get('frames')} "
                "(raise it with --limit frames=N if you mean it)", limit="frames")
        if not isinstance(self.checksums, Mapping):
            raise DatasetFormatError(f"{where}: field 'checksums' must be an object")
        expected = set(expected_files(self.num_frames))
        missing = sorted(expected - set(self.checksums))
        extra = sorted(set(self.checksums) - expected)
        if missing or extra:
            detail = []
            if missing:
                detail.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
            if extra:
                detail.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
            raise DatasetFormatError(
                f"{where}: field 'checksums' must list exactly the files of {self.num_frames} frames: {'; '.join(detail)}"
            )
        bad = [k for k, v in self.checksums.items() if not isinstance(v, str) or not _HEX.match(v)]
        if bad:
            raise DatasetFormatError(f"{where}: checksums of {bad[0]!r} is not a lowercase SHA-256 hex digest")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"character": self.character}
        if self.motion is not None:
            out["motion"] = self.motion
        out["num_frames"] = self.num_frames
        out["checksums"] = {k: self.checksums[k] for k in expected_files(self.num_frames)}
        return out


class FlipTable(Protocol):
    """A table that mirrors IUV maps of another chart layout left-right (``training.video.DensePoseSymmetry``
    for detectron2's); the layout only needs its ``flip``, so it does not import the video reader."""

    def flip(self, iuv: Any) -> Any: ...


@dataclass(frozen=True)
class SequenceFrames:
    """What a training dataset needs of one sequence: its frame files and how to read them.

    ``iuv_order`` is the channel order of the IUV PNGs: ``"btdm"`` for this layout (this project's
    atlas, which :func:`btdm_engine.posemaps.parts.flip_iuv` flips exactly), ``"densepose"`` for
    detectron2's files (its charts), see :mod:`training.video`. ``flip_table`` is the
    :class:`training.video.DensePoseSymmetry` that flips the latter truthfully, None when there is none.
    """

    id: str
    character: str
    rgb: tuple[Path, ...]
    iuv: tuple[Path, ...]
    iuv_order: str = IUV_ORDER
    flip_table: FlipTable | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.rgb) != len(self.iuv) or not self.rgb:
            raise DatasetFormatError(
                f"sequence {self.id!r}: needs the same non-zero number of frames and pose maps, "
                f"got {len(self.rgb)} and {len(self.iuv)}"
            )

    @property
    def num_frames(self) -> int:
        return len(self.rgb)


@dataclass(frozen=True)
class DatasetManifest:
    """A parsed, validated ``manifest.json`` (see the module docstring); paths resolve under ``root``."""

    root: Path
    resolution: tuple[int, int]
    fps: float
    splits: Mapping[str, tuple[str, ...]]
    sequences: Mapping[str, SequenceRecord]
    info: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def load(cls, root: str | Path) -> DatasetManifest:
        """Read and validate ``root/manifest.json`` (JSON only; see :meth:`validate_files`)."""
        root = Path(root)
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise DatasetFormatError(f"{path}: missing (not a dataset folder, or the dataset is incomplete)")
        return cls.from_dict(root, read_json(path, DatasetFormatError), str(path))

    @classmethod
    def from_dict(cls, root: str | Path, doc: Any, where: str = MANIFEST_NAME) -> DatasetManifest:
        """Validate a manifest document (as parsed from JSON)."""
        doc = check_keys(doc, _MANIFEST_KEYS, DatasetFormatError, where=where, required=_MANIFEST_KEYS - {"info"})
        if doc["format_version"] != FORMAT_VERSION:
            raise DatasetFormatError(
                f"{where}: format_version {doc['format_version']!r} is not supported (expected {FORMAT_VERSION})")
        resolution = _resolution(doc["resolution"], where)
        fps = check_number(doc["fps"], f"{where}: field 'fps'", DatasetFormatError, lo=0.0, lo_open=True)
        info = doc.get("info", {})
        if not isinstance(info, dict):
            raise DatasetFormatError(f"{where}: field 'info' must be a JSON object")
        seqs_doc = doc["sequences"]
        if not isinstance(seqs_doc, dict) or not seqs_doc:
            raise DatasetFormatError(f"{where}: field 'sequences' must be a non-empty object of id -> record")
        if len(seqs_doc) > limits.get("sequences"):
            raise DatasetLimitError(f"{where}: {len(seqs_doc)} sequences, over the sequences limit of "
                                    f"{limits.get('sequences')} (raise it with --limit sequences=N)", limit="sequences")
        sequences: dict[str, SequenceRecord] = {}
        for seq_id, rec in seqs_doc.items():
            sw = f"{where}: sequences[{seq_id!r}]"
            rec = check_keys(rec, _SEQUENCE_KEYS, DatasetFormatError, where=sw, required=_SEQUENCE_KEYS - {"motion"})
            record = SequenceRecord(
                id=seq_id, character=rec["character"], num_frames=rec["num_frames"],
                checksums=rec["checksums"], motion=rec.get("motion"),
            )  # fmt: skip
            record.check(sw)
            sequences[seq_id] = record
        splits = _splits(doc["splits"], sequences, where)
        return cls(Path(root), resolution, fps, splits, sequences, info)

    # ------------------------------------------------------------------ access
    def sequence_dir(self, seq_id: str) -> Path:
        return self.root / SEQUENCES_DIR / seq_id

    def split(self, name: str) -> list[SequenceRecord]:
        """The records of split ``name`` (``train``, ``test`` or ``val``), in manifest order."""
        if name not in self.splits:
            raise DatasetFormatError(f"{self.root / MANIFEST_NAME}: no split {name!r}; present: {', '.join(self.splits)}")
        return [self.sequences[s] for s in self.splits[name]]

    def sequence_frames(self, split: str | None = None, ids: Iterable[str] | None = None) -> list[SequenceFrames]:
        """Frame files of a split (or of the given ids; or of every sequence) for the training datasets."""
        if split is not None and ids is not None:
            raise DatasetFormatError("give a split or sequence ids, not both")
        if ids is not None:
            unknown = [i for i in ids if i not in self.sequences]
            if unknown:
                raise DatasetFormatError(f"{self.root / MANIFEST_NAME}: unknown sequence id(s) {', '.join(unknown[:5])}")
            records = [self.sequences[i] for i in ids]
        elif split is not None:
            records = self.split(split)
        else:
            records = list(self.sequences.values())
        out = []
        for rec in records:
            folder = self.sequence_dir(rec.id)
            names = [frame_name(i) for i in range(rec.num_frames)]
            out.append(SequenceFrames(
                id=rec.id, character=rec.character,
                rgb=tuple(folder / "rgb" / n for n in names), iuv=tuple(folder / "iuv" / n for n in names),
            ))  # fmt: skip
        return out

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format_version": self.format_version,
            "resolution": list(self.resolution),
            "fps": self.fps,
            "splits": {k: list(v) for k, v in self.splits.items()},
            "sequences": {k: v.to_dict() for k, v in self.sequences.items()},
        }
        if self.info:
            doc["info"] = dict(self.info)
        return doc

    # ------------------------------------------------------------------ files
    def validate_files(self, verify_checksums: bool = False, check_clips: bool = True) -> None:
        """Check the sequence folders against the manifest (module docstring).

        Args:
            verify_checksums: recompute every file's SHA-256 (reads the whole dataset).
            check_clips: load each ``clip.npz`` as a MotionClip and compare its frame count.

        Raises:
            DatasetFormatError: naming the first file and sequence that disagree.
        """
        for rec in self.sequences.values():
            folder = self.sequence_dir(rec.id)
            where = f"sequence {rec.id!r}"
            if not folder.is_dir():
                raise DatasetFormatError(f"{folder}: missing ({where} is in the manifest)")
            for sub in ("rgb", "iuv"):
                names = _frame_files(folder / sub, rec.id)
                if len(names) != rec.num_frames:
                    raise DatasetFormatError(
                        f"{folder / sub}: {len(names)} frames, the manifest says num_frames = {rec.num_frames} ({where})"
                    )
                expected = [frame_name(i) for i in range(rec.num_frames)]
                if names != expected:
                    first = next(n for n, e in zip(names, expected) if n != e)
                    raise DatasetFormatError(
                        f"{folder / sub}: unexpected frame {first} (frames must be 000000.png ... consecutive)")
                for name in expected:  # every frame's size, from its PNG header (24 bytes each)
                    path = folder / sub / name
                    with open(path, "rb") as fh:
                        head = fh.read(64)
                    try:
                        fmt, width, height = image_size(head, str(path))
                    except ImageReadError as exc:
                        raise DatasetFormatError(f"{exc} ({where})") from None
                    if fmt != "png":
                        raise DatasetFormatError(f"{path}: not a PNG ({where})")
                    if (height, width) != self.resolution:
                        raise DatasetFormatError(
                            f"{path}: {height}x{width} px, the manifest's resolution is "
                            f"{self.resolution[0]}x{self.resolution[1]} ({where})"
                        )
            meta_path = folder / "meta.json"
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise DatasetFormatError(f"{meta_path}: missing ({where})") from None
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DatasetFormatError(f"{meta_path}: not valid JSON ({exc}) ({where})") from exc
            if not isinstance(meta, dict):
                raise DatasetFormatError(f"{meta_path}: must hold a JSON object ({where})")
            clip_path = folder / "clip.npz"
            if not clip_path.is_file():
                raise DatasetFormatError(f"{clip_path}: missing ({where})")
            if check_clips:
                from btdm_engine.motion.clip import MotionClip  # lazy: loads scipy, only to check clips

                try:
                    clip = MotionClip.load(clip_path)
                except (BtdmError, ValueError) as exc:
                    raise DatasetFormatError(f"{clip_path}: {exc} ({where})") from exc
                if clip.num_frames != rec.num_frames:
                    raise DatasetFormatError(
                        f"{clip_path}: {clip.num_frames} frames, the manifest says num_frames = {rec.num_frames} ({where})"
                    )
            if verify_checksums:
                for rel in expected_files(rec.num_frames):
                    digest = sha256_file(folder / rel)
                    if digest != rec.checksums[rel]:
                        raise DatasetFormatError(f"{folder / rel}: checksum mismatch: file is {digest[:12]}..., "
                                                 f"manifest says {rec.checksums[rel][:12]}... ({where})")


    def spot_check(self, hash_sample: bool = True, budget: int = SPOT_CHECK_BUDGET) -> list[str]:
        """Cheap checks of the files' contents, for every run that does not verify all checksums.

        * Files changed since the manifest was written (modified later than ``manifest.json``, which
          writers write last) have their SHA-256 compared with the manifest's, up to ``budget`` of
          them; so have ``meta.json``, ``clip.npz`` and the middle rgb and iuv frame of up to
          ``budget`` sequences, when ``hash_sample``. A mismatch is an error.
        * Each sampled sequence's middle rgb frame is decoded: when it is one uniform colour (a failed
          render: all black, or fully transparent), every frame of the sequence is read, and a
          sequence whose frames are all uniform is an error; the same for pose maps that show nobody.

        Returns warning lines (what was only sampled, frames found blank); raises
        :class:`DatasetFormatError` naming the file and sequence.
        """
        notes: list[str] = []
        records = list(self.sequences.values())
        sampled = records if len(records) <= budget else [records[i * len(records) // budget] for i in range(budget)]
        if len(sampled) < len(records):
            notes.append(f"{self.root}: spot-checked {len(sampled)} of {len(records)} sequences' contents "
                         "(--checksums verifies every file)")
        if hash_sample:
            since = (self.root / MANIFEST_NAME).stat().st_mtime_ns
            newer = [(rec, rel) for rec in records for rel in expected_files(rec.num_frames)
                     if (self.sequence_dir(rec.id) / rel).stat().st_mtime_ns > since]
            if len(newer) > budget:
                notes.append(f"{self.root}: {len(newer)} files are newer than {MANIFEST_NAME} (copied without their "
                             f"times, or changed since the set was built); verified {budget} of them, pass --checksums "
                             "to verify every file")
                newer = [newer[i * len(newer) // budget] for i in range(budget)]
            for rec, rel in newer:
                self._verify(rec, rel, "changed since the manifest was written: ")
            for rec in sampled:
                middle = frame_name(rec.num_frames // 2)
                for rel in ("meta.json", "clip.npz", f"rgb/{middle}", f"iuv/{middle}"):
                    self._verify(rec, rel, "")
        for rec in sampled:
            notes += self._blank_frames(rec)
        return notes

    def _verify(self, rec: SequenceRecord, rel: str, why: str) -> None:
        path = self.sequence_dir(rec.id) / rel
        digest = sha256_file(path)
        if digest != rec.checksums[rel]:
            raise DatasetFormatError(
                f"{path}: {why}checksum mismatch: file is {digest[:12]}..., manifest says {rec.checksums[rel][:12]}... "
                f"(sequence {rec.id!r}); restore the file or rebuild the set")

    def _blank_frames(self, rec: SequenceRecord) -> list[str]:
        """Warnings for a sequence whose sampled frames are blank; an error when all its frames are."""
        folder = self.sequence_dir(rec.id)
        notes = []
        for sub, blank, what in (("rgb", _uniform, "one uniform colour (a failed render?)"),
                                 ("iuv", _nobody, "empty pose maps (no person)")):
            if not blank(read_image(folder / sub / frame_name(rec.num_frames // 2))):
                continue
            bad = [i for i in range(rec.num_frames) if blank(read_image(folder / sub / frame_name(i)))]
            if len(bad) == rec.num_frames:
                raise DatasetFormatError(
                    f"{folder / sub}: every one of the {rec.num_frames} frames is {what} (sequence {rec.id!r}); "
                    "re-render the sequence or drop it from the set, since it would teach the model nothing")
            notes.append(f"{folder / sub}: {len(bad)} of {rec.num_frames} frames are {what}, e.g. {frame_name(bad[0])} "
                         f"(sequence {rec.id!r})")
        return notes


def _uniform(image: Any) -> bool:
    """One colour everywhere (an RGBA frame that is fully transparent counts, whatever its colour channels)."""
    if image.ndim == 3 and image.shape[-1] == 4:
        if not image[..., 3].any():
            return True
        image = image[..., :3]
    flat = image.reshape(-1, image.shape[-1]) if image.ndim == 3 else image.reshape(-1, 1)
    return bool((flat == flat[0]).all())


def _nobody(iuv: Any) -> bool:
    """An IUV frame with no part label (red = I in this layout, channel 2 as OpenCV reads it)."""
    return not (iuv[..., 2] if iuv.ndim == 3 else iuv).any()


def validate_dataset(root: str | Path, verify_checksums: bool = False, check_clips: bool = True) -> DatasetManifest:
    """Load ``root/manifest.json`` and check every sequence folder against it; returns the manifest."""
    manifest = DatasetManifest.load(root)
    manifest.validate_files(verify_checksums=verify_checksums, check_clips=check_clips)
    return manifest


def write_manifest(
    root: str | Path,
    sequences: Sequence[SequenceRecord],
    splits: Mapping[str, Sequence[str]],
    resolution: tuple[int, int] | int,
    fps: float,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Validate and write ``root/manifest.json`` atomically (temp file + ``os.replace``).

    ``resolution`` is [height, width] (an int means square). The manifest is validated exactly as
    :meth:`DatasetManifest.load` would read it, so an invalid dataset is never written.
    """
    root = Path(root)
    ids = [s.id for s in sequences]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DatasetFormatError(f"write_manifest: duplicate sequence id(s) {', '.join(dupes)}")
    res = [int(resolution), int(resolution)] if isinstance(resolution, int) else list(resolution)
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "resolution": res,
        "fps": fps,
        "splits": {k: list(v) for k, v in splits.items()},
        "sequences": {s.id: s.to_dict() for s in sequences},
    }
    if info:
        doc["info"] = dict(info)
    DatasetManifest.from_dict(root, json.loads(json.dumps(doc)), f"write_manifest({root})")
    root.mkdir(parents=True, exist_ok=True)
    path = root / MANIFEST_NAME
    return atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


# ---------------------------------------------------------------------- helpers
def _resolution(value: Any, where: str) -> tuple[int, int]:
    ok = isinstance(value, list) and len(value) == 2 and all(is_int(v) and v > 0 for v in value)
    if not ok:
        raise DatasetFormatError(f"{where}: field 'resolution' must be [height, width] in positive ints, got {value!r}")
    return (value[0], value[1])


def _splits(value: Any, sequences: Mapping[str, SequenceRecord], where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise DatasetFormatError(f"{where}: field 'splits' must be an object of split -> [sequence ids]")
    unknown = sorted(set(value) - set(SPLIT_NAMES))
    if unknown:
        raise DatasetFormatError(f"{where}: unknown split(s) {', '.join(unknown)}; allowed: {', '.join(SPLIT_NAMES)}")
    missing = [s for s in REQUIRED_SPLITS if s not in value]
    if missing:
        raise DatasetFormatError(f"{where}: splits: missing {', '.join(missing)}")
    owner: dict[str, str] = {}
    character_split: dict[str, str] = {}
    out: dict[str, tuple[str, ...]] = {}
    for split, ids in value.items():
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DatasetFormatError(f"{where}: splits[{split!r}] must be a list of sequence ids")
        for seq_id in ids:
            if seq_id not in sequences:
                raise DatasetFormatError(f"{where}: splits[{split!r}] names sequence {seq_id!r}, which is not in 'sequences'")
            if seq_id in owner:
                raise DatasetFormatError(f"{where}: sequence {seq_id!r} is in both splits {owner[seq_id]!r} and {split!r}")
            owner[seq_id] = split
            character = sequences[seq_id].character
            if character_split.setdefault(character, split) != split:
                raise DatasetFormatError(
                    f"{where}: character {character!r} appears in splits {character_split[character]!r} and {split!r} "
                    f"(sequence {seq_id!r}); the split must be by character"
                )
        out[split] = tuple(ids)
    unassigned = [s for s in sequences if s not in owner]
    if unassigned:
        raise DatasetFormatError(f"{where}: sequence(s) {', '.join(unassigned[:5])} are in no split")
    return out


def _frame_files(folder: Path, seq_id: str) -> list[str]:
    if not folder.is_dir():
        raise DatasetFormatError(f"{folder}: missing (sequence {seq_id!r})")
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    bad = [n for n in names if not re.fullmatch(rf"\d{{{FRAME_DIGITS}}}\.png", n)]
    if bad:
        raise DatasetFormatError(
            f"{folder / bad[0]}: unexpected file (frames are named NNNNNN.png, six digits; sequence {seq_id!r})")
    return names


def _check_consecutive(names: list[str], folder: Path) -> None:
    for i, name in enumerate(names):
        if name != frame_name(i):
            raise DatasetFormatError(
                f"{folder}: frame {frame_name(i)} is missing (found {name}); frames must be consecutive from 000000.png")
