"""Open the shot's pre-vis scene (the set with the plates, :mod:`..display`) in the Video Sequencer, and back."""

from __future__ import annotations

import bpy

from .. import display


def _target(scene):
    """The scene to open from ``scene``: its pre-vis scene (the scene camera's first), or from a pre-vis scene its shot."""
    shot = display.shot_of(scene)
    if shot is not None:
        return bpy.data.scenes.get(shot)
    found = display.previs_scenes(scene)
    camera = scene.btdm.camera or scene.camera
    key = f"{scene.name}_{camera.name}" if camera is not None else None
    found.sort(key=lambda sc: sc.get("btdm_previs_key") != key)
    return found[0] if found else None


class BTDM_OT_open_previs_scene(bpy.types.Operator):
    """Play the set with the plates: the shot's pre-vis scene in the Video Sequencer; from there, back to the shot"""

    bl_idname = "btdm.open_previs_scene"
    bl_label = "Open Pre-vis Scene"

    @classmethod
    def poll(cls, context):
        scene = getattr(context, "scene", None)
        if scene is None or not hasattr(scene, "btdm"):
            return False
        if _target(scene) is None:
            cls.poll_message_set("no pre-vis scene yet: Generate makes one")
            return False
        return True

    def execute(self, context):
        target = _target(context.scene)
        workspace = getattr(context, "workspace", None)
        if workspace is not None and hasattr(workspace, "sequencer_scene") and display.shot_of(target) is not None:
            # Blender 5: the Video Sequencer shows the workspace's sequencer scene; the 3D viewport keeps the shot
            workspace.sequencer_scene = target
        elif context.window is not None:
            context.window.scene = target
        else:
            self.report({"ERROR"}, "BTDM: no window to show it in")
            return {"CANCELLED"}
        self.report({"INFO"}, f"BTDM: {target.name}")
        return {"FINISHED"}


CLASSES = (BTDM_OT_open_previs_scene,)
