"""Takes: put an earlier take on the plate strip, delete a take (see :mod:`..takes`)."""

from __future__ import annotations

import os

import bpy
from bpy.props import IntProperty

from .. import display, runs, sequencer
from ..jobs import RunFailed
from ..layers import depth_segments
from ..prepare import UserError, output_dir, resolve_camera, shot_identity, strip_key
from ..runs import character_layers
from ..takes import delete_take, list_takes


def shot_takes(context):
    """(the scene's camera, its output folder, its shot, its takes); raises UserError."""
    scene = context.scene
    camera = resolve_camera(context)
    out = output_dir(scene, camera)
    shot = shot_identity(scene, camera)
    return camera, out, shot, list_takes(out, shot)


def shown_take(scene, camera) -> int | None:
    """The take number the shot's plate strip shows, if it shows one."""
    for strip in sequencer.find_strips(scene, strip_key(scene, camera), "plates"):
        take = strip.get("btdm_take")
        if take is not None:
            return int(take)
    return None


def _find(context, number: int):
    camera, _out, shot, takes = shot_takes(context)
    for take in takes:
        if take.number == number:
            return camera, shot, take
    raise UserError(f"this shot has no take {number}")


class _TakeOperator:
    take: IntProperty(name="Take", min=1, description="The take's number (its folder take_NNN)")

    @classmethod
    def poll(cls, context):
        return runs.poll_idle(cls, context, "a pre-vis job is running for this scene; wait for it or cancel it")


class BTDM_OT_take_show(_TakeOperator, bpy.types.Operator):
    """Show this take: on the shot's plate strip (same channel and frames), the camera's background and the pre-vis scene"""

    bl_idname = "btdm.take_show"
    bl_label = "Show Take"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        try:
            camera, _shot, take = _find(context, self.take)
        except UserError as exc:
            self.report({"ERROR"}, f"BTDM: {exc}")
            return {"CANCELLED"}
        r = take.record
        scene = context.scene
        if take.characters:
            return self._show_characters(context, camera, take)
        try:
            display.place(
                scene, camera, take.folder, int(r.get("first_frame", scene.frame_start)), int(r.get("frames", 0)),
                name=f"BTDM {camera.name} take {take.number} s{r.get('seed', 0)}", key=strip_key(scene, camera),
                kind="plates", props={"seed": r.get("seed", 0), "model": r.get("model", ""),
                                      "job_id": r.get("job_id", ""), "steps": r.get("steps", 0),
                                      "folder": take.folder, "take": take.number})
        except (RuntimeError, ValueError) as exc:
            self.report({"ERROR"}, f"BTDM: take {take.number}: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"BTDM: showing {take.label}")
        return {"FINISHED"}

    def _show_characters(self, context, camera, take):
        """A take of several characters: each one's plates, stacked by the distances the take recorded."""
        r, scene = take.record, context.scene
        try:
            characters = []
            for c in take.characters:
                folder = take.character_folder(c)
                if folder is None:
                    raise ValueError(f"take.json names a character folder {c.get('folder')!r} outside the take")
                characters.append({**c, "name": str(c.get("name", "")), "folder": folder})
            first, count = int(r.get("first_frame", scene.frame_start)), int(r.get("frames", 0))
            depths = [[float(d) for d in c.get("depths", [])] for c in take.characters]
            if any(len(d) != count for d in depths):
                raise ValueError("take.json: a character's distances do not cover the take's frames")
            layers = character_layers(camera.name, characters, take.number,
                                      {"model": r.get("model", ""), "steps": r.get("steps", 0)})
            display.place_layers(scene, camera, layers, depth_segments(depths, first), kind="plates",
                                 key=strip_key(scene, camera))
        except (RuntimeError, ValueError, TypeError) as exc:
            self.report({"ERROR"}, f"BTDM: take {take.number}: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"BTDM: showing {take.label}")
        return {"FINISHED"}


class BTDM_OT_take_delete(_TakeOperator, bpy.types.Operator):
    """Delete this take's plates and records (only the files pre-vis wrote; never the take on the strip)"""

    bl_idname = "btdm.take_delete"
    bl_label = "Delete Take"
    bl_options = {"REGISTER"}

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        try:
            camera, shot, take = _find(context, self.take)
        except UserError as exc:
            self.report({"ERROR"}, f"BTDM: {exc}")
            return {"CANCELLED"}
        if shown_take(context.scene, camera) == take.number:
            self.report({"ERROR"}, f"BTDM: take {take.number} is on the plate strip; show another take first")
            return {"CANCELLED"}
        try:
            left = delete_take(take, shot)
        except (RunFailed, OSError) as exc:
            self.report({"ERROR"}, f"BTDM: could not delete take {take.number}: {exc}")
            return {"CANCELLED"}
        if left:
            self.report({"WARNING"}, f"BTDM: deleted take {take.number}'s plates; {len(left)} other file(s) kept in "
                        f"{os.path.basename(take.folder)} ({left[0]}{', ...' if len(left) > 1 else ''})")
        else:
            self.report({"INFO"}, f"BTDM: deleted take {take.number}")
        return {"FINISHED"}


CLASSES = (BTDM_OT_take_show, BTDM_OT_take_delete)
