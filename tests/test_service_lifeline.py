"""`btdm serve --parent-pid`: the add-on's engine ends with the Blender that started it (issue 23).

A real parent process starts the engine through the add-on's own `EngineManager` (which passes
`--parent-pid`), submits a long job, and is SIGKILLed mid-job: no atexit runs. The engine must
cancel the job, remove the job's partial files, and exit by itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_service import BTDM, REPO, child_env

from btdm_bridge.engine_client import EngineClient
from btdm_engine.service.lifeline import _zombie

PARENT = """
import json, sys, time
from blender_addon.engine import EngineManager, EngineSettings
manager = EngineManager()
client = manager.connect(EngineSettings(executable=sys.argv[1], data_dir=sys.argv[2], device="cpu", timeout=30.0))
job = client.submit(motion=sys.argv[3], params={"steps": 400, "seed": 1, "video": False})
print(json.dumps({"pid": manager.child_pid, "url": client.url, "job": job["id"]}), flush=True)
time.sleep(3600)
"""


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return _zombie(pid)


def test_the_engine_ends_with_a_sigkilled_parent(tmp_path: Path, clip_file: Path) -> None:
    clip = clip_file  # the session's 6-frame walk: the job is killed in its first sampling steps
    data = tmp_path / "data"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, BTDM[0], str(data), str(clip)], cwd=REPO,
                              env=child_env(), stdout=subprocess.PIPE, text=True)
    child = None
    try:
        info = json.loads(parent.stdout.readline())
        child, client = info["pid"], EngineClient(info["url"], timeout=30.0)
        folder = data / "jobs" / info["job"]
        for job in client.events(info["job"]):  # mid-job: sampling, with files on disk
            if job["stage"] == "btunet" and job["step"] >= 1:
                break
        assert job["state"] == "running" and folder.is_dir()
        (data / "mine.txt").write_text("not the server's")  # a file the server did not write
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 300
        while not gone(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gone(child), "the engine outlived the process that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)
        if child is not None and not gone(child):
            os.kill(child, signal.SIGKILL)
    from btdm_engine.service.store import JobStore

    store = JobStore(data)
    try:
        row = store.get(info["job"])
        assert row["state"] == "cancelled", row
    finally:
        store.close()
    assert not folder.exists()  # the running job's partial files
    assert (data / "mine.txt").read_text() == "not the server's"
    refused = subprocess.run([*BTDM, "serve", "--parent-pid", "999999999", "--data", str(tmp_path / "d2")], cwd=REPO,
                             env=child_env(), capture_output=True, text=True, check=False, timeout=60)
    assert refused.returncode == 2 and "--parent-pid 999999999: no such process" in refused.stderr
