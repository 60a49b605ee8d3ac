"""Synthetic soft-cloth ground truth (paper section 4.1, appendix D), built with Blender.

Different people perform exactly the same motion, with simulated cloth, Cycles renders and pose
maps drawn by the engine's own IUV renderer from the same MotionClip and camera.

Layers (kubric's split: plain data first, Blender as a thin mirror):

* :mod:`synthetic_data.spec`: ``CharacterSpec`` and friends, ``sample_character(seed)``.
* :mod:`synthetic_data.presets`: ``Preset`` (tiny, mini, paper), ``MotionSpec``, ``plan`` -> shards.
* :mod:`synthetic_data.garments`, :mod:`synthetic_data.hair`, :mod:`synthetic_data.textures`:
  numpy geometry and rasters (no Blender).
* :mod:`synthetic_data.coords`: the one SMPL (Y up) <-> Blender (Z up) and OpenCV <-> Blender
  camera conversion.
* :mod:`synthetic_data.blender_scene`: the ``bpy`` layer (imports bpy).
* :mod:`synthetic_data.shard`: one (character, motion) sequence in its own process.
* :mod:`synthetic_data.build`: the dataset builder (local processes or Ray), resumable.
* :mod:`synthetic_data.sheet`: contact sheets.
* :mod:`synthetic_data.command`: ``btdm synth`` and the ``btdm-synth`` script (the application layer:
  ``btdm_engine.cli`` registers it by name; the engine never imports this package).

Nothing here imports ``bpy`` at package import time.
"""

from __future__ import annotations

__all__ = ["SYNTH_PACKAGE_VERSION"]

SYNTH_PACKAGE_VERSION = 1
