"""Schemathesis against a real `btdm serve`'s /openapi.json: no 5xx, every response matches its own schema.

A bounded number of generated requests per operation (positive and negative data), sent to a
server subprocess on 127.0.0.1 with a token; the known job that some operations reach is a real,
finished job so file endpoints are exercised too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_service import FAST, TOKEN, Server, toy_files

MAX_EXAMPLES = 12


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_schema_violation(tmp_path: Path, clip_file: Path, toy_model: Path) -> None:
    import schemathesis  # with hypothesis, here: 1 s of imports that every xdist worker's collection would pay
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    # the known job's files come from the toy model (conftest): a finished job's endpoints, made cheaply
    srv = Server(tmp_path / "data", "--model", f"toy={toy_model}", token=TOKEN).start()
    try:
        client = srv.client()
        done = client.wait(client.submit(motion=clip_file, params={**FAST, "model": "toy"}, **toy_files(toy_model))["id"])
        assert done["state"] == "succeeded"
        schema = schemathesis.openapi.from_url(srv.url + "/openapi.json")
        checks = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 16, [op.label for op in operations]
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                def check(case: schemathesis.Case) -> None:
                    if "job_id" in (case.path_parameters or {}) and case.path_parameters["job_id"] == "0" * 32:
                        case.path_parameters["job_id"] = done["id"]
                    case.call_and_validate(base_url=srv.url, headers=headers, checks=checks, timeout=30)

                try:
                    check()
                except Unsatisfiable:  # nothing to negate (an operation without parameters or body)
                    assert mode == GenerationMode.NEGATIVE, operation.label
        assert client.health()["status"] == "ok"
    finally:
        srv.stop()
