"""Every size a request to the engine service may declare, in one place (documented in the README).

Uploads larger than these are refused with 413 before they are parsed; values outside them with
a 4xx naming the field. Nothing a request sends is used as a file-system path.
"""

from __future__ import annotations

MiB = 1 << 20

MAX_REQUEST_BYTES = 256 * MiB
"""A whole ``POST /v1/jobs`` body (all parts together)."""

MAX_UPLOAD_BYTES = {
    "motion": 64 * MiB,
    "skeleton": 128 * MiB,
    "posemaps": 192 * MiB,
    "appearance": 16 * MiB,
    "appearance_iuv": 16 * MiB,
}
"""Per uploaded file, by form field."""

MAX_PARAMS_BYTES = 64 * 1024
"""The ``params`` JSON text."""

MAX_FRAMES = 2000
"""Frames one job may generate (after ``frame_start``/``frame_end``)."""

MAX_POSEMAP_MEMBERS = MAX_FRAMES
"""Files in a pose-map zip."""

MAX_UNZIPPED_BYTES = 512 * MiB
"""Declared uncompressed size of a pose-map zip, all members together."""

MAX_IMAGE_SIDE = 4096
"""Width or height of an uploaded PNG (appearance, IUV maps)."""

MAX_STEPS = 1000
"""``steps`` and ``sr_steps``."""

MAX_FINETUNE_STEPS = 5000
"""``finetune_steps``."""

MAX_BONE_MAP_ENTRIES = 256
"""Entries in a skeleton job's ``bone_map``."""

MAX_NAME_CHARS = 256
"""A bone name or preset name in ``params``."""
