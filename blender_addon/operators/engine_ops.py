"""Connect to (or start) the engine, stop the local one, and set or forget the remote token."""

from __future__ import annotations

import contextlib
import threading

import bpy
from bpy.props import StringProperty

from .. import preferences
from ..engine import MANAGER, EngineUnavailable, home
from ..runs import _redraw


class BTDM_OT_connect_engine(bpy.types.Operator):
    """Check the engine (starting the local one when none answers) and show its device and models"""

    bl_idname = "btdm.connect_engine"
    bl_label = "Connect"

    @classmethod
    def poll(cls, context):
        return not MANAGER.status.checking

    def execute(self, context):
        settings = preferences.engine_settings(context)
        if bpy.app.background:
            try:
                MANAGER.connect(settings)
            except EngineUnavailable as exc:
                self.report({"ERROR"}, f"BTDM: cannot connect to the engine: {exc}")
                return {"CANCELLED"}
            s = MANAGER.status
            self.report({"INFO"}, f"BTDM: connected to {s.url} ({s.device_name})")
            return {"FINISHED"}

        def work():
            with contextlib.suppress(EngineUnavailable):  # the reason is in MANAGER.status; the panel shows it
                MANAGER.connect(settings)

        threading.Thread(target=work, name="btdm-connect", daemon=True).start()
        if not bpy.app.timers.is_registered(_watch):
            bpy.app.timers.register(_watch, first_interval=0.25)
        return {"FINISHED"}


def _watch():
    _redraw()
    return 0.25 if MANAGER.status.checking else None


class BTDM_OT_stop_engine(bpy.types.Operator):
    """Stop the local engine this Blender started (an engine started elsewhere is left alone)"""

    bl_idname = "btdm.stop_engine"
    bl_label = "Stop Local Engine"

    @classmethod
    def poll(cls, context):
        return MANAGER.child_pid is not None

    def execute(self, context):
        MANAGER.stop(wait=False)  # the child exits in the background; the UI does not wait for it
        return {"FINISHED"}


class BTDM_OT_set_token(bpy.types.Operator):
    """Store the remote engine's token in the add-on's user folder, readable by you only (not in the preferences)"""

    bl_idname = "btdm.set_token"
    bl_label = "Set Token"
    # No REGISTER: an operator that is registered is listed with its properties in the Info editor.
    bl_options = {"INTERNAL"}

    token: StringProperty(name="Token", subtype="PASSWORD", default="", options={"SKIP_SAVE", "HIDDEN"},
                          description="The bearer token the engine's operator gave you (btdm serve's token)")

    def invoke(self, context, event):
        return context.window_manager.invoke_props_dialog(self, width=420)

    def draw(self, context):
        self.layout.prop(self, "token")
        self.layout.label(text="Kept in a file only you can read, in the add-on's user folder")

    def execute(self, context):
        folder = preferences.user_folder()
        token, self.token = self.token, ""
        if not folder:
            self.report({"ERROR"}, "BTDM: Blender gives the add-on no user folder; set BTDM_ENGINE_TOKEN instead")
            return {"CANCELLED"}
        try:
            home.write_token(folder, token)
        except (OSError, ValueError) as exc:
            self.report({"ERROR"}, f"BTDM: the token was not stored: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, "BTDM: token stored")
        return {"FINISHED"}


class BTDM_OT_forget_token(bpy.types.Operator):
    """Remove the stored remote token from the add-on's user folder"""

    bl_idname = "btdm.forget_token"
    bl_label = "Forget Token"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        return home.read_token(preferences.user_folder(create=False)) is not None

    def execute(self, context):
        home.forget_token(preferences.user_folder())
        self.report({"INFO"}, "BTDM: token forgotten")
        return {"FINISHED"}


CLASSES = (BTDM_OT_connect_engine, BTDM_OT_stop_engine, BTDM_OT_set_token, BTDM_OT_forget_token)


def unregister() -> None:
    if bpy.app.timers.is_registered(_watch):
        bpy.app.timers.unregister(_watch)
