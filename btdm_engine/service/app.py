"""The FastAPI application of ``btdm serve``: one router per resource (health, models, jobs).

:func:`create_app` wires a :class:`~btdm_engine.service.store.JobStore`, a
:class:`~btdm_engine.service.worker.Worker` and its
:class:`~btdm_engine.service.worker.ModelRegistry` into API v1. The endpoints get them, the
server's settings and the queue's admission through ``Depends`` (:mod:`.deps`: a test overrides
any of them with ``app.dependency_overrides``); a job's params, checked field by field and against
each other, are :class:`~btdm_engine.service.schemas.JobParams`' validators. Authentication is one
dependency (:func:`~.deps.bearer_auth`, constant-time comparison); errors are one handler per exception family,
all answering ``{"error": {"code", "message", "field"}}``: a
:class:`~btdm_engine.errors.BtdmError` is the client's fault (4xx), anything else is a 500 and a
bug. One log line per request (method, path, status, milliseconds). What is refused from the headers or
while the body streams (Host / Origin, the token, sizes, slow uploads) is :mod:`.guard`'s.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import json
import logging
import shutil
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from btdm_engine import __version__
from btdm_engine.errors import BtdmError
from btdm_engine.jobspec import limits_document
from btdm_engine.service import API_VERSION, inputs, limits
from btdm_engine.service.auth import ApiToken
from btdm_engine.service.deps import (
    Admission,
    AdmissionDep,
    PrincipalDep,
    RegistryDep,
    ServiceSettings,
    SettingsDep,
    StoreDep,
    WorkerDep,
    bearer_auth,
    check_owner,
    known_query,
    require_submit,
)
from btdm_engine.service.errors import NO_SPACE, Conflict, InvalidParams, NoSpace, NotFound, ServiceError, disk_full, public
from btdm_engine.service.guard import RequestGuard
from btdm_engine.service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from btdm_engine.service.metrics import ServiceMetrics
from btdm_engine.service.schemas import (
    CLIENT_NAME_PATTERN,
    FINAL_STATES,
    IDEMPOTENCY_KEY_PATTERN,
    JOB_ID_PATTERN,
    TAG_PATTERN,
    Caller,
    ErrorResponse,
    Health,
    Job,
    JobList,
    JobParams,
    JobState,
    Limits,
    ModelInfo,
    ModelList,
    QueueCounts,
    SubmitContext,
    parse_params,
)
from btdm_engine.service.store import JobStore, new_job_id
from btdm_engine.service.worker import ModelRegistry, Worker, remove_job_files, wants_plates

logger = logging.getLogger(__name__)

SSE_PING_S = 5.0
SSE_POLL_S = 0.1
_JOB_FIELDS = tuple(Job.model_fields)

_ERRORS = {"model": ErrorResponse}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERRORS, "description": "bad input (the field or file is named)"},
    401: {**_ERRORS, "description": "missing or wrong bearer token"},
    403: {**_ERRORS, "description": "a server without a token: a Host other than localhost, or a web page's Origin"},
    404: {**_ERRORS, "description": "no such job or file (yet)"},
    422: {**_ERRORS, "description": "a malformed request, an invalid value or an unknown query parameter"},
}


def job_view(row: dict[str, Any]) -> dict[str, Any]:
    """A job row -> the API's job object (internal columns dropped)."""
    return {key: row[key] for key in _JOB_FIELDS}


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers)


# ---------------------------------------------------------------------------- routers
health_router = APIRouter(prefix="/v1", tags=["health"], responses=ERROR_RESPONSES, dependencies=[Depends(known_query)])
models_router = APIRouter(prefix="/v1", tags=["models"], responses=ERROR_RESPONSES,
                          dependencies=[Depends(bearer_auth), Depends(known_query)])
metrics_router = APIRouter(tags=["metrics"], responses={401: ERROR_RESPONSES[401], 403: ERROR_RESPONSES[403]},
                           dependencies=[Depends(bearer_auth), Depends(known_query)])
jobs_router = APIRouter(prefix="/v1", tags=["jobs"], responses=ERROR_RESPONSES,
                        dependencies=[Depends(bearer_auth), Depends(known_query)])

JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="32 lowercase hex digits")]
FrameIndex = Annotated[int, PathParam(ge=0, lt=limits.MAX_FRAMES, description="zero-based frame index")]


@health_router.get("/health", response_model=Health, summary="server status (no token needed)")
def health(store: StoreDep, worker: WorkerDep, registry: RegistryDep, settings: SettingsDep) -> dict[str, Any]:
    try:
        free: int | None = shutil.disk_usage(store.data).free
    except OSError:
        free = None
    worker_health = worker.health()
    store_error = worker.store_error
    try:
        counts = store.counts()
    except Exception as exc:  # a store that cannot even be read is what health must say, not a 500
        store_error = store_error or public(f"the job store cannot be read ({type(exc).__name__}: {exc})")
        counts = dict.fromkeys(QueueCounts.model_fields, 0)
    store_health = {"ok": store_error is None, "free_bytes": free, "error": store_error}
    ok = store_health["ok"] and (worker_health["alive"] or not settings.worker_started)
    return {
        "status": "ok" if ok else "degraded", "store": store_health, "worker": worker_health,
        "workers": [w.health() for w in worker.workers()],
        "version": __version__, "api_version": API_VERSION, "device": settings.device,
        "device_name": settings.device_name, "models": registry.names(), "queue": counts,
        "max_queued": settings.max_queued, "max_frames": limits.MAX_FRAMES, "auth": bool(settings.auth),
    }


@metrics_router.get(
    "/metrics", response_class=Response, summary="Prometheus metrics (text format): jobs by state, queue depth, "
    "frames generated, seconds per frame, workers busy",
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "the Prometheus text exposition format"}},
)
def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


@models_router.get("/limits", response_model=Limits, summary="what a job's params may ask for: defaults, bounds, choices")
def job_limits() -> dict[str, Any]:
    return {**limits_document(), "max_frames": limits.MAX_FRAMES}


@models_router.get("/models", response_model=ModelList, summary="the models this server runs")
def models(registry: RegistryDep) -> dict[str, Any]:
    return {"models": registry.infos()}


SUBMIT_ROLE = {"x-btdm-role": "submit"}
"""Marks the operations a ``read`` token may not call (``btdm_engine.service.auth``)."""
_OWNER = {403: {**_ERRORS, "description": "a read-only token, or a submit token and a job another token submitted"}}


@models_router.get("/whoami", response_model=Caller, summary="the token this request came with: its name and role")
def whoami(principal: PrincipalDep) -> dict[str, Any]:
    return {"client": principal.name, "role": principal.role}


def _get_job(store: JobStore, job_id: str) -> dict[str, Any]:
    job = store.get(job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist", field="job_id")
    return job


UPLOAD_DOC = {
    "motion": "a MotionClip .npz (btdm motion make / import)",
    "skeleton": "a skeleton animation .npz (btdm_engine.motion.skeleton_animation), retargeted by the engine",
    "posemaps": "a zip of IUV PNGs named [folders/]<digits>.png, square, one size",
    "appearance": "the appearance image c: a square PNG",
    "appearance_iuv": "the appearance image's IUV map g(c), a PNG of the same size (for finetune_steps and models "
                      "with the texture-transfer prior, GET /v1/models texture_prior)",
    "views": "further pictures of the same person: a zip of PNGs named [folders/]<digits>.png by the job frame "
             "(zero-based from frame_start) whose body each shows, that frame's pose map being its IUV map; each "
             "framed like appearance with appearance_frame (the whole shot-camera view for a job with plates, else "
             "square), at most 16 (GET /v1/limits: limits.views). Their pixels join the appearance's UV texture, so "
             "the texture-transfer prior (method texture, models with texture_prior) shows what the appearance "
             "hides; needs appearance with its IUV map (appearance_iuv or appearance_frame)",
}


@jobs_router.post(
    "/jobs", response_model=Job, status_code=202, summary="submit a job (multipart/form-data)",
    dependencies=[Depends(require_submit)], openapi_extra=SUBMIT_ROLE,
    responses={403: {**_ERRORS, "description": "a read-only token"},
               408: {**_ERRORS, "description": "the upload arrived too slowly"},
               413: {**_ERRORS, "description": "an upload over its size limit (refused as it streams in)"},
               429: {**_ERRORS, "description": "the queue is full; retry after Retry-After seconds"},
               507: {**_ERRORS, "description": "the server's disk is full"},
               503: {**_ERRORS, "description": "too many uploads at once; retry after Retry-After seconds"}},
)
def submit(
    store: StoreDep,
    registry: RegistryDep,
    admission: AdmissionDep,
    motion: Annotated[UploadFile | None, File(description=UPLOAD_DOC["motion"])] = None,
    skeleton: Annotated[UploadFile | None, File(description=UPLOAD_DOC["skeleton"])] = None,
    posemaps: Annotated[UploadFile | None, File(description=UPLOAD_DOC["posemaps"])] = None,
    appearance: Annotated[UploadFile | None, File(description=UPLOAD_DOC["appearance"])] = None,
    appearance_iuv: Annotated[UploadFile | None, File(description=UPLOAD_DOC["appearance_iuv"])] = None,
    views: Annotated[UploadFile | None, File(description=UPLOAD_DOC["views"])] = None,
    params: Annotated[str | None, Form(description="a JSON object (JobParams in the schemas)")] = None,
    tag: Annotated[str | None, Form(pattern=TAG_PATTERN, description="a label to find the job by (a show, a shot, "
                                    "a batch): GET /v1/jobs?tag=")] = None,
    priority: Annotated[int, Form(ge=limits.MIN_PRIORITY, le=limits.MAX_PRIORITY,
                                  description="higher runs first; first come, first served within a priority")] = 0,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", pattern=IDEMPOTENCY_KEY_PATTERN,
        description="submit at most once: a repeated request with the same key (from the same token) answers the "
        "job the first one made, whatever its state, instead of making another; the key with a different request "
        "is 422. A key is free again once its job is deleted or expired")] = None,
    *,
    principal: PrincipalDep,
    response: Response,
) -> dict[str, Any]:
    sources = {"motion": motion, "skeleton": skeleton, "posemaps": posemaps}
    given = [name for name, upload in sources.items() if upload is not None]
    if len(given) != 1:
        raise ServiceError(f"send exactly one motion source (motion, skeleton or posemaps); got "
                           f"{', '.join(given) or 'none'}", field="motion")
    source = given[0]
    files = {**sources, "appearance": appearance, "appearance_iuv": appearance_iuv, "views": views}
    context = SubmitContext(frozenset(name for name, upload in files.items() if upload is not None),
                            lambda name: registry.entry(name).info)
    job_params = parse_params(params, context)  # every key, and the keys against each other, the files, the model
    p = job_params.model_dump()
    digest = None
    if idempotency_key is not None:
        digest = request_digest(source, files, p, tag=tag, priority=priority)
        earlier = store.find_idempotent(principal.name, idempotency_key)
        if earlier is not None:  # before the queue's door: a repeat is answered even when the queue is full
            return _replayed(earlier, digest, response)
    admission.check(store)  # before the uploads are copied and validated: a full queue answers at once
    job_id = new_job_id()
    try:
        described = _save_inputs(store.job_dir(job_id) / "input", source, sources[source], appearance,
                                 appearance_iuv, views, job_params, registry.entry(job_params.model).info["resolution"])
        report = described.pop("retarget", None)
        with admission.slot(store):  # the count and the insert together
            job = store.create(job_id, params=p, source=source, inputs=described, retarget=report,
                               client=principal.name, idempotency_key=idempotency_key, request_hash=digest,
                               tag=tag, priority=priority)
    except BaseException as exc:
        remove_job_files(store, job_id)
        if disk_full(exc):
            raise NoSpace(f"{NO_SPACE}: the server's disk is full; nothing was kept") from None
        raise
    if job["id"] != job_id:  # the same key won a race while the uploads were copied: that job, not this one
        remove_job_files(store, job_id)
        return _replayed(job, digest, response)
    return job_view(job)


def request_digest(source: str, files: dict[str, UploadFile | None], params: dict[str, Any],
                   **fields: Any) -> str:
    """SHA-256 over what makes a submit the request it is: the motion source, the params with defaults filled
    in, the other form fields, and every uploaded file's bytes (read, then rewound for the copy)."""
    h = hashlib.sha256(json.dumps({"source": source, "params": params, **fields}, sort_keys=True).encode())
    for name in sorted(files):
        upload = files[name]
        if upload is None:
            continue
        h.update(f"\0{name}\0".encode())
        upload.file.seek(0)
        while chunk := upload.file.read(1 << 20):
            h.update(chunk)
        upload.file.seek(0)
    return h.hexdigest()


def _replayed(job: dict[str, Any], digest: str | None, response: Response) -> dict[str, Any]:
    """The answer to a submit whose Idempotency-Key made ``job``: that job, or 422 for a different request."""
    if job.get("request_hash") != digest:
        raise ServiceError(f"Idempotency-Key: this key was used for another request (job {job['id']}); send a new "
                           "key for a new job", field="Idempotency-Key", status=422, code="idempotency_key_reused")
    response.headers["Idempotent-Replayed"] = "true"
    logger.info("job %s: a repeated submit (Idempotency-Key) answered with the existing job", job["id"])
    return job_view(job)


def _save_inputs(folder: Path, source: str, upload: UploadFile, appearance: UploadFile | None,
                 appearance_iuv: UploadFile | None, views: UploadFile | None, params: JobParams,
                 resolution: int) -> dict[str, Any]:
    """Copy and validate the uploads; returns what the worker needs to know about them."""
    p = params.model_dump()
    described: dict[str, Any] = {"source": source}
    if source == "posemaps" and p["plate"]:
        raise InvalidParams("params.plate: plates need a camera; pose-map uploads have none", field="params.plate")
    if source == "posemaps":
        archive = folder / "posemaps.zip"
        inputs.save_upload(upload.file, archive, "posemaps")
        described.update(inputs.extract_posemaps(archive, folder / "posemaps", p["iuv_order"]))
        archive.unlink()
    elif source == "motion":
        path = folder / "motion.npz"
        inputs.save_upload(upload.file, path, "motion")
        described.update(inputs.check_motion(path))
    else:
        path = folder / "skeleton.npz"
        inputs.save_upload(upload.file, path, "skeleton")
        found, report = inputs.retarget_skeleton(path, folder.parent / "clip.npz", p, resolution)
        described.update(found, retarget=report)
    params.window(int(described["frames"]))
    size = None
    if appearance is not None:
        inputs.save_upload(appearance.file, folder / "appearance.png", "appearance")
        # the whole shot-camera view, cut per frame window by the worker; else square like the networks
        shot = ((int(described["width"]), int(described["height"]))
                if p["appearance_frame"] is not None and wants_plates(p, described) else None)
        size = inputs.check_appearance(folder / "appearance.png", shot)
        described["appearance"] = True
    if appearance_iuv is not None:
        inputs.save_upload(appearance_iuv.file, folder / "appearance_iuv.png", "appearance_iuv")
        inputs.check_appearance_iuv(folder / "appearance_iuv.png", p["iuv_order"], size)
        described["appearance_iuv"] = True
    if views is not None:
        archive = folder / "views.zip"
        inputs.save_upload(views.file, archive, "views")
        shot = (int(described["width"]), int(described["height"])) if wants_plates(p, described) else None
        described["views"] = inputs.extract_views(archive, folder / "views", shot)
        archive.unlink()
        params.window(int(described["frames"]), described["views"])
    return described


@jobs_router.get("/jobs", response_model=JobList, summary="jobs, newest first: filtered, a page at a time")
def list_jobs(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="jobs per page")] = 100,
    state: Annotated[list[JobState] | None, Query(description="only jobs in these states (repeat the parameter "
                                                  "for several: ?state=queued&state=running)")] = None,
    tag: Annotated[str | None, Query(pattern=TAG_PATTERN, description="only jobs submitted with this tag")] = None,
    client: Annotated[str | None, Query(pattern=CLIENT_NAME_PATTERN,
                                        description="only jobs submitted with this token (its name)")] = None,
    cursor: Annotated[str | None, Query(max_length=200, description="next_cursor of the page before")] = None,
) -> dict[str, Any]:
    states = None if state is None else sorted(set(state))
    scope = _filter_scope(states, tag, client)
    before = None if cursor is None else _read_cursor(cursor, scope)
    jobs = store.list(limit + 1, states=states, tag=tag, client=client, before_seq=before)
    page = jobs[:limit]
    more = len(jobs) > limit
    return {"jobs": [job_view(j) for j in page], "next_cursor": _make_cursor(page[-1]["seq"], scope) if more else None}


def _filter_scope(states: list[str] | None, tag: str | None, client: str | None) -> str:
    """What a cursor is bound to: the filters of the listing that made it (8 hex digits of their hash)."""
    return hashlib.sha256(json.dumps([states, tag, client]).encode()).hexdigest()[:8]


def _make_cursor(seq: int, scope: str) -> str:
    """An opaque cursor: where the page ended and for which filters (base64url, no padding)."""
    return base64.urlsafe_b64encode(f"1.{seq}.{scope}".encode()).decode().rstrip("=")


def _read_cursor(cursor: str, scope: str) -> int:
    try:
        version, seq, made_for = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(".")
        value = int(seq)
        if version != "1" or not seq.isdigit() or value < 1:
            raise ValueError
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ServiceError("cursor: not a cursor this server made (pass next_cursor as it came)", field="cursor",
                           status=422, code="invalid_cursor") from None
    if made_for != scope:
        raise ServiceError("cursor: it belongs to a listing with other filters (state, tag, client); send the same "
                           "filters as the page before", field="cursor", status=422, code="invalid_cursor")
    return value


@jobs_router.get("/jobs/{job_id}", response_model=Job, summary="one job's state and progress")
def get_job(store: StoreDep, job_id: JobId) -> dict[str, Any]:
    return job_view(_get_job(store, job_id))


@jobs_router.get(
    "/jobs/{job_id}/events", summary="server-sent events: the job object each time it changes",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                     "description": "`event: job` with `data: <Job JSON>`; ends after a final state"}},
)
async def job_events(request: Request, store: StoreDep, job_id: JobId) -> StreamingResponse:
    _get_job(store, job_id)

    async def stream() -> AsyncIterator[str]:
        last, last_sent = -1, time.monotonic()
        stopping = request.app.state.stopping
        while not stopping.is_set() and not await request.is_disconnected():  # a stopping server ends it
            version = store.version(job_id)
            if version != last:
                last = version
                job = store.get(job_id)
                if job is None:
                    yield "event: deleted\ndata: {}\n\n"
                    return
                yield f"event: job\nid: {version}\ndata: {json.dumps(job_view(job))}\n\n"
                last_sent = time.monotonic()
                if job["state"] in FINAL_STATES:
                    return
            elif time.monotonic() - last_sent > SSE_PING_S:
                yield ": ping\n\n"
                last_sent = time.monotonic()
            await asyncio.sleep(SSE_POLL_S)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _file(store: JobStore, job_id: str, relative: str, what: str, media_type: str) -> FileResponse:
    job = _get_job(store, job_id)
    path = store.job_dir(job_id) / relative
    if not path.is_file():
        hint = "" if job["state"] in FINAL_STATES else " yet"
        raise NotFound(f"job {job_id} has no {what}{hint}", field=what.split()[0])
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


_PNG = {200: {"content": {"image/png": {}}, "description": "the PNG"}}


@jobs_router.get("/jobs/{job_id}/frames/{n}.png", response_class=FileResponse, responses=_PNG,
                 summary="generated frame n (RGB), as soon as it is written")
def frame(store: StoreDep, job_id: JobId, n: FrameIndex) -> FileResponse:
    return _file(store, job_id, f"frames/{n:06d}.png", f"frame {n}", "image/png")


@jobs_router.get("/jobs/{job_id}/posemaps/{n}.png", response_class=FileResponse, responses=_PNG,
                 summary="colour preview of pose map n, as soon as it is rendered")
def posemap(store: StoreDep, job_id: JobId, n: FrameIndex) -> FileResponse:
    return _file(store, job_id, f"posemaps/preview/{n:06d}.png", f"posemap {n}", "image/png")


@jobs_router.get("/jobs/{job_id}/plates/{n}.png", response_class=FileResponse, responses=_PNG,
                 summary="RGBA plate n at the shot camera's resolution (jobs with has_plates)")
def plate(store: StoreDep, job_id: JobId, n: FrameIndex) -> FileResponse:
    return _file(store, job_id, f"plates/{n:06d}.png", f"plate {n}", "image/png")


@jobs_router.get("/jobs/{job_id}/video.mp4", response_class=FileResponse,
                 responses={200: {"content": {"video/mp4": {}}, "description": "H.264 MP4"}},
                 summary="the frames as an MP4, once the job succeeded")
def video(store: StoreDep, job_id: JobId) -> FileResponse:
    return _file(store, job_id, "video.mp4", "video", "video/mp4")


@jobs_router.post("/jobs/{job_id}/cancel", response_model=Job, responses={409: {**_ERRORS}, **_OWNER},
                  dependencies=[Depends(require_submit)], openapi_extra=SUBMIT_ROLE,
                  summary="cancel a queued or running job (a running sampler stops within one step)")
def cancel(store: StoreDep, worker: WorkerDep, job_id: JobId, principal: PrincipalDep) -> dict[str, Any]:
    job = _get_job(store, job_id)
    check_owner(principal, job, "cancel")
    if job["state"] in ("succeeded", "failed"):
        raise Conflict(f"job {job_id} already {job['state']}", field="job_id")
    if job["state"] == "queued":
        job = store.cancel_queued(job_id) or _get_job(store, job_id)
    if job["state"] == "running":
        job = store.update(job_id, cancel_requested=True)
        worker.cancel(job_id)
        logger.info("job %s: cancel requested", job_id)
    return job_view(job)


@jobs_router.post(
    "/jobs/{job_id}/retry", response_model=Job, status_code=202,
    dependencies=[Depends(require_submit)], openapi_extra=SUBMIT_ROLE,
    responses={409: {**_ERRORS, "description": "the job did not fail and was not cancelled, or its inputs are gone"},
               429: {**_ERRORS, "description": "the queue is full; retry after Retry-After seconds"}, **_OWNER},
    summary="put a failed or cancelled job back in the queue (same id, same inputs and params)",
)
def retry(store: StoreDep, admission: AdmissionDep, job_id: JobId, principal: PrincipalDep,
          priority: Annotated[int | None, Query(ge=limits.MIN_PRIORITY, le=limits.MAX_PRIORITY,
                                                description="a new priority (default: the job's own)")] = None,
          ) -> dict[str, Any]:
    job = _get_job(store, job_id)
    check_owner(principal, job, "retry")
    if job["state"] not in ("failed", "cancelled"):
        raise Conflict(f"job {job_id} is {job['state']}; only a failed or cancelled job can be retried", field="job_id")
    missing = _missing_inputs(store, job)
    if missing:
        raise Conflict(f"job {job_id} cannot be retried: its {missing} is gone (the job was abandoned or its disk "
                       "cleaned); submit it again", field="job_id")
    with admission.slot(store):
        if job["state"] == "failed":  # a failed run's files are not trusted; a cancelled one resumes from its own
            Worker.remove_outputs(store, job_id)
        requeued = store.requeue(job_id, priority)
    if requeued is None:  # it changed state meanwhile (deleted, retried by another client)
        job = _get_job(store, job_id)
        raise Conflict(f"job {job_id} is {job['state']}; only a failed or cancelled job can be retried", field="job_id")
    logger.info("job %s: retried (%d)", job_id, requeued["retries"])
    return job_view(requeued)


def _missing_inputs(store: JobStore, job: dict[str, Any]) -> str | None:
    """What of a job's inputs is no longer on disk (the worker needs them to run it again), or None."""
    folder = store.job_dir(job["id"])
    needed = {"motion": folder / "input" / "motion.npz", "skeleton": folder / "clip.npz",
              "posemaps": folder / "input" / "posemaps"}[job["source"]]
    if not needed.exists():
        return {"motion": "motion upload", "skeleton": "retargeted clip", "posemaps": "pose maps"}[job["source"]]
    if job["inputs"].get("appearance") and not (folder / "input" / "appearance.png").is_file():
        return "appearance image"
    if job["inputs"].get("appearance_iuv") and not (folder / "input" / "appearance_iuv.png").is_file():
        return "appearance IUV map"
    if any(not (folder / "input" / "views" / f"{k:06d}.png").is_file() for k in job["inputs"].get("views", ())):
        return "views"
    return None


@jobs_router.delete("/jobs/{job_id}", status_code=204, response_class=Response,
                    responses={409: {**_ERRORS}, **_OWNER}, dependencies=[Depends(require_submit)], openapi_extra=SUBMIT_ROLE,
                    summary="remove a finished job and its files")
def delete(store: StoreDep, job_id: JobId, principal: PrincipalDep) -> Response:
    job = _get_job(store, job_id)
    check_owner(principal, job, "delete")
    if job["state"] not in FINAL_STATES:
        raise Conflict(f"job {job_id} is {job['state']}; cancel it first", field="job_id")
    store.delete(job_id)
    remove_job_files(store, job_id)
    logger.info("job %s: deleted", job_id)
    return Response(status_code=204)


# ---------------------------------------------------------------------------- errors, logging, the app
async def _btdm_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BtdmError)
    if isinstance(exc, ServiceError):
        return error_response(exc.status, exc.code, public(exc.message), exc.field, exc.headers)
    return error_response(400, "invalid_input", public(str(exc)))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query", "header")]
    field = ".".join(loc) or None
    return error_response(422, "invalid_request", f"{field or 'request'}: {first.get('msg')}", field)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized"}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, BtdmError):
        return await _btdm_error(request, exc.__cause__)
    if exc.status_code == 413:
        message = f"the request is larger than the {limits.MAX_REQUEST_BYTES // limits.MiB} MiB limit"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "bad_request"), message,
                          headers=getattr(exc, "headers", None))


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s: unhandled %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
    return error_response(500, "internal", f"internal server error ({type(exc).__name__}); this is a bug")


class _RequestLog:
    """ASGI middleware: one log line per request (method, path, status, duration)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_logged(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            logger.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, (time.perf_counter() - t0) * 1e3)


def create_app(store: JobStore, worker: Worker, registry: ModelRegistry, *, token: str | None = None,
               tokens: Sequence[ApiToken] = (), max_queued: int = 100, device: str = "cpu", device_name: str = "CPU",
               retry_after_s: int = 10, start_worker: bool = True, preload: tuple[str, ...] = (),
               tls: bool = False) -> FastAPI:
    """The API v1 application around an existing store, worker and model registry.

    ``token`` is an ``admin`` token named ``admin``; ``tokens`` more, with their roles (:mod:`.auth`);
    neither: a server without tokens (loopback only). With ``start_worker`` the app's lifespan starts
    the worker (loading the ``preload`` models) and stops it at shutdown. ``tls``: the server speaks
    HTTPS (a browser's ``Origin`` is then ``https://``).
    """
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The worker runs while the server serves. On shutdown (SIGINT / SIGTERM) its running job is
        # interrupted within one network step and goes back to the queue, before uvicorn exits.
        if start_worker:
            worker.start(preload=preload)
        try:
            yield
        finally:
            app.state.stopping.set()
            if start_worker:
                await asyncio.to_thread(worker.stop)

    app = FastAPI(
        lifespan=lifespan,
        title="BTDM engine service", version=__version__,
        description="API v1 of `btdm serve`: submit motions, follow jobs, fetch pose maps, frames, plates and "
                    "videos. Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`.",
    )
    # what the dependencies of .deps hand the endpoints (app.dependency_overrides replaces any of them)
    app.state.store, app.state.worker, app.state.registry = store, worker, registry
    app.state.settings = settings = ServiceSettings(
        token=token, tokens=tuple(tokens), max_queued=max_queued, device=device, device_name=device_name,
        retry_after_s=retry_after_s, worker_started=start_worker)
    app.state.admission = Admission(max_queued, retry_after_s)
    # set when the server is asked to stop: event streams end then (a client reconnects, or polls, and
    # rides out the restart), so the open connections close at once instead of holding the shutdown
    app.state.stopping = threading.Event()
    app.state.metrics = ServiceMetrics(store, lambda: [w.health() for w in worker.workers()], lambda: worker.store_error)
    for member in worker.workers():
        member.metrics = app.state.metrics
    for router in (health_router, models_router, jobs_router, metrics_router):
        app.include_router(router)
    app.add_exception_handler(BtdmError, _btdm_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _bug)
    app.add_middleware(RequestGuard, tokens=settings.auth, retry_after_s=retry_after_s, tls=tls)
    app.openapi = functools.partial(_openapi, app, app.openapi, bool(settings.auth))
    app.add_middleware(_RequestLog)
    return app


def _openapi(app: FastAPI, build: Callable[[], dict[str, Any]], auth: bool) -> dict[str, Any]:
    """FastAPI's document; without tokens it declares no security (every operation is open on loopback)."""
    if app.openapi_schema is None:
        schema = build()
        if not auth:
            schema.get("components", {}).pop("securitySchemes", None)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if isinstance(operation, dict):
                        operation.pop("security", None)
                        operation.get("responses", {}).pop("401", None)
        app.openapi_schema = schema
    return app.openapi_schema


__all__ = ["ERROR_RESPONSES", "ModelInfo", "QueueCounts", "bearer_auth", "create_app", "job_view"]
