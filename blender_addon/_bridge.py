"""Where the add-on finds :mod:`btdm_bridge`, the code it shares with the engine (HTTP client,
armature sampler, atomic write).

``btdm addon build`` vendors that package into the extension zip as ``_vendor/btdm_bridge``, so an
installed add-on imports its own copy (relatively: Blender loads extensions as
``bl_ext.<repo>.btdm_previs``); a checkout, where the add-on is imported as ``blender_addon``,
imports the top-level ``btdm_bridge`` installed with the engine. Nothing else differs.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["VENDORED", "load"]

VENDORED = os.path.isfile(os.path.join(os.path.dirname(__file__), "_vendor", "btdm_bridge", "__init__.py"))


def load(name: str) -> ModuleType:
    """The bridge's module ``name`` (``engine_client``, ``armature`` or ``files``)."""
    if VENDORED:
        return importlib.import_module(f"{__package__}._vendor.btdm_bridge.{name}")
    return importlib.import_module(f"btdm_bridge.{name}")
