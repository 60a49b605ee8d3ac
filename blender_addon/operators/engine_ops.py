"""Connect to (or start) the engine, and stop the local one."""

from __future__ import annotations

import contextlib
import threading

import bpy

from .. import preferences
from ..engine import MANAGER, EngineUnavailable


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
    from ..runs import _redraw

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


CLASSES = (BTDM_OT_connect_engine, BTDM_OT_stop_engine)


def unregister() -> None:
    if bpy.app.timers.is_registered(_watch):
        bpy.app.timers.unregister(_watch)
