"""Sampler benchmark (tiny models, CPU): batched algorithm 1 vs the frame loop, and memory vs length.

1. Speed: :func:`sample_bidirectional` (one batched call per step, chunks of ``--max-batch``)
   against :func:`sample_bidirectional_loop` (one call per frame and step, as the paper writes
   algorithm 1), same frames, same steps, same seed, side by side; their outputs must agree.
2. Memory: the whole pipeline (BTU-Net over all frames, then SR3 streamed chunk by chunk, frames
   discarded as a writer would) for several sequence lengths, each in a fresh subprocess; the
   peak resident set size above a baseline taken after a full-chunk warm-up is reported (so the
   fixed per-call workspace is excluded), with the added MB per added frame. Linear growth
   means that slope stays flat as the sequence gets longer.

``python -m bench sampler`` or ``python -m bench.bench_sampler [--frames 64 --steps 10 ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from btdm_engine.diffusion import ScheduleConfig, sample_bidirectional, sample_bidirectional_loop, sample_sr3
from btdm_engine.models import SR3, BTUNet, BTUNetConfig, SR3Config


def _tiny_models() -> tuple[BTUNet, SR3]:
    torch.manual_seed(0)
    return BTUNet(BTUNetConfig.preset("tiny")).eval(), SR3(SR3Config.preset("tiny")).eval()


def _inputs(num_frames: int, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    poses = torch.rand(num_frames, 3, res, res, generator=gen) * 2 - 1
    return poses, torch.rand(3, res, res, generator=gen) * 2 - 1


def bench_speed(frames: int, steps: int, max_batch: int) -> dict[str, float]:
    """Seconds for the batched sampler and the literal loop on the same problem."""
    btunet, _ = _tiny_models()
    poses, c = _inputs(frames, btunet.config.resolution)
    schedule = ScheduleConfig()
    t0 = time.perf_counter()
    batched = sample_bidirectional(btunet, poses, c, steps=steps, schedule=schedule, max_batch=max_batch,
                                   generator=torch.Generator().manual_seed(0))
    t1 = time.perf_counter()
    loop = sample_bidirectional_loop(btunet, poses, c, steps=steps, schedule=schedule,
                                     generator=torch.Generator().manual_seed(0))
    t2 = time.perf_counter()
    return {"batched_s": t1 - t0, "loop_s": t2 - t1, "max_abs_diff": float((batched - loop).abs().max())}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def child(frames: int, steps: int, sr_steps: int, max_batch: int, sr_batch: int) -> dict[str, float]:
    """One measurement in this (fresh) process: BTU-Net over all frames, then SR3 streamed."""
    btunet, sr3 = _tiny_models()
    schedule = ScheduleConfig()
    # Warm-up at full chunk size: the per-call workspace (activations, allocator pools) reaches
    # its peak here, so what the measured run adds on top is what grows with the length.
    warm_poses, warm_c = _inputs(max_batch, btunet.config.resolution)
    warm = sample_bidirectional(btunet, warm_poses, warm_c, steps=1, schedule=schedule, max_batch=max_batch,
                                generator=torch.Generator().manual_seed(0))
    for _ in sample_sr3(sr3, warm[:sr_batch], steps=1, schedule=schedule, batch=sr_batch,
                        generator=torch.Generator().manual_seed(1)):
        pass
    del warm, warm_poses, warm_c
    baseline = _peak_rss_mb()
    poses, c = _inputs(frames, btunet.config.resolution)
    t0 = time.perf_counter()
    low = sample_bidirectional(btunet, poses, c, steps=steps, schedule=schedule, max_batch=max_batch,
                               generator=torch.Generator().manual_seed(0))
    after_btunet = _peak_rss_mb()
    kept = 0
    for chunk in sample_sr3(sr3, low, steps=sr_steps, schedule=schedule, batch=sr_batch,
                            generator=torch.Generator().manual_seed(1)):
        kept += chunk.shape[0]  # a writer would save the chunk here and drop it
    return {
        "frames": frames,
        "baseline_mb": baseline,
        "btunet_peak_mb": after_btunet - baseline,
        "pipeline_peak_mb": _peak_rss_mb() - baseline,
        "seconds": time.perf_counter() - t0,
        "sr3_frames": kept,
        "all_hr_frames_mb": frames * 3 * sr3.config.resolution**2 * 4 / 2**20,
    }


def bench_memory(lengths: list[int], steps: int, sr_steps: int, max_batch: int, sr_batch: int) -> list[dict]:
    rows = []
    for n in lengths:
        cmd = [sys.executable, "-m", "bench.bench_sampler", "--child", str(n), "--steps", str(steps),
               "--sr-steps", str(sr_steps), "--max-batch", str(max_batch), "--sr-batch", str(sr_batch)]
        # A fixed mmap threshold makes glibc hand large freed blocks back at once, so the peak
        # resident size tracks the live tensors instead of the allocator's heuristics.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        result = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; ``argv`` None means the defaults (as ``python -m bench`` calls it)."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sampler", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64, help="frames for the speed comparison (default 64)")
    parser.add_argument("--steps", type=int, default=10, help="BTU-Net steps (default 10)")
    parser.add_argument("--max-batch", type=int, default=16, help="frames per batched call (default 16)")
    parser.add_argument("--lengths", default="250,500,1000", help="sequence lengths for the memory run")
    parser.add_argument("--memory-steps", type=int, default=2, help="BTU-Net steps in the memory run (default 2)")
    parser.add_argument("--sr-steps", type=int, default=1, help="SR3 steps in the memory run (default 1)")
    parser.add_argument("--sr-batch", type=int, default=8, help="frames per SR3 chunk (default 8)")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory run")
    parser.add_argument("--skip-memory", action="store_true", help="only the speed comparison")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)

    if args.child is not None:
        print(json.dumps(child(args.child, args.steps, args.sr_steps, args.max_batch, args.sr_batch)))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tiny presets (BTU-Net 32 px, SR3 32->128 px)")
    if not args.skip_speed:
        speed = bench_speed(args.frames, args.steps, args.max_batch)
        print(f"\nalgorithm 1, {args.frames} frames x {args.steps} steps")
        print(f"  batched (max_batch={args.max_batch}): {speed['batched_s']:8.2f} s")
        print(f"  frame-by-frame loop:     {speed['loop_s']:8.2f} s")
        print(f"  loop / batched:          {speed['loop_s'] / speed['batched_s']:8.2f} x"
              f"   (max |difference| {speed['max_abs_diff']:.1e})")
    if args.skip_memory:
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = bench_memory(lengths, args.memory_steps, args.sr_steps, args.max_batch, args.sr_batch)
    print(f"\npeak RSS above the warmed-up baseline (BTU-Net {args.memory_steps} steps, max_batch {args.max_batch}; "
          f"SR3 {args.sr_steps} step(s), streamed in chunks of {args.sr_batch})")
    print(f"  {'frames':>6} {'BTU-Net MB':>11} {'pipeline MB':>12} {'added MB/frame':>15} "
          f"{'(all 128 px frames MB)':>23} {'s':>7}")
    previous = None
    for r in rows:
        slope = "" if previous is None else (
            f"{(r['pipeline_peak_mb'] - previous['pipeline_peak_mb']) / (r['frames'] - previous['frames']):.3f}"
        )
        print(f"  {r['frames']:>6} {r['btunet_peak_mb']:>11.1f} {r['pipeline_peak_mb']:>12.1f} {slope:>15} "
              f"{r['all_hr_frames_mb']:>23.1f} {r['seconds']:>7.1f}")
        previous = r
    print("  (linear: the added MB per frame stays flat; the last column is what holding every SR3 frame would cost)")


if __name__ == "__main__":
    main(sys.argv[1:])
