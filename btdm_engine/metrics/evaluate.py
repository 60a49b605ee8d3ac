"""Evaluate generated sequences against ground truth: the paper's table metrics and more.

**Folder layout.** ``pred`` and ``gt`` are each either one sequence (a folder of
``<digits>.png`` frames) or a folder of sequences: every sub-folder ``<name>`` holding frames
directly or in ``<name>/rgb/`` (the dataset layout; a dataset root with ``manifest.json`` may be
given, its ``sequences/`` is used). Sequences are matched by name; every predicted frame must
exist in the ground truth under the same file name, and the predicted frames of a sequence must
be consecutive (the temporal metrics compare neighbours). Ground-truth frames without a
prediction are not evaluated. The optional ``iuv`` folder follows the same layout (``<name>/iuv/``
or frames directly; one sequence may also be a folder with an ``iuv/`` sub-folder, as
``btdm posemaps`` writes) and gives the foreground masks ``I > 0`` of the driving pose maps.

**Foreground-only** (paper sec. 4.2): with masks, the background of both prediction and ground
truth is painted with the background colour before every metric, and SSIM, PSNR, tOF and the
warping error are averaged over foreground pixels only (see :mod:`.image`, :mod:`.flow`).
The foreground is the pose maps' body (``foreground="pose"``, the paper's), or the whole person
(``"person"``): the body and the ground truth's own alpha > 0, so hair, loose sleeves and skirts
beyond the body's surface count too (RGBA ground truth, as the synthetic sets render it).
LPIPS, tLPIPS and FID see the background-painted images.

**Aggregation.** SSIM, PSNR and LPIPS: mean over all evaluated frames (frames with an empty
mask are skipped); tLPIPS, tOF and warping error: mean over all consecutive pairs; FID: one
distance between the pooled Inception features of all predicted and all ground-truth frames.
Per-sequence means are reported too.

LPIPS/tLPIPS and FID need weight files (:mod:`.lpips`, :mod:`.fid`); without them they are
reported as ``null`` with the reason, never estimated.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from btdm_engine import limits
from btdm_engine.constants import IUV_ORDERS
from btdm_engine.errors import BtdmError, UsageError
from btdm_engine.fileio import write_json_atomic
from btdm_engine.imageio import WHITE, frame_index, list_frames, read_image, read_rgb, resize_labels, resize_rgb
from btdm_engine.metrics.fid import FIDInceptionV3, frechet_distance, inception_features
from btdm_engine.metrics.flow import tof_per_pair, warping_error_per_pair
from btdm_engine.metrics.image import fill_background, psnr, ssim
from btdm_engine.metrics.lpips import LPIPS, lpips_pairs, tlpips_per_pair
from btdm_engine.posemaps.encoding import read_iuv_png

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
TABLE_COLUMNS = (
    ("ssim", "SSIM↑", 3), ("lpips", "LPIPS↓", 3), ("tlpips", "tLPIPS↓", 3), ("tof", "tOF", 2), ("fid", "FID↓", 2)
)
EXTRA_COLUMNS = (("psnr", "PSNR↑", 2), ("warp_error", "Ewarp↓", 5))
METRIC_NAMES = ("ssim", "psnr", "lpips", "tlpips", "tof", "warp_error", "fid")
# What counts as foreground with pose maps: their body (the paper's), or the whole person.
FOREGROUNDS = ("pose", "person")

DEFINITIONS = {
    "ssim": "mean SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5, RGB channels averaged, values in [0,1])",
    "psnr": "mean per-frame PSNR in dB (data range 1); 'inf' when prediction equals ground truth",
    "lpips": "mean LPIPS v0.1 (Zhang et al. 2018) with the given weights",
    "tlpips": "mean over consecutive pairs of |LPIPS(y_t, y_t-1) - LPIPS(g_t, g_t-1)| (Chu et al. 2020)",
    "tof": "mean over consecutive pairs of the mean per-pixel L2 norm of flow_pred - flow_gt, pixels; DIS flow t-1 -> t",
    "warp_error": "mean over pairs of the masked mean squared error between y_t and y_t-1 warped by the backward flow "
                  "(Lai et al. 2018)",
    "fid": "Frechet distance between Inception-v3 pool features of all predicted and all ground-truth frames",
}


class EvaluationError(BtdmError, ValueError):
    """The prediction, ground truth or pose-map folders do not line up."""


@dataclass(frozen=True)
class _Folders:
    """One sequence's frame folders: prediction, ground truth and (foreground-only) pose maps."""

    pred: Path
    gt: Path
    iuv: Path | None


@dataclass
class _Accumulator:
    """Everything the report pools over sequences: per-frame/per-pair values, FID features, sizes."""

    frames: dict[str, list[np.ndarray]] = field(default_factory=dict)
    features_pred: list[np.ndarray] = field(default_factory=list)
    features_gt: list[np.ndarray] = field(default_factory=list)
    per_sequence: dict[str, dict[str, Any]] = field(default_factory=dict)
    resolution: tuple[int, int] | None = None
    total_frames: int = 0

    def add(self, name: str, values: np.ndarray) -> None:
        self.frames.setdefault(name, []).append(np.asarray(values, dtype=np.float64))

    def mean(self, name: str) -> float | None:
        if name not in self.frames:
            return None
        v = np.concatenate(self.frames[name])
        v = v[~np.isnan(v)]
        return float(v.mean()) if v.size else math.nan


def discover_sequences(root: str | Path, kind: str) -> dict[str, Path]:
    """Map sequence name -> frame folder under ``root`` (layout in the module docstring).

    ``kind`` is the dataset sub-folder to look for (``"rgb"`` or ``"iuv"``). A root that holds
    frames directly, or in its own ``kind/`` sub-folder, is one sequence named ``""``.
    """
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"{root}: not a folder")
    if (root / "manifest.json").is_file() and (root / "sequences").is_dir():
        root = root / "sequences"
    if any(p.suffix.lower() == ".png" for p in root.iterdir()):
        return {"": root}
    if (root / kind).is_dir() and any(p.suffix.lower() == ".png" for p in (root / kind).iterdir()):
        return {"": root / kind}  # one sequence's folder, e.g. `btdm posemaps` output (iuv/) or a dataset sequence
    found: dict[str, Path] = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / kind).is_dir():
            found[child.name] = child / kind
        elif any(p.suffix.lower() == ".png" for p in child.iterdir()):
            found[child.name] = child
    if not found:
        raise EvaluationError(f"{root}: no frames (<digits>.png) found, neither directly nor in sub-folders")
    return found


def _read_masks(paths: Sequence[Path], order: str, size: tuple[int, int]) -> torch.Tensor:
    masks = [resize_labels(read_iuv_png(p, order=order)[..., 0], size) > 0 for p in paths]
    return torch.from_numpy(np.stack(masks))


def _read_alpha_masks(paths: Sequence[Path], size: tuple[int, int]) -> torch.Tensor:
    """alpha > 0 of RGBA ground-truth frames at ``size`` (nearest), or an error naming a frame without alpha."""
    masks = []
    for p in paths:
        raw = read_image(p)
        if raw.ndim != 3 or raw.shape[2] != 4:
            raise EvaluationError(f"{p}: no alpha channel; foreground 'person' needs RGBA ground truth (use 'pose')")
        masks.append(resize_labels(np.ascontiguousarray(raw[..., 3] > 0).astype(np.uint8), size) > 0)
    return torch.from_numpy(np.stack(masks))


def _read_sequence(paths: Sequence[Path], background: tuple[float, float, float], size: tuple[int, int] | None) -> torch.Tensor:
    frames = []
    for p in paths:
        img = read_rgb(p, background)
        if size is not None:
            img = resize_rgb(img, size)
        frames.append(img)
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise EvaluationError(f"{paths[0].parent}: frames differ in size: {sorted(shapes)}")
    return rearrange(torch.from_numpy(np.stack(frames)), "t h w c -> t c h w").contiguous()


def _chunked(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor | None, chunk: int = 32) -> np.ndarray:
    n = next(t for t in tensors if t is not None).shape[0]
    out = [fn(*(None if t is None else t[i : i + chunk] for t in tensors)) for i in range(0, n, chunk)]
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def evaluate(
    pred: str | Path,
    gt: str | Path,
    iuv: str | Path | None = None,
    *,
    lpips_weights: str | Path | None = None,
    inception_weights: str | Path | None = None,
    size: int | None = None,
    background: tuple[float, float, float] = WHITE,
    iuv_order: str = "btdm",
    flow_source: str = "gt",
    progress: Callable[[str], None] | None = None,
    allow_incomplete: bool = False,
    foreground: str = "pose",
) -> dict[str, Any]:
    """Compute every metric for the sequences under ``pred`` against ``gt`` (module docstring).

    Args:
        pred, gt: prediction and ground-truth folders.
        iuv: pose-map folder for foreground masks, or None for full-frame evaluation.
        lpips_weights, inception_weights: safetensors weight files, or None to skip those metrics.
        size: evaluate at ``size`` x ``size`` (frames resized, masks nearest); None demands that
            prediction and ground truth already have the same size.
        background: RGB in [0, 1], for RGBA compositing and for painting the background.
        iuv_order: channel order of the IUV PNGs, ``"btdm"`` (red = I) or ``"densepose"`` (blue = I).
        flow_source: ``"gt"`` or ``"pred"``: whose flow the warping error uses.
        progress: called with a line per sequence.
        allow_incomplete: score a dataset whose manifest marks it incomplete (still being built, or its
            build interrupted), with a warning; without it such a set is refused, as ``btdm train`` does.
        foreground: with ``iuv``, ``"pose"`` (the pose maps' I > 0) or ``"person"`` (that and the
            ground truth's alpha > 0; needs RGBA ground truth).

    Returns:
        The report dict written by :func:`write_report` (floats may be inf/NaN here).
    """
    sequences = _check(pred, gt, iuv, size, iuv_order)
    if foreground not in FOREGROUNDS:
        raise UsageError(f"unknown foreground {foreground!r}; allowed: {', '.join(FOREGROUNDS)}")
    if foreground != "pose" and iuv is None:
        raise UsageError(f"foreground {foreground!r} needs the pose maps (--iuv)")
    _check_complete({"--pred": pred, "--gt": gt, "--iuv": iuv}, allow_incomplete)
    lpips_model = LPIPS.from_file(lpips_weights) if lpips_weights is not None else None
    inception = FIDInceptionV3.from_file(inception_weights) if inception_weights is not None else None
    acc = _Accumulator()
    for name, folders in sequences.items():
        pred_paths, gt_paths = _pair_frames(folders)
        y, g, mask = _prepare(pred_paths, gt_paths, folders, acc, size, background, iuv_order, foreground)
        if mask is not None and not bool(mask.any()):
            label = f"sequence {name!r}" if name else "the sequence"
            raise EvaluationError(
                f"{folders.iuv}: no foreground (I > 0) in any of the {len(pred_paths)} pose maps of {label}: every "
                f"foreground-only metric would be NaN; check --iuv (the pose maps that drove {folders.pred}) and "
                f"--iuv-order ({iuv_order})")
        seq = _run(acc, name, y, g, mask, flow_source, lpips_model, inception)
        if progress is not None:
            progress(f"{name or Path(pred).name}: {seq['frames']} frames, SSIM {seq['ssim']:.4f}, tOF {seq['tof']:.3f}")
    report = _report(acc, pred, gt, iuv, background, flow_source, lpips_model, inception)
    report["foreground"] = foreground if iuv is not None else None
    return report


def _dataset_manifest(folder: Path) -> Path | None:
    """The ``manifest.json`` of the dataset ``folder`` lies in (its root, ``sequences/``, a sequence or its rgb/iuv)."""
    for root in (folder, *list(folder.parents)[:3]):
        if (root / "manifest.json").is_file() and (root / "sequences").is_dir():
            return root / "manifest.json"
    return None


def _check_complete(folders: dict[str, str | Path | None], allow: bool) -> None:
    """Refuse (or, with ``allow``, warn about) a folder inside a dataset whose manifest marks it incomplete."""
    for flag, folder in folders.items():
        if folder is None:
            continue
        path = _dataset_manifest(Path(folder).resolve())
        if path is None:
            continue
        try:
            info = json.loads(path.read_text(encoding="utf-8")).get("info", {})
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue  # not a manifest this check can read; the frames are what gets scored
        if not isinstance(info, dict) or info.get("complete", True) is not False:
            continue
        pending = info.get("pending", [])
        count = f"{len(pending)} sequence(s) pending" if isinstance(pending, list) else "build not finished"
        what = f"{flag} {folder}: its dataset {path} is marked incomplete ({count})"
        if not allow:
            raise EvaluationError(f"{what}; its scores would not be the set's: finish the build (btdm synth build "
                                  "resumes) or pass --allow-incomplete")
        logger.warning("warning: %s; scoring it anyway (--allow-incomplete)", what)


def _check(
    pred: str | Path, gt: str | Path, iuv: str | Path | None, size: int | None, iuv_order: str
) -> dict[str, _Folders]:
    """Refuse bad options and pair every predicted sequence with its ground truth (and pose maps) by name."""
    if iuv_order not in IUV_ORDERS:
        raise UsageError(f"unknown iuv order {iuv_order!r}; allowed: {', '.join(IUV_ORDERS)}")
    if size is not None and size < 11:
        raise UsageError(f"evaluation size must be at least 11 px (the SSIM window), got {size}")
    if size is not None:
        limits.check("size", size, "--size")
    pred_seqs = discover_sequences(pred, "rgb")
    gt_seqs = discover_sequences(gt, "rgb")
    iuv_seqs = discover_sequences(iuv, "iuv") if iuv is not None else None
    if set(pred_seqs) == {""} and set(gt_seqs) != {""}:
        raise EvaluationError(f"{pred} holds one sequence but {gt} holds several; point both at the same level")
    missing = sorted(set(pred_seqs) - set(gt_seqs))
    if missing:
        raise EvaluationError(f"{gt}: no ground truth for predicted sequence(s) {', '.join(missing[:5])}")
    if iuv_seqs is not None:
        missing = sorted(set(pred_seqs) - set(iuv_seqs))
        if missing:
            raise EvaluationError(f"{iuv}: no pose maps for sequence(s) {', '.join(missing[:5])}")
    return {
        name: _Folders(pred_dir, gt_seqs[name], None if iuv_seqs is None else iuv_seqs[name])
        for name, pred_dir in pred_seqs.items()
    }


def _pair_frames(folders: _Folders) -> tuple[list[Path], list[Path]]:
    """The consecutive predicted frames and the ground-truth frame of each (same file names, none left over)."""
    pred_dir, gt_dir = folders.pred, folders.gt
    pred_paths = list_frames(pred_dir)
    if not pred_paths:
        raise EvaluationError(f"{pred_dir}: no frames")
    indices = [frame_index(p) for p in pred_paths]
    if indices != list(range(indices[0], indices[0] + len(indices))):
        raise EvaluationError(f"{pred_dir}: predicted frames must be consecutive, got indices {indices[:6]}...")
    gt_paths = [gt_dir / p.name for p in pred_paths]
    absent = [p.name for p in gt_paths if not p.is_file()]
    if absent:
        raise EvaluationError(f"{gt_dir}: missing ground-truth frame(s) {', '.join(absent[:5])}")
    extra = sorted(set(p.name for p in list_frames(gt_dir)) - set(p.name for p in pred_paths))
    if extra:
        raise EvaluationError(
            f"{pred_dir}: {len(pred_paths)} predicted frames, but the ground truth {gt_dir} has "
            f"{len(pred_paths) + len(extra)}; missing predictions {', '.join(extra[:5])}"
            f"{' ...' if len(extra) > 5 else ''} (a partial sequence would be scored on its overlap only)"
        )
    return pred_paths, gt_paths


def _prepare(
    pred_paths: list[Path], gt_paths: list[Path], folders: _Folders, acc: _Accumulator, size: int | None,
    background: tuple[float, float, float], iuv_order: str, foreground: str = "pose",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Prediction and ground truth as (T, 3, H, W) at the report's one resolution, plus the foreground mask.

    With pose maps the background of both is painted with ``background`` (foreground-only).
    """
    target = (size, size) if size is not None else None
    y = _read_sequence(pred_paths, background, target)
    g = _read_sequence(gt_paths, background, target)
    if y.shape != g.shape:
        raise EvaluationError(
            f"{folders.pred}: frames are {tuple(y.shape[-2:])} px but ground truth {folders.gt} is "
            f"{tuple(g.shape[-2:])}; pass --size to evaluate both at one resolution"
        )
    hw = (int(y.shape[-2]), int(y.shape[-1]))
    if acc.resolution is not None and hw != acc.resolution:
        raise EvaluationError(f"{folders.pred}: {hw} px differs from the other sequences ({acc.resolution}); use --size")
    acc.resolution = hw
    if folders.iuv is None:
        return y, g, None
    iuv_paths = [folders.iuv / p.name for p in pred_paths]
    absent = [p.name for p in iuv_paths if not p.is_file()]
    if absent:
        raise EvaluationError(f"{folders.iuv}: missing pose map(s) {', '.join(absent[:5])}")
    mask = _read_masks(iuv_paths, iuv_order, hw)
    if foreground == "person":
        mask = mask | _read_alpha_masks(gt_paths, hw)
    return fill_background(y, mask, background), fill_background(g, mask, background), mask


def _run(
    acc: _Accumulator, name: str, y: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None, flow_source: str,
    lpips_model: LPIPS | None, inception: FIDInceptionV3 | None,
) -> dict[str, Any]:
    """Score one sequence: per-frame and per-pair terms into ``acc``, FID features pooled; its means returned."""
    seq: dict[str, Any] = {"frames": int(y.shape[0])}
    terms = {
        "ssim": _chunked(ssim, y, g, mask),
        "psnr": _chunked(psnr, y, g, mask),
        "tof": tof_per_pair(y, g, mask),
        "warp_error": warping_error_per_pair(y, g, mask, flow_source),
    }
    if lpips_model is not None:
        terms["lpips"] = lpips_pairs(lpips_model, y, g).numpy()
        terms["tlpips"] = tlpips_per_pair(lpips_model, y, g).numpy()
    if inception is not None:
        acc.features_pred.append(inception_features(inception, y))
        acc.features_gt.append(inception_features(inception, g))
    for key, values in terms.items():
        acc.add(key, values)
        finite = values[~np.isnan(values)]
        seq[key] = float(finite.mean()) if finite.size else math.nan
    acc.per_sequence[name] = seq
    acc.total_frames += seq["frames"]
    return seq


def _report(
    acc: _Accumulator, pred: str | Path, gt: str | Path, iuv: str | Path | None,
    background: tuple[float, float, float], flow_source: str, lpips_model: LPIPS | None,
    inception: FIDInceptionV3 | None,
) -> dict[str, Any]:
    """The pooled metrics, with the reason for each one skipped, and the per-sequence means."""
    metrics: dict[str, float | None] = {k: acc.mean(k) for k in METRIC_NAMES if k != "fid"}
    skipped: dict[str, str] = {}
    if lpips_model is None:
        skipped["lpips"] = skipped["tlpips"] = "no LPIPS weights given (--lpips-weights)"
    metrics["fid"] = None
    if inception is None:
        skipped["fid"] = "no Inception weights given (--inception-weights)"
    elif acc.total_frames < 2:
        skipped["fid"] = f"FID needs at least 2 frames, got {acc.total_frames}"
    else:
        metrics["fid"] = frechet_distance(np.concatenate(acc.features_pred), np.concatenate(acc.features_gt))
    return {
        "format_version": REPORT_VERSION,
        "pred": str(pred),
        "gt": str(gt),
        "iuv": None if iuv is None else str(iuv),
        "foreground_only": iuv is not None,
        "resolution": list(acc.resolution) if acc.resolution else None,
        "background": list(background),
        "flow_source": flow_source,
        "lpips_net": None if lpips_model is None else lpips_model.net,
        "num_sequences": len(acc.per_sequence),
        "num_frames": acc.total_frames,
        "metrics": metrics,
        "skipped": skipped,
        "definitions": DEFINITIONS,
        "per_sequence": acc.per_sequence,
    }


def _json_safe(value: Any) -> Any:
    """inf -> "inf" / "-inf", NaN -> None, so the file is standard JSON."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write an :func:`evaluate` report as JSON (atomic; inf as "inf", NaN as null)."""
    write_json_atomic(path, _json_safe(report))


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def format_table(rows: Sequence[tuple[str, dict[str, Any]]], extra: bool = True) -> str:
    """Markdown table in the paper's format (table 1/3 columns), one row per (method, report).

    With ``extra``, PSNR and the warping error follow the paper's columns. Skipped metrics show
    ``n/a`` and a note under the table says why.
    """
    cols = TABLE_COLUMNS + (EXTRA_COLUMNS if extra else ())
    cells = [[_fmt(report["metrics"].get(key), digits) for key, _, digits in cols] for _, report in rows]
    widths = [max([len(title)] + [len(r[i]) for r in cells]) for i, (_, title, _) in enumerate(cols)]
    name_w = max([len("Method")] + [len(name) for name, _ in rows])
    lines = [
        "| " + "Method".ljust(name_w) + " | " + " | ".join(t.ljust(w) for (_, t, _), w in zip(cols, widths)) + " |",
        "|" + "-" * (name_w + 2) + "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for (name, _), row in zip(rows, cells):
        lines.append("| " + name.ljust(name_w) + " | " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    notes: dict[str, str] = {}
    for _, report in rows:
        for key, _, _ in cols:
            if key in report.get("skipped", {}):
                notes.setdefault(key, report["skipped"][key])
    for key, reason in notes.items():
        lines.append(f"{key} skipped: {reason}")
    return "\n".join(lines)
