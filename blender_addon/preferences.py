"""Add-on preferences: which engine to talk to (a local child process, or a remote URL and token), and the
add-on's user folder.

The user folder (:func:`user_folder`) is the extension's own (``bpy.utils.extension_path_user``), or for a
legacy add-on install and the bpy module ``<Blender's config folder>/btdm_previs``; it holds the
configuration ``btdm addon install`` writes, the remote token (a file only this user can read, set with
Set Token; the preferences show only whether one is set) and the local engine's jobs and logs
(``btdm_bridge/addon_home.py``). A token an earlier version kept in the preferences is moved there.
"""

from __future__ import annotations

import logging
import os

import bpy
from bpy.props import EnumProperty, FloatProperty, StringProperty

from . import engine
from .ui.status import draw_engine_status, wrap

logger = logging.getLogger(__name__)

LEGACY_FOLDER = "btdm_previs"
"""The user folder's name under Blender's config folder when the add-on is not an extension."""


class BTDM_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    engine_mode: EnumProperty(name="Engine", default="LOCAL", items=(
        ("LOCAL", "Local", "Use the engine on this machine; start `btdm serve` when none answers"),
        ("REMOTE", "Remote", "A `btdm serve` on another machine (a GPU box), by URL and token")))
    btdm_path: StringProperty(name="btdm executable", subtype="FILE_PATH", default="",
                              description="The engine's `btdm` command, in the bin folder of the environment it is "
                              "installed in (empty: the one btdm addon install recorded, else the one on PATH)")
    local_url: StringProperty(name="Local URL", default=engine.DEFAULT_LOCAL_URL,
                              description="An engine already running here is used first")
    device: StringProperty(name="Device", default="", description="cpu, cuda or cuda:N (empty: the engine's choice)")
    data_dir: StringProperty(name="Job folder", subtype="DIR_PATH", default="",
                             description="Where the local engine keeps its jobs (empty: the add-on's user folder)")
    remote_url: StringProperty(name="URL", default="", description="http(s)://host:port of the remote engine")
    # An earlier version kept the token here, in plain text in userpref.blend: engine_settings() moves a value
    # found here into the user folder's token file (0600) and empties this. Never drawn, never written again.
    remote_token: StringProperty(name="Token (old)", subtype="PASSWORD", default="", options={"HIDDEN"},
                                 description="Moved to the add-on's user folder")
    timeout: FloatProperty(name="Timeout", default=10.0, min=1.0, max=600.0, unit="TIME_ABSOLUTE",
                           description="Seconds to wait for one answer from the engine")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "engine_mode", expand=True)
        settings = engine_settings(context, migrate=False)
        if self.engine_mode == "LOCAL":
            layout.prop(self, "btdm_path")
            exe, source = settings.find_executable(), settings.executable_source()
            if exe and source:
                layout.label(text=f"Starts {exe} ({source})", icon="CHECKMARK")
            layout.prop(self, "local_url")
            layout.prop(self, "device")
            layout.prop(self, "data_dir")
        else:
            layout.prop(self, "remote_url")
        draw_token(layout, settings)
        layout.prop(self, "timeout")
        hint = engine.first_run_hint(settings)
        if hint and not engine.MANAGER.status.connected:
            box = layout.box()
            lines = wrap(hint, 70)
            box.label(text=lines[0], icon="INFO")
            for line in lines[1:]:
                box.label(text=line)
        draw_engine_status(layout.box())
        layout.label(text=f"User folder: {settings.user_dir or 'none'}")


def draw_token(layout, settings) -> None:
    """Whether a token is set, and where from (never the token itself); Set Token / Forget Token."""
    row = layout.row(align=True)
    variable = next((name for name in engine.TOKEN_VARIABLES if os.environ.get(name)), None)
    if variable:
        row.label(text=f"Token: set by the environment ({variable})", icon="LOCKED")
    elif engine.home.read_token(settings.user_dir):
        row.label(text="Token: set (stored in the user folder, readable by you only)", icon="LOCKED")
    else:
        row.label(text="Token: not set (a loopback engine needs none)", icon="UNLOCKED")
    row.operator("btdm.set_token", text="Set Token...", icon="KEY_HLT")
    row.operator("btdm.forget_token", text="", icon="X")


CLASSES = (BTDM_AddonPreferences,)


def addon_preferences(context=None):
    """This add-on's preferences, or None when it is registered without Blender's add-on system."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return None if addon is None else addon.preferences


def user_folder(create: bool = True) -> str:
    """The add-on's user folder ("" when Blender gives none): the extension's (``bl_ext.<repo>.btdm_previs``),
    else ``<Blender's config folder>/btdm_previs`` (a legacy add-on install, the bpy module)."""
    try:
        return bpy.utils.extension_path_user(__package__, create=create)
    except (ValueError, AttributeError):  # not an extension (ValueError); a Blender before 4.2 (AttributeError)
        pass
    try:
        return bpy.utils.user_resource("CONFIG", path=LEGACY_FOLDER, create=create) or ""
    except (OSError, ValueError):
        return ""


def _move_old_token(prefs, user_dir: str) -> None:
    """An earlier version's token in the preferences: into the token file, out of the preferences."""
    token = prefs.remote_token.strip()
    if not token:
        return
    if user_dir and not engine.home.read_token(user_dir):
        try:
            engine.home.write_token(user_dir, token)
        except (OSError, ValueError) as exc:
            logger.warning("could not move the token out of the preferences: %s", exc)
            return
        logger.info("moved the remote token from the preferences to %s", engine.home.token_path(user_dir))
    prefs.remote_token = ""


def engine_settings(context=None, *, migrate: bool = True) -> engine.EngineSettings:
    """The preferences as plain data (safe to hand to a worker thread), environment overrides applied.
    ``migrate`` (not while drawing) moves an earlier version's token out of the preferences and its
    ``~/.config/btdm`` record into the user folder."""
    prefs = addon_preferences(context)
    online = bool(getattr(bpy.app, "online_access", True))  # Blender 4.2+: Allow Online Access
    user_dir = user_folder()
    if migrate:
        engine.home.read_config(user_dir)  # a user folder without config.json takes the old ~/.config record, once
    if prefs is None:
        return engine.EngineSettings.from_environment(online_access=online, user_dir=user_dir)
    if migrate:
        _move_old_token(prefs, user_dir)
    token = prefs.remote_token.strip() or None  # only when it could not be moved
    return engine.EngineSettings.from_environment(
        mode=prefs.engine_mode, local_url=prefs.local_url, remote_url=prefs.remote_url, token=token,
        executable=bpy.path.abspath(prefs.btdm_path) if prefs.btdm_path else "",
        device=prefs.device, data_dir=bpy.path.abspath(prefs.data_dir) if prefs.data_dir else "",
        timeout=prefs.timeout, online_access=online, user_dir=user_dir)
