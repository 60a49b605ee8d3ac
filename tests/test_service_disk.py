"""A full disk under `btdm serve` (issue 23): a real, tiny tmpfs as the server's data folder.

The server runs in a private mount namespace (`unshare -rm`: no root needed where user namespaces
are allowed) with its `--data` on an 8 MiB tmpfs; the test reaches that file system through
`/proc/<pid>/root`. Jobs that hit ENOSPC fail with "no space left on device" and no server path,
the queue moves on, and `/v1/health` reports the store and the worker. Skipped where no mount
namespace can be made.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_service import BTDM, FAST, REPO, child_env, free_port

from btdm_bridge.engine_client import EngineClient, EngineError


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt || exit 1"],
                           capture_output=True, check=False)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_unshare(), reason="no private mount namespace with a tmpfs here")


def test_a_full_disk_fails_the_job_and_the_queue_moves_on(tmp_path: Path, clip_file: Path) -> None:
    clip = clip_file
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    serve = " ".join(shlex.quote(a) for a in [*BTDM, "serve", "--port", str(port), "--data", str(data), "--device",
                                              "cpu", "--threads", "1"])
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=8m tmpfs {data} && exec {serve}"],
                            cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        client = EngineClient(f"http://127.0.0.1:{port}", timeout=30.0)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if all(m["loaded"] for m in client.models()):
                    break
            except EngineError:
                time.sleep(0.2)
        seen = Path(f"/proc/{proc.pid}/root") / str(data).lstrip("/")  # the tmpfs, as the server sees it
        assert os.statvfs(seen).f_blocks * os.statvfs(seen).f_frsize <= 8 << 20
        health = client.health()
        assert health["status"] == "ok" and health["store"]["ok"] and health["worker"]["state"] == "idle"
        # A job that samples for a while; once it does, the disk is filled to the last byte.
        slow = client.submit(motion=clip, params={**FAST, "steps": 40})
        queued = client.submit(motion=clip, params=FAST)
        for event in client.events(slow["id"]):
            if event["stage"] == "btunet":
                break
        with open(seen / "filler", "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * (64 << 10))
                    fh.flush()
            except OSError:
                pass
        try:  # an upload now finds no room: a 507, not a 500 (unless a failed job freed its space meanwhile)
            late = [client.submit(motion=clip, params=FAST)]
        except EngineError as exc:
            assert (exc.status, exc.code) == (507, "no_space") and "no space left" in exc.message, exc
            assert "/" not in exc.message
            late = []
        final = client.wait(slow["id"])
        assert final["state"] == "failed", final
        assert "no space left on device" in final["error"] and "/" not in final["error"], final["error"]
        for job in [queued, *late]:  # the queue moves on: each ends, whichever way
            final = client.wait(job["id"])
            assert final["state"] in ("failed", "succeeded"), final
            assert final["state"] == "succeeded" or "no space left" in final["error"], final["error"]
        health = client.health()
        assert health["worker"]["alive"] and health["store"]["free_bytes"] is not None
        assert "no space left" in health["worker"]["last_error"]
        # Space again: the next job runs.
        (seen / "filler").unlink()
        final = client.wait(client.submit(motion=clip, params=FAST)["id"])
        assert final["state"] == "succeeded", final["error"]
        health = client.health()
        assert health["status"] == "ok" and health["store"]["ok"], health
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()
