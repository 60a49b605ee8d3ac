"""Add-on preferences: which engine to talk to (a local child process, or a remote URL and token)."""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty

from . import engine
from .ui.status import draw_engine_status


class BTDM_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_mode: EnumProperty(name="Engine", default="LOCAL", items=(
        ("LOCAL", "Local", "Use the engine on this machine; start `btdm serve` when none answers"),
        ("REMOTE", "Remote", "A `btdm serve` on another machine (a GPU box), by URL and token")))
    btdm_path: StringProperty(name="btdm executable", subtype="FILE_PATH", default="",
                              description="The project's `btdm` command (btdm addon install sets it)")
    local_url: StringProperty(name="Local URL", default=engine.DEFAULT_LOCAL_URL,
                              description="An engine already running here is used first")
    device: StringProperty(name="Device", default="", description="cpu, cuda or cuda:N (empty: the engine's choice)")
    data_dir: StringProperty(name="Job folder", subtype="DIR_PATH", default="",
                             description="Where the local engine keeps its jobs (empty: ~/.cache/btdm/serve)")
    remote_url: StringProperty(name="URL", default="", description="http(s)://host:port of the remote engine")
    remote_token: StringProperty(name="Token", subtype="PASSWORD", default="",
                                 description="The remote engine's bearer token")
    timeout: FloatProperty(name="Timeout", default=10.0, min=1.0, max=600.0, unit="TIME_ABSOLUTE",
                           description="Seconds to wait for one answer from the engine")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "engine_mode", expand=True)
        if self.engine_mode == "LOCAL":
            layout.prop(self, "btdm_path")
            layout.prop(self, "local_url")
            layout.prop(self, "device")
            layout.prop(self, "data_dir")
        else:
            layout.prop(self, "remote_url")
            layout.prop(self, "remote_token")
        layout.prop(self, "timeout")
        draw_engine_status(layout.box())


CLASSES = (BTDM_AddonPreferences,)


def addon_preferences(context=None):
    """This add-on's preferences, or None when it is registered without Blender's add-on system."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return None if addon is None else addon.preferences


def engine_settings(context=None) -> engine.EngineSettings:
    """The preferences as plain data (safe to hand to a worker thread), environment overrides applied."""
    prefs = addon_preferences(context)
    online = bool(getattr(bpy.app, "online_access", True))  # Blender 4.2+: Allow Online Access
    if prefs is None:
        return engine.EngineSettings.from_environment(online_access=online)
    return engine.EngineSettings.from_environment(
        mode=prefs.engine_mode, local_url=prefs.local_url, remote_url=prefs.remote_url,
        token=prefs.remote_token or None, executable=bpy.path.abspath(prefs.btdm_path) if prefs.btdm_path else "",
        device=prefs.device, data_dir=bpy.path.abspath(prefs.data_dir) if prefs.data_dir else "",
        timeout=prefs.timeout, online_access=online)
