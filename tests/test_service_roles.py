"""Tokens with roles (``btdm_engine.service.auth``): read-only, submit (its own jobs), admin; a job records
its token's name. The real app through FastAPI's TestClient and served by uvicorn on loopback
(the stdlib client), a real JobStore, ``btdm serve``'s own argument parser."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_service_api_matrix import NO_JOB, Service, clip, operations, plain_model, refused  # noqa: F401 - fixtures
from test_service_client_features import LiveApp

from btdm_bridge.engine_client import EngineError
from btdm_engine.service.auth import ApiToken, TokenError, Tokens, hashed_name, parse_token_file
from btdm_engine.service.deps import Principal, bearer_auth

ADMIN = "admin-token-0123456789abcdef"
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"
DASH = "dashboard-token-0123456789ab"
TOKENS = (ApiToken("alice", "submit", ALICE), ApiToken("bob", "submit", BOB), ApiToken("dash", "read", DASH))


@pytest.fixture()
def service(tmp_path: Path, plain_model: Path) -> Iterator[Service]:  # noqa: F811
    svc = Service(tmp_path, plain_model, token=ADMIN, tokens=TOKENS)
    yield svc
    svc.close()


def as_(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def submit(client: TestClient, clip: bytes, token: str, **headers: str) -> Any:  # noqa: F811
    return client.post("/v1/jobs", files={"motion": ("walk.npz", clip, "application/octet-stream")},
                       data={"params": json.dumps({"steps": 2})}, headers=as_(token) | headers)


def test_token_files_and_names() -> None:
    assert parse_token_file(f"  {ADMIN}  \n") == [ApiToken("admin", "admin", ADMIN)]  # the old one-token file
    text = f"# the studio's tokens\nfarm submit {ALICE}\n\ngrafana read {DASH}  # dashboards\nops admin {ADMIN}\n"
    tokens = parse_token_file(text)
    assert [(t.name, t.role) for t in tokens] == [("farm", "submit"), ("grafana", "read"), ("ops", "admin")]
    assert ALICE not in repr(tokens)
    for bad, says in [(f"farm writer {ALICE}", "line 1: token farm: role 'writer'"),
                      (f"farm submit {ALICE} extra", "line 1: expected NAME ROLE TOKEN"),
                      (f"farm submit {ALICE}\n{DASH}", "line 2: expected NAME ROLE TOKEN"),
                      ("farm submit short", "at least 16 characters"), ("# nothing\n", "no token"),
                      (f"-farm submit {ALICE}", "token name '-farm'")]:
        with pytest.raises(TokenError, match=says):
            parse_token_file(bad)
    with pytest.raises(TokenError, match="two tokens are named farm"):
        Tokens([ApiToken("farm", "read", DASH), ApiToken("farm", "submit", ALICE)])
    with pytest.raises(TokenError, match="the same token is given twice"):
        Tokens([ApiToken("a", "read", DASH), ApiToken("b", "submit", DASH)])
    tokens = Tokens.of(ADMIN, TOKENS)
    assert tokens.match(BOB).name == "bob" and tokens.match(ADMIN).role == "admin"
    assert tokens.match(BOB + "x") is None and tokens.match("") is None and tokens.match(None) is None
    assert not Tokens() and Tokens.of(None).match(ADMIN) is None
    assert hashed_name(ALICE).startswith("token-") and len(hashed_name(ALICE)) == 14 and hashed_name(ALICE)[6:] not in ALICE


def test_read_only_token_reads_but_cannot_change_anything(service: Service, clip: bytes) -> None:  # noqa: F811
    job = submit(service.client, clip, ALICE).json()
    for method, path in operations(service.app, job["id"]):
        if path.endswith("/events"):  # the queued job's stream stays open: read its first event only
            with service.client.stream("GET", path, headers=as_(DASH)) as stream:
                assert stream.status_code == 200 and next(stream.iter_lines()) == "event: job"
            continue
        response = service.client.request(method, path, headers=as_(DASH))
        if method == "GET":
            assert response.status_code in (200, 404), (path, response.text)  # 404: files the queued job has not
        else:
            message = refused(response, 403, None, "forbidden")
            assert "dash is read-only" in message, message
    assert service.client.get("/v1/whoami", headers=as_(DASH)).json() == {"client": "dash", "role": "read"}
    assert "btdm_queue_depth" in service.client.get("/metrics", headers=as_(DASH)).text
    assert [j["id"] for j in service.client.get("/v1/jobs", headers=as_(DASH)).json()["jobs"]] == [job["id"]]
    assert service.store.get(job["id"])["state"] == "queued" and service.store.counts()["queued"] == 1


def test_a_job_records_its_tokens_name_and_submit_tokens_manage_their_own(service: Service,
                                                                          clip: bytes) -> None:  # noqa: F811
    alice = submit(service.client, clip, ALICE).json()
    bob = submit(service.client, clip, BOB).json()
    admin = submit(service.client, clip, ADMIN).json()
    assert (alice["client"], bob["client"], admin["client"]) == ("alice", "bob", "admin")
    assert not any(secret in json.dumps(job) for job in (alice, bob, admin) for secret in (ALICE, BOB, ADMIN))
    client = service.client
    listed = client.get("/v1/jobs", params={"client": "alice"}, headers=as_(DASH)).json()["jobs"]
    assert [j["id"] for j in listed] == [alice["id"]]
    # bob may not touch alice's job: 403 naming the job, and it stays queued
    for method, path in (("POST", "cancel"), ("POST", "retry"), ("DELETE", "")):
        url = f"/v1/jobs/{alice['id']}" + (f"/{path}" if path else "")
        message = refused(client.request(method, url, headers=as_(BOB)), 403, "job_id", "forbidden")
        assert "submitted by alice" in message and "only its own jobs" in message
    assert service.store.get(alice["id"])["state"] == "queued"
    # alice may: cancel, retry, cancel again, delete
    assert client.post(f"/v1/jobs/{alice['id']}/cancel", headers=as_(ALICE)).json()["state"] == "cancelled"
    assert client.post(f"/v1/jobs/{alice['id']}/retry", headers=as_(ALICE)).json()["state"] == "queued"
    client.post(f"/v1/jobs/{alice['id']}/cancel", headers=as_(ALICE))
    assert client.delete(f"/v1/jobs/{alice['id']}", headers=as_(ALICE)).status_code == 204
    # the admin token manages any job
    assert client.post(f"/v1/jobs/{bob['id']}/cancel", headers=as_(ADMIN)).json()["state"] == "cancelled"
    assert client.delete(f"/v1/jobs/{bob['id']}", headers=as_(ADMIN)).status_code == 204
    # the same Idempotency-Key from two tokens: two jobs
    one = submit(client, clip, ALICE, **{"Idempotency-Key": "k"}).json()
    two = submit(client, clip, BOB, **{"Idempotency-Key": "k"}).json()
    assert one["id"] != two["id"] and submit(client, clip, BOB, **{"Idempotency-Key": "k"}).json()["id"] == two["id"]
    assert client.get("/v1/whoami", headers=as_(BOB)).json() == {"client": "bob", "role": "submit"}
    for token in (None, "wrong-token-0123456789abcdef", ALICE[:-1]):
        refused(client.get("/v1/jobs", headers=as_(token) if token else {}), 401, None, "unauthorized")


def test_the_routers_dependency_refuses_a_read_token_too(tmp_path: Path, plain_model: Path,  # noqa: F811
                                                         clip: bytes) -> None:  # noqa: F811
    svc = Service(tmp_path, plain_model)  # no guard tokens: what the routers' own dependencies decide
    try:
        svc.app.dependency_overrides[bearer_auth] = lambda: Principal("dash", "read")
        refused(svc.client.post("/v1/jobs", files={"motion": ("w.npz", clip, "application/octet-stream")}), 403,
                None, "forbidden")
        svc.app.dependency_overrides[bearer_auth] = lambda: Principal("farm", "submit")
        job = svc.client.post("/v1/jobs", files={"motion": ("w.npz", clip, "application/octet-stream")}).json()
        assert job["client"] == "farm"
        svc.app.dependency_overrides[bearer_auth] = lambda: Principal("other", "submit")
        refused(svc.client.post(f"/v1/jobs/{job['id']}/cancel"), 403, "job_id", "forbidden")
        del svc.app.dependency_overrides[bearer_auth]
        assert svc.client.get("/v1/whoami").json() == {"client": None, "role": "admin"}  # no tokens: loopback admin
        assert svc.client.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    finally:
        svc.close()


def test_openapi_declares_security_only_with_tokens(service: Service, tmp_path: Path,
                                                    plain_model: Path) -> None:  # noqa: F811
    spec = service.client.get("/openapi.json").json()
    assert "securitySchemes" in spec["components"]
    assert spec["paths"]["/v1/jobs"]["get"]["security"] and "401" in spec["paths"]["/v1/jobs"]["get"]["responses"]
    assert "security" not in spec["paths"]["/v1/health"]["get"]
    writes = {(path, method) for path, ops in spec["paths"].items() for method, op in ops.items()
              if op.get("x-btdm-role") == "submit"}
    assert writes == {("/v1/jobs", "post"), ("/v1/jobs/{job_id}/cancel", "post"), ("/v1/jobs/{job_id}/retry", "post"),
                      ("/v1/jobs/{job_id}", "delete")}
    open_app = Service(tmp_path / "open", plain_model)
    try:
        spec = open_app.client.get("/openapi.json").json()
        assert "securitySchemes" not in spec.get("components", {})
        assert not any("security" in op or "401" in op["responses"] for ops in spec["paths"].values()
                       for op in ops.values())
    finally:
        open_app.close()


def test_btdm_serve_reads_tokens_with_roles(tmp_path: Path) -> None:
    from btdm_engine.cli import CliError, build_parser
    from btdm_engine.commands.serve import read_tokens

    def tokens(*argv: str) -> list[tuple[str, str]]:
        return [(t.name, t.role) for t in read_tokens(build_parser().parse_args(["serve", *argv]))]

    assert tokens() == []
    assert tokens("--token", ADMIN) == [("admin", "admin")]
    assert tokens("--token", ADMIN, "--read-token", DASH) == [("admin", "admin"), ("read", "read")]
    path = tmp_path / "tokens"
    path.write_text(f"farm submit {ALICE}\nops admin {ADMIN}\n")
    assert tokens("--token-file", str(path), "--read-token", DASH) == [("farm", "submit"), ("ops", "admin"),
                                                                        ("read", "read")]
    path.write_text(f"{ADMIN}\n")
    assert tokens("--token-file", str(path)) == [("admin", "admin")]
    for argv, says in [(("--read-token", DASH), "only read-only tokens"),
                       (("--token", ADMIN, "--read-token", ADMIN), "the same token is given twice"),
                       (("--token", "short"), "at least 16 characters"),
                       (("--token-file", str(tmp_path / "none")), "no such file")]:
        with pytest.raises(CliError, match=says):
            tokens(*argv)
    path.write_text(f"read read {DASH}\n")
    with pytest.raises(CliError, match="only read-only tokens"):
        tokens("--token-file", str(path))
    path.write_text(f"farm submit {ALICE}\nfarm read {DASH}\n")
    with pytest.raises(CliError, match=r"--token-file .*tokens: two tokens are named farm"):
        tokens("--token-file", str(path))


def test_roles_over_http_with_the_client(tmp_path: Path, clip: bytes) -> None:  # noqa: F811
    with LiveApp(tmp_path / "data", token=ADMIN, tokens=TOKENS) as live:
        dash, alice = live.client(DASH), live.client(ALICE)
        assert dash.whoami() == {"client": "dash", "role": "read"}
        with pytest.raises(EngineError) as info:
            dash.submit(motion=clip, params={"steps": 2})
        assert (info.value.status, info.value.code) == (403, "forbidden")
        job = alice.submit(motion=clip, params={"steps": 2})
        assert job["client"] == "alice" and [j["id"] for j in dash.jobs(client="alice")] == [job["id"]]
        with pytest.raises(EngineError) as info:
            dash.cancel(job["id"])
        assert info.value.status == 403
        with pytest.raises(EngineError) as info:
            live.client(BOB).cancel(job["id"])
        assert (info.value.status, info.value.field) == (403, "job_id")
        assert alice.cancel(job["id"])["state"] == "cancelled"
        assert live.client().health()["auth"] is True
