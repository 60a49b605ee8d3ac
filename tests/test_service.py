"""The engine service (`btdm serve`): a real server subprocess on a free loopback port, real HTTP, real files.

Each module-scoped server runs the embedded tiny model with 2 BTU-Net and a few SR3 steps, so a
job takes seconds on the 2-core CPU machine. Traffic goes to 127.0.0.1 only; every server is
killed at teardown.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from commandline import run_btdm

from btdm_bridge.engine_client import EngineClient, EngineError
from btdm_engine.procs import stop_process

REPO = Path(__file__).resolve().parents[1]
BTDM = [str(Path(sys.executable).with_name("btdm"))]
FAST = {"steps": 2, "sr_steps": 2, "seed": 3}
TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    # One thread everywhere, so in-process runs, servers and `btdm animate` round identically.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYOPENGL_PLATFORM": "egl"}


class Server:
    """`btdm serve` in a subprocess; :meth:`kill` sends SIGKILL, :meth:`stop` SIGTERM (then SIGKILL)."""

    def __init__(self, data: Path, *extra: str, token: str | None = None) -> None:
        self.data, self.extra, self.token = data, extra, token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data.parent / f"{data.name}-server.log"

    def start(self, timeout: float = 90.0) -> Server:
        args = [*BTDM, "serve", "--port", str(self.port), "--data", str(self.data), "--device", "cpu",
                "--threads", "1", *self.extra]
        if self.token:
            args += ["--token", self.token]
        self.logfile = open(self.log, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(args, cwd=REPO, env=child_env(), stdout=self.logfile, stderr=subprocess.STDOUT)
        client = EngineClient(self.url, timeout=2.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"btdm serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                # the first model (the embedded one) is loaded at start, or those --preload names; others on first use
                models = self.client().models()
                wanted = [a for k, a in enumerate(self.extra[1:]) if self.extra[k] == "--preload"] or [models[0]["name"]]
                if all(m["loaded"] for m in models if m["name"] in wanted):
                    return self
            except EngineError:
                pass
            time.sleep(0.2)
        del client
        raise RuntimeError(f"btdm serve did not come up in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def client(self, token: str | None = None) -> EngineClient:
        return EngineClient(self.url, token=token or self.token, timeout=30.0)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.logfile.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=30)
        self.logfile.close()


def toy_files(model: Path) -> dict[str, Path]:
    """The appearance files of a toy model folder (conftest ``toy_model``): the jobs and `btdm animate` runs
    that compare frames send them explicitly, so both sides read the same appearance."""
    return {"appearance": model / "appearance.png", "appearance_iuv": model / "appearance_iuv.png"}


def make_clip(path: Path, seconds: float = 0.2, motion: str = "walk") -> Path:
    run_btdm("motion", "make", motion, "--seconds", str(seconds), "--fps", "30", "--out", str(path), check=True)
    return path


def decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a PNG"
    return image


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, toy_model: Path):
    # the embedded model, and the toy model (conftest) for the tests of mechanics that do not depend on its size
    srv = Server(tmp_path_factory.mktemp("serve") / "data", "--max-queued", "2", "--model", f"toy={toy_model}").start()
    yield srv
    srv.stop()


def test_health_and_models(server: Server) -> None:
    client = server.client()
    health = client.health()
    assert health["status"] == "ok" and health["device"] == "cpu" and health["models"] == ["default", "toy"]
    assert set(health["queue"]) == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert health["auth"] is False and health["max_frames"] == 2000
    model, toy = client.models()
    assert model["name"] == "default" and model["preset"] == "tiny-warp" and model["texture_prior"]
    assert (model["resolution"], model["low_resolution"], model["takes_appearance"]) == (256, 32, True)
    assert model["has_default_appearance"] and model["loaded"]  # loaded at start
    # a --model folder: its facts from its configs (the last SR3's size); its own appearance.png + appearance_iuv.png
    assert (toy["name"], toy["preset"], toy["texture_prior"], toy["has_default_appearance"]) == ("toy", "tiny-warp",
                                                                                                 True, True)
    assert (toy["resolution"], toy["low_resolution"], toy["takes_appearance"]) == (64, 32, True)
    spec = json.loads(urllib.request.urlopen(server.url + "/openapi.json", timeout=10).read())
    for path in ("/v1/health", "/v1/models", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events",
                 "/v1/jobs/{job_id}/frames/{n}.png", "/v1/jobs/{job_id}/posemaps/{n}.png",
                 "/v1/jobs/{job_id}/plates/{n}.png", "/v1/jobs/{job_id}/video.mp4", "/v1/jobs/{job_id}/cancel"):
        assert path in spec["paths"], path


def test_job_events_frames_equal_btdm_animate(server: Server, clip_file: Path, tmp_path: Path) -> None:
    client = server.client()
    job = client.submit(motion=clip_file, params=FAST)
    assert job["state"] == "queued" and len(job["id"]) == 32 and job["params"]["steps"] == 2
    seen: list[dict] = []
    final = client.wait(job["id"], callback=seen.append)
    assert final["state"] == "succeeded", final["error"]
    stages = [e["stage"] for e in seen if e["state"] == "running"]
    # The stream polls the store every 0.1 s, so a stage shorter than that (SR3 on 6 frames) may be
    # coalesced into the next event; what is seen must still come in pipeline order.
    order = ("posemaps", "finetune", "btunet", "sr3", "writing")
    ranks = [order.index(s) for s in stages if s is not None]
    assert "btunet" in stages and ranks == sorted(ranks), stages
    assert final["frames_done"] == final["frames_total"] == 6 and final["has_video"]
    assert (final["width"], final["height"]) == (256, 256)
    assert final["started"] >= final["created"] and final["finished"] >= final["started"]

    run_btdm("animate", "--clip", str(clip_file), "--out", str(tmp_path / "local"), "--steps", "2",
             "--sr-steps", "2", "--seed", "3", "--no-progress", check=True)
    for n in range(6):
        served = decode(client.frame(job["id"], n))
        local = cv2.imread(str(tmp_path / "local" / "frames" / f"{n:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert served.shape == (256, 256, 3)
        np.testing.assert_array_equal(served, local, err_msg=f"frame {n}")
        assert decode(client.posemap(job["id"], n)).shape == (256, 256, 3)
    assert client.video(job["id"])[4:8] == b"ftyp"
    with pytest.raises(EngineError) as info:
        client.frame(job["id"], 6)
    assert (info.value.status, info.value.code) == (404, "not_found")
    assert job["id"] in [j["id"] for j in client.jobs()]
    client.delete(job["id"])
    with pytest.raises(EngineError) as info:
        client.job(job["id"])
    assert info.value.status == 404 and info.value.field == "job_id"


def test_texture_method_job_equals_btdm_animate_method_texture(server: Server, clip_file: Path, tmp_path: Path) -> None:
    client = server.client()
    final = client.wait(client.submit(motion=clip_file, params={"method": "texture", "seed": 3})["id"])
    assert final["state"] == "succeeded", final["error"]
    run_btdm("animate", "--clip", str(clip_file), "--out", str(tmp_path / "local"), "--method", "texture",
             "--size", "256", "--no-progress", check=True)
    for n in range(6):
        local = cv2.imread(str(tmp_path / "local" / "frames" / f"{n:06d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(decode(client.frame(final["id"], n)), local, err_msg=f"frame {n}")
    # without the appearance's IUV map there is nothing to transfer: refused, naming the field
    code, body = _post(server, motion=clip_file.read_bytes(), appearance=_png((8, 8, 3)),
                       params='{"method": "texture"}')
    assert (code, body["error"]["field"]) == (422, "params.method"), body
    code, body = _post(server, motion=clip_file.read_bytes(), params='{"method": "texture", "finetune_steps": 2}')
    assert (code, body["error"]["field"]) == (422, "params.finetune_steps"), body


def test_cancel_mid_run(server: Server, clip_file: Path) -> None:
    client = server.client()
    job = client.submit(motion=clip_file, params={"steps": 400, "sr_steps": 2})
    for event in client.events(job["id"]):
        if event["stage"] == "btunet" and event["step"] >= 2:
            break
    assert client.cancel(job["id"])["cancel_requested"] is True
    final = client.wait(job["id"])
    # Stopped in the BTU-Net stage, long before its 400 steps (no wall-clock bound: how many
    # steps a busy machine runs in a given time varies, that the sampler stops within one does not)
    assert final["state"] == "cancelled" and final["stage"] == "btunet" and final["step"] < 400, final
    with pytest.raises(EngineError) as info:
        client.frame(job["id"], 0)
    assert info.value.status == 404
    assert client.health()["status"] == "ok"  # the worker keeps serving
    assert client.wait(client.submit(motion=clip_file, params=FAST)["id"])["state"] == "succeeded"
    # Several jobs on: the model was loaded once, at start, and kept.
    assert server.log.read_text().count("model default loaded") == 1


def test_full_queue_gives_429(server: Server, clip_file: Path) -> None:
    client = server.client()
    running = client.submit(motion=clip_file, params={"steps": 400, "sr_steps": 2})
    for event in client.events(running["id"]):
        if event["state"] == "running":
            break
    queued = [client.submit(motion=clip_file, params=FAST) for _ in range(2)]
    request = urllib.request.Request(server.url + "/v1/jobs", method="POST", data=b"")
    with pytest.raises(EngineError) as info:
        client.submit(motion=clip_file, params=FAST)
    assert (info.value.status, info.value.code) == (429, "queue_full")
    try:
        urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as exc:
        assert exc.code == 422 or exc.code == 400  # an empty body is refused before the queue is looked at
    body, ctype = _form(motion=clip_file.read_bytes())
    req = urllib.request.Request(server.url + "/v1/jobs", data=body, method="POST", headers={"Content-Type": ctype})
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, timeout=10)
    assert http.value.code == 429 and int(http.value.headers["Retry-After"]) > 0
    for job in (*queued, running):
        client.cancel(job["id"])
    assert client.wait(running["id"])["state"] == "cancelled"
    assert all(client.job(j["id"])["state"] == "cancelled" for j in queued)


def _form(**files: bytes | str) -> tuple[bytes, str]:
    from btdm_bridge.engine_client import _multipart

    fields = {k: v for k, v in files.items() if isinstance(v, str)}
    blobs = {k: (f"{k}.bin", v, "application/octet-stream") for k, v in files.items() if isinstance(v, bytes)}
    return _multipart(fields, blobs)


def _post(server: Server, **files: bytes | str) -> tuple[int, dict]:
    body, ctype = _form(**files)
    req = urllib.request.Request(server.url + "/v1/jobs", data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _npz(**arrays: object) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _png(shape: tuple[int, ...]) -> bytes:
    ok, buf = cv2.imencode(".png", np.zeros(shape, np.uint8))
    assert ok
    return buf.tobytes()


def test_bad_input_gets_a_4xx_naming_the_field(server: Server, clip_file: Path) -> None:
    motion = clip_file.read_bytes()
    with np.load(clip_file) as npz:
        fields = {k: npz[k] for k in npz.files}
    evil_zip = io.BytesIO()
    with zipfile.ZipFile(evil_zip, "w") as z:
        z.writestr("../../etc/000000.png", _png((8, 8, 3)))
    before = server.client().health()["queue"]
    cases = [
        ({}, 400, "motion"),
        ({"motion": motion, "posemaps": b"PK"}, 400, "motion"),
        ({"motion": b"not a zip"}, 400, "motion"),
        ({"motion": _npz(poses=np.array([{"a": 1}], dtype=object))}, 400, "motion"),  # a pickle: never loaded
        ({"motion": _npz(**{**fields, "poses": fields["poses"][:, :5]})}, 400, "motion"),
        # a body model named by path would be a server file opened and unpickled at the client's choice
        ({"motion": _npz(**{**fields, "body_model": np.array(str(REPO / "pyproject.toml"))})}, 400, "motion"),
        ({"motion": _npz(**{**fields, "body_model": np.array("smpl_neutral")})}, 400, "motion"),
        ({"motion": motion, "params": "{"}, 422, "params"),
        ({"motion": motion, "params": "[1]"}, 422, "params"),
        ({"motion": motion, "params": '{"steps": 0}'}, 422, "params.steps"),
        ({"motion": motion, "params": '{"steps": "2"}'}, 422, "params.steps"),
        ({"motion": motion, "params": '{"nope": 1}'}, 422, "params.nope"),
        ({"motion": motion, "params": '{"model": "nope"}'}, 422, "params.model"),
        ({"motion": motion, "params": '{"model": "../../etc/passwd"}'}, 422, "params.model"),
        ({"motion": motion, "params": '{"frame_start": 6}'}, 422, "params.frame_start"),
        ({"motion": motion, "params": '{"frame_end": 7}'}, 422, "params.frame_end"),
        ({"motion": motion, "params": '{"finetune_steps": 1, "use_default_appearance": false}'}, 422,
         "params.finetune_steps"),
        ({"motion": motion, "appearance": b"GIF89a not a png"}, 400, "appearance"),
        ({"motion": motion, "appearance": _png((8, 12, 3))}, 400, "appearance"),
        ({"motion": motion, "appearance_iuv": _png((8, 8, 3))}, 400, "appearance_iuv"),
        ({"posemaps": evil_zip.getvalue()}, 400, "posemaps"),
        ({"posemaps": b"PK\x03\x04 truncated"}, 400, "posemaps"),
        ({"skeleton": motion}, 400, "skeleton"),
        ({"motion": b"\0" * (65 << 20)}, 413, "motion"),
    ]
    for files, status, field in cases:
        code, body = _post(server, **files)
        label = {k: (v[:40] if isinstance(v, str) else f"{len(v)} bytes") for k, v in files.items()}
        assert code == status, (label, body)
        assert set(body) == {"error"} and body["error"]["field"] == field, (label, body)
        assert body["error"]["message"] and body["error"]["code"], (label, body)
    assert server.client().health()["queue"] == before
    # A declared body over the request limit is refused before it is read.
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/v1/jobs")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(1 << 40))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "too_large"
    conn.close()
    assert list((server.data / "jobs").iterdir()) == [] or all(
        (server.data / "jobs" / j["id"]).is_dir() for j in server.client().jobs())
    for path, status in (("/v1/jobs/XYZ", 422), ("/v1/jobs/" + "0" * 32, 404), ("/v1/jobs/../../etc/passwd", 404),
                         ("/v1/jobs/" + "0" * 32 + "/frames/-1.png", 422), ("/v1/nope", 404)):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url + path, timeout=10)
        assert info.value.code == status, path
        assert "error" in json.loads(info.value.read()), path


def test_posemaps_zip_job(server: Server, clip_file: Path, tmp_path: Path, toy_model: Path) -> None:
    client = server.client()
    toy, fast = toy_files(toy_model), {**FAST, "model": "toy"}
    done = client.wait(client.submit(motion=clip_file, params={**fast, "video": False}, **toy)["id"])
    zipped = io.BytesIO()
    maps = server.data / "jobs" / done["id"] / "posemaps" / "iuv"
    with zipfile.ZipFile(zipped, "w") as z:
        for path in sorted(maps.glob("*.png"))[:3]:
            z.write(path, f"iuv/{path.name}")
    job = client.submit(posemaps=zipped.getvalue(), params=fast, **toy)
    final = client.wait(job["id"])
    assert final["state"] == "succeeded" and final["frames_done"] == 3 and final["source"] == "posemaps"
    assert decode(client.frame(job["id"], 2)).shape == (64, 64, 3)  # the toy model's size
    # a picture framed like the pose maps but of another size, at an appearance frame: its IUV map is that pose map
    # resized to it, as `btdm animate --posemaps` reads it (the same frames); a job once failed at this
    (tmp_path / "maps").mkdir()
    for path in sorted(maps.glob("*.png"))[:3]:
        (tmp_path / "maps" / path.name).write_bytes(path.read_bytes())
    small = cv2.resize(cv2.imread(str(toy["appearance"])), (40, 40), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "small.png"), small)
    shown = {**fast, "appearance_frame": 1, "finetune_steps": 1, "video": False}
    final = client.wait(client.submit(posemaps=zipped.getvalue(), appearance=tmp_path / "small.png", params=shown)["id"])
    assert final["state"] == "succeeded", final["error"]
    run_btdm("animate", "--posemaps", str(tmp_path / "maps"), "--model", str(toy_model), "--appearance",
             str(tmp_path / "small.png"), "--appearance-frame", "1", "--finetune-steps", "1", "--steps", "2",
             "--sr-steps", "2", "--seed", "3", "--out", str(tmp_path / "local"), "--no-progress", check=True)
    for n in range(3):
        np.testing.assert_array_equal(decode(client.frame(final["id"], n)),
                                      cv2.imread(str(tmp_path / "local" / "frames" / f"{n:06d}.png")))


@pytest.mark.slow
def test_sigkill_mid_job_then_restart_finishes_keeping_frames(tmp_path: Path, clip36_file: Path,
                                                              toy_model_256: Path) -> None:
    # Resuming does not depend on the model's size: a toy 256 px model (conftest) whose SR3 the CPU memory
    # budget chunks like the embedded model's, 4 frames per call, each chunk cheaper. 36 frames: nine
    # chunks; the kill follows the first, so eight remain even when the event reaches the test late (CI
    # once ran a short tail to the end before the kill arrived).
    clip = clip36_file
    params = {"model": "toy", "steps": 2, "sr_steps": 2, "seed": 5}
    toy = toy_files(toy_model_256)
    srv = Server(tmp_path / "data", "--model", f"toy={toy_model_256}", "--preload", "toy").start()
    try:
        client = srv.client()
        job = client.submit(motion=clip, params=params, **toy)
        twin = client.submit(motion=clip, params=params, **toy)  # queued behind it, runs uninterrupted
        folder = srv.data / "jobs" / job["id"]
        for event in client.events(job["id"]):
            if event["frames_done"] >= 4:  # the first SR3 chunk is on disk
                break
        srv.kill()
    finally:
        srv.kill()
    assert not (folder / "frames" / "000035.png").exists(), "the job ended before the kill: the test proves nothing"
    assert json.loads((folder / "run.json").read_text())["sr_batch"] == 4  # chunks of 4 frames
    on_disk = sorted((folder / "frames").glob("*.png"))
    assert [p.name for p in on_disk] == [f"{n:06d}.png" for n in range(len(on_disk))]
    # the frames of the chunks finished before the kill: a resumed run must keep them as they are
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in on_disk[: len(on_disk) // 4 * 4]}
    low = (folder / "low.npy").stat()
    assert len(kept) >= 4 and not list((folder / "frames").glob(".*"))  # no half-written frame under its name
    restarted = Server(tmp_path / "data", "--model", f"toy={toy_model_256}", "--preload", "toy").start()
    try:
        client = restarted.client()
        final = client.wait(job["id"])
        assert final["state"] == "succeeded" and final["attempts"] == 2, final
        assert client.wait(twin["id"])["state"] == "succeeded"
        assert (folder / "low.npy").stat().st_mtime_ns == low.st_mtime_ns  # the bidirectional stage was not redone
        for name, (ino, mtime) in kept.items():
            st = (folder / "frames" / name).stat()
            assert (st.st_ino, st.st_mtime_ns) == (ino, mtime), f"{name} was rewritten"
        # The resumed frames equal the uninterrupted twin's (the SR3 noise of skipped chunks is replayed;
        # a service job's frames equal `btdm animate`'s: test_job_events_frames_equal_btdm_animate).
        for n in range(36):
            frame = decode(client.frame(job["id"], n))
            assert frame.shape == (256, 256, 3)
            np.testing.assert_array_equal(frame, decode(client.frame(twin["id"], n)), err_msg=f"frame {n}")
    finally:
        restarted.stop()


def test_token_auth(tmp_path: Path, clip_file: Path) -> None:
    srv = Server(tmp_path / "data", token=TOKEN).start()
    try:
        assert srv.client(token="wrong").health()["auth"] is True  # health needs no token
        for token in ("wrong-token-0123456789", ""):
            with pytest.raises(EngineError) as info:
                EngineClient(srv.url, token=token or None).models()
            assert (info.value.status, info.value.code) == (401, "unauthorized")
        with pytest.raises(EngineError) as info:
            EngineClient(srv.url, token="wrong").submit(motion=clip_file, params=FAST)
        assert info.value.status == 401
        assert srv.client().models()[0]["name"] == "default"
        assert srv.client().jobs() == []
    finally:
        srv.stop()


def test_refuses_non_loopback_without_token(tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*BTDM, "serve", "--port", str(free_port()), "--data", str(tmp_path / "data"), *args],
                              cwd=REPO, env=child_env(), capture_output=True, text=True, check=False, timeout=60)

    for host in ("0.0.0.0", "::", "192.0.2.1", "example.org"):
        result = serve("--host", host)
        assert result.returncode == 2, (host, result.stderr)
        assert "refusing to listen" in result.stderr and "token" in result.stderr
    result = serve("--token", "short")
    assert result.returncode == 2 and "at least 16 characters" in result.stderr


def test_preload_loads_the_named_models_at_start(tmp_path: Path, toy_model: Path) -> None:
    """--preload NAME loads NAME while the server starts (the embedded model then waits for a job);
    an unknown name is refused naming the models offered."""
    result = subprocess.run([*BTDM, "serve", "--port", str(free_port()), "--data", str(tmp_path / "data"),
                             "--model", f"toy={toy_model}", "--preload", "toyy"],
                            cwd=REPO, env=child_env(), capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2 and "--preload toyy: no such model; offered: default, toy" in result.stderr
    srv = Server(tmp_path / "data", "--model", f"toy={toy_model}", "--preload", "toy").start()
    try:
        assert {m["name"]: m["loaded"] for m in srv.client().models()} == {"default": False, "toy": True}
    finally:
        srv.stop()


def test_non_square_camera_gives_plates_equal_to_btdm_animate_plate(server: Server, clip_file: Path, tmp_path: Path,
                                                                    toy_model: Path) -> None:
    # Plates (frames placed over the shot camera's view) do not depend on the model's size: the toy model.
    from btdm_engine.motion.clip import MotionClip

    wide = MotionClip.load(clip_file).resized(192, 128).save(tmp_path / "wide.npz")
    client = server.client()
    toy = toy_files(toy_model)
    fast = {**FAST, "model": "toy"}
    job = client.submit(motion=wide, params={**fast, "frame_end": 3, "video": False}, **toy)
    final = client.wait(job["id"])
    assert final["state"] == "succeeded", final["error"]
    assert (final["has_plates"], final["plate_width"], final["plate_height"]) == (True, 192, 128)
    run_btdm("animate", "--clip", str(wide), "--plate", "--out", str(tmp_path / "local"), "--model",
             str(toy_model), "--appearance", str(toy["appearance"]), "--appearance-iuv",
             str(toy["appearance_iuv"]), "--steps", "2", "--sr-steps", "2", "--seed", "3", "--no-progress", check=True)
    # A part of the clip_file (frame_end): plates at the shot's size with a real matte.
    for n in range(3):
        plate = decode(client.plate(job["id"], n))
        assert plate.shape == (128, 192, 4) and plate[..., 3].max() == 255 and plate[..., 3].min() == 0
        assert decode(client.frame(job["id"], n)).shape == (64, 64, 3)
    full = client.wait(client.submit(motion=wide, params={**fast, "video": False}, **toy)["id"])
    for n in range(6):
        local_plate = cv2.imread(str(tmp_path / "local" / "plates" / f"{n:06d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(decode(client.plate(full["id"], n)), local_plate)
        np.testing.assert_array_equal(decode(client.frame(full["id"], n)),
                                      cv2.imread(str(tmp_path / "local" / "frames" / f"{n:06d}.png")))
    square = client.submit(motion=clip_file, params={**fast, "plate": False, "video": False}, **toy)
    assert client.wait(square["id"])["has_plates"] is False


def test_appearance_frame_fine_tunes_on_a_picture_of_the_whole_shot(server: Server, clip_file: Path, tmp_path: Path,
                                                                    toy_model: Path) -> None:
    # A render (or matched photo) of the whole shot-camera view at one frame: the engine cuts it with
    # that frame's window and fine-tunes with that frame's pose map as g(c); no IUV file is needed.
    # The job runs the toy model (the embedded BTU-Net, which is what is fine-tuned; a cheaper SR3).
    from btdm_bridge.engine_client import EngineError
    from btdm_engine.body.model import load_body_model
    from btdm_engine.motion.clip import MotionClip
    from btdm_engine.posemaps.preview import colorize_iuv
    from btdm_engine.posemaps.renderer import IUVRenderer

    wide = MotionClip.load(clip_file).resized(192, 128)
    path = wide.save(tmp_path / "wide.npz")
    with IUVRenderer(load_body_model(wide.body_model), 192, 128) as renderer:
        (iuv,) = renderer.render_clip(wide, progress=False, frames=[2])
    picture = np.where(iuv[..., :1] > 0, colorize_iuv(iuv), 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", picture[..., ::-1])
    assert ok
    (tmp_path / "shot.png").write_bytes(png.tobytes())
    client = server.client()
    params = {**FAST, "video": False, "finetune_steps": 2, "appearance_frame": 2}
    final = client.wait(client.submit(motion=path, appearance=png.tobytes(), params={**params, "model": "toy"})["id"])
    assert final["state"] == "succeeded", final["error"]
    assert final["frames_done"] == 6 and final["has_plates"]
    # btdm animate --appearance-frame cuts and fine-tunes the same way: the same frames
    run_btdm("animate", "--clip", str(path), "--plate", "--model", str(toy_model), "--appearance",
             str(tmp_path / "shot.png"), "--appearance-frame", "2", "--finetune-steps", "2", "--out",
             str(tmp_path / "local"), "--steps", "2", "--sr-steps", "2", "--seed", "3", "--no-progress", check=True)
    for n in range(6):
        np.testing.assert_array_equal(decode(client.frame(final["id"], n)),
                                      cv2.imread(str(tmp_path / "local" / "frames" / f"{n:06d}.png")))
    params["frame_end"] = 4

    def refused(**submit: object) -> EngineError:
        with pytest.raises(EngineError) as info:
            client.submit(motion=path, **submit)
        assert info.value.status in (400, 422)  # a bad upload, bad params
        return info.value

    assert refused(params={**params}).field == "params.appearance_frame"  # no picture to place
    assert refused(appearance=png.tobytes(), params={**params, "appearance_frame": 4}).field == "params.appearance_frame"
    error = refused(appearance=_png((64, 64, 3)), params=params)  # not the shot camera's view
    assert error.field == "appearance" and "192x128" in error.message
    assert refused(appearance=_png((128, 192, 3)), appearance_iuv=_png((128, 192, 3)), params=params).field == "appearance_iuv"
    without = {k: v for k, v in params.items() if k != "appearance_frame"}
    assert refused(appearance=_png((64, 64, 3)), params={**without, "plate": False}).field == "params.finetune_steps"


def test_views_join_the_texture_as_btdm_animate_view_does(server: Server, clip_file: Path, tmp_path: Path) -> None:
    # Pictures of the person at further frames of the shot (the add-on's Scene render at several frames) join
    # the appearance's UV texture: the service's views zip and `btdm animate --view K IMG` make the same frames,
    # and at a view's frame the plate shows what that picture shows, which the appearance alone cannot.
    from btdm_bridge.engine_client import EngineError
    from btdm_engine.body.model import load_body_model
    from btdm_engine.motion.clip import MotionClip
    from btdm_engine.posemaps.renderer import IUVRenderer
    from tests.test_service_store import zip_members

    wide = MotionClip.load(clip_file).resized(192, 128)
    path = wide.save(tmp_path / "wide.npz")
    with IUVRenderer(load_body_model(wide.body_model), 192, 128) as renderer:
        maps = np.stack(list(renderer.render_clip(wide, progress=False)))
    # the person: a colour of its own on each of the 24 body parts, which no mirror or fill can guess
    colours = np.random.default_rng(7).integers(0, 256, (25, 3)).astype(np.uint8)
    colours[0] = 255  # the background
    shots = colours[maps[..., 0]]
    pngs = {}
    for k in (0, 2, 5):
        ok, png = cv2.imencode(".png", shots[k][..., ::-1])
        assert ok
        pngs[k] = png.tobytes()
        (tmp_path / f"shot{k}.png").write_bytes(pngs[k])
    client = server.client()
    params = {"method": "texture", "appearance_frame": 2, "video": False}
    alone = client.wait(client.submit(motion=path, appearance=pngs[2], params=params)["id"])
    final = client.wait(client.submit(motion=path, appearance=pngs[2], views={0: pngs[0], 5: pngs[5]},
                                      params=params)["id"])
    assert final["state"] == alone["state"] == "succeeded", final["error"]
    run_btdm("animate", "--clip", str(path), "--plate", "--method", "texture", "--size", "256",
             "--appearance", str(tmp_path / "shot2.png"), "--appearance-frame", "2", "--view", "0",
             str(tmp_path / "shot0.png"), "--view", "5", str(tmp_path / "shot5.png"), "--out",
             str(tmp_path / "local"), "--no-progress", check=True)
    for n in range(6):
        np.testing.assert_array_equal(decode(client.frame(final["id"], n)),
                                      cv2.imread(str(tmp_path / "local" / "frames" / f"{n:06d}.png")))

    def error(job: dict, n: int) -> float:  # the plate against the picture of frame n, on the body
        plate = decode(client.plate(job["id"], n))[..., [2, 1, 0]].astype(float)
        body = maps[n][..., 0] > 0
        return float(np.abs(plate - shots[n])[body].mean())

    # a short walk seen from one side: frame 2 shows most of what frames 0 and 5 do (2.6 -> 2.1 grey levels here)
    assert error(final, 5) < 0.9 * error(alone, 5) and error(final, 0) < 0.9 * error(alone, 0)

    def refused(status: int, **submit: object) -> EngineError:
        with pytest.raises(EngineError) as info:
            client.submit(motion=path, **submit)
        assert info.value.status == status, info.value
        return info.value

    said = refused(422, appearance=pngs[2], views={6: pngs[5]}, params=params)
    assert said.field == "views" and "frame 6 is not one of the job's 6 frames" in said.message
    said = refused(422, views={5: pngs[5]}, params={"video": False})  # the model's own appearance is not this person
    assert said.field == "views" and "give appearance with" in said.message
    assert refused(400, appearance=pngs[2], views={5: _png((64, 64, 3))}, params=params).field == "views"  # not the shot
    many = {k: pngs[5] for k in range(17)}
    assert refused(413, appearance=pngs[2], views=many, params={**params}).field == "views"
    bomb = io.BytesIO()  # a member that unzips to more than an appearance picture may be: refused from the directory
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("000001.png", pngs[5] + bytes(17 << 20))
    code, body = _post(server, motion=path.read_bytes(), appearance=pngs[2], views=bomb.getvalue(),
                       params=json.dumps(params))
    assert (code, body["error"]["field"]) == (413, "views") and "larger than the 16 MiB" in body["error"]["message"]
    def posted(views: bytes) -> tuple[int, dict]:
        return _post(server, motion=path.read_bytes(), appearance=pngs[2], views=views, params=json.dumps(params))

    # each error names the member; five 4096 px RGBA headers decode to over 256 MiB together: refused from the headers
    big = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (4096).to_bytes(4, "big") * 2 + bytes([8, 6, 0, 0, 0]) + bytes(4)
    code, body = posted(zip_members({f"{k}.png": big for k in range(5)}))
    assert (code, body["error"]["field"]) == (413, "views") and "more than 256.0 MiB together" in body["error"]["message"]
    code, body = posted(zip_members({"3.png": b"not a png at all, but long enough to have a header"}))
    assert (code, body["error"]["message"]) == (400, "views: 3.png: not a PNG file"), body
    code, body = posted(zip_members({"5.png": _png((8, 8, 3))}))
    assert code == 400 and body["error"]["message"].startswith("views: 5.png: ") and "views: views" not in str(body)
    encrypted = bytearray(zip_members({"5.png": pngs[5]}))  # the encryption flag set: zipfile wants a password
    central = encrypted.index(b"PK\x01\x02")
    encrypted[central + 8] |= 1
    code, body = posted(bytes(encrypted))
    assert (code, body["error"]["field"]) == (400, "views") and "encrypted" in body["error"]["message"], body
    with pytest.raises(EngineError) as info:  # the client names a key that is no job frame before it sends
        client.submit(motion=path, appearance=pngs[2], views={"x": pngs[5]}, params=params)
    assert info.value.field == "views" and "'x' is not a job frame" in info.value.message
    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("../000001.png", pngs[5])
    code, body = _post(server, motion=path.read_bytes(), appearance=pngs[2], views=bad.getvalue(),
                       params=json.dumps(params))
    assert (code, body["error"]["field"]) == (400, "views"), body


def test_skeleton_job_is_retargeted(server: Server, clip_file: Path, tmp_path: Path, toy_model: Path) -> None:
    from btdm_engine.motion.bvh import read_bvh, save_bvh, skeleton_from_bvh
    from btdm_engine.motion.clip import MotionClip

    bvh = save_bvh(MotionClip.load(clip_file), tmp_path / "walk.bvh")
    anim = skeleton_from_bvh(read_bvh(bvh))
    anim.save(tmp_path / "walk_skeleton.npz")
    client = server.client()
    job = client.submit(skeleton=tmp_path / "walk_skeleton.npz",
                        params={**FAST, "model": "toy", "skeleton": "smpl", "video": False}, **toy_files(toy_model))
    assert job["retarget"]["skeleton"] == "smpl" and job["retarget"]["units"] and "warnings" in job["retarget"]
    final = client.wait(job["id"])
    assert final["state"] == "succeeded" and final["frames_done"] == 6 and final["has_plates"] is False
    with pytest.raises(EngineError) as info:
        client.submit(skeleton=tmp_path / "walk_skeleton.npz", params={"bone_map": {"pelvis": "NoSuchBone"}})
    assert info.value.status == 400 and info.value.field == "params.bone_map", info.value.message
    with pytest.raises(EngineError) as info:
        client.submit(skeleton=tmp_path / "walk_skeleton.npz", params={"skeleton": "nope"})
    assert info.value.status == 422 and info.value.field == "params.skeleton"


def test_sigterm_puts_the_running_job_back_in_the_queue(tmp_path: Path, clip_file: Path) -> None:
    import sqlite3

    srv = Server(tmp_path / "data").start()
    try:
        client = srv.client()
        job = client.submit(motion=clip_file, params={"steps": 400})
        events = client.events(job["id"])
        for event in events:
            if event["stage"] == "btunet":
                break
    finally:
        srv.stop()
    assert srv.proc is not None and srv.proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    # The job stopped at the signal (within a network step or so), not once the connections had drained (a
    # client's event stream held uvicorn's shutdown for its 5 s of grace, in which the job ran on: 67 steps
    # once here, or to its end): the stream was ended by the stopping server, whole, its last state not final.
    rest = list(events)
    assert all(e["state"] in ("running", "queued") for e in rest), rest
    last_step = max([e["step"] for e in rest if e["stage"] == "btunet"], default=event["step"])
    assert last_step - event["step"] <= 3, (event, rest)
    with sqlite3.connect(srv.data / "jobs.sqlite3") as db:
        row = db.execute("SELECT state, stage, attempts FROM jobs WHERE id = ?", (job["id"],)).fetchone()
    assert row == ("queued", None, 0)
