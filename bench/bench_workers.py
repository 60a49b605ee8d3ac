"""Jobs per minute of `btdm serve --workers N`: the same batch of small jobs with 1 and with 2 workers.

For each worker count a fresh server (`btdm serve --workers N --threads T`: the T torch threads are
split among the N workers, so the CPU is the same for every count) on 127.0.0.1 with a throw-away
data folder. Each server first runs one warm-up job per worker (every worker loads its own copy of
the model), then ``--jobs`` jobs are submitted at once; the clock runs from the first submit to the
last job succeeded. Reported per worker count: wall seconds, jobs per minute, frames per second,
the mean time from submit to done, and how the jobs spread over the workers (each job records its
``worker``). All jobs must succeed with frames equal across the counts (same seed, same frames,
whichever worker ran them).

On a shared machine the figures move with the other load (printed with them): compare the counts
of one run, not runs. ``python -m bench workers`` or
``python -m bench.bench_workers [--workers 1,2 --jobs 6 --frames 12 --steps 4 --threads 2 --json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from btdm_bridge.engine_client import EngineClient, EngineError

BTDM = [str(Path(sys.executable).with_name("btdm"))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def run_count(workers: int, args: argparse.Namespace, clip: Path, folder: Path) -> dict:
    port = _free_port()
    data = folder / f"data-{workers}"
    log = open(folder / f"server-{workers}.log", "wb")  # noqa: SIM115 - closed below
    env = {**os.environ, "PYOPENGL_PLATFORM": "egl"}
    proc = subprocess.Popen([*BTDM, "serve", "--port", str(port), "--data", str(data), "--device", args.device,
                             "--threads", str(args.threads), "--workers", str(workers), "--max-queued", "1000",
                             "--keep-days", "0"], env=env, stdout=log, stderr=subprocess.STDOUT)
    client = EngineClient(f"http://127.0.0.1:{port}", timeout=60.0)
    params = {"steps": args.steps, "sr_steps": args.steps, "seed": 1, "video": False}
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"btdm serve exited: {(folder / f'server-{workers}.log').read_text()[-2000:]}")
            try:
                if len(client.health()["workers"]) == workers:
                    break
            except EngineError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("btdm serve did not come up")
            time.sleep(0.2)
        warm = [client.submit(motion=clip, params={**params, "frame_end": 2})["id"] for _ in range(workers)]
        for job in warm:
            assert client.wait(job)["state"] == "succeeded"
        t0 = time.perf_counter()
        submitted = {}
        for _ in range(args.jobs):
            job = client.submit(motion=clip, params=params)
            submitted[job["id"]] = time.perf_counter()
        finals = {job: client.wait(job) for job in submitted}
        wall = time.perf_counter() - t0
        bad = [f for f in finals.values() if f["state"] != "succeeded"]
        if bad:
            raise RuntimeError(f"{len(bad)} job(s) did not succeed: {bad[0]['error']}")
        frames = sum(f["frames_total"] for f in finals.values())
        latency = sum(f["finished"] - f["created"] for f in finals.values()) / len(finals)
        first = client.frame(next(iter(finals)), 0)
        spread = Counter(f["worker"] for f in finals.values())
        return {"workers": workers, "threads_per_worker": max(1, args.threads // workers), "jobs": args.jobs,
                "wall_s": round(wall, 2), "jobs_per_min": round(args.jobs * 60.0 / wall, 2),
                "frames_per_s": round(frames / wall, 2), "mean_submit_to_done_s": round(latency, 2),
                "jobs_per_worker": dict(sorted(spread.items())), "load": _load(), "frame0": first}
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(60)
        log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_workers", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--jobs", type=int, default=6, help="jobs per count (default 6)")
    parser.add_argument("--frames", type=int, default=12, help="frames per job (default 12)")
    parser.add_argument("--steps", type=int, default=4, help="BTU-Net and SR3 steps per job (default 4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the server, split among its workers (default: the core count)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.workers.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="btdm-bench-workers-"))
    try:
        clip = folder / "walk.npz"
        subprocess.run([*BTDM, "motion", "make", "walk", "--seconds", str(args.frames / 30), "--fps", "30", "--out",
                        str(clip)], check=True, capture_output=True)
        print(f"{args.jobs} jobs of {args.frames} frames, {args.steps} BTU-Net + {args.steps} SR3 steps, the embedded "
              f"model on {args.device}, {args.threads} torch threads split among the workers; {_load()}", flush=True)
        results = []
        for count in counts:
            result = run_count(count, args, clip, folder)
            results.append(result)
            print(f"  {count} worker(s) x {result['threads_per_worker']} thread(s): {result['wall_s']:.1f} s, "
                  f"{result['jobs_per_min']:.2f} jobs/min, {result['frames_per_s']:.2f} frames/s, mean submit->done "
                  f"{result['mean_submit_to_done_s']:.1f} s, jobs per worker {result['jobs_per_worker']} "
                  f"({result['load']})", flush=True)
        same = len({r.pop("frame0") for r in results}) == 1
        print(f"  frame 0 of the first job identical across the counts: {same}")
        if len(results) > 1:
            base = results[0]["jobs_per_min"]
            for r in results[1:]:
                print(f"  {r['workers']} workers / {results[0]['workers']}: {r['jobs_per_min'] / base:.2f}x jobs per "
                      "minute")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "frames_equal": same},
                                                  indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
