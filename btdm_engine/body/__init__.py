"""The body: SMPL's skeleton, the procedural mannequin and the LBS body model.

``load_body_model("mannequin")`` builds (first use) and caches the mannequin; a path loads any
SMPL-layout model file without chumpy objects.
"""

from __future__ import annotations

from btdm_engine.body.model import BodyModel, BodyModelError, load_body_model, read_model_file, smplx_kwargs

__all__ = ["BodyModel", "BodyModelError", "load_body_model", "read_model_file", "smplx_kwargs"]
