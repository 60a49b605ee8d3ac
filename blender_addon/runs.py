"""The runs in flight, per scene, and the main-thread side of them (``bpy.app.timers``).

A run's worker thread never touches bpy. One timer polls every run: it redraws the panels and the
status bar, and when a run has finished it puts the strip on the sequencer (:func:`finalize`) on
the main thread. In background mode there is no event loop: the operators call :func:`finalize`
themselves after a blocking run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import bpy
from bpy.app.handlers import persistent

from . import display, takes
from .jobs import PrevisRun

logger = logging.getLogger(__name__)

TICK_S = 0.25


@dataclass
class Entry:
    run: PrevisRun
    scene: str
    key: str  # <scene>_<camera>
    camera: str
    result: str = ""  # the final message, once finalized
    ok: bool = False


RUNS: dict[str, Entry] = {}  # scene name -> the latest run (finished ones stay until the next)


def active(scene) -> Entry | None:
    entry = RUNS.get(scene.name)
    return entry if entry is not None and not entry.run.finalized else None


def poll_idle(cls, context, busy: str) -> bool:
    """An operator's ``poll``: a scene with the add-on's settings and no pre-vis job running for it
    (then ``busy`` is the reason Blender shows)."""
    scene = getattr(context, "scene", None)
    if scene is None or not hasattr(scene, "btdm"):
        return False
    if active(scene) is not None:
        cls.poll_message_set(busy)
        return False
    return True


def latest(scene) -> Entry | None:
    return RUNS.get(scene.name)


def start(scene, camera, key: str, run: PrevisRun) -> Entry:
    entry = Entry(run=run, scene=scene.name, key=key, camera=camera.name)
    RUNS[scene.name] = entry
    run.start()
    if not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=TICK_S, persistent=True)
    return entry


@persistent
def _on_load_pre(*_args) -> None:
    """Another .blend is being opened: its scenes are not the ones the runs were for.

    Runs are keyed by scene name, and a new file's "Scene" would otherwise inherit the old file's
    run (a progress bar that never ends, Generate disabled, or a strip placed in the wrong file),
    so every run is cancelled on the engine (by its worker thread) and forgotten.
    """
    if RUNS:
        logger.info("a new .blend is loading: cancelling %d pre-vis run(s)", sum(not e.run.finalized for e in RUNS.values()))
    cancel_all()
    for entry in RUNS.values():
        entry.run.finalized = True  # nothing is placed from a run of the file being closed
    RUNS.clear()


def register() -> None:
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)


def finalize(entry: Entry) -> None:
    """Main thread: show a succeeded run's result (:func:`.display.place`: the shot camera's background, the
    pre-vis scene, the shot's muted strip), remember its result; once per run."""
    run = entry.run
    if run.finalized:
        return
    snap = run.snapshot()
    scene = bpy.data.scenes.get(entry.scene)
    req = run.request
    try:
        if snap.phase == "succeeded" and scene is not None:
            camera = bpy.data.objects.get(entry.camera)
            if req.kind == "plates":
                seed, model = req.params.get("seed", 0), req.params.get("model", "default")
                props = {"seed": seed, "model": model, "job_id": snap.job_id, "steps": req.params.get("steps", 0),
                         "folder": req.out_dir}
                name = f"BTDM {entry.camera} s{seed} {snap.job_id[:8]}"
                if req.take:
                    record = takes.write_take(req.out_dir, req.num_frames, req.first_frame, req.params, snap.job_id,
                                              req.shot, snap.notes)
                    props["take"] = record["take"]
                    name = f"BTDM {entry.camera} take {record['take']} s{seed}"
                display.place(scene, camera, req.out_dir, req.first_frame, req.num_frames, name=name,
                              key=entry.key, kind="plates", props=props)
            else:
                display.place(scene, camera, req.out_dir, req.first_frame, req.num_frames,
                              name=f"BTDM pose maps {entry.camera}", key=entry.key, kind="posemaps",
                              props={"job_id": snap.job_id})
            if snap.retarget and snap.retarget.get("map"):
                scene.btdm.last_bone_map = json.dumps(snap.retarget["map"])
            entry.ok, entry.result = True, snap.message
            if snap.notes:
                entry.result += " (" + "; ".join(snap.notes) + ")"
        else:
            entry.ok, entry.result = False, snap.message or snap.phase
            if req.take:
                takes.remove_if_empty(req.out_dir)  # nothing was kept: no empty take folder either
    except OSError as exc:
        entry.ok, entry.result = False, f"could not record the take: {exc}"
    except RuntimeError as exc:
        entry.ok, entry.result = False, f"could not place the strip: {exc}"
    finally:
        run.finalized = True
    _redraw()


def _redraw() -> None:
    wm = bpy.context.window_manager
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "SEQUENCE_EDITOR", "STATUSBAR", "PREFERENCES"):
                area.tag_redraw()


def _tick():
    pending = False
    for entry in list(RUNS.values()):
        if entry.run.finalized:
            continue
        if entry.run.snapshot().finished:
            finalize(entry)
        else:
            pending = True
    _redraw()
    return TICK_S if pending else None


def cancel_all() -> None:
    for entry in RUNS.values():
        entry.run.cancel()


def unregister() -> None:
    if _on_load_pre in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.remove(_on_load_pre)
    cancel_all()
    for entry in RUNS.values():
        entry.run.join(timeout=5.0)
    RUNS.clear()
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
