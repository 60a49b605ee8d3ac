"""How long the engine's commands take to start: what a user waits for before any frame is made.

Each case is a fresh process, as a user or the add-on starts one, timed wall-clock from spawn to exit
(``btdm serve``: to the first ``/v1/health`` that answers with the embedded model loaded):

- ``help``: ``btdm --help`` (no torch);
- ``refuse``: ``btdm animate --fps 0``, refused before torch loads;
- ``animate``: ``btdm animate`` of a 3-frame walk with the embedded model (2 + 2 steps): imports, the
  model's load (its size checked on the meta device first), pose maps, frames;
- ``serve``: ``btdm serve`` up and its model loaded.

``animate`` and ``serve`` also run with ``torch._dynamo`` imported first (``+dynamo``): what every start
paid before ``models.on_meta`` kept the meta-device size check from importing it; the two are timed
in turn, in the same run, so their ratio holds on a loaded machine. Best and median of ``--repeat``.

``python -m bench startup`` or ``python -m bench.bench_startup [--repeat 5 --json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_workers import _free_port
from btdm_bridge.engine_client import EngineClient, EngineError

REPO = Path(__file__).resolve().parents[1]
CLI = "from btdm_engine.cli import main; import sys; sys.exit(main())"
DYNAMO_FIRST = "import torch._dynamo; " + CLI


def _python(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def _serve_seconds(code: str, data: Path, env: dict[str, str]) -> float:
    port = _free_port()
    start = time.perf_counter()
    proc = subprocess.Popen(_python(code, "serve", "--port", str(port), "--data", str(data), "--device", "cpu"),
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = EngineClient(f"http://127.0.0.1:{port}", timeout=2.0)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"btdm serve exited with {proc.returncode}")
            try:
                if all(m["loaded"] for m in client.models() if m["name"] == "default"):
                    return time.perf_counter() - start
            except EngineError:
                pass
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="btdm-bench-startup-") as tmp:
        root = Path(tmp)
        clip = root / "walk.npz"
        subprocess.run(_python(CLI, "motion", "make", "walk", "--seconds", "0.1", "--out", str(clip)),
                       cwd=REPO, env=env, check=True, capture_output=True)
        animate = ["animate", "--clip", str(clip), "--steps", "2", "--sr-steps", "2", "--no-progress", "--overwrite"]
        cases = {
            "help": lambda n: _timed(_python(CLI, "--help"), env),
            "refuse": lambda n: _timed(_python(CLI, "animate", "--clip", str(clip), "--fps", "0",
                                               "--out", str(root / "refused")), env),
            "animate": lambda n: _timed(_python(CLI, *animate, "--out", str(root / "a")), env),
            "animate+dynamo": lambda n: _timed(_python(DYNAMO_FIRST, *animate, "--out", str(root / "b")), env),
            "serve": lambda n: _serve_seconds(CLI, root / f"serve{n}", env),
            "serve+dynamo": lambda n: _serve_seconds(DYNAMO_FIRST, root / f"served{n}", env),
        }
        for n in range(args.repeat):  # the cases in turn, so each pair sees the same load
            for name, case in cases.items():
                times.setdefault(name, []).append(case(n))
    load = os.getloadavg()[0]
    print(f"start-up, wall seconds, best / median of {args.repeat} (load average {load:.2f} at the end):")
    for name, runs in times.items():
        print(f"  {name:15s} {min(runs):6.2f} / {statistics.median(runs):6.2f}")
    for name in ("animate", "serve"):
        ratio = min(times[f"{name}+dynamo"]) / min(times[name])
        print(f"  {name}: with torch._dynamo imported {ratio:.2f}x the time "
              f"(+{min(times[f'{name}+dynamo']) - min(times[name]):.2f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps({"repeat": args.repeat, "load": load, "seconds": times}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
