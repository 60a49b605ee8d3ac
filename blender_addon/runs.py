"""The runs in flight, per scene, and the main-thread side of them (``bpy.app.timers``).

A run's worker thread never touches bpy. One timer polls every run: it redraws the panels and the
status bar, and when a run has finished it puts the strip on the sequencer (:func:`finalize`) on
the main thread. In background mode there is no event loop: the operators call :func:`finalize`
themselves after a blocking run.

Undo: a run holds names (scene, camera, armature), never Blender data. Placing a result is one undo
step of its own (``BTDM: <strip name>``), pushed right after it, so Ctrl-Z after a plate arrived takes
exactly that plate away (the take's files stay; Show Take puts them back) and never the edit before it.
An Undo or Redo while a job runs that takes away the run's scene, camera or armature cancels the run
(:func:`_on_undo`): nothing is placed for data that is gone. While another modal operator runs (a move,
a rotate), a finished run waits, so its placement never lands inside someone else's step.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import bpy
from bpy.app.handlers import persistent

from . import display, takes
from .jobs import PrevisRun, RunGroup
from .layers import depth_segments

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
    armatures: tuple[str, ...] = ()  # the armatures whose motion the run sends
    why: str = ""  # set when Undo took away what the run was for (the run is then cancelled)


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


def start(scene, camera, key: str, run: PrevisRun, armatures: tuple[str, ...] = ()) -> Entry:
    entry = Entry(run=run, scene=scene.name, key=key, camera=camera.name, armatures=armatures)
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


def missing(entry: Entry) -> str:
    """What the run was for that the file no longer holds ("" when all is there): its scene, camera, armatures."""
    scene = bpy.data.scenes.get(entry.scene)
    if scene is None:
        return f"scene {entry.scene!r}"
    for kind, name in (("camera", entry.camera), *(("armature", a) for a in entry.armatures)):
        obj = bpy.data.objects.get(name)
        if obj is None or scene.objects.get(name) is None:
            return f"{kind} {name!r}"
    return ""


@persistent
def _on_undo(*_args) -> None:
    """Undo or Redo restored the file as it was: a running job whose scene, camera or armature it took away is
    cancelled (its plates would be for data that is gone); the rest go on, their names still hold."""
    for entry in list(RUNS.values()):
        if entry.run.finalized or entry.why:
            continue
        gone = missing(entry)
        if gone:
            entry.why = f"{gone} was taken away by Undo"
            logger.info("cancelling the pre-vis run of scene %s: %s", entry.scene, entry.why)
            entry.run.cancel()


UNDO_HANDLERS = ("undo_post", "redo_post")


def register() -> None:
    if _on_load_pre not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(_on_load_pre)
    for name in UNDO_HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if _on_undo not in handlers:
            handlers.append(_on_undo)


def undo_push(message: str) -> bool:
    """Make what was just done one undo step (Ctrl-Z takes it away, and nothing before it); whether it was."""
    try:
        if not bpy.ops.ed.undo_push.poll():
            return False
        bpy.ops.ed.undo_push(message=message)
    except (RuntimeError, AttributeError) as exc:  # no undo stack here
        logger.info("no undo step for %s: %s", message, exc)
        return False
    return True


def finalize(entry: Entry) -> None:
    """Main thread: show a succeeded run's result (:func:`.display.place`: the shot camera's background, the
    pre-vis scene, the shot's muted strip) as one undo step, remember its result; once per run."""
    run = entry.run
    if run.finalized:
        return
    snap = run.snapshot()
    req = run.request
    gone = entry.why or (missing(entry) if snap.phase == "succeeded" else "")
    scene = bpy.data.scenes.get(entry.scene)
    if isinstance(run, RunGroup):
        _finalize_group(entry, run, snap, gone, scene)
        return
    try:
        if snap.phase == "succeeded" and not gone:
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
                name = f"BTDM pose maps {entry.camera}"
                display.place(scene, camera, req.out_dir, req.first_frame, req.num_frames, name=name, key=entry.key,
                              kind="posemaps", props={"job_id": snap.job_id})
            if snap.retarget and snap.retarget.get("map"):
                scene.btdm.last_bone_map = json.dumps(snap.retarget["map"])
            entry.ok, entry.result = True, snap.message
            if snap.notes:
                entry.result += " (" + "; ".join(snap.notes) + ")"
            undo_push(name)
        elif snap.phase == "succeeded":  # done, but Undo took away what it was for: keep the take, place nothing
            entry.ok, entry.result = False, f"not placed: {gone}"
            if req.kind == "plates" and req.take:
                record = takes.write_take(req.out_dir, req.num_frames, req.first_frame, req.params, snap.job_id,
                                          req.shot, snap.notes)
                entry.result += f"; its plates are kept as take {record['take']} (Show Take places them)"
        else:
            entry.ok, entry.result = False, snap.message or snap.phase
            if gone and snap.phase == "cancelled":
                entry.result = f"cancelled: {gone}; no plate was placed"
            if req.take:
                takes.remove_if_empty(req.out_dir)  # nothing was kept: no empty take folder either
    except OSError as exc:
        entry.ok, entry.result = False, f"could not record the take: {exc}"
    except RuntimeError as exc:
        entry.ok, entry.result = False, f"could not place the strip: {exc}"
    finally:
        run.finalized = True
    _redraw()


def character_layers(camera: str, characters: list[dict], take: int | None, props: dict) -> list:
    """The display layers ``[(folder, strip name, props)]`` of several characters' plates (``characters``: ``name``,
    ``folder`` (absolute), ``seed``, ``job_id``), in the characters' order."""
    layers = []
    for c in characters:
        seed = c.get("seed", 0)
        name = f"BTDM {camera} {c['name']}" + (f" take {take}" if take is not None else "") + f" s{seed}"
        layer_props = {**props, "seed": seed, "job_id": c.get("job_id", ""), "folder": c["folder"],
                       "character": c["name"]}
        if take is not None:
            layer_props["take"] = take
        layers.append((c["folder"], name, layer_props))
    return layers


def _finalize_group(entry: Entry, run: RunGroup, snap, gone: str, scene) -> None:
    """:func:`finalize` for several characters: all placed, stacked by distance (one undo step), or none."""
    requests = run.requests
    first = requests[0]
    take_dir = os.path.dirname(first.out_dir)
    job_ids = [m.snapshot().job_id for m in run.members]
    try:
        if snap.phase == "succeeded":
            number = None
            if run.take:
                number = takes.write_group_take(take_dir, requests, job_ids, snap.notes)["take"]
            if gone:
                entry.ok, entry.result = False, f"not placed: {gone}"
                if number is not None:
                    entry.result += f"; the plates are kept as take {number} (Show Take places them)"
            else:
                characters = [{"name": r.character, "folder": r.out_dir, "seed": r.params.get("seed", 0),
                               "job_id": job} for r, job in zip(requests, job_ids, strict=True)]
                props = {"model": first.params.get("model", "default"), "steps": first.params.get("steps", 0)}
                layers = character_layers(entry.camera, characters, number, props)
                segments = depth_segments([r.depths for r in requests], first.first_frame)
                display.place_layers(scene, bpy.data.objects.get(entry.camera), layers, segments, kind="plates",
                                     key=entry.key)
                entry.ok, entry.result = True, snap.message
                if snap.notes:
                    entry.result += " (" + "; ".join(snap.notes) + ")"
                undo_push(f"BTDM: {entry.camera} " + (f"take {number}, " if number is not None else "")
                          + f"{len(requests)} characters")
        else:
            entry.ok, entry.result = False, snap.message or snap.phase
            if gone and snap.phase == "cancelled":
                entry.result = f"cancelled: {gone}; no plate was placed"
            for request in requests:  # all or nothing: what the characters that finished committed goes
                takes.discard(request.out_dir)
            if run.take:
                takes.remove_if_empty(take_dir)
    except OSError as exc:
        entry.ok, entry.result = False, f"could not record the take: {exc}"
    except RuntimeError as exc:
        entry.ok, entry.result = False, f"could not place the strips: {exc}"
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


def others_modal() -> bool:
    """Whether a modal operator other than this add-on's (a move, a rotate, a file browser) is running."""
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", ()):
        for op in getattr(window, "modal_operators", ()):
            if not op.bl_idname.startswith(("BTDM_OT_", "btdm.")):
                return True
    return False


def _tick():
    pending = False
    busy = None
    for entry in list(RUNS.values()):
        if entry.run.finalized:
            continue
        if entry.run.snapshot().finished:
            busy = others_modal() if busy is None else busy
            if busy:  # placing now would land inside that operator's undo step: the next tick
                pending = True
                continue
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
    for name in UNDO_HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if _on_undo in handlers:
            handlers.remove(_on_undo)
    cancel_all()
    for entry in RUNS.values():
        entry.run.join(timeout=5.0)
    RUNS.clear()
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
