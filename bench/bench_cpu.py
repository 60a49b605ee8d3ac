"""CPU speed of the whole generator (the embedded tiny model), old settings against new, side by side.

One job, as ``btdm demo`` runs it: a 60-frame dance, 25 BTU-Net + 10 SR3 steps, the embedded
model and its appearance image. Each configuration runs in a fresh subprocess (so thread count and
the OpenMP wait policy take effect at start), best of ``--repeat`` rounds that run every
configuration once each (interleaved, so a slow spell of a shared machine hits all alike):

- ``float32``: float32, contiguous (NCHW) weights, OpenMP's default (active) waiting, the old
  batch sizes (BTU-Net 64, SR3 4 frames per call), the BTU-Net called through ``forward``
  every step (E_p and E_a re-encoded, branch b finished), and one call at a time on two intra-op
  threads: the old path.
- ``auto-1w``: bf16 autocast where the CPU has native bf16 (with bf16 attention matmuls),
  channels-last weights, passive OpenMP waiting, 16 frames per BTU-Net call, SR3's memory budget
  (16 frames per call), the sampler's prepared BTU-Net (``BTUNet.prepare_sampling``: E_p/E_a once
  per run, branch b dropped after its last attention), one call at a time on two intra-op threads.
- ``auto-2w``: ``auto-1w`` with a step's calls running side by side on one worker thread per
  core, one intra-op thread each (``sampling_workers``; SR3 8 frames per call, so the same 16
  frames are in flight).
- ``auto``: what ``btdm animate`` now does: ``auto-2w`` with glibc's malloc keeping freed memory
  (``procs.keep_freed_memory``) instead of page-faulting every activation in afresh.
- ``auto-1t``: ``auto`` on one thread (``OMP_NUM_THREADS=1``: one worker).

Every configuration runs quiet and again beside a one-core busy loop (another process sharing the
machine). The report gives wall seconds, the ratio to ``float32``, achieved GFLOP/s (from the
models' FLOP counts) against this CPU's measured convolution peak, and the difference of the new
frames to float32 (PSNR, SSIM, max grey levels) on two motions.

``python -m bench cpu`` or ``python -m bench.bench_cpu [--frames 60 --repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from btdm_engine.procs import die_with_parent, keep_freed_memory
from btdm_engine.weights import default_appearance, default_model_dir

CONFIGS = {  # batches: the old 1 GiB budget's (BTU-Net 64, SR3 4) for the old path, else the defaults
    "float32": {"precision": "float32", "layout": "contiguous", "wait": "ACTIVE", "threads": 2, "batches": (64, 4),
                "prepared": False, "workers": 1, "keep_freed": False},
    "auto-1w": {"precision": "auto", "layout": "channels_last", "wait": "PASSIVE", "threads": 2, "batches": None,
                "prepared": True, "workers": 1, "keep_freed": False},
    "auto-2w": {"precision": "auto", "layout": "channels_last", "wait": "PASSIVE", "threads": 2, "batches": None,
                "prepared": True, "workers": None, "keep_freed": False},
    "auto": {"precision": "auto", "layout": "channels_last", "wait": "PASSIVE", "threads": 2, "batches": None,
             "prepared": True, "workers": None, "keep_freed": True},
    "auto-1t": {"precision": "auto", "layout": "channels_last", "wait": "PASSIVE", "threads": 1, "batches": None,
                "prepared": True, "workers": None, "keep_freed": True},
}


def _job(frames: int, motion: str, precision: str, layout: str, steps: int, sr_steps: int, out: str | None,
         batches: tuple[int, int] | None = None, prepared: bool = True, workers: int | None = None,
         keep_freed: bool = True) -> dict:
    if keep_freed:  # as the btdm command does first
        keep_freed_memory()
    # numpy, torch and the engine start threads: keep_freed_memory() must come first (its docstring)
    import numpy as np  # lazy: after keep_freed_memory() (the job process imports this module)
    import torch  # lazy: after keep_freed_memory() (the job process imports this module)

    from btdm_engine.body.model import load_body_model  # lazy: loads torch, after keep_freed_memory()
    from btdm_engine.imageio import read_rgb  # lazy: loads cv2, after keep_freed_memory()
    from btdm_engine.motion import make_motion  # lazy: loads scipy, after keep_freed_memory()
    from btdm_engine.pipeline import Animator  # lazy: loads torch, after keep_freed_memory()
    from btdm_engine.posemaps.encoding import read_iuv_png  # lazy: loads torch, after keep_freed_memory()
    from btdm_engine.posemaps.renderer import IUVRenderer  # lazy: loads pyrender/OpenGL, after keep_freed_memory()

    animator = Animator.from_pretrained(default_model_dir(), device="cpu")
    if layout == "contiguous":
        animator.btunet.to(memory_format=torch.contiguous_format)
        animator.sr3.to(memory_format=torch.contiguous_format)
    if not prepared:  # the old path: without prepare_sampling the sampler calls forward every step
        animator.btunet.prepare_sampling = lambda *args: None
    clip = make_motion(motion, seconds=frames / 30.0, fps=30.0)
    res = animator.resolution
    with IUVRenderer(load_body_model(clip.body_model), res, res) as renderer:
        maps = np.stack(list(renderer.render_clip(clip, size=res, progress=False)))
    image, image_iuv = default_appearance()
    c = np.round(read_rgb(image) * 255.0).astype(np.uint8)
    g = read_iuv_png(image_iuv) if animator.uses_warp else None
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    sizes = {} if batches is None else {"max_batch": batches[0], "sr_batch": batches[1]}
    frames_out = animator.animate(maps, c, g, steps=steps, sr_steps=sr_steps, seed=0, precision=precision,
                                  workers=workers, **sizes)
    seconds = time.perf_counter() - t0
    if out:
        np.save(out, frames_out)
    after = resource.getrusage(resource.RUSAGE_SELF)  # of the generation alone
    return {"seconds": seconds, "threads": torch.get_num_threads(), "page_faults": after.ru_minflt - before.ru_minflt,
            "kernel_s": after.ru_stime - before.ru_stime}


def _conv_peak(dtype: str) -> float:
    """GFLOP/s of a 3x3 convolution shaped like the tiny models' widest layers (channels-last)."""
    import torch  # lazy: after keep_freed_memory() (the job process imports this module)

    x = torch.randn(64, 64, 32, 32).to(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last).eval()
    flops = 2 * 64 * 64 * 9 * 32 * 32 * 64
    best = float("inf")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        for _ in range(3):
            conv(x)
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(5):
                conv(x)
            best = min(best, (time.perf_counter() - t0) / 5)
    return flops / best / 1e9


def _run(name: str, frames: int, motion: str, steps: int, sr_steps: int, out: str | None = None) -> dict:
    cfg = CONFIGS[name]
    env = {**os.environ, "OMP_WAIT_POLICY": cfg["wait"], "OMP_NUM_THREADS": str(cfg["threads"])}
    code = ("import json, sys; from bench.bench_cpu import _job; "
            f"print(json.dumps(_job({frames}, {motion!r}, {cfg['precision']!r}, {cfg['layout']!r}, {steps}, "
            f"{sr_steps}, {out!r}, {cfg['batches']!r}, {cfg['prepared']!r}, {cfg['workers']!r}, "
            f"{cfg['keep_freed']!r})))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                            preexec_fn=die_with_parent)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _difference(a_path: str, b_path: str) -> dict:
    import numpy as np  # lazy: after keep_freed_memory() (the job process imports this module)
    import torch  # lazy: after keep_freed_memory() (the job process imports this module)

    from btdm_engine.metrics.image import psnr, ssim  # lazy: loads torch (the job process imports this module)

    a, b = np.load(a_path), np.load(b_path)
    ta, tb = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 for x in (a, b))
    return {"psnr_db": float(psnr(ta, tb).mean()), "ssim": float(ssim(ta, tb).mean()),
            "max_grey_levels": int(np.abs(a.astype(int) - b.astype(int)).max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sr-steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default="out/bench_cpu", help="folder for the frames compared")
    args = parser.parse_args(argv)
    from btdm_engine.models.flops import model_cost  # lazy: loads torch (the job process imports this module)

    os.makedirs(args.out, exist_ok=True)
    load1 = os.getloadavg()[0]
    # One BTU-Net pair call per frame and step (algorithm 1), one SR3 call per frame and step.
    gflop = (args.frames * args.steps * model_cost("btunet", "tiny").flops
             + args.frames * args.sr_steps * model_cost("sr3", "tiny").flops) / 1e9
    peaks = {d: _conv_peak(d) for d in ("float32", "bfloat16")}
    print(f"machine: {os.cpu_count()} cores, load average {load1:.2f} at start; conv peak "
          f"float32 {peaks['float32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s; job = {gflop:.0f} GFLOP")
    rows = {}
    for loaded in (False, True):
        hog = None
        if loaded:  # another process keeps one core busy
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=die_with_parent)
        try:
            # configurations interleaved, repeat by repeat, so a slow spell of a shared machine hits all alike
            runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
            for _ in range(args.repeat):
                for name in CONFIGS:
                    runs[name].append(_run(name, args.frames, "dance", args.steps, args.sr_steps))
            for name in CONFIGS:
                best = min(runs[name], key=lambda run: run["seconds"])
                rows[(name, loaded)] = seconds = best["seconds"]
                print(f"  {'one-core load' if loaded else 'quiet':13s} {name:8s} {seconds:7.1f} s  "
                      f"x{rows[('float32', loaded)] / seconds:4.2f}  {gflop / seconds:6.1f} GFLOP/s  "
                      f"{best['page_faults'] / 1e6:5.2f} M page faults, {best['kernel_s']:4.1f} s in the kernel",
                      flush=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    for motion in ("dance", "kick"):
        paths = {}
        for name in ("float32", "auto"):
            paths[name] = os.path.join(args.out, f"{motion}_{name}.npy")
            _run(name, args.frames, motion, args.steps, args.sr_steps, out=paths[name])
        diff = _difference(paths["auto"], paths["float32"])
        print(f"  {motion}: auto vs float32 frames: PSNR {diff['psnr_db']:.1f} dB, SSIM {diff['ssim']:.4f}, "
              f"max {diff['max_grey_levels']} grey levels")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
