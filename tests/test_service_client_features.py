"""The stdlib client (``btdm_bridge.engine_client``) against the real app served by uvicorn on loopback.

:class:`LiveApp` runs ``create_app`` (a real :class:`JobStore` on ``tmp_path``, the real model
registry, a worker that is not started unless asked) in a uvicorn server thread on a free
127.0.0.1 port: real HTTP, no model loaded, so these tests take a second each. The subprocess
servers that run jobs stay in ``test_service.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from test_service import free_port
from test_service_api_matrix import clip, plain_model  # noqa: F401 - fixtures

from btdm_bridge.engine_client import EngineClient, EngineError
from btdm_engine.service.app import create_app
from btdm_engine.service.store import JobStore
from btdm_engine.service.worker import ModelRegistry, Worker


class LiveApp:
    """The app in a uvicorn thread on 127.0.0.1 (``https`` with ``ssl_certfile``/``ssl_keyfile``)."""

    def __init__(self, data: Path, *, models: dict[str, Path] | None = None, ssl: dict[str, str] | None = None,
                 **app_kw: Any) -> None:
        self.store = JobStore(data)
        self.registry = ModelRegistry.with_default("cpu", models)
        self.worker = Worker(self.store, self.registry)
        app_kw.setdefault("start_worker", False)
        self.app = create_app(self.store, self.worker, self.registry, **app_kw)
        self.port = free_port()
        self.url = f"{'https' if ssl else 'http'}://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, access_log=False,
                                lifespan="on", **(ssl or {}))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveApp:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.store.close()

    def client(self, token: str | None = None, **kw: Any) -> EngineClient:
        return EngineClient(self.url, token=token, timeout=30.0, **kw)


@pytest.fixture()
def live(tmp_path: Path) -> Iterator[LiveApp]:
    with LiveApp(tmp_path / "data") as app:
        yield app


def test_client_idempotency_key(live: LiveApp, tmp_path: Path, clip: bytes) -> None:  # noqa: F811
    client = live.client()
    job = client.submit(motion=clip, params={"steps": 2}, idempotency_key="batch-7/shot-1")
    assert client.submit(motion=clip, params={"steps": 2}, idempotency_key="batch-7/shot-1")["id"] == job["id"]
    with pytest.raises(EngineError) as info:
        client.submit(motion=clip, params={"steps": 3}, idempotency_key="batch-7/shot-1")
    assert (info.value.status, info.value.code, info.value.field) == (422, "idempotency_key_reused", "Idempotency-Key")
    assert client.submit(motion=clip, params={"steps": 2})["id"] != job["id"]  # old calls unchanged
    assert len(client.jobs()) == 2


def test_client_lists_filters_and_pages(live: LiveApp, clip: bytes) -> None:  # noqa: F811
    client = live.client()
    ids = [client.submit(motion=clip, params={"steps": 2})["id"] for _ in range(5)]
    live.store.transition(ids[0], "failed", error="x")
    assert [j["id"] for j in client.jobs()] == ids[::-1]
    assert [j["id"] for j in client.jobs(state="failed")] == [ids[0]]
    assert [j["id"] for j in client.jobs(state=["failed", "queued"], limit=2)] == ids[:2:-1]
    page = client.jobs_page(limit=2)
    assert len(page["jobs"]) == 2 and page["next_cursor"]
    assert [j["id"] for j in client.iter_jobs(limit=2)] == ids[::-1]
    assert [j["id"] for j in client.iter_jobs(state="queued", limit=1)] == ids[:0:-1]
    with pytest.raises(EngineError) as info:
        client._json("GET", "/v1/jobs?status=queued")
    assert (info.value.status, info.value.code, info.value.field) == (422, "unknown_parameter", "status")


def test_client_tag_priority_and_retry(live: LiveApp, clip: bytes) -> None:  # noqa: F811
    client = live.client()
    low = client.submit(motion=clip, params={"steps": 2}, tag="show/sh010")
    high = client.submit(motion=clip, params={"steps": 2}, priority=7)
    assert (low["tag"], low["priority"], high["priority"]) == ("show/sh010", 0, 7)
    assert [j["id"] for j in client.jobs(tag="show/sh010")] == [low["id"]]
    assert live.store.claim_next()["id"] == high["id"]
    live.store.transition(high["id"], "failed", error="x")
    retried = client.retry(high["id"], priority=-3)
    assert (retried["state"], retried["priority"], retried["retries"]) == ("queued", -3, 1)
    with pytest.raises(EngineError) as info:
        client.retry(low["id"])
    assert (info.value.status, info.value.code) == (409, "conflict")
