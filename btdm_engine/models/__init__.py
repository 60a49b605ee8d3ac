"""The generator networks: BTU-Net (paper sec. 3.2) and SR3, with configs and presets.

Both are plain ``nn.Module``s that predict x0 and know nothing of the noise schedule beyond the
log-SNR lambda they receive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from btdm_engine.models.btunet import BACKWARD, FORWARD, BTUNet, BTUNetConfig, BTUNetInputError
from btdm_engine.models.config import ModelConfigError
from btdm_engine.models.sr3 import CLEAN_LOGSNR, SR3, SR3Config, SR3InputError

MODEL_KINDS: dict[str, tuple[type[nn.Module], type[Any]]] = {
    "btunet": (BTUNet, BTUNetConfig),
    "sr3": (SR3, SR3Config),
}


def build_model(kind: str, config_dict: Mapping[str, Any]) -> nn.Module:
    """Build an untrained network of ``kind`` ("btunet" | "sr3") from its ``config.to_dict()``."""
    if kind not in MODEL_KINDS:
        raise ModelConfigError(f"unknown model kind {kind!r}; allowed: {sorted(MODEL_KINDS)}")
    model_cls, config_cls = MODEL_KINDS[kind]
    return model_cls(config_cls.from_dict(config_dict))


class _NoNormalFill(TorchFunctionMode):
    """Leaves out filling tensors with normal noise and scaling it (``nn.init.normal_``, ``Tensor.normal_``,
    ``torch.randn`` made empty, times a number): see :func:`on_meta`."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is nn.init.normal_ or func is torch.Tensor.normal_:
            return args[0] if args else kwargs["tensor"]  # nn.init.normal_ hands its tensor as a keyword
        if func is torch.randn:
            return torch.empty(*args, **{k: v for k, v in kwargs.items() if k != "generator"})
        if (func is torch.Tensor.mul and len(args) == 2 and isinstance(args[1], float)
                and args[0].is_floating_point()):  # scaling it: the same size and dtype, no values
            return args[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build networks on the meta device: their sizes only, nothing allocated however large the config.

    A meta tensor holds no values, so filling one with normal noise (``nn.Embedding`` does, and the
    attention's null tokens) is left out, and the position code is an empty table
    (``layers.sinusoidal_positions_2d``): torch's meta kernels of ``normal_``, ``mul`` and ``exp`` import
    ``torch._dynamo`` to compute nothing, 1.5 s of every process's first checkpoint load on the CPU
    machine (``btdm animate``, ``btdm serve``; tests/test_checkpoints.py checks it stays out).
    """
    with torch.device("meta"), _NoNormalFill():
        yield


__all__ = [
    "BACKWARD",
    "CLEAN_LOGSNR",
    "FORWARD",
    "MODEL_KINDS",
    "SR3",
    "BTUNet",
    "BTUNetConfig",
    "BTUNetInputError",
    "ModelConfigError",
    "SR3Config",
    "SR3InputError",
    "build_model",
    "on_meta",
]
