"""One shard: one character performing one motion, rendered into one dataset sequence.

A shard runs in its own process (``python -m synthetic_data.shard --job JOB --staging DIR``):
``bpy`` is not thread-safe and holds global state, so a fresh interpreter per shard is the only
clean way to run several at once. It writes ``DIR/sequences/<id>/`` (``clip.npz``, ``iuv/``,
``rgb/``, ``meta.json``) and nothing else there; the builder renames the folder into the dataset
once the shard has exited successfully, so a sequence in the dataset is always complete.

Progress goes to stdout as ``PROGRESS <done> <total>`` lines (frames of pose maps, cloth and
renders together); Blender's own prints go to ``DIR/logs/<id>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import btdm_engine
from btdm_engine import fixed_order as fx
from btdm_engine.errors import UsageError
from btdm_engine.fileio import atomic_write_text
from synthetic_data.presets import MotionSpec, Preset, Shard
from synthetic_data.spec import CharacterSpec

__all__ = ["SYNTH_VERSION", "main", "make_clip", "run_shard", "sequence_paths"]

# Bump when the same spec would render differently (meshes, materials, lights, cloth setup).
SYNTH_VERSION = 2

Progress = Callable[[int, int], None]


def sequence_paths(staging: Path, sequence_id: str) -> dict[str, Path]:
    """Where a shard writes: its sequence folder, its log and its pid file (under ``staging``)."""
    return {
        "sequence": staging / "sequences" / sequence_id,
        "log": staging / "logs" / f"{sequence_id}.log",
        "pid": staging / "pids" / f"{sequence_id}.pid",
    }


def make_clip(motion: MotionSpec, character: CharacterSpec, preset: Preset, body: Any) -> Any:
    """The MotionClip of ``character`` performing ``motion``, filmed by its jittered camera.

    The joint rotations are the same for every character (same motion name, speed and seed);
    the root translation follows each body's own ground contact; the static camera frames every
    frame of the posed body from the motion's facing direction turned by the character's yaw.
    """
    from btdm_engine.motion import load_bvh, make_motion  # lazy: loads scipy; the builder imports this module light
    from btdm_engine.motion.camera import framing_camera  # lazy: loads scipy
    from btdm_engine.motion.rotations import axis_angle_to_matrix, rotation_y  # lazy: loads scipy

    res = preset.render.resolution
    betas = np.asarray(character.betas, dtype=np.float64)
    if motion.source == "procedural":
        clip = make_motion(motion.name, seconds=preset.frames / preset.fps, fps=preset.fps, speed=motion.speed,
                           seed=motion.seed, betas=betas, width=res, height=res, body_model=preset.body_model)
    else:
        clip = load_bvh(motion.path, fps=preset.fps, width=res, height=res, body_model=preset.body_model, betas=betas)
    if clip.num_frames < preset.frames:
        raise UsageError(f"motion {motion.name!r}: {clip.num_frames} frames, the preset needs {preset.frames}")
    clip = clip.slice(0, preset.frames)
    # The camera is stored data, so it must have the same bits wherever the shard runs (a Ray task
    # has one thread, a local worker all cores): its direction is float64 in a fixed order (no
    # BLAS), and framing_camera frames exact vertex positions, not torch's float32 ones, whose last
    # bits depend on the CPU and the thread count. clip.npz rounds it to float32 once.
    facing = axis_angle_to_matrix(np.asarray(clip.poses[0, 0], dtype=np.float64))[:, 2]  # +Z, turned
    facing[1] = 0.0
    facing /= max(float(fx.norm(facing)), 1e-9)
    cam = character.camera
    direction = fx.matvec(rotation_y(np.radians(cam.yaw)), -facing)
    K, w2c = framing_camera(body, clip.poses, betas, clip.trans, res, res, fov_deg=cam.fov,
                            margin=cam.margin + 0.03, direction=direction, elevation_deg=cam.elevation)
    return clip.with_camera(K, res, res, w2c)


def _timed(record: dict[str, float], key: str):
    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            record[key] = round(time.perf_counter() - self.t, 3)

    return _T()


def run_shard(job: dict[str, Any], staging: str | os.PathLike[str], progress: Progress | None = None,
              threads: int = 0) -> dict[str, Any]:
    """Build one sequence into ``staging/sequences/<id>`` (replacing any leftover there).

    Returns the sequence's ``meta.json`` document.
    """
    shard = Shard.from_job(job)
    staging = Path(staging)
    paths = sequence_paths(staging, shard.sequence_id)
    seq = paths["sequence"]
    if seq.exists():
        shutil.rmtree(seq)
    (seq / "rgb").mkdir(parents=True)
    (seq / "iuv").mkdir()
    paths["log"].parent.mkdir(parents=True, exist_ok=True)
    preset, spec = shard.preset, shard.character
    T, P = preset.frames, preset.cloth.preroll
    total = 3 * T + P
    done = 0

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    timings: dict[str, float] = {}
    from btdm_engine.body import load_body_model  # lazy: loads torch
    from btdm_engine.posemaps import IUVRenderer, write_iuv_png  # lazy: loads pyrender/OpenGL and torch
    from btdm_engine.posemaps.encoding import validate_iuv  # lazy: loads torch
    from synthetic_data.garments import BodyRest, build_garment  # lazy: loads scipy
    from synthetic_data.hair import build_face_marks, build_hair  # lazy: loads scipy

    with _timed(timings, "setup_s"):
        body = load_body_model(preset.body_model)
        clip = make_clip(shard.motion, spec, preset, body)
        clip.save(seq / "clip.npz")
        rest = BodyRest.from_body_model(body, np.asarray(spec.betas))
        garments = [build_garment(rest, g, preset.cloth.spacing) for g in spec.garments]
        hair = build_hair(rest, spec.hair)
        face = build_face_marks(rest)
    # 1. Pose maps from the engine's own renderer: the same code draws them at inference time.
    with _timed(timings, "posemaps_s"), IUVRenderer(body, clip.width, clip.height) as renderer:
        for t, iuv in enumerate(renderer.render_clip(clip, progress=False)):
            validate_iuv(iuv)
            write_iuv_png(seq / "iuv" / f"{t:06d}.png", iuv)
            tick()
    # 2. The Blender scene, the cloth bake (pre-roll included) and the renders.
    from synthetic_data import blender_scene as bs  # lazy: bpy, only inside the shard process

    log = paths["log"]
    with _timed(timings, "scene_s"), bs.quiet(log):
        rig = bs.build_character(spec, rest, body, garments, hair, face, clip, preset, threads)
    tick(0)
    with _timed(timings, "cloth_s"):
        bs.bake_cloth(log)
    tick(P + T)
    with _timed(timings, "render_s"):
        for t in range(T):
            bs.render_frame(P + 1 + t, seq / "rgb" / f"{t:06d}.png", log)
            tick()
    del rig
    import bpy  # lazy: bpy, only inside the shard process

    meta = {
        "generator": "btdm-synth",
        "sequence_id": shard.sequence_id,
        "split": shard.split,
        "character_id": spec.character_id,
        "motion_name": shard.motion.name,
        "num_frames": T,
        "blender_frame_of_first_frame": P + 1,
        "job": shard.to_job(),
        "garment_vertices": [int(len(g.vertices)) for g in garments],
        "versions": {
            "synthetic_data": SYNTH_VERSION,
            "btdm": btdm_engine.__version__,
            "blender": bpy.app.version_string,
            "character_spec": spec.spec_version,
            "body_model": str(getattr(body, "source", preset.body_model)),
        },
        "timings": {
            **timings,
            "cloth_s_per_frame": round(timings["cloth_s"] / (P + T), 4),
            "render_s_per_frame": round(timings["render_s"] / T, 4),
        },
    }
    atomic_write_text(seq / "meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synthetic_data.shard", description=__doc__.split("\n")[0])
    parser.add_argument("--job", required=True, help="shard job JSON file (Shard.to_job)")
    parser.add_argument("--staging", required=True, help="staging folder of the dataset build")
    parser.add_argument("--threads", type=int, default=0, help="Cycles threads (0 = all cores)")
    args = parser.parse_args(argv)
    job = json.loads(Path(args.job).read_text(encoding="utf-8"))
    staging = Path(args.staging)
    pid = sequence_paths(staging, job["sequence_id"])["pid"]
    pid.parent.mkdir(parents=True, exist_ok=True)
    pid.write_text(str(os.getpid()))

    def report(done: int, total: int) -> None:
        print(f"PROGRESS {done} {total}", flush=True)

    try:
        run_shard(job, staging, report, threads=args.threads)
    except Exception as exc:  # reported to the builder as this shard's failure, then re-raised
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        raise
    finally:
        pid.unlink(missing_ok=True)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
