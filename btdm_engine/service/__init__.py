"""The engine service: ``btdm serve``, an HTTP job server around the :class:`~btdm_engine.pipeline.Animator`.

The add-on, headless batches and remote GPU boxes share one capability: submit a motion (a
MotionClip ``.npz``, a skeleton animation ``.npz`` or a zip of IUV PNGs) with an optional
appearance image, follow the job's progress, and fetch pose maps, frames, plates and a video as
soon as each exists. API version 1 (the contract in ``docs/architecture.md``; extend, never
rename):

=========================================  ==================================================
``GET /v1/health``                         status, version, device, models, queue counts
``GET /v1/limits``                         a job's params: defaults, bounds, choices (btdm_engine.jobspec)
``GET /v1/models``                         the models this server can run
``POST /v1/jobs``                          multipart upload -> 202 ``{id, state: "queued", ...}``
``GET /v1/jobs``, ``GET /v1/jobs/{id}``    job state, stage, progress, timestamps, params (the list
                                           filtered by state / tag / client, paged by cursor)
``GET /v1/jobs/{id}/events``               server-sent events with the same fields
``GET /v1/jobs/{id}/frames/{n}.png``       generated frame n (zero-based) once written
``GET /v1/jobs/{id}/posemaps/{n}.png``     colour preview of pose map n once rendered
``GET /v1/jobs/{id}/plates/{n}.png``       full-resolution RGBA plate n (shot-camera jobs)
``GET /v1/jobs/{id}/video.mp4``            the frames as an MP4, once the job succeeded
``POST /v1/jobs/{id}/cancel``              stop a queued or running job
``POST /v1/jobs/{id}/retry``               put a failed or cancelled job back in the queue
``DELETE /v1/jobs/{id}``                   remove a finished job and its files
``GET /metrics``                           Prometheus text: jobs by state, queue, frames, workers
=========================================  ==================================================

``docs/service.md``: Idempotency-Key, listing, priorities and retries, metrics, tokens, TLS, workers.

Modules: :mod:`.limits` (every size a request may declare), :mod:`.schemas` (pydantic request
and response models: ``/openapi.json`` is the real contract; ``JobParams`` checks each key with
its field, and the keys against each other, the files and the model in a ``model_validator``:
the job's rules, :mod:`btdm_engine.jobspec`'s), :mod:`.store` (SQLite job store),
:mod:`.inputs` (upload validation), :mod:`.worker` (plain Python around the Animator, testable
without HTTP), :mod:`.metrics` (``GET /metrics``), :mod:`.deps` (what the endpoints get through
``Depends``: the store, the worker, the model registry, the settings, the queue's admission, the
bearer-token check; a test overrides any of them with ``app.dependency_overrides``), :mod:`.app`
(FastAPI routers, error handlers, ``create_app``), :mod:`.guard` (the network edge: Host / Origin,
the token and sizes, before the body is read), :mod:`.errors` (the service's errors and their
status codes), :mod:`.lifeline` (``--parent-pid``: exit with the parent).
"""

from __future__ import annotations

API_VERSION = 1
