"""``GET /metrics`` (Prometheus text, parsed back with prometheus-client's own parser) and ``GET /v1/health``
telling a broken store or a stopped worker from a healthy one: the real app through FastAPI's
TestClient, a real JobStore, the real worker running real jobs in process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_service_api_matrix import Service, clip, plain_model, refused  # noqa: F401 - fixtures

from btdm_engine.service.app import create_app

TEXTURE = {"method": "texture", "seed": 3}


@pytest.fixture()
def service(tmp_path: Path, plain_model: Path) -> Iterator[Service]:  # noqa: F811
    svc = Service(tmp_path, plain_model)
    yield svc
    svc.close()


def scrape(client: TestClient, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def submit(client: TestClient, clip: bytes, params: dict[str, Any]) -> str:  # noqa: F811
    response = client.post("/v1/jobs", files={"motion": ("walk.npz", clip, "application/octet-stream")},
                           data={"params": json.dumps(params)})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_metrics_count_jobs_frames_and_seconds_per_frame(service: Service, clip: bytes) -> None:  # noqa: F811
    before = scrape(service.client)
    assert before[("btdm_queue_depth", ())] == 0 and before[("btdm_workers", ())] == 1
    assert before[("btdm_workers_busy", ())] == 0 and before[("btdm_store_ok", ())] == 1
    assert all(before[("btdm_jobs", (("state", s),))] == 0 for s in ("queued", "running", "succeeded", "failed"))
    first = submit(service.client, clip, TEXTURE)
    submit(service.client, clip, TEXTURE)
    assert scrape(service.client)[("btdm_queue_depth", ())] == 2
    final = service.worker.run_claimed(service.store.claim_next())
    assert final["id"] == first and final["state"] == "succeeded", final["error"]
    after = scrape(service.client)
    labels = (("method", "texture"), ("model", "default"))
    assert after[("btdm_jobs", (("state", "succeeded"),))] == 1
    assert after[("btdm_jobs", (("state", "queued"),))] == after[("btdm_queue_depth", ())] == 1
    assert after[("btdm_frames_generated_total", labels)] == 6
    assert after[("btdm_seconds_per_frame_count", labels)] == 1
    assert after[("btdm_seconds_per_frame_sum", labels)] > 0
    assert after[("btdm_job_runs_total", (("state", "succeeded"),))] == 1


def test_workers_busy_while_a_job_runs_and_health(tmp_path: Path, plain_model: Path, clip: bytes) -> None:  # noqa: F811
    svc = Service(tmp_path, plain_model)
    app = create_app(svc.store, svc.worker, svc.registry, start_worker=True)
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:  # the lifespan starts the worker
            assert client.get("/v1/health").json()["status"] == "ok"
            job = submit(client, clip, {"steps": 400, "sr_steps": 2})
            deadline = time.monotonic() + 300
            while (row := svc.store.get(job))["stage"] != "btunet" or row["step"] < 1:
                assert time.monotonic() < deadline and row["state"] in ("queued", "running"), row
                time.sleep(0.05)
            busy = scrape(client)
            assert busy[("btdm_workers_busy", ())] == 1 and busy[("btdm_workers_up", ())] == 1
            assert busy[("btdm_jobs", (("state", "running"),))] == 1
            health = client.get("/v1/health").json()
            assert health["worker"]["state"] == "running" and health["worker"]["job"] == job
            client.post(f"/v1/jobs/{job}/cancel")
            while svc.store.get(job)["state"] != "cancelled":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            while client.get("/v1/health").json()["worker"]["state"] != "idle":
                time.sleep(0.05)
            idle = scrape(client)
            assert idle[("btdm_workers_busy", ())] == 0
            assert idle[("btdm_job_runs_total", (("state", "cancelled"),))] == 1
            assert not any(name == "btdm_seconds_per_frame_count" for name, _ in idle)  # no run succeeded
            # a worker that stopped: degraded, and the metrics say it is down
            svc.worker.stop()
            health = client.get("/v1/health").json()
            assert health["status"] == "degraded" and health["worker"]["state"] == "stopped"
            assert health["store"]["ok"] and not health["worker"]["alive"]
            assert scrape(client)[("btdm_workers_up", ())] == 0
    finally:
        svc.close()


def test_health_tells_a_broken_store_from_a_healthy_one(tmp_path: Path, plain_model: Path) -> None:  # noqa: F811
    svc = Service(tmp_path, plain_model)
    app = create_app(svc.store, svc.worker, svc.registry, start_worker=True)
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            health = client.get("/v1/health").json()
            assert health["status"] == "ok" and health["store"] == {
                "ok": True, "free_bytes": health["store"]["free_bytes"], "error": None}
            svc.store._db.close()  # the database is gone from under the server (its disk unmounted, ...)
            assert client.get("/v1/health").json()["status"] == "degraded"
            deadline = time.monotonic() + 60
            # health reads the store itself; the worker finds it broken at its next poll (and keeps retrying)
            while (health := client.get("/v1/health").json())["worker"]["state"] != "store_error":
                assert health["status"] == "degraded" and time.monotonic() < deadline, health
                time.sleep(0.05)
            assert health["status"] == "degraded" and not health["store"]["ok"]
            assert "closed database" in health["store"]["error"] and "/" not in health["store"]["error"]
            assert health["worker"]["alive"]
            assert health["queue"] == dict.fromkeys(("queued", "running", "succeeded", "failed", "cancelled"), 0)
            metrics = scrape(client)
            assert metrics[("btdm_store_ok", ())] == 0 and metrics[("btdm_workers_up", ())] == 1
    finally:
        svc.worker.stop()
        svc.client.close()


def test_metrics_need_the_token(tmp_path: Path, plain_model: Path) -> None:  # noqa: F811
    svc = Service(tmp_path, plain_model, token="metrics-token-0123456789")
    try:
        refused(svc.client.get("/metrics"), 401, None, "unauthorized")
        assert "btdm_queue_depth" in svc.client.get("/metrics", headers=svc.headers()).text
        refused(svc.client.get("/metrics", params={"x": 1}, headers=svc.headers()), 422, "x", "unknown_parameter")
    finally:
        svc.close()
