"""HTTPS: ``btdm serve --ssl-certfile/--ssl-keyfile`` (uvicorn's TLS) with a self-signed certificate made by
``openssl`` for this test, real TLS on loopback, the stdlib client trusting that certificate (``cafile``)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_service import BTDM, REPO, child_env, free_port
from test_service_api_matrix import clip  # noqa: F401 - fixture
from test_service_client_features import LiveApp

from btdm_bridge.engine_client import EngineClient, EngineError
from btdm_engine.procs import stop_process

SUBMIT = "farm-token-0123456789abcdef"
READ = "grafana-token-0123456789abcd"


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key (P-256), valid for a day."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def test_https_on_loopback_with_the_client(tmp_path: Path, cert: tuple[Path, Path], clip: bytes) -> None:  # noqa: F811
    ssl_kw = {"ssl_certfile": str(cert[0]), "ssl_keyfile": str(cert[1])}
    with LiveApp(tmp_path / "data", ssl=ssl_kw, tls=True) as live:
        assert live.url.startswith("https://127.0.0.1:")
        client = live.client(cafile=cert[0])
        assert client.health()["status"] == "ok"
        job = client.submit(motion=clip, params={"steps": 2}, idempotency_key="k")
        assert client.job(job["id"])["state"] == "queued"
        # the system's authorities do not know the self-signed certificate: refused, not downgraded
        with pytest.raises(EngineError) as info:
            live.client().health()
        assert info.value.code == "unreachable" and "CERTIFICATE_VERIFY_FAILED" in info.value.message
        # plain HTTP to the TLS port gets no answer
        with pytest.raises(EngineError) as info:
            EngineClient(live.url.replace("https://", "http://"), timeout=10).health()
        assert info.value.status is None or info.value.status >= 400
        # without a token, a web page's Origin is refused; the server's own (https) one is not
        context = ssl.create_default_context(cafile=str(cert[0]))

        def get(origin: str) -> int:
            request = urllib.request.Request(live.url + "/v1/models", headers={"Origin": origin})
            try:
                with urllib.request.urlopen(request, context=context, timeout=10) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert get(f"https://127.0.0.1:{live.port}") == 200
        assert get(f"http://127.0.0.1:{live.port}") == 403
        assert get("https://evil.example") == 403
    with pytest.raises(EngineError, match="cafile: cannot read"):
        EngineClient("https://127.0.0.1:1", cafile=tmp_path / "missing.pem")


def test_btdm_serve_over_https_with_role_tokens(tmp_path: Path, cert: tuple[Path, Path], clip_file: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"farm submit {SUBMIT}\ngrafana read {READ}\n")
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*BTDM, "serve", "--port", str(port), "--data", str(tmp_path / "data"), "--device", "cpu",
                             "--threads", "1", "--token-file", str(tokens), "--ssl-certfile", str(cert[0]),
                             "--ssl-keyfile", str(cert[1])], cwd=REPO, env=child_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        farm = EngineClient(url, token=SUBMIT, cafile=cert[0], timeout=30)
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if all(m["loaded"] for m in farm.models()):
                    break
            except EngineError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.2)
        job = farm.submit(motion=clip_file, params={"method": "texture", "seed": 3}, tag="tls")
        final = farm.wait(job["id"])
        assert final["state"] == "succeeded" and final["client"] == "farm", final
        grafana = EngineClient(url, token=READ, cafile=cert[0], timeout=30)
        assert grafana.frame(job["id"], 0)[:8] == b"\x89PNG\r\n\x1a\n"
        assert [j["id"] for j in grafana.jobs(tag="tls")] == [job["id"]]
        with pytest.raises(EngineError) as info:
            grafana.delete(job["id"])
        assert (info.value.status, info.value.code) == (403, "forbidden")
        request = urllib.request.Request(url + "/metrics", headers={"Authorization": f"Bearer {READ}"})
        context = ssl.create_default_context(cafile=str(cert[0]))
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            text = response.read().decode()
        assert 'btdm_jobs{state="succeeded"} 1.0' in text
        assert 'btdm_frames_generated_total{method="texture",model="default"} 6.0' in text
        farm.delete(job["id"])
    finally:
        stop_process(proc, timeout=30)
        log.close()
    assert "HTTPS with" in (tmp_path / "server.log").read_text()


def test_btdm_serve_refuses_half_a_tls_setup(tmp_path: Path, cert: tuple[Path, Path]) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BTDM, "serve", "--port", str(free_port()), "--data", str(tmp_path / "data"), *args],
                              cwd=REPO, env=child_env(), capture_output=True, text=True, check=False, timeout=120)

    result = serve("--ssl-certfile", str(cert[0]))
    assert result.returncode == 2 and "go together" in result.stderr, result.stderr
    result = serve("--ssl-certfile", str(cert[0]), "--ssl-keyfile", str(cert[0]))
    assert result.returncode == 2 and "not a certificate and its key" in result.stderr, result.stderr
    result = serve("--ssl-certfile", str(tmp_path / "none.pem"), "--ssl-keyfile", str(cert[1]))
    assert result.returncode == 2 and "no such file" in result.stderr, result.stderr
