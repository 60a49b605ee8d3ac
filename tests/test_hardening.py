"""Issue 13: bounded resources, loud failures, never losing a user's work, one error path.

One test per class of failure; every malformed input is written here, every command runs for real
(through the function the ``btdm`` command runs, ``commandline.run_btdm``).
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from commandline import run_btdm as btdm

from btdm_engine import limits
from btdm_engine.errors import BtdmError, LimitError, NonFiniteError
from training.toy_data import write_toy_dataset

ROOT = Path(__file__).resolve().parent.parent
MICRO_BTUNET = {
    "resolution": 16, "model_channels": 16, "channel_mult": [1, 2], "attention_resolutions": [8],
    "norm_groups": 8, "pose_encoder_channels": 8, "appearance_encoder_channels": 8,
}  # fmt: skip


def npy_header_only(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """An .npy member that declares ``shape`` but holds no data (what a hostile file can do)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\0" * 64


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), num_characters=3, num_frames=4, size=32)


# ------------------------------------------------------------------ 1. bounded resources
def _peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM), 0 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> int:
    """Reset the peak to the current resident memory (Linux: clear_refs 5); returns it, or 0."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return 0
    return _peak_rss()


def test_declared_sizes_are_refused_before_allocation(tmp_path: Path) -> None:
    from btdm_engine.checkpoints import CheckpointLimitError, load_checkpoint
    from btdm_engine.imageio import read_rgb
    from btdm_engine.motion.clip import MotionClip
    from training.dataset_format import DatasetManifest

    # a clip declaring 10^10 frames (a few hundred bytes on disk)
    clip = tmp_path / "huge.npz"
    with zipfile.ZipFile(clip, "w") as z:
        z.writestr("poses.npy", npy_header_only((10**10, 24, 3)))
    from btdm_engine.diffusion.schedule import ScheduleConfig
    from btdm_engine.models import BTUNetConfig

    peak_was_reset = _reset_peak_rss()
    with pytest.raises(LimitError, match="frames limit"):
        MotionClip.load(clip)
    # a 20000 x 20000 PNG of a few bytes
    png = tmp_path / "huge.png"
    png.write_bytes(png_header_only(20000, 20000))
    with pytest.raises(LimitError, match="pixels limit"):
        read_rgb(png)
    # a checkpoint whose config asks for 100000 channels: counted on the meta device, never built
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    model = dict(BTUNetConfig.preset("tiny").to_dict(), model_channels=100000)
    (ckpt / "config.json").write_text(json.dumps({"format_version": 1, "kind": "btunet", "model": model,
                                                  "schedule": ScheduleConfig().to_dict()}))
    (ckpt / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointLimitError, match="parameters limit"):
        load_checkpoint(ckpt)
    # a manifest declaring 10^9 frames
    doc = {"format_version": 1, "resolution": [32, 32], "fps": 30, "splits": {"train": ["s"], "test": []},
           "sequences": {"s": {"character": "c", "num_frames": 10**9, "checksums": {}}}}  # fmt: skip
    with pytest.raises(LimitError, match="frames limit"):
        DatasetManifest.from_dict(tmp_path, doc)
    # Refused before allocation: the process's peak memory did not grow by what any of them
    # declares (a time limit said the same, but depended on the machine's load).
    if peak_was_reset:
        assert _peak_rss() - peak_was_reset < 256 << 20


def test_cli_limits_are_named_and_can_be_raised(tmp_path: Path) -> None:
    r = btdm("animate", "--clip", "x.npz", "--out", str(tmp_path / "o"), "--steps", "100000000")
    assert r.returncode == 2 and "steps limit of 1000" in r.stderr and "--limit steps=N" in r.stderr
    assert "Traceback" not in r.stderr
    r = btdm("eval", "--pred", str(tmp_path), "--gt", str(tmp_path), "--out", str(tmp_path / "r.json"), "--size", "100000")
    assert r.returncode == 2 and "size limit" in r.stderr
    r = btdm("motion", "make", "walk", "--seconds", "100000", "--out", str(tmp_path / "w.npz"))
    assert r.returncode == 2 and "frames limit" in r.stderr
    r = btdm("motion", "make", "walk", "--seconds", "0.1", "--fps", "10", "--out", str(tmp_path / "w.npz"),
             "--limit", "frames=0")
    assert r.returncode == 2 and "--limit" in r.stderr
    limits.override(["frames=5"])
    try:
        with pytest.raises(LimitError):
            limits.check("frames", 6, "x")
    finally:
        limits.override([])


# ------------------------------------------------------------------ 2. loud failures
def test_non_finite_weights_are_refused_on_load_and_save(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from btdm_engine.checkpoints import NonFiniteWeightsError, load_checkpoint, save_checkpoint
    from btdm_engine.diffusion.schedule import ScheduleConfig
    from btdm_engine.models import build_model

    model = build_model("btunet", MICRO_BTUNET)
    save_checkpoint(tmp_path / "ok", model, "btunet", ScheduleConfig())
    state = load_file(tmp_path / "ok" / "model.safetensors")
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(tmp_path / "ok" / "model.safetensors"))
    with pytest.raises(NonFiniteWeightsError, match=name):
        load_checkpoint(tmp_path / "ok")
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteError):
        save_checkpoint(tmp_path / "bad", model, "btunet", ScheduleConfig())
    assert not (tmp_path / "bad" / "config.json").exists()


def test_training_stops_on_a_non_finite_loss_and_a_failed_start_leaves_nothing(toy: Path, tmp_path: Path) -> None:
    from training.config import TrainConfig
    from training.trainer import NonFiniteLossError, train

    cfg = TrainConfig(kind="btunet", data=str(toy), model_overrides=MICRO_BTUNET, steps=6, batch_size=2, lr=1e30,
                      warmup_steps=0, grad_clip=0.0, checkpoint_every=100, sample_every=0, log_every=1)  # fmt: skip
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="lower --lr|Lower --lr"):
        train(cfg, run, progress=False)
    assert not (run / "train_config.json").exists()  # the corrected retry needs no --resume
    r = btdm("train", "btunet", "--data", str(toy), "--out", str(run), "--steps", "1", "--batch-size", "2",
             "--model-config", json.dumps(MICRO_BTUNET), "--sample-every", "0", "--no-progress", "--device", "cpu")
    assert r.returncode == 0, r.stderr


def test_training_data_is_validated_at_start(toy: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy, data)
    seq = next((data / "sequences").iterdir())
    frame = seq / "rgb" / "000001.png"
    cv2.imwrite(str(frame), np.zeros((16, 16, 3), np.uint8))  # wrong size
    args = ["train", "btunet", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"]
    r = btdm(*args)
    assert r.returncode == 2 and str(frame) in r.stderr and seq.name in r.stderr
    assert not (tmp_path / "run").exists()
    shutil.copyfile(toy / "sequences" / seq.name / "rgb" / "000001.png", frame)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["info"] = {"complete": False, "pending": ["x"]}
    (data / "manifest.json").write_text(json.dumps(manifest))
    r = btdm(*args)
    assert r.returncode == 2 and "incomplete" in r.stderr
    r = btdm("synth", "validate", str(data))
    assert r.returncode != 0 and "INCOMPLETE" in r.stderr


def test_out_of_range_values_get_named_errors(tmp_path: Path) -> None:
    from btdm_engine.imageio import MIN_APPEARANCE_SIDE, read_rgb
    from btdm_engine.motion import make_motion
    from btdm_engine.motion.clip import MotionClip

    clip = make_motion("walk", seconds=0.2, fps=10, width=32, height=32)
    for fps in (1e300, 1e-300):
        with pytest.raises(LimitError, match="fps"):
            MotionClip(**{**{k: getattr(clip, k) for k in ("poses", "trans", "betas", "body_model", "K", "width",
                                                             "height", "world_to_cam")}, "fps": fps})  # fmt: skip
    r = btdm("animate", "--clip", "x.npz", "--out", str(tmp_path / "o"), "--device", "tpu")
    assert r.returncode == 2 and "cpu, cuda or cuda:N" in r.stderr and "Traceback" not in r.stderr
    for extra in (["--appearance-frame", "2"], ["--appearance-frame", "2", "--appearance", "a.png", "--appearance-iuv",
                                                "b.png"]):
        r = btdm("animate", "--clip", "x.npz", "--out", str(tmp_path / "o"), *extra)
        assert r.returncode == 2 and "--appearance-frame K says which frame" in r.stderr, r.stderr
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(BtdmError, match="too small"):
        read_rgb(tiny, min_side=MIN_APPEARANCE_SIDE)


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    from btdm_engine.imageio import read_rgb

    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white, stored landscape
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    # APP1 Exif with Orientation = 6 (rotate 90 degrees clockwise to view)
    tiff = b"MM\x00*\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\0\0\0\0"
    app1 = b"Exif\0\0" + tiff
    data = buf.tobytes()
    data = data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    rgb = read_rgb(path)
    assert rgb.shape[:2] == (40, 20)  # upright: portrait
    assert rgb[:15].mean() > 0.9 and rgb[25:].mean() < 0.1  # the white half is now on top


def test_missing_frames_are_an_error_unless_a_range_is_asked(tmp_path: Path) -> None:
    from btdm_engine.posemaps.encoding import write_iuv_png
    from btdm_engine.posemaps.export import PosemapExportError, read_posemap_folder

    iuv = np.zeros((8, 8, 3), np.uint8)
    iuv[2:6, 2:6] = (1, 10, 20)
    folder = tmp_path / "maps"
    for t in [*range(0, 5), *range(10, 15)]:
        write_iuv_png(folder / "iuv" / f"{t:06d}.png", iuv)
    with pytest.raises(PosemapExportError, match="000005.png"):
        read_posemap_folder(folder)
    assert read_posemap_folder(folder, frames=(10, 15)).shape == (5, 8, 8, 3)
    (folder / "posemaps.json").write_text(json.dumps({"frames": 1800}))
    with pytest.raises(PosemapExportError, match="missing"):
        read_posemap_folder(folder, frames=None)
    write_iuv_png(folder / "iuv" / "000005.png", np.zeros((9, 9, 3), np.uint8))
    with pytest.raises(PosemapExportError, match="000005.png: 9x9"):
        read_posemap_folder(folder, frames=(0, 6))
    # eval: 4 predicted frames against 6 true ones is not scored on the overlap
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for d, n in ((pred, 4), (gt, 6)):
        d.mkdir()
        for t in range(n):
            cv2.imwrite(str(d / f"{t:06d}.png"), np.full((16, 16, 3), 30 * t, np.uint8))
    r = btdm("eval", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "r.json"))
    assert r.returncode == 2 and "000004.png" in r.stderr and not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------ 3. never lose a user's work
def test_posemaps_never_deletes_files_it_did_not_write(tmp_path: Path) -> None:
    from btdm_engine.motion import make_motion

    make_motion("walk", seconds=0.2, fps=10, width=32, height=32).save(tmp_path / "walk.npz")
    out = tmp_path / "mine"
    (out / "iuv").mkdir(parents=True)
    mine = out / "iuv" / "000000.png"
    mine.write_bytes(b"user's own file")
    r = btdm("posemaps", str(tmp_path / "walk.npz"), "--out", str(out), "--size", "32", "--no-mp4", "--no-progress")
    assert r.returncode == 2 and "did not write" in r.stderr
    assert mine.read_bytes() == b"user's own file"


def test_staged_run_keeps_the_old_run_until_the_new_one_is_complete(tmp_path: Path) -> None:
    from btdm_engine.fileio import StagedRun

    out = tmp_path / "plate"

    def run(n: int, tag: bytes, complete: bool) -> None:
        staged = StagedRun(out, ("frames",), ("animation.mp4",))
        staging, _ = staged.begin()
        (staging / "frames").mkdir()
        for t in range(n):
            (staging / "frames" / f"{t:06d}.png").write_bytes(tag)
        (staging / "animation.mp4").write_bytes(tag)
        if complete:
            staged.publish(n)

    run(10, b"old", True)
    run(3, b"new", False)  # killed mid-run
    assert sorted(p.read_bytes() for p in (out / "frames").iterdir()) == [b"old"] * 10
    assert (out / "animation.mp4").read_bytes() == b"old" and (out / "incomplete").is_dir()
    run(4, b"new", True)  # the next run removes the leftovers, then replaces the old run whole
    assert sorted(p.read_bytes() for p in (out / "frames").iterdir()) == [b"new"] * 4
    assert (out / "animation.mp4").read_bytes() == b"new" and not (out / "incomplete").exists()
    assert json.loads((out / "run.json").read_text())["frames"] == 4


def test_children_die_with_their_parent_and_stale_temps_are_cleaned(tmp_path: Path) -> None:
    from btdm_engine.procs import clean_stale_temps

    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; from btdm_engine.procs import die_with_parent\n"
        "p = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )], cwd=ROOT)  # fmt: skip
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and "Z" not in Path(f"/proc/{child}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.05)
    # a killed writer's temp file (dead pid in its name) goes; a live writer's stays
    dead = tmp_path / f".preview.{parent.pid}.abc123.tmp.mp4"
    live = tmp_path / f".preview.{os.getpid()}.abc124.tmp.mp4"
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    assert clean_stale_temps(tmp_path) == [dead]
    assert live.exists()


_ACTIVATIONS = [2 << 20, 6 << 20, 12 << 20]  # one call's: over glibc's default mmap threshold, under 32 MiB
_KEPT = """
import ctypes, json, resource, sys, threading
from btdm_engine import procs
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
SIZES = json.loads(sys.argv[2])
kept = procs.keep_freed_memory() if sys.argv[1] == "keep" else None
seen = {}
def call():  # a network call, as the heap sees it: allocate, write and free its activations
    ptrs = [libc.malloc(n) for n in SIZES]
    for p, n in zip(ptrs, SIZES):
        ctypes.memset(p, 1, n)
    seen["mmapped"] = libc.mallinfo2().hblkhd
    for p in ptrs:
        libc.free(p)
def faults(fn):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
def on_a_thread():  # what a sampler worker does: the call on a thread of its own
    t = threading.Thread(target=call)
    t.start()
    t.join()
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
mapped_before = libc.mallinfo2().hblkhd
call()  # the heap grows to the job's peak once
report = dict(kept=kept, mmapped=seen["mmapped"] - mapped_before, free_in_heap=libc.mallinfo2().fordblks,
              faults_main=faults(call), faults_thread=faults(on_a_thread))
before = resident()
procs.release_freed_memory()
report["released"] = before - resident()
print(json.dumps(report))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_kept_for_the_next_network_call() -> None:
    # glibc hands freed activations back to the kernel, and every later call page-faults them in
    # again; after keep_freed_memory (the CLI calls it first) the heap keeps them. This checks the
    # mechanism with plain malloc/free, in numbers that do not depend on the machine (how much
    # it saves in a real job depends on the CPU and the load: bench/bench_cpu.py reports the page
    # faults of `btdm animate` with and without it, side by side).
    import ctypes

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc before 2.33 (no mallinfo2)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's own defaults

    def run(mode: str) -> dict:
        r = subprocess.run([sys.executable, "-c", _KEPT, mode, json.dumps(_ACTIVATIONS)], capture_output=True,
                           text=True, cwd=ROOT, env=env, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    total = sum(_ACTIVATIONS)
    pages = total // os.sysconf("SC_PAGE_SIZE")
    # glibc's defaults: blocks this large are mmapped, so freeing one hands it back to the kernel.
    assert run("default")["mmapped"] >= total
    kept = run("keep")
    assert kept["kept"] is True
    assert kept["mmapped"] == 0, kept  # M_MMAP_THRESHOLD: they come from the heap
    assert kept["free_in_heap"] >= total, kept  # M_TRIM_THRESHOLD: freed, and the heap keeps them
    # The next call reuses the same pages, on this thread and on a new one (M_ARENA_MAX=1: one
    # heap for every thread), where it page-faulted all of them in again before.
    assert kept["faults_main"] < pages // 8 and kept["faults_thread"] < pages // 8, kept
    assert kept["released"] >= total // 2, kept  # release_freed_memory hands them back


# ------------------------------------------------------------------ 4. one error type, one exit path
def test_cli_catches_project_errors_and_lets_bugs_show(tmp_path: Path) -> None:
    from btdm_engine.cli import CliError

    assert issubclass(CliError, BtdmError)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    r = btdm("posemaps", str(bad), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "bad.npz" in r.stderr
    script = ("import sys; from btdm_engine import cli\n"
              "import btdm_engine.commands.demo as d\n"
              "def bug(args): raise KeyError('a real bug')\n"
              "d.run = bug\n"
              "sys.exit(cli.main(['demo']))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and "Traceback" in r.stderr and "a real bug" in r.stderr
