"""Appearance helpers: "Use as Reference Pose" for the photo mode."""

from __future__ import annotations

import os

import bpy
from bpy.props import StringProperty

from ..prepare import UserError, resolve_camera


class BTDM_OT_use_reference_pose(bpy.types.Operator):
    """Show the photo behind the shot camera to pose the armature to match it at this frame.

    Generation then sends the photo as the camera's view at this frame, fitted into the camera frame
    as shown here: the engine cuts it with this frame's window and fine-tunes with this frame's pose.
    """

    bl_idname = "btdm.use_reference_pose"
    bl_label = "Use as Reference Pose"
    bl_options = {"REGISTER", "UNDO"}

    character: StringProperty(name="Character", default="", options={"SKIP_SAVE"},
                              description="The armature whose own photo this is (empty: the shot's photo)")

    def execute(self, context):
        scene = context.scene
        s = scene.btdm
        if self.character:
            obj = scene.objects.get(self.character)
            if obj is None or obj.type != "ARMATURE":
                self.report({"ERROR"}, f"BTDM: scene {scene.name!r} has no armature {self.character!r}")
                return {"CANCELLED"}
            s = obj.btdm_character
        path = bpy.path.abspath(s.appearance_image)
        if not s.appearance_image or not os.path.isfile(path):
            self.report({"ERROR"}, f"BTDM: choose the photo first (no such file {path!r})")
            return {"CANCELLED"}
        try:
            camera = resolve_camera(context)
        except UserError as exc:
            self.report({"ERROR"}, f"BTDM: {exc}")
            return {"CANCELLED"}
        s.reference_frame = scene.frame_current
        image = bpy.data.images.load(path, check_existing=True)
        data = camera.data
        backgrounds = [b for b in data.background_images if b.image == image]
        background = backgrounds[0] if backgrounds else data.background_images.new()
        background.image = image
        background.frame_method = "FIT"  # as prepare.fit_to_camera sends it: centred, its aspect kept
        background.alpha = 0.6
        data.show_background_images = True
        self.report({"INFO"}, f"BTDM: frame {scene.frame_current} is the reference pose for {os.path.basename(path)}")
        return {"FINISHED"}


CLASSES = (BTDM_OT_use_reference_pose,)
