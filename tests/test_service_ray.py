"""``btdm serve --ray ADDRESS``: jobs on a Ray cluster's actors, the service the one API.

The cluster test starts a real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a
head and a second node, one CPU each, separate raylets), a real ``btdm serve --ray`` subprocess
connected to it, runs two identical jobs (one on each node), kills the second node's raylet while
its job samples, and checks that the job is re-run on the head's actor from the files synced so far
and ends with frames identical to the other job's. The runner itself (:class:`JobRunner`, the actor's
class) is also driven without Ray, against a real store and the real worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_service import BTDM, REPO, child_env, decode, free_port, toy_files
from test_service_api_matrix import clip  # noqa: F401 - fixture

from btdm_bridge.engine_client import EngineClient, EngineError
from btdm_engine.procs import stop_process
from btdm_engine.service.raypool import JobRunner, RayWorker
from btdm_engine.service.store import JobStore, new_job_id
from btdm_engine.service.worker import ModelRegistry

TEXTURE = {"method": "texture", "seed": 3}
DEADLINE_S = 600


def until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        time.sleep(0.2)
    return value


def test_the_runner_runs_a_job_from_its_files_and_syncs_them_back(tmp_path: Path, clip: bytes) -> None:  # noqa: F811
    """The actor's class without Ray: a server store's job folder in, progress and files out, as the
    RayWorker applies them to the server's row and folder."""
    from btdm_engine.service.inputs import check_motion
    from btdm_engine.service.schemas import JobParams

    server = JobStore(tmp_path / "server")
    job_id = new_job_id()
    upload = server.job_dir(job_id) / "input" / "motion.npz"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(clip)
    job = server.create(job_id, params=JobParams.model_validate(TEXTURE).model_dump(), source="motion",
                        inputs={"source": "motion", **check_motion(upload)})
    claimed = server.claim_next("ray-0@ray:test")
    runner = JobRunner({}, "cpu", threads=1)
    worker = RayWorker(server, ModelRegistry.with_default("cpu"), actor=None, name="ray-0")
    from btdm_engine.service.raypool import _files

    result = runner.run(claimed, _files(server.job_dir(job["id"])))
    assert result["job"]["state"] == "succeeded", result["job"]["error"]
    assert {f"frames/{n:06d}.png" for n in range(6)} <= set(result["files"]) and "video.mp4" in result["files"]
    assert not any(rel.startswith("input/") for rel in result["files"])  # what the server sent is not sent back
    worker._apply(claimed, result)
    row = server.get(job["id"])
    assert (row["frames_done"], row["frames_total"], row["has_video"]) == (6, 6, True)
    assert (server.job_dir(job["id"]) / "frames" / "000005.png").is_file()
    assert not runner.store.job_dir(job["id"]).exists() and runner.store.get(job["id"]) is None  # cleaned up
    # a rerun from the synced files resumes: nothing left to compute, the same frames
    again = runner.run(claimed, _files(server.job_dir(job["id"])))
    assert again["job"]["state"] == "succeeded" and not any(rel.startswith("frames/") for rel in again["files"])


def _serve(tmp_path: Path, address: str, *extra: str) -> tuple[subprocess.Popen[bytes], EngineClient, Path]:
    port = free_port()
    log = tmp_path / "server.log"
    env = {**child_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([*BTDM, "serve", "--port", str(port), "--data", str(tmp_path / "data"), "--ray", address, *extra],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = EngineClient(f"http://127.0.0.1:{port}", timeout=30.0)

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            workers = client.health()["workers"]
        except EngineError:
            return False
        return len(workers) == 2 and all(w["state"] == "idle" for w in workers)

    until(up, "btdm serve --ray with two idle workers")
    return proc, client, log


@pytest.mark.slow
def test_two_node_ray_cluster_and_a_node_lost_mid_job(tmp_path: Path, toy_model: Path) -> None:
    # Losing a node does not depend on the model's size: the jobs run the toy model (conftest), which
    # the actors load from its folder like any --model.
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    proc = None
    try:
        second = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        proc, client, log = _serve(tmp_path, cluster.address, "--model", f"toy={toy_model}")
        health = client.health()
        assert health["device"] == "ray" and "2 actor(s), 2 CPU node(s)" in health["device_name"], health
        nodes = {w["device"] for w in health["workers"]}
        assert nodes == {f"ray:{cluster.head_node.node_id[:12]}", f"ray:{second.node_id[:12]}"}, nodes
        from btdm_engine.motion.library import make_motion

        clip_path = make_motion("walk", seconds=0.4, fps=30).save(tmp_path / "walk.npz")  # 12 frames, in-process
        params = {"model": "toy", "steps": 24, "sr_steps": 2, "seed": 5, "video": False}  # long enough to see step 2
        ids = [client.submit(motion=clip_path, params=params, **toy_files(toy_model))["id"] for _ in range(2)]
        on_second = f"ray:{second.node_id[:12]}"

        def doomed() -> str | None:
            jobs = [client.job(i) for i in ids]
            for job in jobs:
                if (job["state"] == "running" and (job["worker"] or "").endswith(on_second)
                        and job["stage"] == "btunet" and job["step"] >= 2):
                    return job["id"]
            return None

        lost = until(doomed, "a job sampling on the second node")
        before = client.job(lost)
        assert before["posemaps_done"] == before["frames_total"] == 12  # synced to the server as they were made
        posemap = client.posemap(lost, 11)
        cluster.remove_node(second, allow_graceful=False)  # the raylet and its workers are killed
        finals = [client.wait(i) for i in ids]
        assert [f["state"] for f in finals] == ["succeeded", "succeeded"], finals
        rerun = finals[ids.index(lost)]
        assert rerun["attempts"] == 2 and rerun["worker"].endswith(cluster.head_node.node_id[:12]), rerun
        assert client.posemap(lost, 11) == posemap
        for n in range(12):  # the re-run job's frames are the other job's (same clip, params and seed)
            frame = decode(client.frame(ids[0], n))
            assert frame.shape == (64, 64, 3) and frame.tobytes() == decode(client.frame(ids[1], n)).tobytes(), n
        assert "back in the queue" in log.read_text()
        states = sorted(w["state"] for w in client.health()["workers"])
        assert states == ["idle", "unavailable"], states  # the lost actor waits for room to restart
        metrics = client._bytes("/metrics").decode()
        assert 'btdm_job_runs_total{state="succeeded"} 2.0' in metrics
        assert json.loads(json.dumps(client.jobs(state="succeeded")))  # listed
    finally:
        if proc is not None:
            stop_process(proc, timeout=60)
        cluster.shutdown()
