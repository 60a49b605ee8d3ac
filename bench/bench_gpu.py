"""GPU speed of the generator: s/frame at 256 px for 50 BTU-Net + 50 SR3 steps, eager and compiled.

    python -m bench gpu                      # the runner: paper,base on CUDA; without CUDA the --toy run
    python -m bench.bench_gpu --presets paper,base --frames 48 --budget-s 450 --out $OUT/bench_gpu.json
    python -m bench.bench_gpu --toy          # tiny presets, 2 frames, 2 + 2 steps, eager, on the CPU

For each preset (``BTUNetConfig.preset`` + ``SR3Config.preset``, random weights whose
zero-initialised layers are filled with small random values, so every path computes something,
as ``tests/test_samplers.py::tiny_btunet`` does; no trained paper-sized model exists) it times the
real samplers on ``--frames`` frames: ``sample_bidirectional`` (algorithm 1, all frames in one
call per step: ``max_batch`` = frames, so shapes stay static) then ``sample_sr3`` (``--sr-batch``
frames per call), under bf16 autocast (``pipeline._autocast_for``), in three variants:

* ``eager``: the code as the Animator runs it;
* ``compile``: ``torch.compile`` (default mode) of the BTU-Net's U-Net trunk (``BTUNet.unet``,
  what every step runs; the encoders run once per sequence) and of the whole SR3;
* ``cudagraphs``: the same with ``mode="reduce-overhead"`` (CUDA graphs).

Compile time (first short run minus the same run again) is reported apart from the steady
state. FLOPs are counted on the meta device with ``FlopCounterMode`` (a multiply-add = 2) for
what the sampler executes: ``BTUNet.prepare_sampling`` once per sequence (E_p over all frames,
E_a once) plus one ``PairSampling`` call per step, which stops branch b after its last attention
block; the full pair ``forward`` count (what ``python -m bench models`` reports) is printed
beside it. Achieved TFLOP/s are those FLOPs over the measured time, compared with a bf16 matrix
product measured on the device (8192^3) and with the datasheet's dense bf16 rate for known
names. Also: peak GPU memory per configuration, and the batched sampler's speed-up over the
literal frame loop (``sample_bidirectional_loop``, eager, a few steps).

Goals (issue 14): at most 0.25 s per 256 px frame for ``paper`` at 50 + 50 steps on an H200, at
most 20 ms for ``base``; PASS/MISS lines take the best variant. ``--budget-s`` bounds the run:
a configuration whose estimated time no longer fits is skipped with a SKIP line. The figures
go to ``--out`` as JSON, rewritten atomically after every configuration, so a run cut short
keeps what it measured. Imports only torch, numpy, einops, safetensors and the project.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from btdm_engine.diffusion.samplers import (
    POSE_CACHE_BYTES,
    sample_bidirectional,
    sample_bidirectional_loop,
    sample_sr3,
)
from btdm_engine.diffusion.schedule import ScheduleConfig
from btdm_engine.fileio import write_json_atomic
from btdm_engine.models import SR3, BTUNet, BTUNetConfig, SR3Config
from btdm_engine.models.flops import count_flops, count_parameters
from btdm_engine.pipeline import _autocast_for, resolve_precision

RESULTS_VERSION = 1
PRESETS = ("paper", "base", "tiny")
VARIANTS = ("eager", "compile", "cudagraphs")
COMPILE_MODES = {"compile": "default", "cudagraphs": "reduce-overhead"}
# Issue 14's goals, seconds per 256 px frame at 50 + 50 steps (paper: on an H200).
GOALS_S = {"paper": 0.25, "base": 0.020}
GOAL_STEPS = (50, 50)
# Dense bf16 tensor-core rates from the datasheets (TFLOP/s, no sparsity), matched in this order
# against torch.cuda.get_device_name(); the measured matrix product is the ceiling used.
NOMINAL_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                       ("A100", 312.0))
# A guess at one torch.compile (trunk + SR3) on a cold cache, for the budget check only.
COMPILE_GUESS_S = {"paper": 150.0, "base": 90.0, "tiny": 60.0}
TOY = dict(presets=("tiny",), frames=2, steps=2, sr_steps=2, loop_steps=2, matmul_size=1024)
SCHEDULE = ScheduleConfig()


@dataclass
class Options:
    presets: tuple[str, ...]
    frames: int
    steps: int
    sr_steps: int
    sr_batch: int
    loop_steps: int
    variants: tuple[str, ...]
    budget_s: float
    device: str
    toy: bool
    matmul_size: int
    precision: str
    out: Path
    seed: int = 0
    cudnn_benchmark: bool = False
    threads: int | None = None


@dataclass
class RunResult:
    """One (preset, variant) configuration."""

    preset: str
    variant: str
    status: str  # "ok", "skipped" or "error"
    frames: int
    steps: int
    sr_steps: int
    reason: str | None = None
    btunet_s_per_frame: float | None = None
    sr3_s_per_frame: float | None = None
    s_per_frame: float | None = None
    compile_s: float | None = None
    repeats: int = 0
    tflops: float | None = None
    btunet_tflops: float | None = None
    sr3_tflops: float | None = None
    fraction_of_matmul_peak: float | None = None
    peak_memory_bytes: int | None = None
    compiler: dict[str, int] | None = None  # graph breaks, graphs, CUDA-graph skips (compiled variants)


@dataclass
class Results:
    version: int = RESULTS_VERSION
    device: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    matmul: dict[str, Any] = field(default_factory=dict)
    flops: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    loop_speedup: dict[str, dict[str, Any]] = field(default_factory=dict)
    goals: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


# --------------------------------------------------------------------------------------------
# Device, timing and ceilings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "python": sys.version.split()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                    memory_bytes=props.total_memory, cuda=torch.version.cuda)  # fmt: skip
    else:
        info.update(name="CPU", threads=torch.get_num_threads())
    return info


def nominal_bf16_tflops(name: str) -> float | None:
    """The datasheet's dense bf16 rate for a known device name, else None."""
    for key, value in NOMINAL_BF16_TFLOPS:
        if key in name:
            return value
    return None


def matmul_peak(device: torch.device, size: int, dtype: torch.dtype, repeats: int = 10, warmup: int = 3) -> float:
    """Median TFLOP/s of a (size x size) @ (size x size) product on random data (never zeros)."""
    gen = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, generator=gen, device=device).to(dtype)
    b = torch.randn(size, size, generator=gen, device=device).to(dtype)
    for _ in range(warmup):
        torch.mm(a, b)
    times = [_timed(lambda: torch.mm(a, b), device) for _ in range(repeats)]
    return 2 * size**3 / statistics.median(times) / 1e12


# --------------------------------------------------------------------------------------------
# Models and FLOPs


def make_nontrivial(model: nn.Module, seed: int) -> nn.Module:
    """Fill the zero-initialised parameters (residual outputs, attention projections) with small
    random values, so that, like a trained network, every branch computes something."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            if not p.any():
                gen = torch.Generator(p.device).manual_seed(seed * 100_003 + i)
                p.copy_(torch.randn(p.shape, generator=gen, device=p.device) * 0.05)
    return model.eval()


def build_models(preset: str, device: torch.device, seed: int) -> tuple[BTUNet, SR3]:
    torch.manual_seed(seed)
    with torch.device(device):
        btunet = BTUNet(BTUNetConfig.preset(preset))
        sr3 = SR3(SR3Config.preset(preset))
    if sr3.config.low_resolution != btunet.config.resolution:
        raise ValueError(f"preset {preset!r}: SR3 takes {sr3.config.low_resolution} px, the BTU-Net makes "
                         f"{btunet.config.resolution} px")
    return make_nontrivial(btunet, seed), make_nontrivial(sr3, seed + 1)


def executed_flops(btunet_config: BTUNetConfig, sr3_config: SR3Config, frames: int, batch: int) -> dict[str, Any]:
    """FLOPs of what the samplers run, counted on the meta device (module docstring).

    Returns per-call counts and per-frame-step figures: ``btunet_step_per_frame`` (one
    PairSampling call over ``batch`` frames, divided by ``batch``), ``btunet_prepare_per_frame``
    (prepare_sampling over ``frames`` frames, divided by ``frames``), ``btunet_forward_per_frame``
    (the full pair forward, for comparison) and ``sr3_step_per_frame``.
    """
    with torch.device("meta"):
        net = BTUNet(btunet_config).eval()
        sr3 = SR3(sr3_config).eval()
    r = btunet_config.resolution
    poses = torch.empty(frames, 3, r, r, device="meta")
    appearance = torch.empty(3, r, r, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        prepared = net.prepare_sampling(poses, appearance, POSE_CACHE_BYTES)
    prepare = counter.get_total_flops()
    x = torch.empty(batch, 3, r, r, device="meta")
    idx = torch.arange(batch, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        prepared(x, x, torch.empty(batch, device="meta"), idx, idx, torch.zeros(batch, dtype=torch.long, device="meta"))
    step = counter.get_total_flops()
    forward = count_flops(net, batch)
    sr3_frame = count_flops(sr3, 1)
    return {
        "count": "executed: prepare_sampling once per sequence + one PairSampling call per step "
                 "(branch b stops after its last attention block); FlopCounterMode, multiply-add = 2",
        "btunet_parameters": count_parameters(net), "sr3_parameters": count_parameters(sr3),
        "btunet_prepare_per_frame": prepare / frames, "btunet_step_per_frame": step / batch,
        "btunet_forward_per_frame": forward / batch, "sr3_step_per_frame": sr3_frame,
    }  # fmt: skip


def flops_per_frame(flops: dict[str, Any], steps: int, sr_steps: int) -> tuple[float, float]:
    """(BTU-Net, SR3) FLOPs per frame for ``steps`` + ``sr_steps`` steps, executed count."""
    btunet = steps * flops["btunet_step_per_frame"] + flops["btunet_prepare_per_frame"]
    return btunet, sr_steps * flops["sr3_step_per_frame"]


# --------------------------------------------------------------------------------------------
# Variants


class _StepMarked(nn.Module):
    """A ``reduce-overhead`` compiled module with a new CUDA-graph step marked before each call,
    so an output of the previous replay the sampler still holds is never overwritten."""

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args, **kwargs)


def reset_compiler() -> None:
    """``torch.compiler.reset()`` and torch.compile's counters (which that reset keeps)."""
    torch.compiler.reset()
    try:
        from torch._dynamo.utils import counters  # lazy, optional: a private torch module (loads sympy)
    except ImportError:
        return
    counters.clear()


def compiler_counters() -> dict[str, int] | None:
    """torch.compile's own counts since the last reset: graph breaks, compiled graphs and CUDA-graph
    skips (a skip means ``cudagraphs`` ran as plain ``compile`` somewhere). None where torch keeps none."""
    try:
        from torch._dynamo.utils import counters  # lazy, optional: a private torch module (loads sympy)
    except ImportError:
        return None
    return {
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0)),
    }


def _compiled(module: nn.Module, variant: str) -> nn.Module:
    mode = COMPILE_MODES[variant]
    compiled = torch.compile(module, mode=mode, dynamic=False)
    return _StepMarked(compiled) if variant == "cudagraphs" else compiled


@contextlib.contextmanager
def variant_models(btunet: BTUNet, sr3: SR3, variant: str, device: torch.device, precision: str):
    """(BTU-Net, SR3) as the samplers call them in ``variant``; the BTU-Net's trunk is put back after."""
    trunk = btunet.unet
    sr3_net: nn.Module = sr3
    if variant != "eager":
        reset_compiler()  # fresh caches and counters for this variant
        btunet.unet = _compiled(trunk, variant)
        sr3_net = _compiled(sr3, variant)
    try:
        yield _autocast_for(btunet, device, precision), _autocast_for(sr3_net, device, precision)
    finally:
        btunet.unet = trunk
        if variant != "eager":
            reset_compiler()  # the next variant or preset compiles afresh (and CUDA-graph pools are freed)


def run_pipeline(
    btunet: nn.Module, sr3: nn.Module, poses: Tensor, appearance: Tensor, steps: int, sr_steps: int,
    sr_batch: int, resolution: int, device: torch.device, seed: int,
) -> tuple[float, float]:
    """Seconds of the BTU-Net stage and of the SR3 stage over all frames."""
    generator = torch.Generator(device).manual_seed(seed)
    frames = poses.shape[0]
    low: list[Tensor] = []

    def btunet_stage() -> None:
        low.append(sample_bidirectional(btunet, poses, appearance, steps=steps, schedule=SCHEDULE,
                                        generator=generator, max_batch=frames))  # fmt: skip

    def sr3_stage() -> None:
        for _chunk in sample_sr3(sr3, low[0], steps=sr_steps, schedule=SCHEDULE, generator=generator,
                                 resolution=resolution, batch=sr_batch):  # fmt: skip
            pass

    return _timed(btunet_stage, device), _timed(sr3_stage, device)


def inputs(btunet: BTUNet, frames: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    """Random pose maps (T, 3, r, r) and appearance (3, r, r) in [-1, 1] (timings do not depend on values)."""
    gen = torch.Generator(device).manual_seed(seed)
    r = btunet.config.resolution
    poses = torch.rand(frames, 3, r, r, generator=gen, device=device) * 2 - 1
    return poses, torch.rand(3, r, r, generator=gen, device=device) * 2 - 1


# --------------------------------------------------------------------------------------------
# The benchmark


class Bench:
    """Runs the configurations in order within the budget, printing and saving as it goes."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.device = torch.device(opts.device)
        self.precision = resolve_precision(opts.precision, self.device)
        self.t0 = time.perf_counter()
        self.results = Results(device=device_info(self.device), options=_jsonable(asdict(opts)))
        self.models: dict[str, tuple[BTUNet, SR3]] = {}
        self.eager_s: dict[str, float] = {}

    # -------------------------------------------------------------------- bookkeeping
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def save(self) -> None:
        self.results.elapsed_s = self.elapsed()
        write_json_atomic(self.opts.out, _jsonable(asdict(self.results)))

    def fits(self, what: str, estimate_s: float) -> bool:
        left = self.opts.budget_s - self.elapsed()
        if estimate_s <= left:
            return True
        print(f"SKIP {what}: needs about {estimate_s:.0f} s, {max(left, 0):.0f} s of the {self.opts.budget_s:.0f} s "
              "budget left (--budget-s)", flush=True)  # fmt: skip
        return False

    def model(self, preset: str) -> tuple[BTUNet, SR3]:
        if preset not in self.models:
            self.models.clear()  # one preset's weights on the device at a time
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.models[preset] = build_models(preset, self.device, self.opts.seed)
        return self.models[preset]

    # -------------------------------------------------------------------- steps
    def measure_ceiling(self) -> None:
        dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float32
        size = self.opts.matmul_size
        tflops = matmul_peak(self.device, size, dtype)
        name = self.results.device["name"]
        nominal = nominal_bf16_tflops(name) if self.device.type == "cuda" else None
        self.results.matmul = {"size": size, "dtype": str(dtype).replace("torch.", ""), "tflops": tflops,
                               "nominal_bf16_tflops": nominal}  # fmt: skip
        print(f"device: {name} ({self.device}), torch {torch.__version__}, precision {self.precision}", flush=True)
        line = f"matrix product {size}^3 {self.results.matmul['dtype']}: {_rate(tflops)} measured"
        if nominal is not None:
            line += f"; datasheet dense bf16 {nominal:.0f} TFLOP/s ({tflops / nominal:.0%} of it)"
        print(line, flush=True)

    def count(self, preset: str) -> dict[str, Any]:
        if preset not in self.results.flops:
            flops = executed_flops(BTUNetConfig.preset(preset), SR3Config.preset(preset), self.opts.frames,
                                   self.opts.frames)  # fmt: skip
            bt, sr = flops_per_frame(flops, self.opts.steps, self.opts.sr_steps)
            flops.update(btunet_per_frame=bt, sr3_per_frame=sr, total_per_frame=bt + sr)
            peak = self.results.matmul.get("tflops")
            flops["floor_s_per_frame"] = (bt + sr) / (peak * 1e12) if peak else None
            self.results.flops[preset] = flops
            naive = self.opts.steps * flops["btunet_forward_per_frame"]
            print(f"{preset}: {_amount(bt + sr)} per frame at {self.opts.steps} + {self.opts.sr_steps} steps "
                  f"(BTU-Net {_amount(bt)} executed, {_amount(naive)} as full pair passes; SR3 {_amount(sr)}); "
                  f"floor at the measured matmul rate {flops['floor_s_per_frame']:.4f} s/frame", flush=True)  # fmt: skip
        return self.results.flops[preset]

    def run_estimate(self, preset: str) -> float:
        """Seconds of one full run: the eager time once measured, before that the FLOPs at 30 % of the peak."""
        if preset in self.eager_s:
            return self.eager_s[preset]
        flops = self.count(preset)
        return flops["total_per_frame"] * self.opts.frames / (0.3 * self.results.matmul["tflops"] * 1e12)

    def estimate(self, preset: str, variant: str, repeats: int) -> float:
        """Seconds a configuration should take: warm-up and timed runs, plus a guess at compilation."""
        compile_s = COMPILE_GUESS_S.get(preset, 60.0) if variant != "eager" else 0.0
        return compile_s + (repeats + 0.2) * self.run_estimate(preset) + 5.0

    def run(self, preset: str, variant: str) -> RunResult:
        o = self.opts
        result = RunResult(preset, variant, "skipped", o.frames, o.steps, o.sr_steps)
        repeats = 3 if self.run_estimate(preset) < 3.0 else 1
        if not self.fits(f"{preset} {variant}", self.estimate(preset, variant, repeats)):
            result.reason = "over the time budget"
            return self._record(result)
        btunet, sr3 = self.model(preset)
        poses, appearance = inputs(btunet, o.frames, self.device, o.seed)
        flops = self.count(preset)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with variant_models(btunet, sr3, variant, self.device, self.precision) as (bt, sr):
                call = lambda steps, sr_steps: run_pipeline(  # noqa: E731
                    bt, sr, poses, appearance, steps, sr_steps, o.sr_batch, sr3.config.resolution, self.device, o.seed
                )
                # 1. a short run (compiles, autotunes, warms the caches), then the same run again
                first = sum(call(2, 2))
                again = sum(call(2, 2))
                result.compile_s = max(first - again, 0.0) if variant != "eager" else None
                # 2. the steady state at the full step counts
                times = [call(o.steps, o.sr_steps) for _ in range(repeats)]
                result.compiler = compiler_counters() if variant != "eager" else None
        except Exception as exc:  # a compiler failure is a result to report, not the end of the run
            result.status, result.reason = "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            return self._record(result)
        bt_s = statistics.median(t[0] for t in times) / o.frames
        sr_s = statistics.median(t[1] for t in times) / o.frames
        bt_flops, sr_flops = flops["btunet_per_frame"], flops["sr3_per_frame"]
        result.status, result.repeats = "ok", repeats
        result.btunet_s_per_frame, result.sr3_s_per_frame, result.s_per_frame = bt_s, sr_s, bt_s + sr_s
        result.btunet_tflops, result.sr3_tflops = bt_flops / bt_s / 1e12, sr_flops / sr_s / 1e12
        result.tflops = (bt_flops + sr_flops) / (bt_s + sr_s) / 1e12
        result.fraction_of_matmul_peak = result.tflops / self.results.matmul["tflops"]
        if self.device.type == "cuda":
            result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.device))
        if variant == "eager":
            self.eager_s[preset] = (bt_s + sr_s) * o.frames
        return self._record(result)

    def _record(self, result: RunResult) -> RunResult:
        self.results.runs.append(_jsonable(asdict(result)))
        if result.status == "ok":
            mem = "" if result.peak_memory_bytes is None else f", peak {result.peak_memory_bytes / 2**30:.1f} GiB"
            comp = "" if result.compile_s is None else f", compile {result.compile_s:.1f} s"
            if result.compiler:
                comp += ", " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.compiler.items())
            print(f"{result.preset} {result.variant}: {result.s_per_frame:.4f} s/frame (BTU-Net {result.btunet_s_per_frame:.4f} "
                  f"+ SR3 {result.sr3_s_per_frame:.4f}), {_rate(result.tflops)} = {result.fraction_of_matmul_peak:.0%} "
                  f"of the matmul peak{comp}{mem}", flush=True)  # fmt: skip
        elif result.status == "error":
            print(f"ERROR {result.preset} {result.variant}: {result.reason}", flush=True)
        self.save()
        return result

    def loop_speedup(self, preset: str) -> None:
        """Batched algorithm 1 against the literal frame loop, eager, ``loop_steps`` steps."""
        o = self.opts
        frames = min(o.frames, 16)
        est = 10.0 + 3 * self.eager_s.get(preset, 10.0) * o.loop_steps / max(o.steps, 1) * frames / o.frames
        if not self.fits(f"{preset} loop speed-up", est):
            self.results.loop_speedup[preset] = {"status": "skipped", "reason": "over the time budget"}
            self.save()
            return
        btunet, _ = self.model(preset)
        poses, appearance = inputs(btunet, frames, self.device, o.seed)
        bt = _autocast_for(btunet, self.device, self.precision)
        kwargs = dict(schedule=SCHEDULE, steps=o.loop_steps)

        def batched() -> None:
            sample_bidirectional(bt, poses, appearance, generator=torch.Generator(self.device).manual_seed(0),
                                 max_batch=frames, **kwargs)  # fmt: skip

        def loop() -> None:
            sample_bidirectional_loop(bt, poses, appearance, generator=torch.Generator(self.device).manual_seed(0),
                                      **kwargs)  # fmt: skip

        batched(), loop()  # warm-up of both shapes
        t_batched, t_loop = _timed(batched, self.device), _timed(loop, self.device)
        entry = {"status": "ok", "frames": frames, "steps": o.loop_steps, "batched_s": t_batched, "loop_s": t_loop,
                 "speedup": t_loop / t_batched}  # fmt: skip
        self.results.loop_speedup[preset] = entry
        print(f"{preset} batched algorithm 1 vs the frame loop ({frames} frames, {o.loop_steps} steps, eager): "
              f"{t_batched:.3f} s vs {t_loop:.3f} s, {entry['speedup']:.1f}x", flush=True)  # fmt: skip
        self.save()

    def goals(self) -> None:
        name = self.results.device.get("name", "")
        for preset in self.opts.presets:
            goal = GOALS_S.get(preset)
            if goal is None:
                print(f"GOAL {preset}: none (goals are set for paper and base)")
                continue
            ok = [r for r in self.results.runs if r["preset"] == preset and r["status"] == "ok"]
            entry: dict[str, Any] = {"preset": preset, "goal_s_per_frame": goal, "pass": None}
            if (self.opts.steps, self.opts.sr_steps) != GOAL_STEPS:
                entry["reason"] = f"the goal is for {GOAL_STEPS[0]} + {GOAL_STEPS[1]} steps"
            elif not ok:
                entry["reason"] = "not measured"
            else:
                best = min(ok, key=lambda r: r["s_per_frame"])
                entry.update(best_s_per_frame=best["s_per_frame"], variant=best["variant"],
                             **{"pass": best["s_per_frame"] <= goal})  # fmt: skip
            if preset == "paper" and self.device.type == "cuda" and "H200" not in name:
                entry["note"] = f"the paper goal is stated for an H200; this is {name}"
            self.results.goals.append(entry)
            if entry["pass"] is None:
                print(f"GOAL {preset} <= {goal:g} s/frame: n/a ({entry['reason']})")
            else:
                verdict = "PASS" if entry["pass"] else "MISS"
                note = f" [{entry['note']}]" if "note" in entry else ""
                print(f"{verdict} {preset}: {entry['best_s_per_frame']:.4f} s/frame ({entry['variant']}) against the goal "
                      f"of {goal:g} s/frame at {GOAL_STEPS[0]} + {GOAL_STEPS[1]} steps{note}")  # fmt: skip
        self.save()

    def table(self) -> str:
        lines = ["| preset | variant | status | s/frame | BTU-Net s/frame | SR3 s/frame | compile s | TFLOP/s "
                 "| of matmul peak | peak GiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip

        def f(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        for r in self.results.runs:
            mem = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**30
            lines.append(f"| {r['preset']} | {r['variant']} | {r['status']} | {f(r['s_per_frame'], '.4f')} "
                         f"| {f(r['btunet_s_per_frame'], '.4f')} | {f(r['sr3_s_per_frame'], '.4f')} "
                         f"| {f(r['compile_s'], '.1f')} | {f(r['tflops'], '.3g')} | {f(r['fraction_of_matmul_peak'], '.0%')} "
                         f"| {f(mem, '.1f')} |")  # fmt: skip
        return "\n".join(lines)


def run(opts: Options) -> Results:
    """The whole benchmark: ceiling, eager runs, loop speed-ups, compiled variants, goals."""
    if opts.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    threads = torch.get_num_threads()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    try:
        return _run(opts)
    finally:
        torch.set_num_threads(threads)


def _run(opts: Options) -> Results:
    bench = Bench(opts)
    bench.measure_ceiling()
    bench.save()
    with torch.no_grad():
        for preset in opts.presets:
            bench.count(preset)
        if "eager" in opts.variants:
            for preset in opts.presets:
                bench.run(preset, "eager")
        for preset in opts.presets:
            bench.loop_speedup(preset)
        for variant in ("cudagraphs", "compile"):
            if variant not in opts.variants:
                continue
            for preset in opts.presets:
                bench.run(preset, variant)
    bench.goals()
    print(bench.table())
    print(f"elapsed {bench.elapsed():.0f} s of the {opts.budget_s:.0f} s budget; results written to {opts.out}", flush=True)
    return bench.results


def _amount(flops: float) -> str:
    return f"{flops / 1e12:.2f} TFLOP" if flops >= 1e12 else f"{flops / 1e9:.2f} GFLOP"


def _rate(tflops: float) -> str:
    return f"{tflops:.1f} TFLOP/s" if tflops >= 1 else f"{tflops * 1e3:.1f} GFLOP/s"


def _jsonable(value: Any) -> Any:
    """Tuples to lists, Paths to strings, non-finite floats to None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _csv(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in items if s not in allowed]
    if not items or unknown:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: unknown {', '.join(unknown) or '(empty)'}; "
                                         f"allowed: {', '.join(allowed)}")  # fmt: skip
    return items


def parse_options(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="bench_gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", type=lambda s: _csv(s, PRESETS, "--presets"), default=None,
                   help="comma-separated presets (default paper,base; --toy: tiny)")
    p.add_argument("--frames", type=int, default=None, help="frames per sequence (default 48; --toy: 2)")
    p.add_argument("--steps", type=int, default=None, help="BTU-Net steps (default 50; --toy: 2)")
    p.add_argument("--sr-steps", type=int, default=None, help="SR3 steps (default 50; --toy: 2)")
    p.add_argument("--sr-batch", type=int, default=None, help="frames per SR3 call (default: all frames)")
    p.add_argument("--loop-steps", type=int, default=None, help="steps of the batched-vs-loop comparison (default 3)")
    p.add_argument("--variants", type=lambda s: _csv(s, VARIANTS, "--variants"), default=None,
                   help=f"comma-separated from {','.join(VARIANTS)} (default all on CUDA; eager on the CPU)")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip configurations that no longer fit (default 450)")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--toy", action="store_true", help="tiny presets, 2 frames, 2 + 2 steps, eager (a CPU smoke run)")
    p.add_argument("--compile-cpu", action="store_true", help="also run the compile variant on the CPU")
    p.add_argument("--precision", choices=("auto", "bfloat16", "float32"), default="bfloat16",
                   help="autocast (default bfloat16; the CPU toy run uses auto: bf16 only where the CPU has it)")
    p.add_argument("--matmul-size", type=int, default=None, help="side of the peak matrix product (default 8192)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="set torch.backends.cudnn.benchmark (the Animator does not)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; --toy on the CPU: 1, which a busy 2-core machine needs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out/bench_gpu/results.json"), help="JSON results (atomic)")
    a = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if a.device == "cuda" and not cuda:
        p.error("--device cuda: no CUDA device is available")
    device = a.device or ("cuda" if cuda else "cpu")
    toy = a.toy
    if device == "cpu" and not toy and a.presets is None:
        print("no CUDA device: running the --toy configuration on the CPU (tiny presets, 2 frames, 2 + 2 steps, eager)",
              flush=True)  # fmt: skip
        toy = True
    d = TOY if toy else dict(presets=("paper", "base"), frames=48, steps=50, sr_steps=50, loop_steps=3, matmul_size=8192)
    threads = a.threads if a.threads is not None or not (toy and device == "cpu") else 1
    variants = a.variants
    if variants is None:
        variants = VARIANTS if device == "cuda" else (("eager", "compile") if a.compile_cpu else ("eager",))
    elif device == "cpu":
        dropped = [v for v in variants if v == "cudagraphs" or (v == "compile" and not a.compile_cpu)]
        if dropped:
            print(f"on the CPU: not running {', '.join(dropped)} (CUDA graphs need CUDA; compile needs --compile-cpu)")
        variants = tuple(v for v in variants if v not in dropped) or ("eager",)
    frames = a.frames if a.frames is not None else d["frames"]
    for name, value in (("--frames", frames), ("--steps", a.steps), ("--sr-steps", a.sr_steps), ("--sr-batch", a.sr_batch),
                        ("--loop-steps", a.loop_steps), ("--matmul-size", a.matmul_size), ("--threads", a.threads)):  # fmt: skip
        if value is not None and value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    if a.budget_s <= 0:
        p.error(f"--budget-s must be > 0, got {a.budget_s}")
    sr_batch = a.sr_batch or frames
    if frames % sr_batch:
        p.error(f"--sr-batch {sr_batch} must divide --frames {frames} (static shapes for the compiled variants)")
    precision = a.precision if not (toy and device == "cpu" and a.precision == "bfloat16") else "auto"
    return Options(
        presets=a.presets or d["presets"], frames=frames, steps=a.steps or d["steps"], sr_steps=a.sr_steps or d["sr_steps"],
        sr_batch=sr_batch, loop_steps=a.loop_steps or d["loop_steps"], variants=variants, budget_s=a.budget_s,
        device=device, toy=toy, matmul_size=a.matmul_size or d["matmul_size"], precision=precision, out=a.out,
        seed=a.seed, cudnn_benchmark=a.cudnn_benchmark, threads=threads,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; ``argv`` None or [] (the ``python -m bench`` runner) means the defaults."""
    run(parse_options([] if argv is None else argv))


if __name__ == "__main__":
    main(sys.argv[1:])
