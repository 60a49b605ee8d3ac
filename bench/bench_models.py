"""Network size and speed: parameters, FLOPs per call and CPU timings of BTU-Net and SR3 presets.

    python -m bench models                       # via the bench runner
    python -m bench.bench_models --repeats 20 --json out/bench/models.json

FLOPs are counted with ``FlopCounterMode`` on the meta device (one multiply-add = 2 FLOPs;
convolutions, linear layers and attention only), per call at batch 1: a BTU-Net call is one
pair (y_t, y_{t-1}) with an appearance image, an SR3 call one 64->256 (or 32->128) frame.
Timings are wall-clock medians on this machine's CPU (float32, ``torch.inference_mode``) for
the presets small enough to run here, plus one BTU-Net training step (forward, eq.-4-like
loss, backward, Adam) at ``--train-batch``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from btdm_engine.models import SR3, BTUNet, BTUNetConfig, SR3Config
from btdm_engine.models.flops import count_parameters, example_inputs, model_cost

PRESETS = ("tiny", "base", "paper")
TIMED = ("tiny", "base")  # the paper presets take seconds per call on 2 CPU cores


def _median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _forward_seconds(model: BTUNet | SR3, batch: int, repeats: int) -> float:
    args, kwargs = example_inputs(model, batch, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.inference_mode():
        return _median_seconds(lambda: model(*args, **kwargs), repeats)


def _train_step_seconds(model: BTUNet, batch: int, repeats: int) -> float:
    args, kwargs = example_inputs(model, batch, generator=torch.Generator().manual_seed(0))
    target = torch.zeros_like(args[0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        x0_a, x0_b = model(*args, **kwargs)
        loss = 0.5 * ((x0_a - target).square().mean() + (x0_b - target).square().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _median_seconds(step, repeats, warmup=1)


def run(repeats: int = 10, train_batch: int = 8, timed: tuple[str, ...] = TIMED) -> list[dict]:
    """Measure every preset; returns one row per (model, preset)."""
    rows = []
    for kind, model_cls, config_cls in (("btunet", BTUNet, BTUNetConfig), ("sr3", SR3, SR3Config)):
        for preset in PRESETS:
            cost = model_cost(kind, preset)
            row: dict = dict(
                model=kind, preset=preset, parameters=cost.parameters, gflops_per_call=cost.flops / 1e9,
                forward_s_batch1=None, train_step_s=None,
            )
            if preset in timed:
                torch.manual_seed(0)
                model = model_cls(config_cls.preset(preset))
                assert count_parameters(model) == cost.parameters
                row["forward_s_batch1"] = _forward_seconds(model, 1, repeats)
                if kind == "btunet" and preset == "tiny":
                    row["train_step_s"] = _train_step_seconds(model, train_batch, max(3, repeats // 3))
            rows.append(row)
    return rows


def _table(rows: list[dict], train_batch: int) -> str:
    def fmt(v: float | None, scale: float = 1.0, digits: int = 1) -> str:
        return "-" if v is None else f"{v * scale:.{digits}f}"

    lines = [
        f"CPU: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "| model | preset | parameters (M) | GFLOPs per call | CPU forward, batch 1 (ms) "
        f"| CPU train step, batch {train_batch} (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['preset']} | {r['parameters'] / 1e6:.2f} | {r['gflops_per_call']:.2f} "
            f"| {fmt(r['forward_s_batch1'], 1e3)} | {fmt(r['train_step_s'], 1.0, 2)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; ``argv`` None (the ``python -m bench`` runner) means the defaults."""
    parser = argparse.ArgumentParser(prog="bench_models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per preset (median)")
    parser.add_argument("--train-batch", type=int, default=8, help="batch of the timed training step")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice); 1 is steadier on a busy machine")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args([] if argv is None else argv)
    if args.repeats < 1 or args.train_batch < 1:
        parser.error("--repeats and --train-batch must be >= 1")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    rows = run(args.repeats, args.train_batch)
    print(_table(rows, args.train_batch))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
