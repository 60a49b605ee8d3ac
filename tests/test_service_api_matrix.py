"""The engine service's 4xx matrix, in process: FastAPI's TestClient against the real app.

``create_app`` with a real :class:`JobStore` on ``tmp_path``, the real :class:`ModelRegistry`
(the embedded model, and a ``plain`` model folder that has no SR3, no texture-transfer prior and no
appearance of its own) and a real :class:`Worker` that is not started, so submitted jobs stay
queued. Each test asserts the status, the error code and the ``field`` a client is told;
``app.dependency_overrides`` swaps the settings, the registry or the worker where that is what the
test is about. The real subprocess servers (SIGKILL and resume, SSE, uploads cut while they stream)
stay in ``test_service*.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from btdm_engine.jobspec import limits_document
from btdm_engine.limits import JOB_LIMITS
from btdm_engine.service import limits
from btdm_engine.service.app import create_app
from btdm_engine.service.deps import ServiceSettings, get_registry, get_settings, get_worker
from btdm_engine.service.schemas import REFUSED, JobParams, SubmitContext
from btdm_engine.service.store import JobStore
from btdm_engine.service.worker import ModelRegistry, Worker

TOKEN = "matrix-token-0123456789"
NO_JOB = "0" * 32
FRAMES = 6  # the test clip's length


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from btdm_engine.motion.library import make_motion

    path = make_motion("walk", seconds=FRAMES / 30, fps=30).save(tmp_path_factory.mktemp("clip") / "walk.npz")
    return path.read_bytes()


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder the registry reads like any other: the embedded BTU-Net's config without the
    texture-transfer prior, and no SR3 (the registry reads configs only until a job runs)."""
    from btdm_engine.weights import DEFAULT_MODEL_DIR

    folder = tmp_path_factory.mktemp("plain")
    config = json.loads((DEFAULT_MODEL_DIR / "btunet" / "config.json").read_text())
    config["model"]["warp_channels"] = 0
    (folder / "btunet").mkdir()
    (folder / "btunet" / "config.json").write_text(json.dumps(config))
    return folder


class Service:
    """The app, its store and registry, and a TestClient that talks to it as 127.0.0.1."""

    def __init__(self, tmp_path: Path, plain_model: Path, **app_kw: Any) -> None:
        self.store = JobStore(tmp_path / "data")
        self.registry = ModelRegistry.with_default("cpu", {"plain": plain_model})
        self.worker = Worker(self.store, self.registry)
        self.app: FastAPI = create_app(self.store, self.worker, self.registry, start_worker=False, **app_kw)
        self.token = app_kw.get("token")
        self.client = TestClient(self.app, base_url="http://127.0.0.1")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def submit(self, params: str | dict[str, Any] | None = None, **files: bytes) -> Any:
        data = {} if params is None else {"params": params if isinstance(params, str) else json.dumps(params)}
        upload = {name: (f"{name}.bin", blob, "application/octet-stream") for name, blob in files.items()}
        return self.client.post("/v1/jobs", files=upload, data=data, headers=self.headers())

    def nothing_kept(self) -> bool:
        jobs = self.store.data / "jobs"
        return self.store.counts()["queued"] == 0 and (not jobs.exists() or not any(jobs.iterdir()))

    def close(self) -> None:
        self.client.close()
        self.store.close()


@pytest.fixture()
def service(tmp_path: Path, plain_model: Path) -> Iterator[Service]:
    svc = Service(tmp_path, plain_model)
    yield svc
    svc.close()


def refused(response: Any, status: int, field: str | None, code: str | None = None) -> str:
    """Assert the one error shape; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["field"] == field, body
    if code is not None:
        assert body["error"]["code"] == code, body
    assert body["error"]["message"], body
    return body["error"]["message"]


def png(shape: tuple[int, ...]) -> bytes:
    ok, buf = cv2.imencode(".png", np.zeros(shape, np.uint8))
    assert ok
    return buf.tobytes()


def operations(app: FastAPI, job_id: str = NO_JOB) -> list[tuple[str, str]]:
    """(method, path) of every API operation in /openapi.json, path parameters filled in."""
    found = []
    for path, methods in app.openapi()["paths"].items():
        for method in methods:
            found.append((method.upper(), path.replace("{job_id}", job_id).replace("{n}", "0")))
    return found


# ---------------------------------------------------------------------------- auth
def test_every_operation_but_health_needs_the_token(tmp_path: Path, plain_model: Path) -> None:
    svc = Service(tmp_path, plain_model, token=TOKEN)
    try:
        ops = operations(svc.app)
        assert len(ops) == 16 and ("GET", "/v1/health") in ops
        for method, path in ops:
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"},
                            {"Authorization": f"Bearer {TOKEN}x"}):
                response = svc.client.request(method, path, headers=headers)
                if path == "/v1/health":
                    assert response.status_code == 200 and response.json()["auth"] is True
                    continue
                refused(response, 401, None, "unauthorized")
                assert response.headers["WWW-Authenticate"] == "Bearer"
        assert svc.client.get("/v1/models", headers=svc.headers()).status_code == 200
        assert svc.client.get("/v1/jobs", headers=svc.headers()).json() == {"jobs": [], "next_cursor": None}
    finally:
        svc.close()


def test_bearer_auth_reads_the_settings_dependency(service: Service) -> None:
    # The guard of this app has no token; with the settings overridden the routers' own
    # dependency refuses (and /v1/health, which reads the same settings, says so).
    assert service.client.get("/v1/models").status_code == 200
    service.app.dependency_overrides[get_settings] = lambda: ServiceSettings(token=TOKEN, max_queued=7,
                                                                            worker_started=False)
    refused(service.client.get("/v1/models"), 401, None, "unauthorized")
    refused(service.client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}), 401, None, "unauthorized")
    assert service.client.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    health = service.client.get("/v1/health").json()
    assert (health["auth"], health["max_queued"]) == (True, 7)
    service.app.dependency_overrides.clear()
    assert service.client.get("/v1/models").status_code == 200
    assert service.client.get("/v1/health").json()["auth"] is False


def test_without_a_token_other_hosts_and_web_pages_are_refused(service: Service) -> None:
    refused(service.client.get("/v1/models", headers={"Host": "evil.example"}), 403, "Host", "forbidden_host")
    refused(service.client.get("/v1/models", headers={"Origin": "http://evil.example"}), 403, "Origin", "cross_origin")
    assert service.client.get("/v1/models", headers={"Origin": "http://127.0.0.1"}).status_code == 200


# ---------------------------------------------------------------------------- paths
def test_unknown_job_is_404_on_every_job_operation(service: Service) -> None:
    ops = [(m, p) for m, p in operations(service.app) if NO_JOB in p]
    assert len(ops) == 9
    for method, path in ops:
        message = refused(service.client.request(method, path), 404, "job_id", "not_found")
        assert f"job {NO_JOB} does not exist" == message, (method, path)


@pytest.mark.parametrize("job_id", ["XYZ", "0" * 31, "0" * 33, "A" * 32, "g" * 32])
def test_malformed_job_id_is_422_on_every_job_operation(service: Service, job_id: str) -> None:
    for method, path in operations(service.app, job_id):
        if "/jobs/" in path:
            message = refused(service.client.request(method, path), 422, "job_id", "invalid_request")
            assert message.startswith("job_id: "), message


def test_bad_frame_index_limit_and_unknown_paths(service: Service) -> None:
    for kind in ("frames", "posemaps", "plates"):
        assert "greater than or equal to 0" in refused(
            service.client.get(f"/v1/jobs/{NO_JOB}/{kind}/-1.png"), 422, "n", "invalid_request")
        refused(service.client.get(f"/v1/jobs/{NO_JOB}/{kind}/{limits.MAX_FRAMES}.png"), 422, "n", "invalid_request")
        refused(service.client.get(f"/v1/jobs/{NO_JOB}/{kind}/x.png"), 422, "n", "invalid_request")
    for value in (0, 1001, "many"):
        refused(service.client.get("/v1/jobs", params={"limit": value}), 422, "limit", "invalid_request")
    refused(service.client.get("/v1/nope"), 404, None, "not_found")
    refused(service.client.put("/v1/jobs"), 405, None, "method_not_allowed")


# ---------------------------------------------------------------------------- POST /v1/jobs: the files
def test_exactly_one_motion_source(service: Service, clip: bytes) -> None:
    cases = {
        "none": {},
        "motion, posemaps": {"motion": clip, "posemaps": b"PK"},
        "motion, skeleton": {"motion": clip, "skeleton": clip},
        "motion, skeleton, posemaps": {"motion": clip, "skeleton": clip, "posemaps": b"PK"},
    }
    for got, files in cases.items():
        message = refused(service.submit(**files), 400, "motion", "invalid_input")
        assert message.endswith(f"got {got}"), message
    # checked before the params: a request without a source is told so even with broken params
    refused(service.submit("{", appearance=png((8, 8, 3))), 400, "motion", "invalid_input")
    assert service.nothing_kept()


def test_bad_uploads_name_their_field(service: Service, clip: bytes) -> None:
    refused(service.submit(motion=b"not a zip"), 400, "motion", "invalid_input")
    refused(service.submit(posemaps=b"PK\x03\x04 truncated"), 400, "posemaps", "invalid_input")
    refused(service.submit(skeleton=clip), 400, "skeleton", "invalid_input")
    refused(service.submit(motion=clip, appearance=b"GIF89a not a png"), 400, "appearance", "invalid_input")
    refused(service.submit(motion=clip, appearance=png((8, 12, 3))), 400, "appearance", "invalid_input")
    big = b"\0" * (limits.MAX_UPLOAD_BYTES["appearance"] + 1)
    refused(service.submit(motion=clip, appearance=big), 413, "appearance", "too_large")
    assert service.nothing_kept()


# ---------------------------------------------------------------------------- POST /v1/jobs: the params
def _outside(name: str) -> tuple[float, float]:
    """A value just under and one just over JOB_LIMITS[name] (finetune_lr's lower bound is open)."""
    lo, hi = JOB_LIMITS[name]
    if isinstance(hi, float):
        return (lo if name == "finetune_lr" else lo / 2 if lo > 0 else lo - 0.5), hi * 2
    return lo - 1, hi + 1


@pytest.mark.parametrize("name", sorted(JOB_LIMITS))
def test_each_out_of_range_param_is_named(service: Service, clip: bytes, name: str) -> None:
    for value in _outside(name):
        message = refused(service.submit({name: value}, motion=clip), 422, f"params.{name}", "invalid_params")
        assert message.startswith(f"params.{name}: "), message
    assert service.nothing_kept()


def test_every_limit_itself_is_accepted(service: Service, clip: bytes) -> None:
    high = {name: hi for name, (_lo, hi) in JOB_LIMITS.items()}
    low = {name: lo for name, (lo, _hi) in JOB_LIMITS.items() if name != "finetune_lr"}  # open: > 0
    for params in (high, low):
        response = service.submit(params, motion=clip)
        assert response.status_code == 202, response.text
        echoed = response.json()["params"]
        assert all(echoed[k] == v for k, v in params.items()), echoed
    assert service.store.counts()["queued"] == 2


def test_params_defaults_and_choices_are_the_engines(service: Service) -> None:
    document = service.client.get("/v1/limits").json()
    defaults = JobParams().model_dump()
    assert document == {**limits_document(), "max_frames": limits.MAX_FRAMES}
    assert {k: defaults[k] for k in document["defaults"]} == document["defaults"]
    for name, choices in document["choices"].items():
        assert JobParams.model_json_schema()["properties"][name]["enum"] == choices, name


@pytest.mark.parametrize(("params", "field", "says"), [
    ("{", "params", "invalid JSON at line 1 column 2"),
    ("[1]", "params", "expected a JSON object, got list"),
    ('"steps"', "params", "expected a JSON object, got str"),
    ('{"seed": ' + "9" * 5000 + "}", "params", "invalid JSON"),
    ('{"bone_map": ' + "[" * 20000 + "]" * 20000 + "}", "params", "nested too deeply"),
    ('{"note": "' + "x" * limits.MAX_PARAMS_BYTES + '"}', "params", f"larger than {limits.MAX_PARAMS_BYTES} bytes"),
    ('{"nope": 1}', "params.nope", "allowed keys: model, steps"),
    ('{"steps": "2"}', "params.steps", "valid integer"),
    ('{"steps": true}', "params.steps", "valid integer"),
    ('{"steps": 2.5}', "params.steps", "valid integer"),
    ('{"video": 1}', "params.video", "valid boolean"),
    ('{"fps": ' + "9" * 400 + "}", "params.fps", "a number this large is out of range"),
    ('{"sampler": "nope"}', "params.sampler", "'bidirectional' or 'unidirectional'"),
    ('{"noise": "nope"}', "params.noise", "'shared' or 'independent'"),
    ('{"method": "nope"}', "params.method", "'diffusion' or 'texture'"),
    ('{"iuv_order": "nope"}', "params.iuv_order", "'btdm' or 'densepose'"),
    ('{"model": "../../etc/passwd"}', "params.model", "should match pattern"),
    ('{"appearance_frame": 2001}', "params.appearance_frame", "less than or equal to 2000"),
    ('{"frame_start": -1}', "params.frame_start", "greater than or equal to 0"),
    ('{"frame_end": 0}', "params.frame_end", "greater than or equal to 1"),
    ('{"skeleton": "a/b"}', "params.skeleton", "should match pattern"),
    ('{"bone_map": {"": "Hips"}}', "params.bone_map", "1..256 characters"),
    ('{"scale": 0}', "params.scale", "greater than 0"),
    ('{"up": "X"}', "params.up", "'Y' or 'Z'"),
])
def test_bad_params_name_the_key(service: Service, clip: bytes, params: str, field: str, says: str) -> None:
    message = refused(service.submit(params, motion=clip), 422, field, "invalid_params")
    assert says in message, message
    assert service.nothing_kept()


def test_unknown_model(service: Service, clip: bytes) -> None:
    message = refused(service.submit({"model": "nope"}, motion=clip), 422, "params.model", "invalid_params")
    assert message == "model 'nope' is unknown; available: default, plain"
    # the registry reaches the endpoint through its dependency: another registry, other models
    only_plain = ModelRegistry({"plain": service.registry.entry("plain").path}, "cpu")
    service.app.dependency_overrides[get_registry] = lambda: only_plain
    message = refused(service.submit(motion=clip), 422, "params.model", "invalid_params")
    assert message == "model 'default' is unknown; available: plain"
    assert [m["name"] for m in service.client.get("/v1/models").json()["models"]] == ["plain"]
    assert service.nothing_kept()


# ---------------------------------------------------------------------------- the params against each other
APP, IUV = png((128, 128, 3)), png((128, 128, 3))


@pytest.mark.parametrize(("params", "files", "status", "field", "says"), [
    ({}, {"appearance_iuv": IUV}, 400, "appearance_iuv", "appearance_iuv needs appearance"),
    ({"appearance_frame": 1}, {}, 422, "params.appearance_frame", "send that image (appearance)"),
    ({"appearance_frame": 1}, {"appearance": APP, "appearance_iuv": IUV}, 422, "appearance_iuv", "not both"),
    ({"finetune_steps": 1, "use_default_appearance": False}, {}, 422, "params.finetune_steps", "needs appearance"),
    ({"finetune_steps": 1}, {"appearance": APP}, 422, "params.finetune_steps", "needs appearance"),
    ({"method": "texture"}, {"appearance": APP}, 422, "params.method", "through its IUV map"),
    ({"method": "texture", "use_default_appearance": False}, {}, 422, "params.method", "through its IUV map"),
    ({"method": "texture", "finetune_steps": 2}, {}, 422, "params.finetune_steps", "no network to fine-tune"),
    # the first rule broken is the one named: the fine-tuning rule comes before the texture ones
    ({"method": "texture", "finetune_steps": 2, "use_default_appearance": False}, {}, 422, "params.finetune_steps",
     "needs appearance"),
    ({"method": "texture", "finetune_steps": 2, "model": "nope"}, {}, 422, "params.model", "unknown"),
    # the plain model: no texture-transfer prior, no SR3, no appearance of its own
    ({"model": "plain"}, {"appearance": APP, "appearance_iuv": IUV}, 422, "appearance_iuv",
     "only used by fine-tuning with model plain"),
    ({"model": "plain", "sr_steps": 2}, {}, 422, "params.sr_steps", "model plain has no SR3 stage"),
    ({"model": "plain", "finetune_steps": 1}, {}, 422, "params.finetune_steps", "needs appearance"),
    ({"model": "plain", "method": "texture"}, {}, 422, "params.method", "through its IUV map"),
])
def test_cross_field_rules(service: Service, clip: bytes, params: dict[str, Any], files: dict[str, bytes],
                           status: int, field: str, says: str) -> None:
    message = refused(service.submit(params, motion=clip, **files), status, field)
    assert says in message, message
    assert service.nothing_kept()


def test_cross_field_rules_that_pass(service: Service, clip: bytes) -> None:
    accepted = [
        ({"model": "plain", "finetune_steps": 1}, {"appearance": APP, "appearance_iuv": IUV}),
        ({"model": "plain", "method": "texture"}, {"appearance": APP, "appearance_iuv": IUV}),
        ({"finetune_steps": 1}, {}),  # the embedded model's own appearance and IUV map
        ({"method": "texture"}, {}),
        ({}, {"appearance": APP, "appearance_iuv": IUV}),  # the embedded model reads it (texture prior)
        ({"finetune_steps": 1, "appearance_frame": 0, "plate": False}, {"appearance": APP}),
    ]
    for params, files in accepted:
        response = service.submit(params, motion=clip, **files)
        assert response.status_code == 202, (params, response.text)
    assert service.store.counts()["queued"] == len(accepted)


def test_the_rules_are_the_request_models_validator() -> None:
    facts = {"name": "m", "has_sr3": False, "texture_prior": False, "has_default_appearance": False}
    context = SubmitContext(frozenset({"motion"}), lambda name: facts)
    params = {"method": "texture", "finetune_steps": 2}
    assert JobParams.model_validate(params).finetune_steps == 2  # alone, the keys are each in range
    with pytest.raises(ValidationError) as info:
        JobParams.model_validate(params, context=context)
    (error,) = info.value.errors()
    assert error["type"] == REFUSED and error["ctx"]["field"] == "params.finetune_steps"
    assert (error["ctx"]["status"], error["ctx"]["code"]) == (422, "invalid_params")
    with pytest.raises(ValidationError) as info:
        JobParams.model_validate({"sr_steps": 3}, context=context)
    assert info.value.errors()[0]["ctx"]["field"] == "params.sr_steps"
    assert JobParams.model_validate({"sr_steps": 3}, context=SubmitContext(
        frozenset({"motion"}), lambda name: {**facts, "has_sr3": True})).sr_steps == 3


# ---------------------------------------------------------------------------- the frames a job generates
@pytest.mark.parametrize(("params", "field", "says"), [
    ({"frame_start": FRAMES}, "params.frame_start", f"past the source's last frame ({FRAMES - 1})"),
    ({"frame_start": 9, "frame_end": 2}, "params.frame_start", "past the source's last frame"),
    ({"frame_end": FRAMES + 1}, "params.frame_end", f"must lie in 1..{FRAMES}"),
    ({"frame_start": 3, "frame_end": 3}, "params.frame_end", f"must lie in 4..{FRAMES}"),
    ({"frame_start": 3, "frame_end": 2}, "params.frame_end", f"must lie in 4..{FRAMES}"),
])
def test_frame_window_against_the_source(service: Service, clip: bytes, params: dict[str, Any], field: str,
                                         says: str) -> None:
    assert says in refused(service.submit(params, motion=clip), 422, field, "invalid_params")
    assert service.nothing_kept()


def test_appearance_frame_must_be_one_of_the_jobs_frames(service: Service, clip: bytes) -> None:
    params = {"finetune_steps": 1, "appearance_frame": 3, "frame_start": 3, "plate": False}
    message = refused(service.submit(params, motion=clip, appearance=APP), 422, "params.appearance_frame")
    assert message == "params.appearance_frame 3 is not one of the job's 3 frames (0..2, counted from frame_start)"
    assert service.nothing_kept()
    params["appearance_frame"] = 2  # source frame 5, the last one
    assert service.submit(params, motion=clip, appearance=APP).status_code == 202


def test_a_window_over_max_frames(service: Service, clip: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_FRAMES", 4)
    message = refused(service.submit(motion=clip), 422, "params.frame_end", "invalid_params")
    assert message.startswith(f"{FRAMES} frames; a job may generate at most 4")
    assert service.submit({"frame_end": 4}, motion=clip).status_code == 202


def test_plates_need_a_camera(service: Service) -> None:
    message = refused(service.submit({"plate": True}, posemaps=b"PK"), 422, "params.plate", "invalid_params")
    assert "pose-map uploads have none" in message
    assert service.nothing_kept()


# ---------------------------------------------------------------------------- the queue and the job's state
def test_full_queue_is_429_after_the_params_are_checked(tmp_path: Path, plain_model: Path, clip: bytes) -> None:
    svc = Service(tmp_path, plain_model, max_queued=1, retry_after_s=7)
    try:
        first = svc.submit(motion=clip)
        assert first.status_code == 202
        response = svc.submit(motion=clip)
        refused(response, 429, None, "queue_full")
        assert response.headers["Retry-After"] == "7"
        refused(svc.submit({"steps": 0}, motion=clip), 422, "params.steps")  # a bad request is told what is wrong
        assert svc.store.counts()["queued"] == 1
        assert [p.name for p in (svc.store.data / "jobs").iterdir()] == [first.json()["id"]]
        svc.client.post(f"/v1/jobs/{first.json()['id']}/cancel")
        assert svc.submit(motion=clip).status_code == 202  # a place is free again
    finally:
        svc.close()


class SpyWorker(Worker):
    """A real worker (never started) that records the cancels the app sends it."""

    def __init__(self, store: JobStore, registry: ModelRegistry) -> None:
        super().__init__(store, registry)
        self.cancelled: list[str] = []

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        super().cancel(job_id)


def test_cancel_and_delete_conflicts(service: Service, clip: bytes) -> None:
    spy = SpyWorker(service.store, service.registry)
    service.app.dependency_overrides[get_worker] = lambda: spy
    client = service.client
    running, queued, succeeded, failed = (service.submit(motion=clip).json()["id"] for _ in range(4))
    assert service.store.claim_next()["id"] == running  # what the worker does with the oldest queued job
    service.store.transition(succeeded, "succeeded")
    service.store.transition(failed, "failed", error="boom")

    for job_id, state in ((queued, "queued"), (running, "running")):
        message = refused(client.delete(f"/v1/jobs/{job_id}"), 409, "job_id", "conflict")
        assert message == f"job {job_id} is {state}; cancel it first"
        assert service.store.get(job_id)["state"] == state
    for job_id, state in ((succeeded, "succeeded"), (failed, "failed")):
        message = refused(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "job_id", "conflict")
        assert message == f"job {job_id} already {state}"
    assert spy.cancelled == []

    cancelled = client.post(f"/v1/jobs/{running}/cancel").json()
    assert (cancelled["state"], cancelled["cancel_requested"]) == ("running", True)
    assert spy.cancelled == [running]  # the worker is told; the sampler stops within one step
    for _ in range(2):  # a queued job is cancelled at once; cancelling it again is no conflict
        response = client.post(f"/v1/jobs/{queued}/cancel")
        assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert spy.cancelled == [running]

    for job_id in (queued, succeeded, failed):
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
        refused(client.get(f"/v1/jobs/{job_id}"), 404, "job_id", "not_found")
        refused(client.delete(f"/v1/jobs/{job_id}"), 404, "job_id", "not_found")
        assert not service.store.job_dir(job_id).exists()
    assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [running]


def test_files_of_a_job_that_has_none_yet(service: Service, clip: bytes) -> None:
    job_id = service.submit(motion=clip).json()["id"]
    for path, field in (("frames/0.png", "frame"), ("posemaps/0.png", "posemap"), ("plates/0.png", "plate"),
                        ("video.mp4", "video")):
        message = refused(service.client.get(f"/v1/jobs/{job_id}/{path}"), 404, field, "not_found")
        assert message.endswith(" yet"), message
    service.client.post(f"/v1/jobs/{job_id}/cancel")
    message = refused(service.client.get(f"/v1/jobs/{job_id}/video.mp4"), 404, "video", "not_found")
    assert message == f"job {job_id} has no video"  # final: no "yet"
