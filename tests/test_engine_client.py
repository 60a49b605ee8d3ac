"""The stdlib engine client (`btdm_bridge/engine_client.py`) and `btdm animate --engine`, against a real server."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from commandline import run_btdm
from test_service import BTDM, FAST, REPO, TOKEN, Server, child_env, decode, free_port, toy_files

from btdm_bridge.engine_client import EngineClient, EngineError

CLIENT = REPO / "btdm_bridge" / "engine_client.py"


def test_client_imports_the_standard_library_only() -> None:
    tree = ast.parse(CLIENT.read_text())
    nodes = list(ast.walk(tree))
    modules = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
    assert modules - {"__future__"} <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


def test_unreachable_and_bad_url() -> None:
    with pytest.raises(EngineError) as info:
        EngineClient(f"http://127.0.0.1:{free_port()}", timeout=2.0).health()
    assert (info.value.status, info.value.code) == (None, "unreachable")
    assert "cannot reach the engine" in info.value.message
    with pytest.raises(EngineError) as info:
        EngineClient("ftp://127.0.0.1/")
    assert info.value.code == "bad_url"
    with pytest.raises(EngineError) as info:
        EngineClient().job("../etc/passwd")
    assert info.value.code == "bad_job_id"


class _Flaky:
    """A real HTTP server on loopback that drops the first ``drops`` connections, then answers
    ``GET /v1/health``; ``truncate`` sends a body shorter than its Content-Length instead."""

    def __init__(self, drops: int, truncate: bool = False) -> None:
        import http.server
        import threading

        flaky = self
        self.drops, self.seen = drops, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                flaky.seen += 1
                if flaky.seen <= flaky.drops:
                    self.close_connection = True  # no answer at all: the client sees the connection drop
                    return
                body = b'{"status": "ok"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body) + (100 if truncate else 0)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_dropped_or_cut_answer_is_unreachable_and_a_run_retries_through_it(tmp_path: Path, monkeypatch) -> None:
    from blender_addon import jobs
    from blender_addon.engine import EngineSettings

    cut = _Flaky(drops=0, truncate=True)
    try:
        with pytest.raises(EngineError) as info:  # the body stops short: not a crash in the caller
            EngineClient(cut.url, timeout=5.0).health()
        assert (info.value.status, info.value.code) == (None, "unreachable")
        assert "stopped answering" in info.value.message
    finally:
        cut.close()
    run = jobs.PrevisRun(jobs.RunRequest(kind="plates", skeleton=b"", params={}, out_dir=str(tmp_path), first_frame=1,
                                         num_frames=1, settings=EngineSettings()))
    flaky = _Flaky(drops=3)
    try:
        assert run._retrying(EngineClient(flaky.url, timeout=5.0).health) == {"status": "ok"}
        assert flaky.seen == 4
        monkeypatch.setattr(jobs, "RETRY_S", 0.6)
        flaky.drops, flaky.seen = 1000, 0
        with pytest.raises(EngineError) as info:  # an engine that stays away: the run fails, naming it
            run._retrying(EngineClient(flaky.url, timeout=5.0).health)
        assert info.value.code == "unreachable" and flaky.seen >= 2
        monkeypatch.setattr(jobs, "RETRY_S", 60.0)
        run.cancel()  # Cancel while it retries: at once, not after RETRY_S
        with pytest.raises(jobs.RunCancelled):
            run._retrying(EngineClient(flaky.url, timeout=5.0).health)
    finally:
        flaky.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, toy_model: Path):
    srv = Server(tmp_path_factory.mktemp("serve") / "data", "--model", f"toy={toy_model}", token=TOKEN).start()
    yield srv
    srv.stop()


def test_client_round_trip(server: Server, clip_file: Path) -> None:
    client = server.client()
    job = client.submit(motion=clip_file.read_bytes(), params={**FAST, "frame_end": 2})
    events = list(client.events(job["id"]))
    assert events[-1]["state"] == "succeeded" and all(e["id"] == job["id"] for e in events)
    assert client.job(job["id"])["frames_done"] == 2
    assert decode(client.frame(job["id"], 1)).shape == (256, 256, 3)  # the default model's output size
    assert decode(client.posemap(job["id"], 0)).shape == (256, 256, 3)
    with pytest.raises(EngineError) as info:
        client.plate(job["id"], 0)
    assert info.value.status == 404
    running = client.submit(motion=clip_file, params={"steps": 400})
    with pytest.raises(EngineError) as info:
        client.delete(running["id"])
    assert (info.value.status, info.value.code) == (409, "conflict")
    assert client.cancel(running["id"])["id"] == running["id"]
    assert client.wait(running["id"])["state"] == "cancelled"
    client.delete(running["id"])
    with pytest.raises(EngineError) as info:
        client.submit(motion=clip_file, skeleton=clip_file)
    assert info.value.field == "motion"
    with pytest.raises(EngineError) as info:
        client.submit(motion=clip_file.parent / "missing.npz")
    assert (info.value.code, info.value.field) == ("local_file", "motion")


def test_btdm_animate_engine_equals_local(server: Server, clip_file: Path, tmp_path: Path, toy_model: Path) -> None:
    # What is compared is the client path (upload, job, download), not the model: the server's toy model
    # (its appearance files uploaded) against `btdm animate --model` of the same folder.
    # tests/test_service.py compares the embedded model's frames through the service.
    toy = toy_files(toy_model)
    look = ["--appearance", str(toy["appearance"]), "--appearance-iuv", str(toy["appearance_iuv"])]
    common = ["--clip", str(clip_file), "--steps", "2", "--sr-steps", "2", "--seed", "3", "--no-progress"]
    (tmp_path / "token").write_text(TOKEN + "\n")
    remote = subprocess.run([*BTDM, "animate", *common, *look, "--model", "toy", "--out", str(tmp_path / "remote"),
                             "--mp4", "--engine", server.url, "--token-file", str(tmp_path / "token")], cwd=REPO,
                            env=child_env(), capture_output=True, text=True, check=False)
    assert remote.returncode == 0, remote.stderr
    assert "frames: 6" in remote.stdout and (tmp_path / "remote" / "animation.mp4").stat().st_size > 0
    run_btdm("animate", *common, *look, "--model", str(toy_model), "--out", str(tmp_path / "local"), check=True)
    for n in range(6):
        name = f"frames/{n:06d}.png"
        assert cv2.imread(str(tmp_path / "remote" / name)).shape == (64, 64, 3), name  # the toy model's size
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "remote" / name)),
                                      cv2.imread(str(tmp_path / "local" / name)), err_msg=name)
    # --frames with --posemaps means the same frames on the engine as locally, and so does a further view of the
    # person (--view K IMG, the views zip; the toy model reads the prior); local-only flags are refused.
    job_id = remote.stderr.split("engine job ")[1].split()[0]
    maps = ["--posemaps", str(server.data / "jobs" / job_id / "posemaps" / "iuv"), "--frames", "2:5", "--steps", "2",
            "--sr-steps", "2", "--seed", "3", "--no-progress", *look, "--view", "1", str(toy["appearance"])]
    for where, extra in (("remote_cut", ["--engine", server.url, "--token", TOKEN, "--model", "toy"]),
                         ("local_cut", ["--model", str(toy_model)])):
        run_btdm("animate", *maps, "--out", str(tmp_path / where), *extra, check=True)
    cut = sorted(p.name for p in (tmp_path / "remote_cut" / "frames").iterdir())
    assert cut == ["000000.png", "000001.png", "000002.png"], cut
    for name in cut:
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "remote_cut" / "frames" / name)),
                                      cv2.imread(str(tmp_path / "local_cut" / "frames" / name)), err_msg=name)
    # pose maps the folder does not hold: refused before anything is sent, in the words of a local run
    for span in ("2:99", "4:2"):
        cut = [*maps[:2], "--frames", span, *maps[4:]]
        remote_cut = run_btdm("animate", *cut, "--out", str(tmp_path / "refused"), "--engine", server.url, "--token", TOKEN)
        local_cut = run_btdm("animate", *cut, "--out", str(tmp_path / "refused"), "--model", str(toy_model))
        assert remote_cut.returncode == local_cut.returncode == 2, (remote_cut.stderr, local_cut.stderr)
        said = local_cut.stderr.strip().splitlines()[-1]
        assert said.startswith("btdm animate: error: ") and said in remote_cut.stderr, (said, remote_cut.stderr)
    for flags, said in ((["--threads", "1"], "--threads applies to the server"),
                        (["--precision", "float32"], "--precision applies to the server"),
                        (["--frames", "0:2"], "--frames needs --posemaps")):
        refused = run_btdm("animate", *common, "--out", str(tmp_path / "refused"), "--engine", server.url, "--token",
                           TOKEN, *flags)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    denied = run_btdm("animate", *common, "--out", str(tmp_path / "denied"), "--engine", server.url)
    assert denied.returncode == 2 and "bearer token" in denied.stderr, denied.stderr
    bad = run_btdm("animate", *common, "--out", str(tmp_path / "bad"), "--engine", server.url, "--token", TOKEN,
                   "--model", "nope")
    assert bad.returncode == 2 and "model 'nope' is unknown" in bad.stderr and "params.model" in bad.stderr


def test_pictures_go_to_the_engine_as_pngs_of_what_a_local_run_reads(tmp_path: Path) -> None:
    """The service takes PNGs; `btdm animate --engine` sends a PNG as it is and another picture a local run
    reads (a JPEG, EXIF-turned) as the PNG of the pixels that run reads, so the same command works both ways."""
    from btdm_engine.cli import CliError
    from btdm_engine.commands.remote import _picture
    from btdm_engine.imageio import read_rgb

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cv2.imwrite(str(tmp_path / "a.jpg"), image)
    assert _picture(str(tmp_path / "a.png"), "--appearance") == tmp_path / "a.png"
    sent = cv2.imdecode(np.frombuffer(_picture(str(tmp_path / "a.jpg"), "--view 3"), np.uint8), cv2.IMREAD_UNCHANGED)
    local = np.round(read_rgb(tmp_path / "a.jpg") * 255.0).astype(np.uint8)  # as `btdm animate` reads it
    np.testing.assert_array_equal(sent[..., ::-1], local)
    assert _picture(None, "--appearance") is None
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(CliError, match="--view 3: "):
        _picture(str(tmp_path / "b.jpg"), "--view 3")


@pytest.mark.slow
def test_btdm_animate_engine_rides_out_a_server_restart(tmp_path: Path, clip36_file: Path, toy_model: Path) -> None:
    """The server stops mid-job and is back seconds later (same port, same data): `btdm animate --engine`
    keeps polling through the outage and finishes with the job's frames. Riding out does not depend on
    the model's size: the toy model (conftest)."""
    import sqlite3
    import time

    clip = clip36_file
    toy = toy_files(toy_model)
    srv = Server(tmp_path / "data", "--model", f"toy={toy_model}", "--preload", "toy").start()
    # 8 BTU-Net steps: the stop lands inside the bidirectional stage (seconds long), not after the job
    # (with 2 steps an idle machine once finished the toy job before the SIGTERM arrived).
    animate = subprocess.Popen([*BTDM, "animate", "--clip", str(clip), "--steps", "8", "--sr-steps", "2", "--seed",
                                "5", "--no-progress", "--out", str(tmp_path / "out"), "--engine", srv.url, "--model",
                                "toy", "--appearance", str(toy["appearance"]), "--appearance-iuv",
                                str(toy["appearance_iuv"])],
                               cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    back = None
    try:
        client = srv.client()
        job = None
        for _ in range(600):  # the job the command submitted
            jobs = client.jobs()
            if jobs:
                job = jobs[0]
                break
            time.sleep(0.1)
        assert job is not None, "the command submitted no job"
        events = client.events(job["id"])
        for event in events:  # once its bidirectional stage runs
            if event["stage"] == "btunet":
                break
        events.close()  # the stream's connection too, or the server's shutdown waits for it
        srv.stop()  # SIGTERM: the running job goes back to the queue
        with sqlite3.connect(srv.data / "jobs.sqlite3") as db:  # it was stopped mid-job, not after it
            assert db.execute("SELECT state FROM jobs WHERE id = ?", (job["id"],)).fetchone() == ("queued",)
        time.sleep(1.0)  # the outage, then the restart's seconds; the command must neither exit nor give up
        assert animate.poll() is None, animate.communicate()
        back = Server(tmp_path / "data", "--model", f"toy={toy_model}", "--preload", "none")
        back.port, back.url = srv.port, srv.url
        back.start()
        out, err = animate.communicate(timeout=600)
        assert animate.returncode == 0, err
        assert "frames: 36" in out
        final = back.client().job(job["id"])
        assert final["state"] == "succeeded" and final["attempts"] >= 1 and final["params"]["model"] == "toy"
        for n in range(36):  # the job's frames, downloaded
            name = f"{n:06d}.png"
            np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out" / "frames" / name)),
                                          decode(back.client().frame(job["id"], n)), err_msg=name)
    finally:
        if animate.poll() is None:
            animate.kill()
            animate.wait(30)
        srv.kill()
        if back is not None:
            back.stop()


def test_stale_staging_folders_of_a_killed_blender_are_swept(server: Server, clip_file: Path, tmp_path: Path) -> None:
    """A Blender killed mid-run leaves ``.btdm-<job>/`` in the output folder; the next run removes it
    once the engine says the job ended or does not know it, and nothing that is not the add-on's."""
    import uuid

    from blender_addon.jobs import sweep_stale_staging

    client = server.client()
    running = client.submit(motion=clip_file, params={"steps": 400})
    ended = client.submit(motion=clip_file, params={"steps": 400})
    client.cancel(ended["id"])
    assert client.wait(ended["id"])["state"] == "cancelled"
    out = tmp_path / "plates"

    def staging(job_id: str, *files: str) -> Path:
        folder = out / f".btdm-{job_id}"
        folder.mkdir(parents=True)
        for f in files:
            (folder / f).write_bytes(b"png")
        return folder

    unknown = staging(uuid.uuid4().hex, "000001.png", ".btdm.x1.tmp")
    gone = staging(ended["id"], "000001.png")
    live = staging(running["id"], "000001.png")
    foreign = staging(uuid.uuid4().hex, "000001.png", "notes.txt")
    odd = out / ".btdm-not-a-job"
    odd.mkdir()
    (out / "000001.png").write_bytes(b"plate")
    removed = sweep_stale_staging(str(out), client)
    assert sorted(removed) == sorted([str(unknown), str(gone)])
    assert not unknown.exists() and not gone.exists()
    assert live.is_dir() and foreign.is_dir() and odd.is_dir() and (out / "000001.png").read_bytes() == b"plate"
    client.cancel(running["id"])
    client.wait(running["id"])


def test_the_engine_serves_its_job_limits_and_the_cli_service_and_panel_agree(server: Server) -> None:
    """One job specification: GET /v1/limits is btdm_engine.jobspec's; the CLI's flag defaults, the
    request model's defaults and bounds, and the panel's property bounds are the same numbers."""
    from btdm_engine.cli import build_parser
    from btdm_engine.jobspec import JobSpec, limits_document
    from btdm_engine.limits import JOB_LIMITS
    from btdm_engine.service import limits as service_limits
    from btdm_engine.service.schemas import JobParams

    served = EngineClient(server.url, token=TOKEN).limits()
    assert served == json.loads(json.dumps({**limits_document(), "max_frames": service_limits.MAX_FRAMES}))
    assert served["limits"]["finetune_steps"] == {"min": 0, "max": JOB_LIMITS["finetune_steps"][1]}

    spec = dataclasses.asdict(JobSpec())
    assert served["defaults"] == spec
    args = build_parser().parse_args(["animate", "--clip", "c.npz", "--out", "o"])
    assert {name: getattr(args, name) for name in spec} == spec
    assert {name: JobParams.model_fields[name].default for name in spec} == spec
    schema = JobParams.model_json_schema()["properties"]
    for name in ("steps", "seed", "finetune_steps", "eta"):
        assert (schema[name]["minimum"], schema[name]["maximum"]) == JOB_LIMITS[name], name

    # the panel's properties never accept more than the engine (read from the source: it needs bpy to import)
    tree = ast.parse((REPO / "blender_addon" / "properties.py").read_text(encoding="utf-8"))
    panel = {node.target.id: {k.arg: k.value.value for k in node.annotation.keywords if k.arg in ("min", "max", "default")}
             for node in ast.walk(tree) if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
             and isinstance(node.annotation, ast.Call) and node.target.id in ("steps", "finetune_steps", "seed")}
    assert set(panel) == {"steps", "finetune_steps", "seed"}
    for name, bounds in panel.items():
        assert bounds["default"] == spec[name], name
        assert bounds["min"] >= JOB_LIMITS[name][0] and bounds.get("max", JOB_LIMITS[name][1]) <= JOB_LIMITS[name][1]


def test_an_engine_off_this_machine_needs_blenders_online_access(server: Server) -> None:
    """bpy.app.online_access off: an engine that is not on loopback is refused before any request (in the
    panel's words); loopback engines work either way."""
    from blender_addon.engine import EngineManager, EngineSettings, EngineUnavailable, is_loopback

    assert all(map(is_loopback, ("http://127.0.0.1:8765", "http://localhost:1/", "http://[::1]:80", "http://127.8.0.1")))
    assert not any(map(is_loopback, ("http://192.0.2.1:8765", "https://render.example.com", "http://[2001:db8::1]/")))
    offline = EngineSettings(mode="REMOTE", remote_url="http://192.0.2.1:9", online_access=False, timeout=30.0)
    with pytest.raises(EngineUnavailable, match=r"online access is off .* turn on Allow Online Access \(Preferences"):
        EngineManager().connect(offline)
    loopback = dataclasses.replace(offline, remote_url=server.url, token=TOKEN)
    assert EngineManager().connect(loopback).health()["status"] in ("ok", "degraded")
    local = EngineSettings(mode="LOCAL", local_url="http://192.0.2.1:9", online_access=False)
    with pytest.raises(EngineUnavailable, match="online access is off"):
        EngineManager().connect(local, start=False)
