"""The body: SMPL's skeleton, the procedural mannequin and the LBS body model.

``load_body_model("mannequin")`` builds (first use) and caches the mannequin; a path loads any
SMPL-layout model file without chumpy objects. Names are resolved lazily so that importing
``btdm_engine.body.skeleton`` (as the CLI and the add-on do) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BodyModel", "BodyModelError", "load_body_model", "read_model_file", "smplx_kwargs"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("btdm_engine.body.model"), name)
    raise AttributeError(f"module 'btdm_engine.body' has no attribute {name!r}")
