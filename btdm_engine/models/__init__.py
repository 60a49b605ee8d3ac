"""The generator networks: BTU-Net (paper sec. 3.2) and SR3, with configs and presets.

Both are plain ``nn.Module``s that predict x0 and know nothing of the noise schedule beyond the
log-SNR lambda they receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

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
]
