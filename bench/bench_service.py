"""Engine service benchmark: what `btdm serve` costs on top of the same job run by `btdm animate`.

1. Overhead: one job of ``--frames`` frames with the embedded model, run by ``btdm animate`` in
   its own process (model load and pose maps included, as a user runs it) and by a warm server
   (model already loaded: submit -> every frame downloaded), same seed and steps; the wall-time
   ratio is the service's overhead (target: under 5 %, i.e. ratio <= 1.05).
2. Latency: time from submit to the first frame served, from the same service job.
3. Memory: resident set size of the idle server with the model loaded (before and after the jobs).
4. Throughput: ``--jobs`` small jobs submitted at once from ``--clients`` threads through the stdlib
   client; all must finish ``succeeded`` and all must be listed (none lost); jobs/min and frames/s.

Everything runs on 127.0.0.1 with a throw-away data folder. ``python -m bench service`` or
``python -m bench.bench_service [--frames 60 --steps 10 --device cuda ...]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from btdm_bridge.engine_client import EngineClient, EngineError

BTDM = [str(Path(sys.executable).with_name("btdm"))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_service", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60, help="frames of the overhead job (default 60)")
    parser.add_argument("--steps", type=int, default=10, help="BTU-Net and SR3 steps of the overhead job")
    parser.add_argument("--jobs", type=int, default=20, help="small jobs for the throughput test (default 20)")
    parser.add_argument("--clients", type=int, default=4, help="client threads submitting them (default 4)")
    parser.add_argument("--device", default="cpu", help="the server's and btdm animate's device (default cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for both (default 1: on a shared machine more threads than free "
                        "cores make OpenMP spin and the timings meaningless)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of the overhead job each way, alternating; the fastest counts (default 2)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="btdm-bench-service-"))
    env = {**os.environ, "PYOPENGL_PLATFORM": "egl", "BTDM_CACHE_DIR": os.environ.get("BTDM_CACHE_DIR",
                                                                                      str(work / "cache"))}
    threads = ["--threads", str(args.threads)]
    env["OMP_NUM_THREADS"] = str(args.threads)
    server = None
    try:
        seconds = args.frames / 30.0
        clip = work / "dance.npz"
        subprocess.run([*BTDM, "motion", "make", "dance", "--seconds", f"{seconds:.4f}", "--fps", "30", "--out",
                        str(clip)], env=env, check=True, capture_output=True)
        small = work / "walk.npz"
        subprocess.run([*BTDM, "motion", "make", "walk", "--seconds", "0.1334", "--fps", "30", "--out", str(small)],
                       env=env, check=True, capture_output=True)
        port = _free_port()
        log = open(work / "server.log", "wb")  # noqa: SIM115 - closed below
        t_start = time.perf_counter()
        server = subprocess.Popen([*BTDM, "serve", "--port", str(port), "--data", str(work / "data"), "--device",
                                   args.device, *threads], env=env, stdout=log, stderr=subprocess.STDOUT)
        client = EngineClient(f"http://127.0.0.1:{port}", timeout=60.0)
        while True:
            try:
                if all(m["loaded"] for m in client.models()):
                    break
            except EngineError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"btdm serve exited: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        ready_s = time.perf_counter() - t_start
        health = client.health()
        idle_mb = _rss_mb(server.pid)
        print(f"server: {health['device']} ({health['device_name']}), ready with the model loaded in {ready_s:.1f} s")
        print(f"machine: {_load()}")

        # 1 + 2. the overhead job, alternately through the warm server and `btdm animate`
        params = {"steps": args.steps, "sr_steps": args.steps, "seed": 0, "video": False}
        service_runs: list[tuple[float, float, float]] = []  # (wall, run on the server, first frame)
        local_runs: list[float] = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            job = client.submit(motion=clip, params=params)
            first_frame_s = float("nan")
            fetched = 0
            for state in client.events(job["id"]):
                while fetched < state["frames_done"]:
                    client.frame(job["id"], fetched)
                    if fetched == 0:
                        first_frame_s = time.perf_counter() - t0
                    fetched += 1
            wall = time.perf_counter() - t0
            final = client.job(job["id"])
            assert final["state"] == "succeeded" and fetched == args.frames, final
            service_runs.append((wall, final["finished"] - final["started"], first_frame_s))
            t0 = time.perf_counter()
            subprocess.run([*BTDM, "animate", "--clip", str(clip), "--out", str(work / "local"), "--overwrite",
                            "--steps", str(args.steps), "--sr-steps", str(args.steps), "--seed", "0", "--no-progress",
                            "--device", args.device], env=env, check=True, capture_output=True)
            local_runs.append(time.perf_counter() - t0)
        service_s, run_s, first_frame_s = min(service_runs)
        local_s = min(local_runs)
        ratio = service_s / local_s
        print(f"\n{args.frames}-frame job, {args.steps} + {args.steps} steps, {args.threads} thread(s), best of "
              f"{args.repeat} (all: service {', '.join(f'{r[0]:.1f}' for r in service_runs)} s; animate "
              f"{', '.join(f'{t:.1f}' for t in local_runs)} s):")
        print(f"  btdm animate (own process: imports, model load, pose maps, frames): {local_s:8.2f} s")
        print(f"  btdm serve (warm: submit -> every frame downloaded):             {service_s:8.2f} s   "
              f"ratio {ratio:.3f} ({'within' if ratio <= 1.05 else 'OVER'} the 5 % target)")
        print(f"    of which the job's run on the server (started -> finished):    {run_s:8.2f} s; HTTP, queue and "
              f"download add {service_s - run_s:.2f} s ({100.0 * (service_s - run_s) / service_s:.1f} %)")
        print(f"  submit -> first frame served: {first_frame_s:.2f} s")

        # 4. throughput: many small jobs at once from several threads
        ids: list[str] = []
        lock = threading.Lock()
        errors: list[str] = []

        def submit(count: int) -> None:
            own = EngineClient(client.url, timeout=60.0)
            for _ in range(count):
                try:
                    j = own.submit(motion=small, params={"steps": 2, "sr_steps": 2, "seed": 1, "video": False})
                    with lock:
                        ids.append(j["id"])
                except EngineError as exc:
                    errors.append(str(exc))

        per = [args.jobs // args.clients + (i < args.jobs % args.clients) for i in range(args.clients)]
        t0 = time.perf_counter()
        workers = [threading.Thread(target=submit, args=(n,)) for n in per]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        submitted_s = time.perf_counter() - t0
        finals = [client.wait(i) for i in ids]
        batch_s = time.perf_counter() - t0
        listed = {j["id"] for j in client.jobs()}
        ok = sum(f["state"] == "succeeded" for f in finals)
        frames = sum(f["frames_done"] for f in finals)
        lost = len([i for i in ids if i not in listed]) + len(errors)
        print(f"\n{args.jobs} small jobs ({finals[0]['frames_total'] if finals else 0} frames, 2 + 2 steps) from "
              f"{args.clients} threads:")
        print(f"  submitted in {submitted_s:.2f} s; all done in {batch_s:.2f} s; succeeded {ok}/{args.jobs}; "
              f"lost {lost}; {60.0 * ok / batch_s:.1f} jobs/min, {frames / batch_s:.2f} frames/s")
        print(f"\nidle server RSS with the model loaded: {idle_mb:.0f} MB before the jobs, "
              f"{_rss_mb(server.pid):.0f} MB after")
        print(f"machine after: {_load()}")
        if errors:
            print("submit errors:", *errors[:5], sep="\n  ")
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
