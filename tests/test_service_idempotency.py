"""``Idempotency-Key`` on ``POST /v1/jobs``: the real app through FastAPI's TestClient, a real JobStore.

A repeated submit with the same key (from the same token) answers the job the first one made; the
key with a different request is a 422 naming the header; the key is stored with the job in SQLite,
so it holds across a restart of the store, and a version-1 store is migrated in place.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_service_api_matrix import Service, clip, plain_model, refused  # noqa: F401 - fixtures

from btdm_engine.service.deps import Principal, bearer_auth
from btdm_engine.service.store import SCHEMA_VERSION, JobStore, new_job_id

KEY = "shot-042/take-3"


@pytest.fixture()
def service(tmp_path: Path, plain_model: Path) -> Iterator[Service]:  # noqa: F811 - the fixture above
    svc = Service(tmp_path, plain_model, max_queued=3)
    yield svc
    svc.close()


def submit(svc: Service, clip: bytes, key: str | None = KEY, params: dict | None = None) -> object:  # noqa: F811
    headers = svc.headers() | ({"Idempotency-Key": key} if key is not None else {})
    data = {"params": json.dumps(params or {"steps": 2})}
    return svc.client.post("/v1/jobs", files={"motion": ("walk.npz", clip, "application/octet-stream")}, data=data,
                           headers=headers)


def job_folders(svc: Service) -> list[str]:
    return sorted(p.name for p in (svc.store.data / "jobs").iterdir())


def test_a_repeated_submit_answers_the_same_job(service: Service, clip: bytes) -> None:  # noqa: F811
    first = submit(service, clip)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    job = first.json()
    assert job["idempotency_key"] == KEY and job["client"] is None
    again = submit(service, clip)
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == job
    assert service.store.counts()["queued"] == 1 and job_folders(service) == [job["id"]]
    # params written out in full are the same request as their defaults left out
    explicit = submit(service, clip, params={"steps": 2, "seed": 0, "model": "default"})
    assert explicit.status_code == 202 and explicit.json()["id"] == job["id"]
    # whatever the job's state now: the answer is the job as it is
    service.store.transition(job["id"], "failed", error="boom")
    replay = submit(service, clip).json()
    assert (replay["id"], replay["state"], replay["error"]) == (job["id"], "failed", "boom")
    # without a key, two identical submits are two jobs (as before)
    a, b = submit(service, clip, key=None).json(), submit(service, clip, key=None).json()
    assert a["id"] != b["id"] and a["idempotency_key"] is None
    # another key: another job
    other = submit(service, clip, key="shot-042/take-4").json()
    assert other["id"] not in (job["id"], a["id"], b["id"])


def test_the_key_with_a_different_request_is_refused(service: Service, clip: bytes) -> None:  # noqa: F811
    job = submit(service, clip).json()
    message = refused(submit(service, clip, params={"steps": 3}), 422, "Idempotency-Key", "idempotency_key_reused")
    assert job["id"] in message
    # another file's bytes: the key's request is compared before the upload is even read as a clip
    refused(submit(service, clip + b"\0"), 422, "Idempotency-Key", "idempotency_key_reused")
    response = service.client.post("/v1/jobs", files={"skeleton": ("s.npz", clip, "application/octet-stream")},
                                   data={"params": json.dumps({"steps": 2})}, headers={"Idempotency-Key": KEY})
    refused(response, 422, "Idempotency-Key", "idempotency_key_reused")
    assert service.store.counts()["queued"] == 1 and job_folders(service) == [job["id"]]


def test_a_changed_file_is_a_different_request(service: Service, clip: bytes) -> None:  # noqa: F811
    from test_service_api_matrix import png

    files = {"motion": ("walk.npz", clip, "application/octet-stream")}
    data = {"params": json.dumps({"steps": 2, "use_default_appearance": False})}
    one = service.client.post("/v1/jobs", files={**files, "appearance": ("a.png", png((32, 32, 3)), "image/png")},
                              data=data, headers={"Idempotency-Key": KEY})
    assert one.status_code == 202, one.text
    two = service.client.post("/v1/jobs", files={**files, "appearance": ("a.png", png((64, 64, 3)), "image/png")},
                              data=data, headers={"Idempotency-Key": KEY})
    refused(two, 422, "Idempotency-Key", "idempotency_key_reused")
    three = service.client.post("/v1/jobs", files=files, data=data, headers={"Idempotency-Key": KEY})
    refused(three, 422, "Idempotency-Key", "idempotency_key_reused")  # the appearance left out


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "tab\there", "é"])
def test_a_malformed_key_is_refused_naming_the_header(service: Service, clip: bytes, key: str) -> None:  # noqa: F811
    headers = {"Idempotency-Key": key.encode("utf-8")} if not key.isascii() else {"Idempotency-Key": key}
    response = service.client.post("/v1/jobs", files={"motion": ("walk.npz", clip, "application/octet-stream")},
                                   headers=headers)
    refused(response, 422, "Idempotency-Key", "invalid_request")
    assert service.store.counts()["queued"] == 0


def test_a_repeat_is_answered_when_the_queue_is_full(service: Service, clip: bytes) -> None:  # noqa: F811
    jobs = [submit(service, clip, key=f"k{n}").json()["id"] for n in range(3)]
    refused(submit(service, clip, key="k3"), 429, None, "queue_full")
    assert submit(service, clip, key="k1").json()["id"] == jobs[1]


def test_the_key_belongs_to_the_client_and_is_freed_with_its_job(service: Service, clip: bytes) -> None:  # noqa: F811
    mine = submit(service, clip).json()
    service.app.dependency_overrides[bearer_auth] = lambda: Principal("render-farm", "submit")
    theirs = submit(service, clip).json()
    assert theirs["id"] != mine["id"] and theirs["client"] == "render-farm"
    assert submit(service, clip).json()["id"] == theirs["id"]
    del service.app.dependency_overrides[bearer_auth]
    assert submit(service, clip).json()["id"] == mine["id"]
    service.client.post(f"/v1/jobs/{mine['id']}/cancel")
    assert service.client.delete(f"/v1/jobs/{mine['id']}").status_code == 204
    fresh = submit(service, clip, params={"steps": 5}).json()  # the key is free: any request makes a new job
    assert fresh["id"] not in (mine["id"], theirs["id"]) and fresh["params"]["steps"] == 5


def test_submits_racing_with_one_key_make_one_job(service: Service, clip: bytes) -> None:  # noqa: F811
    results: list[object] = []
    barrier = threading.Barrier(4)

    def post() -> None:
        barrier.wait()
        results.append(submit(service, clip, key="race"))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [202] * 4, [r.text for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    assert sum("Idempotent-Replayed" in r.headers for r in results) == 3
    assert service.store.counts()["queued"] == 1 and len(job_folders(service)) == 1


def test_store_keys_hold_across_a_reopen(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    job = store.create(new_job_id(), params={}, source="motion", inputs={}, client="a", idempotency_key="k",
                       request_hash="h1")
    # the same key and client: the existing row, nothing inserted
    assert store.create(new_job_id(), params={}, source="motion", inputs={}, client="a", idempotency_key="k",
                        request_hash="h2")["id"] == job["id"]
    other = store.create(new_job_id(), params={}, source="motion", inputs={}, client="b", idempotency_key="k")
    anonymous = store.create(new_job_id(), params={}, source="motion", inputs={}, idempotency_key="k")
    assert len({job["id"], other["id"], anonymous["id"]}) == 3
    store.close()
    store = JobStore(tmp_path)
    assert store.find_idempotent("a", "k")["request_hash"] == "h1"
    assert store.find_idempotent(None, "k")["id"] == anonymous["id"]
    assert store.find_idempotent("c", "k") is None
    with pytest.raises(sqlite3.IntegrityError):  # the unique index: one job per client and key, whoever inserts
        store._db.execute("UPDATE jobs SET idempotency_key = 'k', client = 'a' WHERE id = ?", (other["id"],))


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, state TEXT NOT NULL, stage TEXT,
    step INTEGER NOT NULL DEFAULT 0, total INTEGER, frames_done INTEGER NOT NULL DEFAULT 0, frames_total INTEGER,
    posemaps_done INTEGER NOT NULL DEFAULT 0, eta_s REAL, error TEXT, created REAL NOT NULL, started REAL,
    finished REAL, params TEXT NOT NULL, source TEXT NOT NULL, inputs TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,
    has_video INTEGER NOT NULL DEFAULT 0, has_plates INTEGER NOT NULL DEFAULT 0, plate_width INTEGER,
    plate_height INTEGER, width INTEGER, height INTEGER, retarget TEXT
);
CREATE INDEX jobs_state_seq ON jobs (state, seq);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO jobs (id, seq, state, created, params, source, inputs) VALUES
    ('0123456789abcdef0123456789abcdef', 1, 'queued', 1.0, '{"steps": 2}', 'motion', '{}');
"""


def test_a_version_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.executescript(V1_SCHEMA)
    db.close()
    store = JobStore(tmp_path)
    old = store.get("0123456789abcdef0123456789abcdef")
    assert old["params"] == {"steps": 2} and old["priority"] == 0 and old["client"] is None
    assert old["idempotency_key"] is None and old["tag"] is None and old["worker"] is None and old["retries"] == 0
    new = store.create(new_job_id(), params={}, source="motion", inputs={}, idempotency_key="k", client="a")
    assert store.find_idempotent("a", "k")["id"] == new["id"]
    store.close()
    version = sqlite3.connect(tmp_path / "jobs.sqlite3").execute(
        "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION
    assert JobStore(tmp_path).get(old["id"])["state"] == "queued"  # and it opens again as it is
