"""DensePose-style IUV pose maps: atlas, renderer, encodings, previews.

Public API (imported lazily, so ``btdm --help`` does not load torch or OpenGL):

* parts: ``PART_NAMES``, ``MIRROR_PART``, ``flip_iuv``
* atlas: ``Atlas``, ``build_atlas``; densepose_uv: ``read_uv_processed``, ``load_atlas``
* renderer: ``IUVRenderer``
* encoding: ``write_iuv_png``, ``read_iuv_png``, ``iuv_to_tensor``, ``tensor_to_iuv``,
  ``iuv_to_parts_onehot``, ``validate_iuv``, ``IUVFormatError``
* preview: ``colorize_iuv``, ``contact_sheet``, ``write_mp4``, ``write_rgb_png``
* export: ``export_posemaps``
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "NUM_PARTS": "parts",
    "PART_NAMES": "parts",
    "MIRROR_PART": "parts",
    "flip_iuv": "parts",
    "Atlas": "atlas",
    "AtlasError": "atlas",
    "build_atlas": "atlas",
    "load_atlas": "densepose_uv",
    "read_uv_processed": "densepose_uv",
    "IUVRenderer": "renderer",
    "IUVFormatError": "encoding",
    "validate_iuv": "encoding",
    "write_iuv_png": "encoding",
    "read_iuv_png": "encoding",
    "iuv_to_tensor": "encoding",
    "tensor_to_iuv": "encoding",
    "iuv_to_parts_onehot": "encoding",
    "colorize_iuv": "preview",
    "contact_sheet": "preview",
    "write_mp4": "preview",
    "write_rgb_png": "preview",
    "export_posemaps": "export",
    "PosemapExport": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
