"""bench/bench_gpu.py on the CPU: the toy run, its JSON, the budget, the FLOP count and its imports.

The GPU figures themselves come from a run on the device machine (docs/gpu.md); here the same
code runs at tiny size, which is what ``python -m bench`` does on a machine without CUDA.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from device_only import device_only_python

from bench.bench_gpu import executed_flops, flops_per_frame, main, parse_options
from btdm_engine.models import SR3, BTUNet, BTUNetConfig, SR3Config
from btdm_engine.models.flops import count_flops

# one torch thread: two threads on this busy two-core machine run several times slower (conftest)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_toy_run_writes_its_figures_with_device_imports_only(tmp_path: Path) -> None:
    # In a child that sees only the device machine's packages (device_only.py): a missing import fails here.
    out = tmp_path / "bench" / "results.json"
    proc = device_only_python(f"""
        from bench.bench_gpu import main
        main(["--toy", "--device", "cpu", "--out", {str(out)!r}])
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["options"]["toy"] and results["options"]["presets"] == ["tiny"]
    assert results["matmul"]["tflops"] > 0
    (run,) = results["runs"]
    assert run["status"] == "ok" and run["variant"] == "eager" and run["frames"] == 2
    assert run["s_per_frame"] == pytest.approx(run["btunet_s_per_frame"] + run["sr3_s_per_frame"])
    assert run["fraction_of_matmul_peak"] > 0 and run["peak_memory_bytes"] is None
    assert results["loop_speedup"]["tiny"]["status"] == "ok" and results["loop_speedup"]["tiny"]["speedup"] > 0
    assert "GOAL tiny: none" in proc.stdout and "| tiny | eager | ok |" in proc.stdout
    assert not list(out.parent.glob(".*.tmp"))  # written atomically


def test_without_cuda_no_arguments_mean_the_toy_run() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: no arguments mean the full run")
    opts = parse_options([])
    assert opts.toy and opts.device == "cpu" and opts.presets == ("tiny",) and opts.variants == ("eager",)
    assert (opts.frames, opts.steps, opts.sr_steps, opts.threads) == (2, 2, 2, 1)
    assert parse_options(["--toy", "--compile-cpu"]).variants == ("eager", "compile")


def test_a_spent_budget_skips_with_a_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    main(["--toy", "--device", "cpu", "--budget-s", "0.001", "--out", str(out)])
    results = json.loads(out.read_text())
    assert [r["status"] for r in results["runs"]] == ["skipped"]
    assert results["loop_speedup"]["tiny"]["status"] == "skipped"
    assert "SKIP tiny eager: needs about" in capsys.readouterr().out


def test_bad_options_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse_options(["--toy", "--frames", "4", "--sr-batch", "3"])  # shapes must stay static
    with pytest.raises(SystemExit):
        parse_options(["--presets", "paper,huge"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            parse_options(["--device", "cuda"])


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_executed_flops_leave_out_branch_b_tail_and_count_sr3_per_frame(preset: str) -> None:
    bt_cfg, sr_cfg = BTUNetConfig.preset(preset), SR3Config.preset(preset)
    flops = executed_flops(bt_cfg, sr_cfg, frames=8, batch=4)
    with torch.device("meta"):
        forward = count_flops(BTUNet(bt_cfg), 4) / 4
        sr3 = count_flops(SR3(sr_cfg), 1)
    assert flops["btunet_forward_per_frame"] == forward
    # the sampler's call skips branch b past its last attention block and both encoders
    assert 0.5 * forward < flops["btunet_step_per_frame"] < forward
    assert flops["sr3_step_per_frame"] == sr3
    bt, sr = flops_per_frame(flops, 50, 50)
    assert bt == 50 * flops["btunet_step_per_frame"] + flops["btunet_prepare_per_frame"] and sr == 50 * sr3
