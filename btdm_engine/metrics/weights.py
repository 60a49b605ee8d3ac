"""Strict loading of user-provided metric weights (safetensors only; nothing is downloaded)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from btdm_engine.errors import BtdmError


class MetricWeightsError(BtdmError, ValueError):
    """A metric weight file is missing, unreadable, or does not match the network's layout."""


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read every tensor of a safetensors file on the CPU, naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise MetricWeightsError(f"{path}: weight file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise MetricWeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_strict(
    module: nn.Module,
    tensors: dict[str, torch.Tensor],
    source: str | Path,
    ignorable: Iterable[str] = (),
) -> None:
    """Copy ``tensors`` into ``module``'s state dict, demanding an exact match of names and shapes.

    Keys that end with one of ``ignorable`` suffixes (e.g. a classifier head the metric never
    uses) may be present and are dropped; any other unexpected key, any missing key and any shape
    mismatch raise :class:`MetricWeightsError` naming ``source`` and the first offending keys.
    """
    ignorable = tuple(ignorable)

    def is_ignorable(key: str) -> bool:
        return bool(ignorable) and key.endswith(ignorable)

    expected = {k: v for k, v in module.state_dict().items() if not is_ignorable(k)}
    kept = {k: v for k, v in tensors.items() if not is_ignorable(k)}
    missing = sorted(set(expected) - set(kept))
    unexpected = sorted(set(kept) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:4])})")
        raise MetricWeightsError(f"{source}: does not match the {type(module).__name__} layout: {'; '.join(parts)}")
    for key, value in kept.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise MetricWeightsError(
                f"{source}: tensor {key!r} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
            )
        if not torch.isfinite(value.float()).all():
            raise MetricWeightsError(f"{source}: tensor {key!r} contains NaN or infinite values")
    # Every non-ignorable key was checked above; only ignorable buffers (BatchNorm's
    # num_batches_tracked) may stay at their initial values.
    result = module.load_state_dict({k: v.to(expected[k].dtype) for k, v in kept.items()}, strict=False)
    left = [k for k in result.missing_keys if not is_ignorable(k)]
    if left or result.unexpected_keys:
        raise MetricWeightsError(f"{source}: could not load {left + list(result.unexpected_keys)}")
