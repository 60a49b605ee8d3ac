"""A GPU training recipe for a remote GPU box reached by size-limited copies: pack here, train there, assemble here.

A rented or lent GPU box is often reached through a copy with limits: so much working tree and
data may travel with the command, a command may run so long, and so many files of such a size
come back. The recipe takes those limits as parameters (:class:`TransferLimits`: ``pack
--carry-mib``, ``train --shard-mib/--max-files``); the defaults are the ones of the device
machine this project was tried on (64 MiB carried with the working tree, 10 minutes a command, 8
files of at most 16 MiB and 64 MiB together coming back; ``docs/gpu.md``). It fits a 64 px
BTU-Net (``base``: 27.6 M parameters, 19x the shipped ``tiny``) to them in three steps::

    # 1. here (CPU): the train characters of a synthetic set at 64 px, one held-out sequence
    python -m training.gpu_recipe pack --data data/wide --out data/gpu_pack
    # 2. there (the GPU box, carrying data/gpu_pack): eq.-4 training for a wall-clock budget,
    #    then the EMA weights as safetensors shards (bf16 when float32 would not fit) in $OUT
    python3 -m training.gpu_recipe train --data data/gpu_pack --run /tmp/gpu_run --export $OUT --minutes 5
    # 3. here: a model folder (btunet/ in the project's checkpoint format) from the shards
    python -m training.gpu_recipe assemble --shards FILES_AT --out models/gpu_base

What it trains: the BTU-Net only. The BTU-Net is where appearance transfer and temporal
consistency are decided (issue 16's held-out character loses its colours there); an SR3 for
64 px input needs 128 or 256 px frames, 4 to 16 times the bytes of the 64 px pack, which the
carry limit leaves no room for. An assembled folder therefore makes 64 px frames; ``--sr3 DIR``
adds an SR3 checkpoint trained elsewhere whose ``low_resolution`` is 64 (``docs/gpu.md``).

``train`` calls :func:`training.trainer.train` with a :class:`training.config.TrainConfig`, as
``btdm train`` does (bf16 autocast on CUDA, EMA, snapshots): a short calibration run measures
the step rate, then the run is resumed (``steps`` is a resumable field) up to the step count
that fills the budget; a guard stops it at the budget plus a margin, keeping the last snapshot.
The shards carry the checkpoint's ``config.json`` and a hash of every tensor, so ``assemble``
refuses a missing, foreign or altered shard and rebuilds exactly the exported weights.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from safetensors import SafetensorError, safe_open

from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_dir, atomic_write_bytes, write_json_atomic
from btdm_engine.imageio import read_image, resize_labels
from training.config import TrainConfig
from training.dataset_format import SEQUENCES_DIR, DatasetManifest, SequenceRecord, frame_name, write_manifest

logger = logging.getLogger(__name__)

MIB = 1 << 20
RECIPE = "training.gpu_recipe"
RECIPE_VERSION = 1


@dataclass(frozen=True)
class TransferLimits:
    """What the copy to and from the GPU box allows; the defaults are the lent device machine's (``docs/gpu.md``)."""

    carry_bytes: int = 64 * MIB  # working tree + carried paths, sent with the command
    file_bytes: int = 16 * MIB  # each file brought back
    files: int = 8  # files brought back
    return_bytes: int = 64 * MIB  # all files brought back


LIMITS = TransferLimits()
# Defaults that leave room: the code travels too, and 4 files come back beside the shards
# (train.json, preview.png, the benchmark's JSON and the run's log), together well under 2 MiB.
PACK_LIMIT_BYTES = 44 * MIB
CARRY_MARGIN_BYTES = 2 * MIB
SHARD_BYTES = LIMITS.file_bytes - 64 * 1024
SHARD_FILES = 4
SHARDS_TOTAL_BYTES = LIMITS.return_bytes - 2 * MIB
SHARD_SUFFIX = ".safetensors"

# The recipe's model and optimisation (a TrainConfig each); the budget sets the step count.
TRAIN_SETTINGS: dict[str, Any] = dict(
    kind="btunet", preset="base", mode="bidirectional", batch_size=64, lr=2e-4, warmup_steps=200, ema_decay=0.999,
    grad_clip=1.0, seed=0, log_every=50, keep_snapshots=1, sample_steps=20, sample_frames=8,
)  # fmt: skip
CALIBRATION_STEPS = 100  # past the first epoch boundary of the wide pack at batch 64 (~80 steps)
EXPORT_RESERVE_S = 45.0  # export, preview and summary after training, on the GPU machine (base: ~10 s)
MIN_TRAIN_S = 30.0


class GpuRecipeError(BtdmError, ValueError):
    """A pack, export or assembly that cannot be made as asked; names the file, limit or value."""


class _OutOfTime(Exception):
    """Raised from the trainer's ``on_step`` when the wall-clock budget and its margin are spent."""


# --------------------------------------------------------------------------------------------
# 1. pack: a subset of a dataset at the BTU-Net resolution that travels with the working tree


@dataclass(frozen=True)
class PackReport:
    out: str
    resolution: int
    train_sequences: int
    test_sequences: int
    train_characters: int
    test_characters: int
    frames: int
    bytes: int
    rgb_bytes: int
    iuv_bytes: int
    limit_bytes: int
    tree_bytes: int | None


def resize_frame(img: np.ndarray, size: int) -> np.ndarray:
    """An 8- or 16-bit frame as OpenCV reads it (grey, BGR or BGRA) -> uint8 at ``size`` x ``size``.

    Shrinks with area averaging like :func:`btdm_engine.imageio.resize_rgb`. Alpha is averaged
    premultiplied and divided out again, so compositing the small frame onto any background gives
    the large frame composited onto it and then shrunk (as the training datasets do), up to 8-bit
    rounding; fully transparent pixels are stored black (they compress better and never show).
    """
    if img.dtype not in (np.uint8, np.uint16):
        raise GpuRecipeError(f"unsupported pixel type {img.dtype} (8- or 16-bit PNG expected)")
    scale = 255.0 if img.dtype == np.uint8 else 65535.0
    f = img.astype(np.float32) / scale
    same = img.shape[:2] == (size, size)

    def shrink(x: np.ndarray) -> np.ndarray:
        return x if same else cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)

    if f.ndim == 3 and f.shape[2] == 4:
        alpha = f[..., 3]
        colour = shrink(np.ascontiguousarray(f[..., :3] * alpha[..., None]))
        alpha = shrink(np.ascontiguousarray(alpha))
        safe = np.where(alpha > 0, alpha, 1.0)[..., None]
        colour = np.where(alpha[..., None] > 0, colour / safe, 0.0)
        out = np.concatenate([colour, alpha[..., None]], axis=-1)
    else:
        out = shrink(f)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _encode_png(img: np.ndarray, where: str) -> bytes:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise GpuRecipeError(f"{where}: OpenCV could not encode the PNG")
    return buf.tobytes()


def travelling_tree_bytes(repo: Path) -> int | None:
    """Bytes of what a device call sends besides carried paths: tracked and untracked-not-ignored
    files of the git checkout holding ``repo`` (None when git or the checkout is not there)."""
    try:
        top = subprocess.run(["git", "-C", str(repo), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        listing = subprocess.run(["git", "-C", top, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                 capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    total = 0
    for name in listing.decode("utf-8", "surrogateescape").split("\0"):
        path = Path(top) / name
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def _pick_test_sequences(records: list[Any], count: int) -> list[Any]:
    """Up to ``count`` held-out sequences, one per character first (previews show several people)."""
    picked, seen = [], set()
    for rec in records:
        if rec.character not in seen and len(picked) < count:
            picked.append(rec)
            seen.add(rec.character)
    for rec in records:
        if len(picked) >= count:
            break
        if rec not in picked:
            picked.append(rec)
    return picked


def _pack_sequence(source: Any, rec: Any, dst_root: Path, size: int, max_frames: int | None,
                   budget: Callable[[int, str], None]) -> Any:  # fmt: skip
    """Write one sequence at ``size`` px into ``dst_root``; returns its SequenceRecord."""
    from btdm_engine.motion.clip import MotionClip  # lazy: loads scipy
    from btdm_engine.posemaps.encoding import read_iuv_png, validate_iuv  # lazy: loads torch

    src = source.sequence_dir(rec.id)
    dst = dst_root / SEQUENCES_DIR / rec.id
    n = rec.num_frames if max_frames is None else min(max_frames, rec.num_frames)
    for i in range(n):
        name = frame_name(i)
        data = _encode_png(resize_frame(read_image(src / "rgb" / name), size), str(src / "rgb" / name))
        budget(len(data), "rgb")
        atomic_write_bytes(dst / "rgb" / name, data)
        iuv = resize_labels(read_iuv_png(src / "iuv" / name), (size, size))
        validate_iuv(iuv, where=str(src / "iuv" / name))
        # the project's order (file RGB = I, U, V; OpenCV writes BGR), at PNG's strongest compression
        data = _encode_png(np.ascontiguousarray(iuv[..., ::-1]), str(src / "iuv" / name))
        budget(len(data), "iuv")
        atomic_write_bytes(dst / "iuv" / name, data)
    clip = MotionClip.load(src / "clip.npz").slice(0, n).resized(size, size)
    clip.save(dst / "clip.npz")
    budget((dst / "clip.npz").stat().st_size, "other")
    meta = json.loads((src / "meta.json").read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise GpuRecipeError(f"{src / 'meta.json'}: must hold a JSON object (sequence {rec.id!r})")
    meta["gpu_pack"] = {"source": str(source.root), "sequence": rec.id, "resolution": size, "frames": n,
                        "source_frames": rec.num_frames}  # fmt: skip
    data = (json.dumps(meta, indent=1) + "\n").encode()
    budget(len(data), "other")
    atomic_write_bytes(dst / "meta.json", data)
    return SequenceRecord.from_folder(dst_root, rec.id, character=rec.character, motion=rec.motion)


def pack_dataset(
    data: str | Path,
    out: str | Path,
    *,
    size: int = 64,
    limit_bytes: int = PACK_LIMIT_BYTES,
    test_sequences: int = 1,
    max_frames: int | None = None,
    motions: Iterable[str] | None = None,
    replace: bool = False,
    allow_incomplete: bool = False,
    check_tree: bool = True,
    carry_bytes: int = LIMITS.carry_bytes,
) -> PackReport:
    """Write the train split of ``data`` (and ``test_sequences`` held-out sequences, for the trainer's
    previews) at ``size`` px into ``out``, in the dataset layout, refusing to grow past the limit.

    The limit is ``limit_bytes``, lowered (``check_tree``) so that the git checkout's travelling
    files plus the pack stay under ``carry_bytes`` (:class:`TransferLimits`). The split stays by character, so the
    held-out people are never trained on (the trainer reads the ``train`` split). ``out`` is
    written whole (``atomic_dir``) or not at all; an old pack there is replaced with ``replace``.
    """
    source = DatasetManifest.load(data)
    where = f"pack {Path(data)}"
    if not source.info.get("complete", True) and not allow_incomplete:
        raise GpuRecipeError(f"{where}: the dataset is marked incomplete (its build is still running or was "
                             "interrupted); finish it or pass --allow-incomplete")  # fmt: skip
    height, width = source.resolution
    if height != width:
        raise GpuRecipeError(f"{where}: frames are {height}x{width}; pack takes square datasets (the synthetic sets)")
    if not isinstance(size, int) or not 8 <= size <= height:
        raise GpuRecipeError(f"{where}: size must be an int in 8..{height} (the dataset's resolution), got {size!r}")
    if max_frames is not None and max_frames < 2:
        raise GpuRecipeError(f"{where}: max_frames must be >= 2 (training pairs consecutive frames), got {max_frames}")
    if test_sequences < 1:
        raise GpuRecipeError(f"{where}: test_sequences must be >= 1 (the layout needs a test split), got {test_sequences}")
    train = source.split("train")
    if motions is not None:
        wanted = set(motions)
        known = {r.motion for r in train}
        unknown = sorted(wanted - known)
        if unknown:
            raise GpuRecipeError(f"{where}: motion(s) {', '.join(unknown)} not in the train split; present: "
                                 f"{', '.join(sorted(str(m) for m in known))}")  # fmt: skip
        train = [r for r in train if r.motion in wanted]
    test = _pick_test_sequences(source.split("test"), test_sequences)
    if not train or not test:
        raise GpuRecipeError(f"{where}: needs sequences in both splits, found {len(train)} train and {len(test)} test")

    out = Path(out)
    tree = travelling_tree_bytes(Path.cwd()) if check_tree else None
    limit = limit_bytes
    if tree is not None:
        limit = min(limit, carry_bytes - CARRY_MARGIN_BYTES - tree)
        logger.info("the checkout sends %.1f MiB besides carried paths: the pack may take %.1f MiB", tree / MIB, limit / MIB)
    if limit <= 0:
        raise GpuRecipeError(f"{where}: no room left for data: the checkout alone sends {tree / MIB:.1f} MiB of the "
                             f"{carry_bytes / MIB:.0f} MiB that may travel (--carry-mib)")  # fmt: skip
    _check_replaceable(out, replace)
    counts = {"rgb": 0, "iuv": 0, "other": 0}
    done = [0]

    def budget(nbytes: int, kind: str) -> None:
        counts[kind] += nbytes
        total = sum(counts.values())
        if total > limit:
            raise GpuRecipeError(
                f"{where}: {out} would be over its limit of {limit / MIB:.1f} MiB ({total / MIB:.1f} MiB after "
                f"{done[0]} of {len(train) + len(test)} sequences); lower --max-frames, choose --motions or a smaller "
                f"--size (at most {carry_bytes / MIB:.0f} MiB travel with the working tree: --carry-mib)"
            )

    records = []
    with atomic_dir(out, replace=replace and out.exists()) as tmp:
        for rec in train + test:
            records.append(_pack_sequence(source, rec, tmp, size, max_frames, budget))
            done[0] += 1
        info = {
            "generator": RECIPE + " pack", "recipe_version": RECIPE_VERSION, "complete": True, "source": str(data),
            "source_info": {k: source.info[k] for k in ("preset", "synth_version", "generator") if k in source.info},
            "resolution": size, "max_frames": max_frames, "motions": None if motions is None else sorted(set(motions)),
        }  # fmt: skip
        splits = {"train": [r.id for r in train], "test": [r.id for r in test]}
        manifest = write_manifest(tmp, records, splits, size, source.fps, info)
        budget(manifest.stat().st_size, "other")
    report = PackReport(
        out=str(out), resolution=size, train_sequences=len(train), test_sequences=len(test),
        train_characters=len({r.character for r in train}), test_characters=len({r.character for r in test}),
        frames=sum(r.num_frames for r in records), bytes=sum(counts.values()), rgb_bytes=counts["rgb"],
        iuv_bytes=counts["iuv"], limit_bytes=limit, tree_bytes=tree,
    )  # fmt: skip
    return report


def _check_replaceable(out: Path, replace: bool) -> None:
    if not out.exists():
        return
    if not replace:
        raise GpuRecipeError(f"{out}: already exists; pass --replace to replace an earlier pack")
    manifest = out / "manifest.json"
    try:
        info = json.loads(manifest.read_text(encoding="utf-8")).get("info", {})
    except (OSError, ValueError, AttributeError):
        info = {}
    if not str(info.get("generator", "")).startswith(RECIPE):
        raise GpuRecipeError(f"{out}: not a pack this recipe wrote (no {RECIPE} in {manifest}); not replaced")


# --------------------------------------------------------------------------------------------
# 2. train: a wall-clock budget on the GPU, then the EMA weights as shards


@dataclass(frozen=True)
class ShardInfo:
    name: str
    bytes: int
    tensors: int
    sha256: str


def _tensor_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (the export id)."""
    import torch  # lazy: the module stays torch-free until a command needs torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{str(t.dtype).replace('torch.', '')}|{list(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _export_dtype(float32_bytes: int, dtype: str, max_files: int, shard_bytes: int, total_bytes: int) -> str:
    fits = float32_bytes <= min(total_bytes, max_files * shard_bytes * 0.97)
    if dtype == "auto":
        return "float32" if fits else "bfloat16"
    if dtype not in ("float32", "bfloat16"):
        raise GpuRecipeError(f"export dtype {dtype!r} is unknown; allowed: auto, float32, bfloat16")
    return dtype


def export_shards(
    checkpoint: str | Path,
    out: str | Path,
    *,
    dtype: str = "auto",
    shard_bytes: int = SHARD_BYTES,
    max_files: int = SHARD_FILES,
    total_bytes: int = SHARDS_TOTAL_BYTES,
) -> list[ShardInfo]:
    """Write a checkpoint folder's weights as ``<kind>-NNNNN-of-NNNNN.safetensors`` shards into ``out``.

    Each shard is at most ``shard_bytes``, there are at most ``max_files`` of them and at most
    ``total_bytes`` together; ``dtype="auto"`` keeps float32 when that fits and stores bf16
    otherwise. Shard 1 carries the checkpoint's ``config.json`` in its metadata; every shard
    carries the export id (a hash of all exported tensors), its index and the shard count.
    """
    import torch  # lazy: the module stays torch-free until a command needs torch
    from safetensors.torch import save  # lazy: loads torch

    from btdm_engine.checkpoints import load_checkpoint  # lazy: loads torch

    out = Path(out)
    old = sorted(out.glob(f"*-of-*{SHARD_SUFFIX}")) if out.is_dir() else []
    if old:
        raise GpuRecipeError(f"{out}: already holds shards ({old[0].name} ...); export into an empty folder")
    model, _schedule, document = load_checkpoint(checkpoint)
    kind = document["kind"]
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    float32_bytes = sum(t.numel() * t.element_size() for t in state.values())
    chosen = _export_dtype(float32_bytes, dtype, max_files, shard_bytes, total_bytes)
    target = torch.bfloat16 if chosen == "bfloat16" else torch.float32
    tensors = {k: (v.to(target) if v.is_floating_point() else v).clone() for k, v in state.items()}
    export_id = _tensor_digest(tensors)
    base_meta = {"format": "pt", "recipe": RECIPE, "recipe_version": str(RECIPE_VERSION), "kind": kind,
                 "export_id": export_id, "dtype": chosen, "source_dtype": "float32"}  # fmt: skip
    config_text = json.dumps(document, sort_keys=True)
    # 1. plan: tensors in state-dict order, greedily, with room for each header entry
    groups: list[list[str]] = [[]]
    room = shard_bytes - len(config_text) - 4096
    for name, t in tensors.items():
        need = t.numel() * t.element_size() + len(name) + 160
        if need > shard_bytes - 4096:
            raise GpuRecipeError(f"{checkpoint}: tensor {name} alone is {need / MIB:.1f} MiB, over the shard size of "
                                 f"{shard_bytes / MIB:.1f} MiB")  # fmt: skip
        if need > room and groups[-1]:
            groups.append([])
            room = shard_bytes - 4096
        groups[-1].append(name)
        room -= need
    count = len(groups)
    # 2. serialise in memory (exact sizes), check every limit, then write
    blobs = []
    for i, names in enumerate(groups, 1):
        meta = {**base_meta, "shard": str(i), "num_shards": str(count), "tensors": str(len(names))}
        if i == 1:
            meta["checkpoint_config"] = config_text
        blobs.append((f"{kind}-{i:05d}-of-{count:05d}{SHARD_SUFFIX}", save({n: tensors[n] for n in names}, metadata=meta),
                      len(names)))  # fmt: skip
    sizes = [len(b) for _, b, _ in blobs]
    if count > max_files or sum(sizes) > total_bytes or max(sizes) > shard_bytes:
        raise GpuRecipeError(
            f"{checkpoint}: {chosen} weights need {count} shard(s) of up to {max(sizes) / MIB:.1f} MiB, "
            f"{sum(sizes) / MIB:.1f} MiB in all; the limits are {max_files} files of {shard_bytes / MIB:.1f} MiB and "
            f"{total_bytes / MIB:.1f} MiB together (a smaller model, or --dtype bfloat16)"
        )
    infos = []
    for name, blob, n in blobs:
        atomic_write_bytes(out / name, blob)
        infos.append(ShardInfo(name, len(blob), n, hashlib.sha256(blob).hexdigest()))
    return infos


def _device_summary() -> dict[str, Any]:
    import torch  # lazy: the module stays torch-free until a command needs torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"name": props.name, "torch": torch.__version__, "peak_memory_bytes": int(torch.cuda.max_memory_allocated())}
    return {"name": "CPU", "torch": torch.__version__, "threads": torch.get_num_threads()}


def _log_rows(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "log.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


class _StepClock:
    """The trainer's ``on_step``: step times, a progress line every ``every_s``, and the deadline guard."""

    def __init__(self, deadline: float | None, every_s: float = 30.0) -> None:
        self.deadline, self.every_s = deadline, every_s
        self.times: list[tuple[int, float]] = []
        self.last_print = time.monotonic()

    def __call__(self, step: int, loss: float) -> None:
        now = time.monotonic()
        self.times.append((step, now))
        if now - self.last_print >= self.every_s:
            self.last_print = now
            logger.info("step %d, loss %.4f, %.2f steps/s", step, loss, self.rate() or 0.0)
        if self.deadline is not None and now > self.deadline:
            raise _OutOfTime(f"stopped at step {step}: the time budget is spent")

    def rate(self, skip: int = 0) -> float | None:
        """Steps per second after the first ``skip`` recorded steps (warm-up)."""
        pts = self.times[skip:]
        if len(pts) < 2 or pts[-1][1] <= pts[0][1]:
            return None
        return (pts[-1][0] - pts[0][0]) / (pts[-1][1] - pts[0][1])


def train_recipe(
    data: str | Path,
    run_dir: str | Path,
    export: str | Path,
    *,
    minutes: float | None = 8.0,
    steps: int | None = None,
    settings: dict[str, Any] | None = None,
    calibration_steps: int = CALIBRATION_STEPS,
    until: float | None = None,
    dtype: str = "auto",
    shard_bytes: int = SHARD_BYTES,
    max_files: int = SHARD_FILES,
    total_bytes: int = SHARDS_TOTAL_BYTES,
    preview: bool = True,
) -> dict[str, Any]:
    """Train the recipe's BTU-Net on ``data`` for ``minutes`` of wall clock (or exactly ``steps``),
    export the EMA weights as shards into ``export`` and write ``export/train.json``.

    ``settings`` are :class:`~training.config.TrainConfig` fields over :data:`TRAIN_SETTINGS`
    (e.g. ``preset``, ``model_overrides``, ``batch_size``, ``device``, ``num_workers``). With
    ``minutes``, ``calibration_steps`` are trained first to measure the rate; the run is then
    resumed to the step count that fills what is left, and stopped at 110 % of the budget if the
    rate drops (the last snapshot is exported then). With ``preview``, ``export/preview.png``
    shows the EMA model on a held-out sequence (:func:`write_preview_png`). ``until`` (Unix time)
    is when everything, export included, must be done: the budget shrinks to fit it (the device
    run's command limit, after a benchmark of unknown length). Returns the summary.
    """
    from training.trainer import train  # lazy: the trainer loads torch

    if (minutes is None) == (steps is None):
        raise GpuRecipeError("train: give exactly one of minutes (a wall-clock budget) and steps")
    if minutes is not None and not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise GpuRecipeError(f"train: minutes must be a positive number, got {minutes!r}")
    if calibration_steps < 2:
        raise GpuRecipeError(f"train: calibration_steps must be >= 2, got {calibration_steps}")
    t_start = time.monotonic()
    run_dir, export = Path(run_dir), Path(export)
    fields = {**TRAIN_SETTINGS, **(settings or {})}
    import torch  # lazy: the module stays torch-free until a command needs torch

    cuda = fields.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available()
    # ~1 ms per 64 px pair on one core: 8 workers feed a 64-sample batch every ~10 ms
    fields.setdefault("num_workers", min(8, max((os.cpu_count() or 1) - 2, 0)) if cuda else 0)
    # the workers live for the whole run, each with its own cache (61 KB a 64 px frame: 330 MB for 5400 frames)
    fields.setdefault("cache_frames", True)
    budget_s = None if minutes is None else 60.0 * minutes
    deadline = None if budget_s is None else t_start + 1.1 * budget_s
    if until is not None:
        left = until - time.time() - EXPORT_RESERVE_S
        if left < MIN_TRAIN_S:
            raise GpuRecipeError(f"train: {left + EXPORT_RESERVE_S:.0f} s left before --until, too few to train for "
                                 f"{MIN_TRAIN_S:.0f} s and export ({EXPORT_RESERVE_S:.0f} s); nothing trained")  # fmt: skip
        budget_s = left if budget_s is None else min(budget_s, left)
        deadline = min(deadline or math.inf, t_start + left + 0.5 * EXPORT_RESERVE_S)
        if steps is None:
            logger.info("training budget %.0f s (until %s)", budget_s, time.strftime("%H:%M:%S", time.localtime(until)))
    phases = []

    def run(config: TrainConfig, resume: bool, clock: _StepClock) -> bool:
        """One train() call; False when the deadline guard stopped it."""
        t0 = time.monotonic()
        stopped = False
        try:
            train(config, run_dir, resume=resume, progress=False, on_step=clock)
        except _OutOfTime as exc:
            logger.warning("%s; exporting the last snapshot", exc)
            stopped = True
        phases.append({"steps": config.steps, "seconds": time.monotonic() - t0, "stopped": stopped})
        return not stopped

    first = steps if steps is not None else calibration_steps
    # sample_every 0: the trainer's previews also write an MP4 through imageio-ffmpeg, which the
    # GPU machine lacks; the recipe writes its own PNG preview at the end instead.
    config = TrainConfig(data=str(data), steps=first, checkpoint_every=first, sample_every=0, **fields)
    clock = _StepClock(deadline)
    phase_start = time.monotonic()
    finished = run(config, False, clock)
    if steps is None and finished:
        # 1. the rate after warm-up, and what the rest costs besides steps: a restart (data check,
        # model, snapshot, workers) as long as the calibration's start, the last snapshot as long
        # as the calibration's, and a preview of up to 5 % of the budget
        rate = clock.rate(skip=min(10, calibration_steps // 3))
        restart = clock.times[0][1] - phase_start
        end_cost = max(time.monotonic() - clock.times[-1][1], 1.0) + (min(15.0, 0.05 * budget_s) if preview else 0.0)
        left = budget_s - (time.monotonic() - t_start) - restart - end_cost
        extra = int(rate * left * 0.97) if rate and left > 0 else 0
        total = calibration_steps + max(extra, 0)
        logger.info("calibration: %.2f steps/s; training to step %d in the %.0f s left", rate or 0.0, total, max(left, 0))
        if total > calibration_steps:
            config = config.resumed_with(steps=total, checkpoint_every=max(total // 4, 1))
            run(config, True, _StepClock(deadline))
    trained_s = time.monotonic() - t_start
    if not (run_dir / "checkpoint" / "config.json").is_file():
        raise GpuRecipeError(f"{run_dir}: no snapshot was written before the time budget ran out; nothing to export")
    shards = export_shards(run_dir / "checkpoint", export, dtype=dtype, shard_bytes=shard_bytes, max_files=max_files,
                           total_bytes=total_bytes)  # fmt: skip
    files = [s.name for s in shards]
    preview_error = None
    if preview:
        try:
            write_preview_png(run_dir, export / "preview.png")
            files.append("preview.png")
        except Exception as exc:  # the weights are out already: report the preview's failure, keep the summary
            preview_error = f"{type(exc).__name__}: {exc}"
            logger.error("preview.png not written: %s", preview_error)
    rows = _log_rows(run_dir)
    checkpoint_config = json.loads((run_dir / "checkpoint" / "config.json").read_text(encoding="utf-8"))
    summary = {
        "recipe": RECIPE, "recipe_version": RECIPE_VERSION, "data": str(data),
        "train_config": json.loads((run_dir / "train_config.json").read_text(encoding="utf-8")),
        "checkpoint_step": checkpoint_config["extra"]["training"]["step"], "phases": phases,
        "budget_s": budget_s, "trained_s": trained_s, "export_s": time.monotonic() - t_start - trained_s,
        "device": _device_summary(), "shards": [asdict(s) for s in shards],
        "export_dtype": _shard_metadata(export / shards[0].name)["dtype"],
        "log": rows[-40:], "files": [*files, "train.json"], "preview_error": preview_error,
    }  # fmt: skip
    write_json_atomic(export / "train.json", summary)
    return summary


def write_preview_png(run_dir: Path, path: Path, frames: int = 8, steps: int = 20) -> Path:
    """A PNG strip of the run's EMA model on its first preview (held-out) sequence: pose maps, the
    truth, and frames sampled with algorithm 1 from frame 0 as c (PNG only: no ffmpeg needed)."""
    import torch  # lazy: the module stays torch-free until a command needs torch

    from btdm_engine.checkpoints import load_checkpoint  # lazy: loads torch
    from btdm_engine.diffusion.samplers import sample_bidirectional  # lazy: loads torch
    from btdm_engine.pipeline import _autocast_for, default_device  # lazy: loads torch
    from btdm_engine.posemaps.encoding import tensor_to_iuv  # lazy: loads torch
    from btdm_engine.posemaps.preview import colorize_iuv, contact_sheet, write_rgb_png  # lazy: loads torch
    from training.datasets import load_sequence, tensor_to_uint8  # lazy: loads torch
    from training.trainer import training_sequences  # lazy: loads torch

    config = TrainConfig.from_dict(json.loads((run_dir / "train_config.json").read_text(encoding="utf-8")))
    device = default_device() if config.device == "auto" else torch.device(config.device)
    model, schedule, _ = load_checkpoint(run_dir / "checkpoint", device=device)
    sequence = training_sequences(config)[1][0]
    n = min(frames, sequence.num_frames)
    truth, poses = load_sequence(sequence, model.config.resolution, 0, n, config.background, config.fit)
    sample = sample_bidirectional(_autocast_for(model, device), poses.to(device), truth[0].to(device), steps=steps,
                                  schedule=schedule, generator=torch.Generator("cpu").manual_seed(config.seed))  # fmt: skip
    scale = max(1, 128 // model.config.resolution)
    rows = (colorize_iuv(tensor_to_iuv(poses)), tensor_to_uint8(truth), tensor_to_uint8(sample.cpu()))
    images = [im.repeat(scale, axis=0).repeat(scale, axis=1) for row in rows for im in row]
    labels = [f"{name} {t}" if t == 0 else "" for name in ("pose", "truth", "sample") for t in range(n)]
    return write_rgb_png(path, contact_sheet(images, cols=n, labels=labels))


# --------------------------------------------------------------------------------------------
# 3. assemble: the shards back into a model folder


def _shard_metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise GpuRecipeError(f"{path}: not a readable safetensors file ({exc})") from exc
    missing = [k for k in ("recipe", "export_id", "shard", "num_shards", "kind", "dtype") if k not in meta]
    if meta.get("recipe") != RECIPE or missing:
        raise GpuRecipeError(f"{path}: not a shard of {RECIPE} (metadata lacks {', '.join(missing) or 'recipe'})")
    return meta


def read_shards(shards: str | Path | Iterable[str | Path]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(tensors, checkpoint config document, shard-1 metadata) of one complete, untouched export.

    ``shards`` is a folder holding ``*-of-*.safetensors`` files or a list of such files.
    """
    from safetensors.torch import load_file  # lazy: safetensors.torch loads torch

    if isinstance(shards, (str, Path)) and Path(shards).is_dir():
        files = sorted(Path(shards).glob(f"*-of-*{SHARD_SUFFIX}"))
        where = str(shards)
    else:
        files = sorted(Path(p) for p in ([shards] if isinstance(shards, (str, Path)) else shards))
        where = ", ".join(p.name for p in files)
    if not files:
        raise GpuRecipeError(f"{where}: no shards (*-of-*{SHARD_SUFFIX})")
    metas = {f: _shard_metadata(f) for f in files}
    ids = {m["export_id"] for m in metas.values()}
    if len(ids) > 1:
        raise GpuRecipeError(f"{where}: shards of {len(ids)} different exports ({', '.join(sorted(i[:12] for i in ids))})")
    counts = {m["num_shards"] for m in metas.values()}
    if len(counts) != 1 or not next(iter(counts)).isdigit():
        raise GpuRecipeError(f"{where}: shards disagree on the shard count ({', '.join(sorted(counts))})")
    count = int(next(iter(counts)))
    by_index: dict[int, Path] = {}
    for f, m in metas.items():
        if not m["shard"].isdigit() or int(m["shard"]) in by_index:
            raise GpuRecipeError(f"{f}: shard index {m['shard']!r} is repeated or not a number")
        by_index[int(m["shard"])] = f
    missing = sorted(set(range(1, count + 1)) - set(by_index))
    extra = sorted(set(by_index) - set(range(1, count + 1)))
    if missing or extra:
        raise GpuRecipeError(f"{where}: shard(s) {', '.join(map(str, missing or extra))} of {count} "
                             f"{'missing' if missing else 'out of range'}")  # fmt: skip
    first = metas[by_index[1]]
    if "checkpoint_config" not in first:
        raise GpuRecipeError(f"{by_index[1]}: shard 1 lacks the checkpoint_config metadata")
    tensors: dict[str, Any] = {}
    for i in range(1, count + 1):
        part = load_file(str(by_index[i]))
        dup = sorted(set(part) & set(tensors))
        if dup:
            raise GpuRecipeError(f"{by_index[i]}: tensor {dup[0]} is also in an earlier shard")
        tensors.update(part)
    if _tensor_digest(tensors) != first["export_id"]:
        raise GpuRecipeError(f"{where}: the tensors do not hash to the export id {first['export_id'][:12]}...; "
                             "a shard was altered or truncated")  # fmt: skip
    return tensors, json.loads(first["checkpoint_config"]), first


def assemble_model(
    shards: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    appearance_from: str | Path | None = None,
    sr3: str | Path | None = None,
    replace: bool = False,
) -> Path:
    """Rebuild a model folder (``btunet/`` checkpoint, optional ``sr3/``, appearance image) from shards.

    The weights are exactly the exported tensors (bf16 shards widen to float32 exactly). ``sr3``
    is a checkpoint folder copied in when its ``low_resolution`` equals the BTU-Net's resolution;
    ``appearance_from`` a model folder whose ``appearance.png`` / ``appearance_iuv.png`` are copied.
    ``out`` is written whole or not at all; an earlier assembled folder is replaced with ``replace``.
    """
    from btdm_engine.checkpoints import load_checkpoint, read_checkpoint_config, save_checkpoint  # lazy: loads torch
    from btdm_engine.diffusion.schedule import ScheduleConfig  # lazy: loads torch
    from btdm_engine.models import build_model  # lazy: loads torch

    tensors, document, meta = read_shards(shards)
    kind = document.get("kind")
    if kind != "btunet":
        raise GpuRecipeError(f"shards hold a {kind!r} model; assemble builds a BTU-Net model folder")
    model = build_model(kind, document["model"])
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise GpuRecipeError(f"shards do not match the model their config describes: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}")  # fmt: skip
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)
    extra = dict(document.get("extra", {}))
    extra["gpu_recipe"] = {"export_id": meta["export_id"], "dtype": meta["dtype"], "shards": int(meta["num_shards"])}
    sr3_res = None
    if sr3 is not None:
        sr3_doc = read_checkpoint_config(sr3)
        sr3_res = sr3_doc["model"].get("low_resolution")
        if sr3_doc["kind"] != "sr3" or sr3_res != model.config.resolution:
            raise GpuRecipeError(f"{sr3}: an SR3 taking {sr3_res} px input ({sr3_doc['kind']}); the BTU-Net makes "
                                 f"{model.config.resolution} px frames")  # fmt: skip
    out = Path(out)
    if out.exists():
        if not replace:
            raise GpuRecipeError(f"{out}: already exists; pass --replace to replace an earlier assembled model")
        try:
            old = read_checkpoint_config(out / "btunet")
        except BtdmError:
            old = {}
        if "gpu_recipe" not in old.get("extra", {}):
            raise GpuRecipeError(f"{out}: not a folder this recipe assembled; not replaced")
    with atomic_dir(out, replace=replace) as tmp:
        save_checkpoint(tmp / "btunet", model, kind, ScheduleConfig.from_dict(document["schedule"]), extra=extra)
        if sr3 is not None:
            shutil.copytree(sr3, tmp / "sr3")
        copied = []
        if appearance_from is not None:
            for name in ("appearance.png", "appearance_iuv.png"):
                if (Path(appearance_from) / name).is_file():
                    shutil.copyfile(Path(appearance_from) / name, tmp / name)
                    copied.append(name)
        (tmp / "MODEL_CARD.md").write_text(_model_card(document, meta, sr3, copied, appearance_from), encoding="utf-8")
    load_checkpoint(out / "btunet")  # the folder loads as the Animator will load it
    return out


def _model_card(document: dict[str, Any], meta: dict[str, str], sr3: Any, copied: list[str], appearance_from: Any) -> str:
    training = document.get("extra", {}).get("training", {})
    model = document["model"]
    lines = [
        "# A BTU-Net trained with the GPU recipe (training.gpu_recipe)", "",
        (f"- BTU-Net: {model['resolution']} px, model_channels {model['model_channels']}, channel_mult "
         f"{model['channel_mult']}; trained {training.get('step', '?')} steps ({training.get('mode', '?')}, preset "
         f"{training.get('preset', '?')}) on {training.get('data', '?')}."),
        (f"- Weights: export {meta['export_id'][:16]}, {meta['num_shards']} shard(s) in {meta['dtype']}, widened to "
         "float32 exactly."),
        f"- SR3: {'copied from ' + str(sr3) if sr3 is not None else 'none (frames come out at the BTU-Net resolution)'}.",
        f"- Appearance image: {'from ' + str(appearance_from) if copied else 'none (pass --appearance)'}.",
        "", "Evaluate it against the shipped model on held-out characters before using it (docs/gpu.md).", "",
    ]  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line


def _mib(text: str) -> int:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of MiB, got {text!r}")
    return int(value * MIB)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.gpu_recipe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("pack", help="a subset of a dataset at the BTU-Net resolution, within the carry limit")
    k.add_argument("--data", type=Path, required=True, help="source dataset (manifest.json layout), e.g. data/wide")
    k.add_argument("--out", type=Path, required=True, help="pack folder, e.g. data/gpu_pack (ignored by git: carry it)")
    k.add_argument("--size", type=int, default=64, help="frame size in px (default 64, the base BTU-Net's)")
    k.add_argument("--max-mib", type=_mib, default=PACK_LIMIT_BYTES, help="size limit (default 44 MiB; lowered so "
                   "the checkout plus the pack stay under --carry-mib)")
    k.add_argument("--test-sequences", type=int, default=1, help="held-out sequences kept for previews (default 1)")
    k.add_argument("--max-frames", type=int, default=None, help="first N frames of each sequence (default all)")
    k.add_argument("--motions", nargs="+", default=None, help="only these motions")
    k.add_argument("--carry-mib", type=_mib, default=LIMITS.carry_bytes,
                   help="what may travel to the GPU box with the command, working tree included (default 64)")
    k.add_argument("--replace", action="store_true", help="replace an earlier pack in --out")
    k.add_argument("--allow-incomplete", action="store_true", help="pack a dataset whose build has not finished")
    t = sub.add_parser("train", help="train for a wall-clock budget (the GPU machine), export EMA shards")
    t.add_argument("--data", type=Path, required=True, help="the pack")
    t.add_argument("--run", type=Path, required=True, help="run folder (new; not under the export folder)")
    t.add_argument("--export", type=Path, required=True, help="where the shards, train.json and preview.png go ($OUT)")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="wall-clock budget of the training (default 8)")
    budget.add_argument("--steps", type=int, default=None, help="exactly this many steps instead of a budget")
    t.add_argument("--preset", default=TRAIN_SETTINGS["preset"], help="BTU-Net preset (default base)")
    t.add_argument("--model-config", dest="model_overrides", type=json.loads, default=None,
                   help="model config fields over the preset, JSON (as btdm train --model-config)")
    t.add_argument("--batch-size", type=int, default=TRAIN_SETTINGS["batch_size"])
    t.add_argument("--lr", type=float, default=TRAIN_SETTINGS["lr"])
    t.add_argument("--warmup-steps", type=int, default=TRAIN_SETTINGS["warmup_steps"])
    t.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default 8 on CUDA, 0 on the CPU)")
    t.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    t.add_argument("--calibration-steps", type=int, default=CALIBRATION_STEPS)
    t.add_argument("--until", type=float, default=None,
                   help="Unix time by which training and export must be done (e.g. $(( $(date +%%s) + 300 )))")
    t.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="shard dtype (auto: float32 when it fits the limits, else bf16)")
    t.add_argument("--shard-mib", type=_mib, default=SHARD_BYTES, help="largest shard (default just under 16 MiB)")
    t.add_argument("--max-files", type=int, default=SHARD_FILES, help="most shards (default 4: 4 files left of 8)")
    t.add_argument("--no-preview", action="store_true", help="no preview of the EMA model at the end")
    a = sub.add_parser("assemble", help="a model folder from the shards (here, on the CPU)")
    a.add_argument("--shards", type=Path, nargs="+", required=True, help="the shards' folder, or the shard files")
    a.add_argument("--out", type=Path, required=True, help="model folder to write (btunet/ ...)")
    a.add_argument("--appearance-from", type=Path, default=None,
                   help="copy appearance.png / appearance_iuv.png from this model folder (e.g. btdm_engine/weights/default)")
    a.add_argument("--sr3", type=Path, default=None, help="an SR3 checkpoint folder taking the BTU-Net's resolution")
    a.add_argument("--replace", action="store_true", help="replace an earlier assembled folder in --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "pack":
            report = pack_dataset(args.data, args.out, size=args.size, limit_bytes=args.max_mib,
                                  test_sequences=args.test_sequences, max_frames=args.max_frames, motions=args.motions,
                                  replace=args.replace, allow_incomplete=args.allow_incomplete,
                                  carry_bytes=args.carry_mib)  # fmt: skip
            tree = "" if report.tree_bytes is None else (
                f"; with the checkout's {report.tree_bytes / MIB:.1f} MiB, {(report.tree_bytes + report.bytes) / MIB:.2f} "
                f"MiB travel of the {args.carry_mib / MIB:.0f} allowed")  # fmt: skip
            print(f"packed {report.train_sequences} train sequences ({report.train_characters} characters) and "
                  f"{report.test_sequences} held-out ({report.test_characters} characters), {report.frames} frames at "
                  f"{report.resolution} px into {report.out}: {report.bytes / MIB:.2f} MiB (rgb {report.rgb_bytes / MIB:.2f}, "
                  f"iuv {report.iuv_bytes / MIB:.2f}) of a {report.limit_bytes / MIB:.1f} MiB limit{tree}")  # fmt: skip
        elif args.command == "train":
            settings: dict[str, Any] = {"preset": args.preset, "batch_size": args.batch_size, "lr": args.lr,
                                        "warmup_steps": args.warmup_steps, "device": args.device}  # fmt: skip
            if args.model_overrides:
                settings["model_overrides"] = args.model_overrides
            if args.num_workers is not None:
                settings["num_workers"] = args.num_workers
            minutes = args.minutes if args.minutes is not None or args.steps is not None else 8.0
            summary = train_recipe(args.data, args.run, args.export, minutes=minutes, steps=args.steps,
                                   settings=settings, calibration_steps=args.calibration_steps, until=args.until,
                                   dtype=args.dtype,
                                   shard_bytes=args.shard_mib, max_files=args.max_files,
                                   preview=not args.no_preview)  # fmt: skip
            last = summary["log"][-1] if summary["log"] else {}
            print(f"trained to step {summary['checkpoint_step']} in {summary['trained_s']:.0f} s "
                  f"(last logged loss {last.get('loss', float('nan')):.4f}, {last.get('samples_per_s', 0):.0f} samples/s); "
                  f"{len(summary['shards'])} {summary['export_dtype']} shard(s), "
                  f"{sum(s['bytes'] for s in summary['shards']) / MIB:.1f} MiB, in {args.export}")  # fmt: skip
        else:
            shards = args.shards[0] if len(args.shards) == 1 and args.shards[0].is_dir() else args.shards
            out = assemble_model(shards, args.out, appearance_from=args.appearance_from, sr3=args.sr3,
                                 replace=args.replace)  # fmt: skip
            print(f"assembled {out} (btunet/{' + sr3/' if args.sr3 else ''}); try it with btdm animate --model {out}")
    except (BtdmError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
