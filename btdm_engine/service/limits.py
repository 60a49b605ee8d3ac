"""Every size a request to the engine service may declare, in one place (documented in the README).

Uploads larger than these are refused with 413 while they stream in, before they are parsed;
what a file declares inside (``.npy`` headers, PNG headers) is checked against the decoded-size
budgets before anything is decompressed; values outside them get a 4xx naming the field. Nothing
a request sends is used as a file-system path. The engine's own limits (frames, pixels, ... for
every command, and a job's parameters: ``JOB_LIMITS``, served at ``GET /v1/limits``) are
:mod:`btdm_engine.limits`; these are the service's transport limits, per request.
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
    "views": 64 * MiB,
}
"""Per uploaded file, by form field."""

MAX_VIEWS_DECODED_BYTES = 256 * MiB
"""What the pictures of one ``views`` zip may decode to, all together (from their PNG headers, before
any is decoded): each may be an appearance picture's 64 MiB, not sixteen of them."""

MAX_NPZ_DECODED_BYTES = {
    "motion": 256 * MiB,
    "skeleton": 512 * MiB,
}
"""What the arrays of one ``.npz`` upload may declare, all together: shape x itemsize of every array,
read from the ``.npy`` headers before any array is read (a small zip can declare gigabytes)."""

MAX_NPY_ITEMSIZE = 64 * 1024
"""Bytes of one element of an ``.npz`` array (a string of 16k characters; a void or structured type
declaring hundreds of megabytes per element is refused even as a scalar)."""

MAX_NPZ_MEMBERS = 64
"""Arrays in one ``.npz`` upload."""

MAX_IMAGE_DECODED_BYTES = 64 * MiB
"""An appearance PNG (or its IUV map) decoded: width x height x channels x bytes per sample, from its
header (a 4096 px 8-bit RGBA image fits; a 16-bit 4096 px one does not)."""

MAX_POSEMAP_SIDE = 1024
"""Width or height of a pose map in a pose-map zip (the networks work at 256 px or less; larger maps
are only resized down)."""

MAX_POSEMAPS_DECODED_BYTES = 1024 * MiB
"""All the pose maps of one zip decoded, from their PNG headers, before any is decoded."""

MAX_PARAMS_BYTES = 64 * 1024
"""The ``params`` JSON text."""

MAX_FRAMES = 2000
"""Frames one job may generate (after ``frame_start``/``frame_end``)."""

MAX_POSEMAP_MEMBERS = MAX_FRAMES
"""Files in a pose-map zip."""

ZIP_DIRECTORY_BYTES_PER_MEMBER = 1024
"""Bytes of a zip's central directory per member a zip may hold (an entry is 46 bytes, its name, extra
field and comment): a zip is refused from its end record when its directory is larger than this times
twice the members it may hold (its folder entries too) plus 64, before Python's zipfile parses the
directory into an object per entry (an upload of tens of megabytes can hold a million empty entries)."""

MAX_UNZIPPED_BYTES = 512 * MiB
"""Declared uncompressed size of a pose-map zip, all members together."""

MAX_IMAGE_SIDE = 4096
"""Width or height of an uploaded PNG (appearance, IUV maps)."""

MAX_BONE_MAP_ENTRIES = 256
"""Entries in a skeleton job's ``bone_map``."""

MAX_NAME_CHARS = 256
"""A bone name or preset name in ``params``."""

MIN_PRIORITY, MAX_PRIORITY = -100, 100
"""A job's ``priority`` (the ``POST /v1/jobs`` form field): higher runs first, 0 by default."""

MAX_CONCURRENT_UPLOADS = 8
"""``POST /v1/jobs`` bodies read at the same time; more are answered 503 with Retry-After at once."""

BODY_IDLE_S = 30.0
"""A request body that sends nothing for this long is cut off (408)."""

BODY_DEADLINE_S = 60.0
BODY_MIN_BYTES_PER_S = 64 * 1024
"""A request body must have arrived within ``BODY_DEADLINE_S`` + its size / ``BODY_MIN_BYTES_PER_S``
seconds (a 256 MiB upload gets 70 minutes; a byte a second is cut off after a minute): 408."""

MAX_CONNECTIONS = 64
"""Open connections and requests at once (uvicorn ``limit_concurrency``): more are answered 503."""

KEEP_ALIVE_S = 5
"""An idle keep-alive connection is closed after this long (uvicorn ``timeout_keep_alive``)."""
