"""``GET /v1/jobs``: filters (state, tag, client), pages with an opaque cursor, unknown query parameters refused.

The real app through FastAPI's TestClient with a real JobStore (``test_service_api_matrix.Service``);
jobs are submitted through the API and moved between states through the store, as the worker does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_service_api_matrix import NO_JOB, Service, clip, operations, plain_model, refused  # noqa: F401 - fixtures

from btdm_engine.service.deps import Principal, bearer_auth


@pytest.fixture()
def service(tmp_path: Path, plain_model: Path) -> Iterator[Service]:  # noqa: F811
    svc = Service(tmp_path, plain_model, max_queued=50)
    yield svc
    svc.close()


def submit(svc: Service, clip: bytes, tag: str | None = None) -> dict[str, Any]:  # noqa: F811
    data = {"params": json.dumps({"steps": 2})} | ({"tag": tag} if tag is not None else {})
    response = svc.client.post("/v1/jobs", files={"motion": ("walk.npz", clip, "application/octet-stream")}, data=data)
    assert response.status_code == 202, response.text
    return response.json()


def listed(svc: Service, **query: Any) -> list[str]:
    response = svc.client.get("/v1/jobs", params=query)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["jobs"]]


def test_filters_by_state_tag_and_client(service: Service, clip: bytes) -> None:  # noqa: F811
    a = submit(service, clip, tag="show/sh010")["id"]
    b = submit(service, clip, tag="show/sh010")["id"]
    c = submit(service, clip, tag="show/sh020")["id"]
    service.app.dependency_overrides[bearer_auth] = lambda: Principal("farm", "submit")
    d = submit(service, clip)["id"]
    del service.app.dependency_overrides[bearer_auth]
    service.store.transition(a, "succeeded")
    service.store.transition(c, "running")
    assert listed(service) == [d, c, b, a]
    assert listed(service, state="queued") == [d, b]
    assert listed(service, state=["queued", "running"]) == [d, c, b]
    assert listed(service, state=["succeeded", "succeeded"]) == [a]
    assert listed(service, state="failed") == []
    assert listed(service, tag="show/sh010") == [b, a]
    assert listed(service, tag="show/sh010", state="queued") == [b]
    assert listed(service, client="farm") == [d]
    assert listed(service, client="farm", tag="show/sh010") == []
    job = service.client.get(f"/v1/jobs/{b}").json()
    assert (job["tag"], job["client"], job["priority"]) == ("show/sh010", None, 0)
    assert service.client.get(f"/v1/jobs/{d}").json()["client"] == "farm"


def test_pages_with_a_cursor(service: Service, clip: bytes) -> None:  # noqa: F811
    ids = [submit(service, clip, tag="t" if n % 2 else None)["id"] for n in range(7)]
    newest_first = ids[::-1]
    seen, cursor, pages = [], None, 0
    while True:
        body = service.client.get("/v1/jobs", params={"limit": 3} | ({"cursor": cursor} if cursor else {})).json()
        seen += [job["id"] for job in body["jobs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(body["jobs"]) == 3 and "." not in cursor and str(len(ids)) not in cursor  # opaque
    assert seen == newest_first and pages == 3
    # a page boundary on the last job: no empty page after it
    first = service.client.get("/v1/jobs", params={"limit": 7}).json()
    assert len(first["jobs"]) == 7 and first["next_cursor"] is None
    # with a filter, the cursor follows it; jobs submitted meanwhile do not shift the pages
    page = service.client.get("/v1/jobs", params={"limit": 2, "tag": "t"}).json()
    assert [j["id"] for j in page["jobs"]] == [ids[5], ids[3]]
    submit(service, clip, tag="t")
    rest = service.client.get("/v1/jobs", params={"limit": 2, "tag": "t", "cursor": page["next_cursor"]}).json()
    assert [j["id"] for j in rest["jobs"]] == [ids[1]] and rest["next_cursor"] is None


def test_a_cursor_is_bound_to_its_filters_and_checked(service: Service, clip: bytes) -> None:  # noqa: F811
    for _ in range(3):
        submit(service, clip, tag="t")
    cursor = service.client.get("/v1/jobs", params={"limit": 1, "tag": "t"}).json()["next_cursor"]
    assert cursor
    refused(service.client.get("/v1/jobs", params={"cursor": cursor}), 422, "cursor", "invalid_cursor")
    refused(service.client.get("/v1/jobs", params={"cursor": cursor, "tag": "u"}), 422, "cursor", "invalid_cursor")
    assert len(listed(service, cursor=cursor, tag="t", limit=5)) == 2
    for bad in ("", "x", "bm90LWEtY3Vyc29y", "MS4tMS4wMDAwMDAwMA", "%%%", "1.2.3"):
        refused(service.client.get("/v1/jobs", params={"cursor": bad}), 422, "cursor", "invalid_cursor")
    refused(service.client.get("/v1/jobs", params={"cursor": "x" * 201}), 422, "cursor", "invalid_request")


@pytest.mark.parametrize(("query", "field"), [
    ({"state": "queue"}, "state.0"), ({"state": ["queued", "done"]}, "state.1"), ({"tag": "-x"}, "tag"),
    ({"tag": "a b"}, "tag"), ({"client": "x" * 65}, "client"), ({"limit": 0}, "limit"),
])
def test_bad_filter_values_are_named(service: Service, query: dict[str, Any], field: str) -> None:
    refused(service.client.get("/v1/jobs", params=query), 422, field, "invalid_request")


def test_unknown_query_parameters_are_refused_on_every_operation(service: Service, clip: bytes) -> None:  # noqa: F811
    message = refused(service.client.get("/v1/jobs", params={"states": "queued"}), 422, "states", "unknown_parameter")
    assert "cursor, limit, state, tag" in message
    refused(service.client.get("/v1/jobs?state=queued&page=2"), 422, "page", "unknown_parameter")
    job = submit(service, clip)["id"]
    for method, path in operations(service.app, job):
        response = service.client.request(method, path, params={"verbose": "1"})
        refused(response, 422, "verbose", "unknown_parameter")
    assert service.client.get("/v1/jobs/" + NO_JOB).status_code == 404  # without one: as before


def test_a_bad_tag_on_submit_is_named(service: Service, clip: bytes) -> None:  # noqa: F811
    response = service.client.post("/v1/jobs", files={"motion": ("walk.npz", clip, "application/octet-stream")},
                                   data={"tag": "no spaces"})
    refused(response, 422, "tag", "invalid_request")
    assert service.store.counts()["queued"] == 0


def test_the_store_lists_with_the_same_filters(tmp_path: Path) -> None:
    from btdm_engine.service.store import JobStore, new_job_id

    store = JobStore(tmp_path)
    rows = [store.create(new_job_id(), params={}, source="motion", inputs={}, tag="x" if n < 2 else None,
                         client="c" if n % 2 else None) for n in range(4)]
    seqs = [r["seq"] for r in rows]
    assert [j["seq"] for j in store.list()] == seqs[::-1]
    assert [j["seq"] for j in store.list(tag="x")] == seqs[1::-1]
    assert [j["seq"] for j in store.list(client="c", before_seq=seqs[3])] == [seqs[1]]
    assert [j["seq"] for j in store.list(2, states=["queued"])] == seqs[:1:-1]
    assert store.list(states=[]) == []
