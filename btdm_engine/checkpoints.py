"""Checkpoints: a folder with ``config.json`` and ``model.safetensors``; nothing is ever unpickled.

``config.json``::

    {"format_version": 1, "kind": "btunet" | "sr3", "model": <ModelConfig.to_dict()>,
     "schedule": <ScheduleConfig.to_dict()>, "extra": {...}}

``config.json`` is the folder's completeness marker: :func:`save_checkpoint` removes an old one
first, writes the weights (temp file + ``os.replace``), then writes ``config.json`` the same way,
so a folder that has ``config.json`` always holds the weights that belong to it. Loading is strict:
every tensor must exist with the same name, shape and dtype as in the freshly built network.

Loading is also bounded and loud: the network ``config.json`` describes is first built on the
``meta`` device (no memory), its parameter count checked against the ``parameters`` limit
(:mod:`btdm_engine.limits`) and its tensor shapes against the safetensors header, before anything
is allocated; and a checkpoint with a NaN or inf anywhere is refused on load and on save
(:class:`NonFiniteWeightsError`), since it can only sample black frames, as is one whose finite
weights are absurdly large (over :data:`MAX_WEIGHT_MAGNITUDE`, :class:`AbsurdWeightsError`) on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from btdm_engine import limits
from btdm_engine.constants import MODEL_KINDS as KINDS
from btdm_engine.dataconfig import check_keys
from btdm_engine.diffusion.schedule import ScheduleConfig
from btdm_engine.errors import BtdmError, NonFiniteError
from btdm_engine.fileio import atomic_path, atomic_write_bytes, make_folder, read_json
from btdm_engine.models import build_model, on_meta

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(BtdmError, ValueError):
    """A checkpoint folder that cannot be saved or loaded; the message names the file and problem."""


class NonFiniteWeightsError(CheckpointError, NonFiniteError):
    """Weights holding NaN or inf: refused on load and on save; names the file (or model) and the tensors."""


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an inf (with the count of bad values)."""
    bad = []
    for name, t in tensors.items():
        if t.is_floating_point():
            count = int((~torch.isfinite(t)).sum())
            if count:
                bad.append(f"{name} ({count} of {t.numel()} values)")
    return bad


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`NonFiniteWeightsError` naming ``where`` and the tensors when any value is NaN or inf."""
    bad = non_finite_tensors(tensors)
    if bad:
        raise NonFiniteWeightsError(f"{where}: non-finite weights (NaN or inf) in {_names(bad)}")


# Largest |value| a trained network's tensor holds, with a wide margin: the embedded models stay
# under 4, and weights that have diverged or were scaled by mistake (x1e30) only give black frames.
MAX_WEIGHT_MAGNITUDE = 1e4


class AbsurdWeightsError(CheckpointError):
    """Finite weights too large for a trained network (diverged, corrupt or wrongly scaled); names the tensors."""


def absurd_tensors(tensors: dict[str, torch.Tensor], bound: float = MAX_WEIGHT_MAGNITUDE) -> list[str]:
    """Names of the floating-point tensors with a value over ``bound`` in magnitude (with their largest)."""
    bad = []
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel():
            biggest = float(t.detach().abs().max())
            if biggest > bound:
                bad.append(f"{name} (|value| up to {biggest:.3g})")
    return bad


def check_magnitude(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`AbsurdWeightsError` naming ``where`` and the tensors when a value exceeds :data:`MAX_WEIGHT_MAGNITUDE`."""
    bad = absurd_tensors(tensors)
    if bad:
        raise AbsurdWeightsError(
            f"{where}: weights too large for a trained network in {_names(bad, 3)} (a trained network's stay far below "
            f"{MAX_WEIGHT_MAGNITUDE:g}); the checkpoint is corrupt, diverged or wrongly scaled and can only give "
            "saturated (black) frames")


def _check_kind(kind: str, where: str) -> None:
    if kind not in KINDS:
        raise CheckpointError(f"{where}: unknown model kind {kind!r}; allowed: {', '.join(KINDS)}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, fsync=True)


def _atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_path(path, fsync=True) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    kind: str,
    schedule_config: ScheduleConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (its ``config`` and weights) and the schedule to ``directory``.

    Args:
        directory: the checkpoint folder (created if missing; an existing checkpoint is replaced).
        model: a BTUNet or SR3 (anything with a ``config.to_dict()`` and a state dict).
        kind: ``"btunet"`` or ``"sr3"``.
        schedule_config: the schedule the model was trained with.
        extra: JSON-serialisable metadata stored under ``"extra"`` (e.g. task, training step).

    Returns:
        The folder's path.
    """
    _check_kind(kind, "save_checkpoint")
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(config, "to_dict", None)):
        raise CheckpointError(f"save_checkpoint: {type(model).__name__} has no config.to_dict()")
    if not isinstance(schedule_config, ScheduleConfig):
        raise CheckpointError(
            f"save_checkpoint: schedule_config must be a ScheduleConfig, got {type(schedule_config).__name__}"
        )
    document = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model": config.to_dict(),
        "schedule": schedule_config.to_dict(),
        "extra": {} if extra is None else extra,
    }
    try:
        config_bytes = (json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"save_checkpoint: config or extra is not JSON-serialisable: {exc}") from exc
    # clone(): tied parameters share storage, which safetensors refuses; loading re-ties them.
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    check_finite(tensors, f"save_checkpoint({directory})")  # nothing is written: the old checkpoint stays

    folder = Path(directory)
    make_folder(folder, f"cannot save the checkpoint {folder}")
    config_path = folder / CONFIG_NAME
    config_path.unlink(missing_ok=True)  # the folder is incomplete until config.json is back
    _atomic_save_safetensors(folder / WEIGHTS_NAME, tensors, {"format": "pt", "kind": kind})
    _atomic_write_bytes(config_path, config_bytes)
    return folder


def read_checkpoint_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check ``config.json`` of a checkpoint folder (no weights are read)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the folder is not a complete checkpoint)")
    required = ("format_version", "kind", "model", "schedule")
    document = check_keys(read_json(path, CheckpointError), (*required, "extra"), CheckpointError, where=str(path),
                          noun="key", required=required)
    if document["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {document['format_version']!r} is not supported (expected {FORMAT_VERSION})"
        )
    _check_kind(document["kind"], str(path))
    if not isinstance(document.get("extra", {}), dict):
        raise CheckpointError(f"{path}: 'extra' must be a JSON object")
    return document


def load_checkpoint(
    directory: str | os.PathLike[str], kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ScheduleConfig, dict[str, Any]]:
    """Build the network a checkpoint describes and load its weights strictly.

    Args:
        directory: the checkpoint folder.
        kind: the expected kind (``"btunet"`` / ``"sr3"``), or None to accept either.
        device: where the model is put.

    Returns:
        ``(model, schedule_config, meta)``: the model in eval mode, the schedule, and the parsed
        ``config.json`` (``meta["kind"]``, ``meta["extra"]``, ...).

    Raises:
        CheckpointError: naming the file and the problem (missing folder or file, invalid JSON,
            unknown kind or config key, corrupt or truncated weights, missing / unexpected /
            mis-shaped / wrongly typed tensors).
    """
    folder = Path(directory)
    document = read_checkpoint_config(folder)
    config_path = folder / CONFIG_NAME
    if kind is not None:
        _check_kind(kind, "load_checkpoint")
        if document["kind"] != kind:
            raise CheckpointError(f"{config_path}: holds a {document['kind']!r} model, expected {kind!r}")
    try:
        schedule = ScheduleConfig.from_dict(document["schedule"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: bad 'schedule': {exc}") from exc
    # 1. the network on the meta device: sizes only, nothing allocated, however large config.json says
    try:
        with on_meta():
            skeleton = build_model(document["kind"], document["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: bad 'model': {exc}") from exc
    count = sum(p.numel() for p in skeleton.parameters())
    try:
        limits.check("parameters", count, f"{config_path}: the 'model' it describes has {count} parameters")
    except limits.LimitError as exc:
        raise CheckpointLimitError(str(exc), limit="parameters") from None

    # 2. the file's header against that network, before reading any weights
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing")
    expected = skeleton.state_dict()
    header = _safetensors_shapes(weights_path)
    _compare(weights_path, header, {n: (tuple(t.shape), t.dtype) for n, t in expected.items()})

    # 3. the real network and the weights
    try:
        model = build_model(document["kind"], document["model"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: bad 'model': {exc}") from exc
    try:
        state = load_file(weights_path)  # safetensors only parses a JSON header and raw bytes
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
    check_finite(state, str(weights_path))
    check_magnitude(state, str(weights_path))
    # Names, shapes and dtypes were checked against the header in step 2; a strict load is the backstop.
    model.load_state_dict(state, strict=True)
    model.to(device)
    model.eval()
    return model, schedule, document


class CheckpointLimitError(CheckpointError, limits.LimitError):
    """A checkpoint's config.json describes a network over the ``parameters`` limit."""


def _safetensors_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` from a safetensors header alone (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {name: (tuple(fh.get_slice(name).get_shape()), _DTYPES.get(fh.get_slice(name).get_dtype()))
                    for name in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)  # fmt: skip
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}  # fmt: skip


def _compare(path: Path, found: dict[str, tuple[tuple[int, ...], Any]], expected: dict[str, tuple[tuple[int, ...], Any]]) -> None:
    """Refuse a weights file whose tensor names, shapes or dtypes differ from the network's."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing tensors {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_names(unexpected)}")
    common = sorted(set(found) & set(expected))
    shapes = [f"{n} {found[n][0]} != {expected[n][0]}" for n in common if found[n][0] != expected[n][0]]
    if shapes:
        problems.append(f"mis-shaped tensors (file != model): {_names(shapes)}")
    dtypes = [f"{n} {found[n][1]} != {expected[n][1]}" for n in common if found[n][1] != expected[n][1]]
    if dtypes:
        problems.append(f"wrong dtypes (file != model): {_names(dtypes)}")
    if problems:
        raise CheckpointError(f"{path}: does not match the model in {CONFIG_NAME}: " + "; ".join(problems))


def _names(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"
