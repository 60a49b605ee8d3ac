"""Priorities and ``POST /v1/jobs/{id}/retry``: the real app through FastAPI's TestClient, a real JobStore,
and the real worker running the jobs in process (``method: texture``: no network, seconds)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_service_api_matrix import NO_JOB, Service, clip, plain_model, refused  # noqa: F401 - fixtures

from btdm_engine.service import limits
from btdm_engine.service.store import JobStore, new_job_id

TEXTURE = {"method": "texture", "seed": 3}


@pytest.fixture()
def service(tmp_path: Path, plain_model: Path) -> Iterator[Service]:  # noqa: F811
    svc = Service(tmp_path, plain_model, max_queued=4)
    yield svc
    svc.close()


def submit(svc: Service, clip: bytes, priority: Any = None, params: dict | None = None,  # noqa: F811
           **headers: str) -> Any:
    data = {"params": json.dumps(params or {"steps": 2})} | ({"priority": str(priority)} if priority is not None else {})
    return svc.client.post("/v1/jobs", files={"motion": ("walk.npz", clip, "application/octet-stream")}, data=data,
                           headers=headers)


def test_the_highest_priority_runs_first_then_first_come(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    jobs = [store.create(new_job_id(), params={}, source="motion", inputs={}, priority=p)["id"]
            for p in (0, 5, 0, -1, 5, 100)]
    order = []
    while (job := store.claim_next()) is not None:
        order.append(job["id"])
    assert order == [jobs[5], jobs[1], jobs[4], jobs[0], jobs[2], jobs[3]]


def test_priority_form_field(service: Service, clip: bytes) -> None:  # noqa: F811
    low = submit(service, clip).json()
    high = submit(service, clip, priority=limits.MAX_PRIORITY).json()
    assert (low["priority"], high["priority"]) == (0, limits.MAX_PRIORITY)
    assert submit(service, clip, priority=limits.MIN_PRIORITY).json()["priority"] == limits.MIN_PRIORITY
    assert service.store.claim_next()["id"] == high["id"]
    for bad in (limits.MAX_PRIORITY + 1, limits.MIN_PRIORITY - 1, "high", "1.5"):
        refused(submit(service, clip, priority=bad), 422, "priority", "invalid_request")
    # the priority is part of what an Idempotency-Key stands for
    assert submit(service, clip, priority=3, **{"Idempotency-Key": "k"}).status_code == 202
    refused(submit(service, clip, priority=4, **{"Idempotency-Key": "k"}), 422, "Idempotency-Key",
            "idempotency_key_reused")


def test_retry_a_failed_job_runs_it_again(service: Service, clip: bytes) -> None:  # noqa: F811
    job = submit(service, clip, params=TEXTURE).json()
    claimed = service.store.claim_next()
    folder = service.store.job_dir(job["id"])
    (folder / "frames").mkdir()
    (folder / "frames" / "000000.png").write_bytes(b"half a frame")  # what a failing run may leave
    service.store.transition(claimed["id"], "failed", error="out of memory on cpu", finished=1.0)
    retried = service.client.post(f"/v1/jobs/{job['id']}/retry")
    assert retried.status_code == 202, retried.text
    again = retried.json()
    assert (again["id"], again["state"], again["error"], again["finished"], again["attempts"], again["retries"]) == \
        (job["id"], "queued", None, None, 0, 1)
    assert not (folder / "frames").exists() and (folder / "input" / "motion.npz").is_file()
    final = service.worker.run_claimed(service.store.claim_next())
    assert final["state"] == "succeeded", final["error"]
    assert final["frames_done"] == final["frames_total"] == 6 and final["retries"] == 1
    assert service.client.get(f"/v1/jobs/{job['id']}/frames/5.png").status_code == 200
    refused(service.client.post(f"/v1/jobs/{job['id']}/retry"), 409, "job_id", "conflict")  # succeeded


def test_retry_a_cancelled_job_resumes_from_its_files(service: Service, clip: bytes) -> None:  # noqa: F811
    first = submit(service, clip, params=TEXTURE).json()
    assert service.worker.run_claimed(service.store.claim_next())["state"] == "succeeded"
    frames = service.store.job_dir(first["id"]) / "frames"
    kept = (frames / "000002.png").read_bytes()
    (frames / "000005.png").unlink()  # as if cancelled before the last frame
    (service.store.job_dir(first["id"]) / "video.mp4").unlink()
    service.store.transition(first["id"], "cancelled", cancel_requested=True)
    job = submit(service, clip, priority=1).json()  # queued ahead of a plain retry, behind a raised one
    retried = service.client.post(f"/v1/jobs/{first['id']}/retry", params={"priority": 2}).json()
    assert (retried["state"], retried["priority"], retried["cancel_requested"]) == ("queued", 2, False)
    assert retried["frames_done"] == 0 and (frames / "000002.png").read_bytes() == kept
    listing = [j["id"] for j in service.client.get("/v1/jobs").json()["jobs"]]
    assert listing[0] == first["id"]  # back in the queue as if just submitted
    claimed = service.store.claim_next()
    assert claimed["id"] == first["id"]
    final = service.worker.run_claimed(claimed)
    assert final["state"] == "succeeded" and final["has_video"] and (frames / "000005.png").is_file()
    assert service.store.claim_next()["id"] == job["id"]


def test_retry_refusals(service: Service, clip: bytes) -> None:  # noqa: F811
    refused(service.client.post(f"/v1/jobs/{NO_JOB}/retry"), 404, "job_id", "not_found")
    queued = submit(service, clip).json()["id"]
    message = refused(service.client.post(f"/v1/jobs/{queued}/retry"), 409, "job_id", "conflict")
    assert "queued" in message
    running = submit(service, clip).json()["id"]
    service.store.claim_next()
    service.store.claim_next()
    refused(service.client.post(f"/v1/jobs/{running}/retry"), 409, "job_id", "conflict")
    service.store.transition(running, "failed", error="x")
    refused(service.client.post(f"/v1/jobs/{running}/retry", params={"priority": 101}), 422, "priority",
            "invalid_request")
    # the inputs gone (the job was abandoned with its folder): nothing to run
    gone = submit(service, clip).json()["id"]
    service.client.post(f"/v1/jobs/{gone}/cancel")
    (service.store.job_dir(gone) / "input" / "motion.npz").unlink()
    message = refused(service.client.post(f"/v1/jobs/{gone}/retry"), 409, "job_id", "conflict")
    assert "motion upload is gone" in message
    # a full queue: 429 with Retry-After, the job stays failed
    for _ in range(4 - service.store.counts()["queued"]):
        submit(service, clip)
    response = service.client.post(f"/v1/jobs/{running}/retry")
    refused(response, 429, None, "queue_full")
    assert response.headers["Retry-After"] and service.store.get(running)["state"] == "failed"
