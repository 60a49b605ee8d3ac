"""``btdm previs``: run the Blender add-on headless on one or many shots.

Each shot runs in its own process with the bpy module (bpy holds one scene per process):
``python -m blender_addon.headless SPEC_JSON`` opens the .blend, registers the add-on, and calls
``bpy.ops.btdm.generate_previs`` exactly as an animator's Generate button does. One engine serves every shot: ``--engine URL``
(and ``--token``), or a local ``btdm serve`` this command starts on a free loopback port and
stops at the end. With ``--ray ADDRESS`` shots are Ray tasks (one GPU each when the cluster has
GPUs), each task with its own local engine unless ``--engine`` is given.

Per shot, under ``--out/<shot name>/``::

    frames/NNNNNN.png     the plates (RGBA at the camera's resolution), one per scene frame
    posemaps/NNNNNN.png   the pose maps' colour previews
    skeleton.npz          the sampled skeleton animation (what the add-on sent)
    clip.npz              the retargeted MotionClip (retargeted here with the job's own options)
    job.json              the job id, params and the engine's retargeting report

Exit status 0 when every shot succeeded; otherwise 1, with one line per failed shot on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from btdm_engine.cli import CliError
from btdm_engine.motion.retarget import to_motion_clip
from btdm_engine.motion.skeleton_animation import SkeletonAnimation
from btdm_engine.procs import die_with_parent, ray_connect, stop_process

__all__ = ["register", "run_shot"]

SHOT_TIMEOUT_S = 6 * 3600
# The per-shot program: the add-on's own (bpy), run by name, so the engine never imports the add-on.
SHOT_MODULE = "blender_addon.headless"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "previs",
        help="generate pre-vis plates for .blend shots headless (the Blender add-on, batched)",
        description="Run the Blender add-on's Generate on each shot, headless (bpy module): the armature's motion "
        "through the shot camera, as plates on the shot's sequencer. Writes frames/, posemaps/, clip.npz per shot.",
    )
    p.add_argument("shots", nargs="+", metavar="SHOT.blend", help=".blend files")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder; one subfolder per shot")
    p.add_argument("--armature", default=None, metavar="NAME",
                   help="the armature object (default: the one saved in the panel, or the scene's only armature)")
    p.add_argument("--camera", default=None, metavar="NAME", help="the camera object (default: the scene camera)")
    p.add_argument("--engine", default=None, metavar="URL",
                   help="an engine service to use (default: start a local `btdm serve` for the batch)")
    p.add_argument("--token", default=None, help="the engine's bearer token")
    p.add_argument("--steps", type=int, default=None, help="BTU-Net steps (default: the shot's setting)")
    p.add_argument("--sr-steps", type=int, default=None, help="SR3 steps (default: the shot's setting)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the shot's setting)")
    p.add_argument("--device", default=None, help="device of the local engine (cpu, cuda, cuda:N)")
    p.add_argument("--save", action="store_true", help="save each .blend in place with the plate strip")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run shots as Ray tasks on this cluster ('auto', 'ray://host:10001', or 'local')")
    p.set_defaults(func=run)


def _shot_dirs(shots: list[Path], out: Path) -> list[Path]:
    seen: dict[str, int] = {}
    dirs = []
    for shot in shots:
        name = shot.stem
        seen[name] = seen.get(name, 0) + 1
        dirs.append(out / (name if seen[name] == 1 else f"{name}_{seen[name]}"))
    return dirs


def _btdm_command() -> list[str]:
    return [sys.executable, "-m", "btdm_engine.cli"]


def _btdm_executable() -> str:
    here = Path(sys.executable).with_name("btdm")
    return str(here) if here.is_file() else ""


class _LocalEngine:
    """A `btdm serve` child on a free loopback port for the batch."""

    def __init__(self, device: str | None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # open while the engine child runs; stop() closes it
        self.log = tempfile.NamedTemporaryFile(prefix="btdm-previs-serve-", suffix=".log", delete=False)  # noqa: SIM115
        cmd = [*_btdm_command(), "serve", "--port", str(self.port)]
        if device:
            cmd += ["--device", device]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                     preexec_fn=die_with_parent)  # no engine outlives a killed batch

    def wait(self, timeout: float = 180.0) -> None:
        # lazy: the HTTP client (http, ssl) costs a tenth of a second at every `btdm --help`
        from btdm_bridge.engine_client import EngineClient, EngineError

        client = EngineClient(self.url, timeout=2.0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CliError(f"the local engine exited at start; see {self.log.name}")
            try:
                client.health()
                return
            except EngineError:
                time.sleep(0.25)
        raise CliError(f"the local engine did not answer within {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def run(args: argparse.Namespace) -> int:
    shots = [Path(s).resolve() for s in args.shots]
    for shot in shots:
        if not shot.is_file():
            raise CliError(f"{shot}: no such .blend file")
    for name, value in (("--steps", args.steps), ("--sr-steps", args.sr_steps)):
        if value is not None and value < 1:
            raise CliError(f"{name} must be >= 1, got {value}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    specs = [{
        "blend": str(shot), "out": str(folder), "armature": args.armature, "camera": args.camera,
        "steps": args.steps, "sr_steps": args.sr_steps, "seed": args.seed, "save": args.save,
    } for shot, folder in zip(shots, _shot_dirs(shots, out))]
    env = {"BTDM_EXECUTABLE": _btdm_executable()}
    if args.token:
        env["BTDM_ENGINE_TOKEN"] = args.token
    if args.device:
        env["BTDM_ENGINE_DEVICE"] = args.device
    engine = None
    if args.engine:
        env["BTDM_ENGINE_URL"] = args.engine
    elif args.ray is None:
        engine = _LocalEngine(args.device)
        try:
            engine.wait()
        except BaseException:
            engine.stop()
            raise
        env["BTDM_ENGINE_URL"] = engine.url
    try:
        results = _run_ray(specs, env, args.ray) if args.ray else [run_shot(spec, env) for spec in specs]
    finally:
        if engine is not None:
            engine.stop()
    failed = [r for r in results if not r["ok"]]
    for r in results:
        if r["ok"]:
            print(f"{r['blend']}: {r['frames']} frames in {r['out']}")
    for r in failed:
        print(f"{r['blend']}: error: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def run_shot(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """One shot in a bpy subprocess, then the clip retargeted here; never raises for the shot's own failure."""
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **{k: v for k, v in env.items() if v}}
    result = {"blend": spec["blend"], "out": str(out), "ok": False, "error": "", "frames": 0}
    try:
        proc = subprocess.run([sys.executable, "-m", SHOT_MODULE, json.dumps(spec)],
                              env=child_env, capture_output=True, text=True, timeout=SHOT_TIMEOUT_S,
                              preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:
        result["error"] = f"did not finish within {SHOT_TIMEOUT_S} s"
        return result
    (out / "blender.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    report = _last_json(proc.stdout)
    if proc.returncode != 0 or report is None or not report.get("ok"):
        result["error"] = (report or {}).get("error") or _last_line(proc.stderr) or f"exit status {proc.returncode}"
        return result
    try:
        _write_clip(out, report["params"])
    except (OSError, ValueError) as exc:
        result["error"] = f"retargeting the clip: {exc}"
        return result
    result.update(ok=True, frames=report["frames"])
    return result


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("BTDM-RESULT "):
            try:
                return json.loads(line[len("BTDM-RESULT "):])
            except ValueError:
                return None
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:400] if lines else ""


def _write_clip(out: Path, params: dict[str, Any]) -> None:
    """clip.npz: the job's skeleton retargeted with the job's own options (the service does not serve its clip)."""
    anim = SkeletonAnimation.load(out / "skeleton.npz")
    kwargs = {key: params[key] for key in ("skeleton", "bone_map", "scale", "up") if params.get(key) is not None}
    result = to_motion_clip(anim, fit_shape=bool(params.get("fit_shape")), **kwargs)
    result.clip.save(out / "clip.npz")


def _ray_shot(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    return run_shot(spec, env)


def _run_ray(specs: list[dict[str, Any]], env: dict[str, str], address: str) -> list[dict[str, Any]]:
    """Shots as Ray tasks, one GPU each when the cluster has GPUs (the output folder must be shared)."""
    import ray  # lazy: optional (the ray extra)

    started_here = ray_connect(address)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_ray_shot)
        refs = [task.remote(spec, env) for spec in specs]
        return ray.get(refs)
    finally:
        if started_here:
            ray.shutdown()
