"""Generate plates, preview pose maps, cancel: the operators around :mod:`..jobs` and :mod:`..runs`.

Interactive: ``invoke`` samples the armature (main thread), starts the run's worker thread and
stays modal so Esc cancels; ``bpy.app.timers`` places the strip when the run ends. Background mode
(``blender -b``, the bpy module): ``execute`` blocks until the run ends and reports failures as
errors, which ``bpy.ops`` raises as ``RuntimeError``; Ctrl-C there cancels the run, leaves no file of
it, and ends the program with exit status 130 (:class:`Interrupts`).
"""

from __future__ import annotations

import signal
import sys
import time

import bpy
from bpy.props import StringProperty

from .. import runs
from ..jobs import PrevisRun, RunGroup
from ..prepare import UserError, build_group, build_request, resolve_camera, selected_armatures, strip_key

PROGRESS_EVERY_S = 2.0
INTERRUPTED_EXIT = 128 + signal.SIGINT
"""The exit status of a headless run stopped by Ctrl-C (as a shell reports a program killed by SIGINT)."""


class Interrupts:
    """Ctrl-C (SIGINT) during a blocking background run: cancel the run instead of dying half-way.

    Blender's own handler only flags a break that nothing here reads, and Python's would raise
    KeyboardInterrupt in this thread while the worker goes on writing and the engine goes on
    computing. Inside ``with``: the first Ctrl-C cancels the run (the worker cancels the job on the
    engine, waits for it to stop and deletes the staging folder); another stops waiting for the
    engine's word. The handler that was there before is put back on exit; one set by C code (Blender's,
    which Python cannot put back) becomes the default, so a later Ctrl-C ends the program.
    """

    def __init__(self, run) -> None:
        self.run = run
        self.count = 0
        self._previous = None
        self._installed = False

    def interrupt(self, *_args) -> None:
        self.count += 1
        if self.count == 1:
            self.run.cancel()
            print("BTDM: Ctrl-C: cancelling the job on the engine; no frame or strip will be left (Ctrl-C again: "
                  "do not wait for the engine to stop)", file=sys.stderr, flush=True)
        else:
            self.run.cancel(wait=False)
            print("BTDM: Ctrl-C again: not waiting for the engine; removing what was downloaded", file=sys.stderr,
                  flush=True)

    def __enter__(self) -> Interrupts:
        try:
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self.interrupt)
            self._installed = True
        except ValueError:  # not the main thread: KeyboardInterrupt is caught by the caller instead
            pass
        return self

    def __exit__(self, *_exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)


class _RunOperator:
    """Shared by Generate and Preview: ``kind`` says which."""

    kind = "plates"
    output_dir: StringProperty(name="Output folder", default="", options={"SKIP_SAVE"},
                               description="Override the output folder for this run")
    posemaps_dir: StringProperty(name="Pose-map folder", default="", options={"SKIP_SAVE"},
                                 description="Also keep the pose-map previews in this folder")
    skeleton_path: StringProperty(name="Skeleton file", default="", options={"SKIP_SAVE"},
                                  description="Also save the sampled skeleton animation (.npz) here")

    @classmethod
    def poll(cls, context):
        return runs.poll_idle(cls, context, "a pre-vis job is running for this scene; cancel it first")

    def _start(self, context) -> runs.Entry | None:
        # Several armatures selected (the panel's Armature empty): one job each, stacked by distance (Generate only)
        several = selected_armatures(context) if self.kind == "plates" else []
        try:
            if several and (self.skeleton_path or self.posemaps_dir):
                raise UserError(f"{len(several)} armatures are selected, but a skeleton file and a pose-map folder are "
                                "kept for one character: pick it in the panel's Armature")
            if several:
                requests = build_group(context, several, out_override=self.output_dir)
            else:
                requests = [build_request(context, self.kind, out_override=self.output_dir,
                                          posemaps_dir=self.posemaps_dir, skeleton_path=self.skeleton_path)]
            camera = resolve_camera(context)
        except UserError as exc:
            self.report({"ERROR"}, f"BTDM: {exc}")
            return None
        scene = context.scene
        run = RunGroup(requests, take=not self.output_dir) if several else PrevisRun(requests[0])
        armatures = tuple(r.armature for r in requests)
        if bpy.app.background:
            entry = runs.Entry(run=run, scene=scene.name, key=strip_key(scene, camera), camera=camera.name,
                               armatures=armatures)
            runs.RUNS[scene.name] = entry
            return entry
        return runs.start(scene, camera, strip_key(scene, camera), run, armatures)

    def _report_end(self, entry: runs.Entry) -> set[str]:
        if entry.ok:
            self.report({"INFO"}, f"BTDM: {entry.result}")
            return {"FINISHED"}
        if entry.run.snapshot().phase == "cancelled":
            self.report({"WARNING"}, f"BTDM: {entry.result}")
            return {"CANCELLED"}
        self.report({"ERROR"}, f"BTDM: {entry.result}")
        return {"CANCELLED"}

    def execute(self, context):
        entry = self._start(context)
        if entry is None:
            return {"CANCELLED"}
        if not bpy.app.background:
            return {"FINISHED"}  # from a script in the UI: runs on, the timer places the strip
        # Background: block, printing progress now and then (there is no panel to look at).
        run = entry.run
        with Interrupts(run) as interrupts:
            run.start()
            last = 0.0
            while not run.snapshot().finished:
                try:
                    time.sleep(0.1)
                except KeyboardInterrupt:  # no handler of ours (signal.signal refused): the same, once
                    interrupts.interrupt()
                if time.monotonic() - last > PROGRESS_EVERY_S:
                    last = time.monotonic()
                    print(f"BTDM {self.kind}: {run.snapshot().line()}", flush=True)
            run.join()
            runs.finalize(entry)
        if interrupts.count:
            # Ctrl-C stops a headless Blender: the job is cancelled on the engine and its files are gone
            # (or, when it ended first, its plate is whole and placed); exit as an interrupted program does.
            print(f"BTDM {self.kind}: interrupted (Ctrl-C): {entry.result}", file=sys.stderr, flush=True)
            raise SystemExit(INTERRUPTED_EXIT)
        return self._report_end(entry)

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        entry = self._start(context)
        if entry is None:
            return {"CANCELLED"}
        self._entry = entry
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.25, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        """Esc is this operator's while its job runs: it cancels the job and is consumed (``RUNNING_MODAL``), so it
        does not reach what is under it as well; a second Esc stops waiting for the engine. During playback Esc
        stops the playback, as everywhere in Blender. Every other event passes through (the scene stays editable
        while the job runs, and timers, playback's included, keep running)."""
        entry = self._entry
        if entry.run.finalized:
            context.window_manager.event_timer_remove(self._timer)
            context.workspace.status_text_set(None)
            return self._report_end(entry)
        if event.type == "ESC" and event.value == "PRESS":
            screen = getattr(context, "screen", None)
            if screen is not None and screen.is_animation_playing:
                return {"PASS_THROUGH"}
            if not entry.run.snapshot().finished:
                cancelling = getattr(self, "_cancelling", False)
                entry.run.cancel(wait=not cancelling)
                self._cancelling = True
                self.report({"INFO"}, "BTDM: not waiting for the engine" if cancelling else "BTDM: cancelling...")
            return {"RUNNING_MODAL"}
        if event.type == "TIMER":
            context.workspace.status_text_set(f"BTDM {self.kind}: {entry.run.snapshot().line()}  (Esc cancels)")
        return {"PASS_THROUGH"}


class BTDM_OT_generate_previs(_RunOperator, bpy.types.Operator):
    """Generate a plate of a person doing the armature's motion, seen through the shot camera (several armatures
    selected: one each, the nearer covering the farther)"""

    bl_idname = "btdm.generate_previs"
    bl_label = "Generate Pre-vis"
    bl_options = {"REGISTER"}
    kind = "plates"


class BTDM_OT_preview_posemaps(_RunOperator, bpy.types.Operator):
    """Render the pose maps the engine will generate from (seconds), as a strip, to check the retarget first"""

    bl_idname = "btdm.preview_posemaps"
    bl_label = "Preview Pose Maps"
    bl_options = {"REGISTER"}
    kind = "posemaps"


class BTDM_OT_cancel_previs(bpy.types.Operator):
    """Cancel this scene's pre-vis job (the engine stops it within one step; no strip is placed)"""

    bl_idname = "btdm.cancel_previs"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return context.scene is not None and runs.active(context.scene) is not None

    def execute(self, context):
        entry = runs.active(context.scene)
        if entry is not None:
            entry.run.cancel()
        return {"FINISHED"}


CLASSES = (BTDM_OT_generate_previs, BTDM_OT_preview_posemaps, BTDM_OT_cancel_previs)
