"""Pydantic models for every request and response of API v1: ``/openapi.json`` is built from these.

Field names are the contract the add-on and headless batches use (``docs/architecture.md``):
extend, never rename.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from btdm_engine.dataconfig import is_int
from btdm_engine.jobspec import JobSpec
from btdm_engine.limits import JOB_LIMITS
from btdm_engine.service import limits
from btdm_engine.service.errors import InvalidParams, ServiceError

JOB_FIELDS = tuple(f.name for f in dataclasses.fields(JobSpec))
# How the service names the fields jobspec's rules speak of (JobSpec.fault).
RULE_NAMES = {"appearance": "appearance", "appearance_iuv": "appearance_iuv", "frame_start": "frame_start",
              "appearance_frame": "params.appearance_frame", **{n: f"params.{n}" for n in JOB_FIELDS}}
_DEFAULT = JobSpec()  # every generation key's default and bounds: btdm_engine.jobspec / limits.JOB_LIMITS

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: tuple[str, ...] = ("succeeded", "failed", "cancelled")
Stage = Literal["posemaps", "finetune", "btunet", "sr3", "writing"]
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
"""An ``Idempotency-Key`` header: 1..255 visible ASCII characters (a UUID, a shot name and a take, ...)."""
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$"
"""A job's ``tag`` (a show, a shot, a batch): 1..128 of A-Z a-z 0-9 _ . : / @ + -, starting alphanumeric."""
CLIENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
"""A token's name (``btdm serve --token-file``), which a job records as its ``client``."""


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. invalid_input, not_found, queue_full")
    message: str = Field(description="what is wrong, naming the file or field")
    field: str | None = Field(default=None, description="the form field or params key at fault")


class ErrorResponse(BaseModel):
    """Every 4xx (and the 5xx that would be a bug) has this body."""

    error: ErrorBody


REFUSED = "job_request"
"""The pydantic error type of :class:`JobParams`' cross-field checks; its ``ctx`` carries the
service error's ``message``, ``field``, ``status`` and ``code`` (:func:`parse_params` raises it)."""


def _refused(message: str, field: str, error: type[ServiceError] = InvalidParams) -> PydanticCustomError:
    return PydanticCustomError(REFUSED, "{message}", {"message": message, "field": field, "status": error.status,
                                                      "code": error.code})


@dataclass(frozen=True)
class SubmitContext:
    """What :class:`JobParams`' cross-field checks read besides the params (the validation context
    of ``POST /v1/jobs``): the form's files and the facts of the model the params name.

    ``model_info(name)`` answers a :class:`ModelInfo`-shaped mapping (``name``, ``has_sr3``,
    ``texture_prior``, ``has_default_appearance``) or raises a :class:`ServiceError` for an
    unknown model (``ModelRegistry.entry``).
    """

    files: frozenset[str]
    model_info: Callable[[str], Mapping[str, Any]]


class JobParams(BaseModel):
    """The ``params`` form field of ``POST /v1/jobs``: a JSON object, every key optional.

    The generation keys mirror ``btdm animate``; ``skeleton``, ``bone_map``, ``scale``, ``up`` and
    ``fit_shape`` apply to ``skeleton`` uploads only and are passed to
    ``btdm_engine.motion.retarget.to_motion_clip``. Unknown keys are refused.

    Validated with a :class:`SubmitContext`, the keys are checked against each other, the files
    sent and the model (:meth:`_fits_the_request`); :meth:`window` checks the frame keys once the
    source's length is known.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(default="default", pattern=MODEL_NAME_PATTERN, description="a name from GET /v1/models")
    steps: int = Field(default=_DEFAULT.steps, ge=JOB_LIMITS["steps"][0], le=JOB_LIMITS["steps"][1],
                       description="BTU-Net denoising steps")
    sr_steps: int | None = Field(default=_DEFAULT.sr_steps, ge=JOB_LIMITS["sr_steps"][0], le=JOB_LIMITS["sr_steps"][1],
                                 description="SR3 denoising steps (default: steps)")
    seed: int = Field(default=_DEFAULT.seed, ge=JOB_LIMITS["seed"][0], le=JOB_LIMITS["seed"][1],
                      description="same seed, same frames")
    finetune_steps: int = Field(default=_DEFAULT.finetune_steps, ge=JOB_LIMITS["finetune_steps"][0],
                                le=JOB_LIMITS["finetune_steps"][1],
                                description="single-image fine-tuning iterations (needs appearance + appearance_iuv or "
                                "appearance_frame)")
    finetune_lr: float = Field(default=_DEFAULT.finetune_lr, gt=JOB_LIMITS["finetune_lr"][0],
                               le=JOB_LIMITS["finetune_lr"][1])
    appearance_frame: int | None = Field(
        default=None, ge=0, le=limits.MAX_FRAMES,
        description="the appearance image shows the body as it is at this frame of the job (zero-based from "
        "frame_start): for a job with plates, the whole shot-camera view at that frame (the camera's aspect, any "
        "size: a render of the scene, or a photo the armature was posed to match), which the engine cuts with "
        "that frame's window; otherwise an image framed like the pose maps. Fine-tuning then uses that frame's "
        "pose map as the image's IUV map g(c), so no appearance_iuv is needed")
    method: Literal["diffusion", "texture"] = Field(
        default=_DEFAULT.method, description="diffusion: the model's BTU-Net + SR3; texture: the appearance's pixels "
        "moved onto every pose map through the UV atlas (DensePose texture transfer, no network: seconds, an instant "
        "preview at the model's output size); needs the appearance's IUV map (appearance_iuv, appearance_frame, or "
        "the model's own appearance)")
    sampler: Literal["bidirectional", "unidirectional"] = _DEFAULT.sampler
    eta: float = Field(default=_DEFAULT.eta, ge=JOB_LIMITS["eta"][0], le=JOB_LIMITS["eta"][1],
                       description="0 = DDIM, 1 = ancestral sampling")
    noise: Literal["shared", "independent"] = Field(
        default=_DEFAULT.noise, description="noise across frames, both stages: one draw every frame shares (far less "
        "flicker) or one per frame (algorithm 1 read literally)")
    max_batch: int | None = Field(default=_DEFAULT.max_batch, ge=JOB_LIMITS["max_batch"][0],
                                  le=JOB_LIMITS["max_batch"][1], description="frames per network call")
    frame_start: int = Field(default=0, ge=0, le=limits.MAX_FRAMES * 100,
                             description="first source frame to generate (zero-based)")
    frame_end: int | None = Field(default=None, ge=1, le=limits.MAX_FRAMES * 100,
                                  description="one past the last source frame (default: the end)")
    fps: float | None = Field(default=_DEFAULT.fps, ge=JOB_LIMITS["fps"][0], le=JOB_LIMITS["fps"][1],
                              description="video frame rate (default: the clip's, 30 for pose maps)")
    iuv_order: Literal["btdm", "densepose"] = Field(
        default=_DEFAULT.iuv_order, description="channel layout of uploaded IUV PNGs (posemaps zip, appearance_iuv)")
    use_default_appearance: bool = Field(
        default=True, description="with the embedded model and no appearance upload, use its own appearance image")
    video: bool = Field(default=True, description="write video.mp4 when the frames are done")
    plate: bool | None = Field(
        default=None, description="render through square windows that follow the body and write RGBA plates at the "
        "camera's resolution (btdm animate --plate); default: yes for a shot camera or a camera that is not square")
    # skeleton jobs (retargeting)
    skeleton: str = Field(default="auto", min_length=1, max_length=limits.MAX_NAME_CHARS,
                          pattern=r"^[A-Za-z0-9_.-]+$", description="bone-map preset name")
    bone_map: dict[str, str | None] | None = Field(default=None, max_length=limits.MAX_BONE_MAP_ENTRIES,
                                                   description="{smpl_joint_name: bone_name or null}")
    scale: float | None = Field(default=None, gt=0.0, le=1e6, description="metres per skeleton unit")
    up: Literal["Y", "Z"] | None = None
    fit_shape: bool | None = None

    @field_validator("finetune_lr", "eta", "fps", "scale", mode="before")
    @classmethod
    def _numbers_may_be_ints(cls, value: Any) -> Any:
        # strict mode refuses 1 for a float field; JSON has one number type.
        if not is_int(value):
            return value
        try:
            return float(value)
        except OverflowError:
            raise ValueError("a number this large is out of range") from None

    @field_validator("bone_map")
    @classmethod
    def _bone_names(cls, value: dict[str, str | None] | None) -> dict[str, str | None] | None:
        for key, bone in (value or {}).items():
            if not (0 < len(key) <= limits.MAX_NAME_CHARS and (bone is None or 0 < len(bone) <= limits.MAX_NAME_CHARS)):
                raise ValueError(f"bone_map entries must be 1..{limits.MAX_NAME_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _fits_the_request(self, info: ValidationInfo) -> Self:
        """The cross-field rules of a job, in the order a client meets them: the model exists; the
        appearance's IUV map comes from exactly one place and something uses it; fine-tuning and
        ``method: texture`` have an IUV map to read; ``sr_steps`` has an SR3 stage to drive."""
        ctx = info.context
        if not isinstance(ctx, SubmitContext):
            return self
        try:
            model = ctx.model_info(self.model)
        except ServiceError as exc:
            raise _refused(exc.message, exc.field or "params.model", type(exc)) from None
        appearance = "appearance" in ctx.files
        fault = self.spec().fault(
            RULE_NAMES, appearance=appearance, appearance_iuv="appearance_iuv" in ctx.files,
            appearance_frame=self.appearance_frame,
            own_appearance=not appearance and self.use_default_appearance and model["has_default_appearance"],
            model=f"model {model['name']}", has_sr3=model["has_sr3"], texture_prior=model["texture_prior"],
            view_frames=(0,) if "views" in ctx.files else ())  # their frames: window(), once the zip is read
        if fault is not None:  # jobspec.RULES, the CLI's and the Animator's rules, in the service's words
            raise _refused(fault.message, fault.field,
                           ServiceError if fault.rule == "iuv_without_appearance" else InvalidParams)
        return self

    def window(self, frames: int, view_frames: Sequence[int] = ()) -> tuple[int, int]:
        """The source frames ``[start, stop)`` the job generates, from ``frame_start`` / ``frame_end``
        against the source's ``frames``; :class:`InvalidParams` naming the key when they do not fit,
        when the window is over ``MAX_FRAMES`` or ``appearance_frame`` or one of ``view_frames`` (the
        views zip's) falls outside it."""
        start, end = self.frame_start, self.frame_end
        stop = frames if end is None else end
        if start >= frames:
            raise InvalidParams(f"params.frame_start {start} is past the source's last frame ({frames - 1})",
                                field="params.frame_start")
        if not start < stop <= frames:
            raise InvalidParams(f"params.frame_end {end} must lie in {start + 1}..{frames}", field="params.frame_end")
        if stop - start > limits.MAX_FRAMES:
            raise InvalidParams(f"{stop - start} frames; a job may generate at most {limits.MAX_FRAMES} (send a "
                                "shorter range: params frame_start / frame_end, or a shorter scene frame range in "
                                "Blender)", field="params.frame_end")
        fault = self.spec().fault(RULE_NAMES, appearance_frame=self.appearance_frame, frames=stop - start,
                                  view_frames=view_frames)
        if fault is not None:
            raise InvalidParams(fault.message, field=fault.field)
        return start, stop

    def spec(self) -> JobSpec:
        """These params' generation keys as the engine's one job specification."""
        return JobSpec(**{n: getattr(self, n) for n in JOB_FIELDS})


def parse_params(text: str | None, context: SubmitContext | None = None) -> JobParams:
    """The ``params`` form field -> :class:`JobParams` (empty: every default), checked against
    ``context`` when given; :class:`InvalidParams` (or the :class:`ServiceError` a cross-field
    rule names) for the first fault, naming ``params`` or ``params.<key>``."""
    if text is None or not text.strip():
        raw: Any = {}
    else:
        if len(text.encode("utf-8", "surrogateescape")) > limits.MAX_PARAMS_BYTES:
            raise InvalidParams(f"params: larger than {limits.MAX_PARAMS_BYTES} bytes", field="params")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidParams(f"params: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                                field="params") from None
        except RecursionError:
            raise InvalidParams("params: nested too deeply", field="params") from None
        except ValueError as exc:  # an integer over Python's digit limit, ...
            raise InvalidParams(f"params: invalid JSON: {str(exc)[:200]}", field="params") from None
        if not isinstance(raw, dict):
            raise InvalidParams(f"params: expected a JSON object, got {type(raw).__name__}", field="params")
    try:
        return JobParams.model_validate(raw, context=context)
    except RecursionError:
        raise InvalidParams("params: nested too deeply", field="params") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == REFUSED:
            ctx = first["ctx"]
            raise ServiceError(ctx["message"], field=ctx["field"], status=ctx["status"], code=ctx["code"]) from None
        where = ".".join(str(p) for p in first["loc"])
        allowed = f"; allowed keys: {', '.join(JobParams.model_fields)}" if first["type"] == "extra_forbidden" else ""
        raise InvalidParams(f"params.{where}: {first['msg']}{allowed}", field=f"params.{where}") from None


class Job(BaseModel):
    """A job as ``GET /v1/jobs/{id}`` and its events show it."""

    id: str = Field(description="32 hex digits")
    state: JobState
    stage: Stage | None = Field(default=None, description="what the running job does now")
    step: int = Field(default=0, description="step within the stage")
    total: int | None = Field(default=None, description="steps in the stage")
    frames_done: int = Field(default=0, description="frames written (frames/{n}.png for n < frames_done)")
    frames_total: int | None = Field(default=None, description="frames the job will write")
    posemaps_done: int = Field(default=0, description="pose maps rendered (posemaps/{n}.png for n < posemaps_done)")
    eta_s: float | None = Field(default=None, description="seconds to the end, estimated; null when unknown")
    error: str | None = Field(default=None, description="why the job failed")
    created: float = Field(description="Unix time of submission")
    started: float | None = Field(default=None, description="Unix time the (last) run started")
    finished: float | None = None
    params: dict[str, Any] = Field(description="the params the job runs with, defaults filled in")
    source: Literal["motion", "skeleton", "posemaps"]
    attempts: int = Field(default=0, description="runs started (a restart after a crash adds one)")
    cancel_requested: bool = False
    has_video: bool = False
    has_plates: bool = False
    plate_width: int | None = None
    plate_height: int | None = None
    width: int | None = Field(default=None, description="frame size in pixels (square frames)")
    height: int | None = None
    retarget: dict[str, Any] | None = Field(default=None, description="skeleton jobs: the retargeting report")
    priority: int = Field(default=0, description="higher runs first; first come, first served within a priority")
    tag: str | None = Field(default=None, description="the tag the job was submitted with (GET /v1/jobs?tag=)")
    client: str | None = Field(default=None, description="the name of the token that submitted the job (never the "
                               "token); null on a server without tokens")
    idempotency_key: str | None = Field(default=None, description="the Idempotency-Key header the job was "
                                        "submitted with")
    retries: int = Field(default=0, description="times the job was put back in the queue by POST "
                         "/v1/jobs/{id}/retry")
    worker: str | None = Field(default=None, description="the worker that runs (ran) the job's last run: its "
                               "name@device (btdm serve --workers, --device cuda:0,cuda:1)")


class JobList(BaseModel):
    jobs: list[Job] = Field(description="newest first")
    next_cursor: str | None = Field(default=None, description="pass as ?cursor= (with the same filters) for the next "
                                    "page; null on the last page")


class ModelInfo(BaseModel):
    name: str
    preset: str | None = Field(description="model preset of the BTU-Net (tiny, tiny-warp, base, paper) when recorded")
    resolution: int = Field(description="output frame size (SR3's when present)")
    low_resolution: int = Field(description="the BTU-Net's frame size")
    has_sr3: bool
    takes_appearance: bool = Field(description="trained with an appearance image c (single-image task)")
    has_default_appearance: bool = Field(description="ships an appearance image used when none is uploaded")
    task: str | None = None
    texture_prior: bool = Field(False, description="the networks take the texture-transfer prior (w_t from the "
                                "appearance and its IUV map: appearance_iuv, or params.appearance_frame)")
    loaded: bool = Field(description="kept in memory by the worker")


class ModelList(BaseModel):
    models: list[ModelInfo]


class QueueCounts(BaseModel):
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class StoreHealth(BaseModel):
    ok: bool = Field(description="false while the job store's last write failed (a full disk, ...)")
    free_bytes: int | None = Field(default=None, description="free space where the job files live")
    error: str | None = Field(default=None, description="the last write error, while it lasts")


class WorkerHealth(BaseModel):
    alive: bool = Field(description="whether the worker thread runs")
    state: Literal["idle", "running", "store_error", "stopped", "unavailable"] = Field(
        description="unavailable: a Ray worker whose actor does not answer (its node was lost; Ray restarts it)")
    job: str | None = Field(default=None, description="the running job")
    last_error: str | None = Field(default=None, description="why the last job failed, if it did")
    device: str | None = Field(default=None, description="where it runs jobs (cpu, cuda:0, ...; a pool: each device)")
    name: str | None = Field(default=None, description="the worker's thread name (pool: several workers)")


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded: the store cannot write or the worker stopped")
    version: str
    api_version: int
    device: str = Field(description="cpu, cuda:0, ...")
    device_name: str
    models: list[str]
    queue: QueueCounts
    max_queued: int
    max_frames: int = Field(description="the most frames one job may generate (frame_end - frame_start)")
    auth: bool = Field(description="whether the other endpoints need a bearer token")
    store: StoreHealth | None = None
    worker: WorkerHealth | None = Field(default=None, description="the workers together (btdm serve --workers): "
                                        "alive while every one is, running while any runs a job")
    workers: list[WorkerHealth] | None = Field(default=None, description="each worker")


class Caller(BaseModel):
    """``GET /v1/whoami``: the token a request came with."""

    client: str | None = Field(description="the token's name (what the jobs it submits record); null on a server "
                               "without tokens")
    role: Literal["read", "submit", "admin"] = Field(description="read: GET only; submit: also submit, and cancel, "
                                                     "retry, delete its own jobs; admin: everything")


class Bounds(BaseModel):
    min: int | float
    max: int | float


class Limits(BaseModel):
    """``GET /v1/limits``: what a job's ``params`` may ask for, as the CLI and the Animator check it too
    (``btdm_engine.jobspec.JobSpec``, ``btdm_engine.limits.JOB_LIMITS``): clients validate with these
    numbers instead of keeping their own."""

    defaults: dict[str, Any] = Field(description="each generation key's default when params leaves it out")
    limits: dict[str, Bounds] = Field(description="each numeric key's lowest and highest value (finetune_lr: > min)")
    choices: dict[str, list[str]] = Field(description="the allowed values of each choice key")
    max_frames: int = Field(description="frames one job may generate")
