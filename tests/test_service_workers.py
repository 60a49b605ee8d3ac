"""Several workers sharing one queue (``btdm serve --workers N``, :class:`WorkerPool`): real workers on the CPU
running real jobs from one real JobStore, through the real app (TestClient) and a ``btdm serve --workers 2``
subprocess. No timing is asserted: a deadline only keeps a broken run from hanging."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_service import BTDM, REPO, Server, child_env, free_port
from test_service_api_matrix import clip  # noqa: F401 - fixture

from btdm_engine.service.app import create_app
from btdm_engine.service.store import JobStore
from btdm_engine.service.worker import ModelRegistry, Worker, WorkerPool

LONG = {"steps": 400, "sr_steps": 2}  # long enough to be seen running; always cancelled
TEXTURE = {"method": "texture", "seed": 3}
DEADLINE_S = 300


def until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        time.sleep(0.05)
    return value


class Pool:
    """Two workers, each with its own registry (its own copy of the model), one store, the real app."""

    def __init__(self, data: Path, count: int = 2) -> None:
        self.store = JobStore(data)
        self.members = [Worker(self.store, ModelRegistry.with_default("cpu"), name=f"btdm-worker-{n}", threads=1)
                        for n in range(count)]
        self.pool = WorkerPool(self.members)
        self.app = create_app(self.store, self.pool, self.members[0].registry, start_worker=True)
        self.client = TestClient(self.app, base_url="http://127.0.0.1")

    def submit(self, clip: bytes, params: dict[str, Any], priority: int = 0) -> str:  # noqa: F811
        response = self.client.post("/v1/jobs", files={"motion": ("walk.npz", clip, "application/octet-stream")},
                                    data={"params": json.dumps(params), "priority": str(priority)})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def running_in_btunet(self, ids: list[str]) -> bool:
        rows = [self.store.get(i) for i in ids]
        return all(r["state"] == "running" and r["stage"] == "btunet" and r["step"] >= 1 for r in rows)


@pytest.fixture()
def pool(tmp_path: Path) -> Iterator[Pool]:
    p = Pool(tmp_path / "data")
    with p.client:  # the lifespan starts the workers and stops them
        yield p
    p.store.close()


def test_two_workers_run_two_jobs_at_once_then_keep_serving(pool: Pool, clip: bytes) -> None:  # noqa: F811
    health = pool.client.get("/v1/health").json()
    assert health["status"] == "ok" and [w["name"] for w in health["workers"]] == ["btdm-worker-0", "btdm-worker-1"]
    assert health["worker"]["name"] == "pool" and health["worker"]["device"] == "cpu"
    a, b = pool.submit(clip, LONG), pool.submit(clip, LONG)
    until(lambda: pool.running_in_btunet([a, b]), "both long jobs sampling")
    health = pool.client.get("/v1/health").json()
    assert sorted(w["job"] for w in health["workers"]) == sorted([a, b]) and health["worker"]["state"] == "running"
    assert {pool.store.get(a)["worker"], pool.store.get(b)["worker"]} == {"btdm-worker-0@cpu", "btdm-worker-1@cpu"}
    metrics = pool.client.get("/metrics").text
    assert "btdm_workers_busy 2.0" in metrics and "btdm_workers 2.0" in metrics
    for job in (a, b):  # each cancel reaches the worker that runs the job
        assert pool.client.post(f"/v1/jobs/{job}/cancel").json()["cancel_requested"]
    until(lambda: all(pool.store.get(j)["state"] == "cancelled" for j in (a, b)), "both cancelled")
    jobs = [pool.submit(clip, TEXTURE) for _ in range(4)]
    until(lambda: all(pool.store.get(j)["state"] == "succeeded" for j in jobs), "four texture jobs")
    frames = {j: pool.client.get(f"/v1/jobs/{j}/frames/0.png").content for j in jobs}
    assert len(set(frames.values())) == 1  # the same job, whichever worker ran it
    assert pool.store.counts() == {"queued": 0, "running": 0, "succeeded": 4, "failed": 0, "cancelled": 2}
    assert "btdm_frames_generated_total" in pool.client.get("/metrics").text


def test_a_stopping_pool_puts_every_running_job_back(pool: Pool, clip: bytes) -> None:  # noqa: F811
    a, b = pool.submit(clip, LONG), pool.submit(clip, LONG)
    until(lambda: pool.running_in_btunet([a, b]), "both long jobs sampling")
    pool.pool.stop()
    for job in (a, b):  # back in the queue for the next start, this run not counted as a crash
        row = pool.store.get(job)
        assert (row["state"], row["attempts"]) == ("queued", 0), row
    health = pool.client.get("/v1/health").json()
    assert health["status"] == "degraded" and health["worker"]["state"] == "stopped"
    assert not any(w["alive"] for w in health["workers"])


def test_abandon_cancels_the_running_jobs_of_every_worker(pool: Pool, clip: bytes) -> None:  # noqa: F811
    a, b = pool.submit(clip, LONG), pool.submit(clip, LONG)
    queued = pool.submit(clip, LONG, priority=-1)
    until(lambda: pool.running_in_btunet([a, b]), "both long jobs sampling")
    assert sorted(pool.pool.abandon()) == sorted([a, b])
    assert [pool.store.get(j)["state"] for j in (a, b, queued)] == ["cancelled"] * 3
    assert not pool.store.job_dir(a).exists() and not pool.store.job_dir(b).exists()
    assert pool.store.job_dir(queued).is_dir()  # a queued job keeps its uploads until --keep-days


def test_one_dead_worker_makes_the_pool_degraded(pool: Pool) -> None:
    pool.members[1].stop()
    health = pool.client.get("/v1/health").json()
    assert health["status"] == "degraded" and not health["worker"]["alive"]
    assert [w["alive"] for w in health["workers"]] == [True, False]
    assert "btdm_workers_up 1.0" in pool.client.get("/metrics").text


def test_device_and_workers_flags(tmp_path: Path) -> None:
    import torch

    from btdm_engine.cli import CliError
    from btdm_engine.commands.serve import parse_devices

    assert parse_devices("cpu", torch) == [torch.device("cpu")]
    for spec, says in [("cpu,cpu", "named twice"), ("tpu", "expected cpu, cuda or cuda:N"),
                       ("cpu,cuda:0", "CUDA" if torch.cuda.is_available() else "CUDA is not available")]:
        with pytest.raises(CliError, match=says):
            parse_devices(spec, torch)
    if not torch.cuda.is_available():
        with pytest.raises(CliError, match="CUDA is not available"):
            parse_devices("cuda:0,cuda:1", torch)
    result = subprocess.run([*BTDM, "serve", "--port", str(free_port()), "--data", str(tmp_path / "d"), "--workers",
                             "0"], cwd=REPO, env=child_env(), capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 2 and "--workers must be 1..64" in result.stderr, result.stderr


def test_btdm_serve_workers_2(tmp_path: Path, clip_file: Path) -> None:
    srv = Server(tmp_path / "data", "--workers", "2").start()
    try:
        client = srv.client()
        health = client.health()
        assert [w["name"] for w in health["workers"]] == ["btdm-worker-0", "btdm-worker-1"]
        assert health["device"] == "cpu" and "2 workers" in health["device_name"]
        clip_path = clip_file
        a, b = (client.submit(motion=clip_path, params=LONG)["id"] for _ in range(2))
        until(lambda: sorted(w["job"] or "" for w in client.health()["workers"]) == sorted([a, b]), "both running")
        for job in (a, b):
            client.cancel(job)
        assert [client.wait(j)["state"] for j in (a, b)] == ["cancelled", "cancelled"]
        final = client.wait(client.submit(motion=clip_path, params=TEXTURE)["id"])
        assert final["state"] == "succeeded" and final["worker"] in ("btdm-worker-0@cpu", "btdm-worker-1@cpu")
    finally:
        srv.stop()
    assert "Traceback" not in srv.log.read_text()  # SIGTERM stopped the pool at once (a missing method once did not)
