"""The BTDM panels (3D viewport sidebar and Video Sequencer sidebar, tab "BTDM") and the status bar.

Drawing never touches the network: the engine's state comes from :data:`..engine.MANAGER.status`
(refreshed by Connect and by every run), the job's from :mod:`..runs`.
"""

from __future__ import annotations

import bpy

from .. import display, engine, preferences, runs
from ..operators.takes import shot_takes, shown_take
from ..prepare import UserError, character_seed, default_output, selected_armatures
from ..properties import APPEARANCE_ITEMS
from .status import draw_engine_status
from .status import wrap as _wrap


class BTDM_UL_bone_map(bpy.types.UIList):
    """One row per SMPL joint, a bone picker each."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        armature = data.armature or (context.active_object if context.active_object and
                                     context.active_object.type == "ARMATURE" else None)
        row = layout.row(align=True)
        split = row.split(factor=0.4)
        split.label(text=item.joint)
        if armature is not None:
            split.prop_search(item, "bone", armature.data, "bones", text="")
        else:
            split.prop(item, "bone", text="")


def draw_main(layout, context) -> None:
    scene = context.scene
    s = scene.btdm
    entry = runs.latest(scene)
    running = runs.active(scene)
    col = layout.column()
    if running is not None:
        snap = running.run.snapshot()
        col.progress(factor=snap.fraction, type="BAR", text=snap.line())
        col.operator("btdm.cancel_previs", icon="CANCEL")
    else:
        row = col.row(align=True)
        row.scale_y = 1.4
        row.operator("btdm.generate_previs", icon="RENDER_ANIMATION")
        col.operator("btdm.preview_posemaps", icon="ARMATURE_DATA")
        if entry is not None and entry.result:
            box = col.box()
            icon = "CHECKMARK" if entry.ok else ("CANCEL" if entry.run.snapshot().phase == "cancelled" else "ERROR")
            lines = _wrap(entry.result, 48) or [""]
            box.label(text=lines[0], icon=icon)
            for line in lines[1:]:
                box.label(text=line)
    col.separator()
    col.prop(s, "armature")
    col.prop(s, "camera")
    col.label(text=f"Frames {scene.frame_start}..{scene.frame_end}")


def draw_view(layout, context) -> None:
    """Where the results are seen (:mod:`..display`): the shot camera's background and the pre-vis scene."""
    scene = context.scene
    s = scene.btdm
    shot = display.shot_of(scene)
    if shot is not None:
        layout.label(text=f"The pre-vis of scene {shot}: the set with the plates", icon="INFO")
        layout.operator("btdm.open_previs_scene", text="Back to the Shot", icon="SCENE_DATA")
        return
    col = layout.column(align=True)
    col.prop(s, "show_plates")
    col.prop(s, "show_posemaps")
    col.prop(s, "plate_opacity", slider=True)
    layout.label(text="Over the set in camera view (Numpad 0)")
    layout.operator("btdm.open_previs_scene", icon="SEQUENCE")


def draw_engine(layout, context) -> None:
    draw_engine_status(layout, engine.first_run_hint(preferences.engine_settings(context, migrate=False)))
    row = layout.row(align=True)
    row.operator("btdm.connect_engine", icon="LINKED")
    row.operator("btdm.stop_engine", icon="X", text="Stop")


def draw_motion(layout, context) -> None:
    s = context.scene.btdm
    layout.prop(s, "skeleton")
    layout.prop(s, "fit_shape")
    if s.skeleton == "CUSTOM":
        if not len(s.bone_map):
            layout.operator("btdm.bone_map_reset", text="Make the 24 rows")
        else:
            layout.template_list("BTDM_UL_bone_map", "", s, "bone_map", s, "bone_map_index", rows=6)
    layout.operator("btdm.import_smpl", icon="IMPORT")
    row = layout.row(align=True)
    row.operator("btdm.bone_map_from_engine", text="Copy Engine's Map")
    row.operator("btdm.bone_map_import", text="", icon="IMPORT")
    row.operator("btdm.bone_map_export", text="", icon="EXPORT")


def draw_appearance(layout, context) -> None:
    draw_appearance_fields(layout, context.scene.btdm)


def draw_appearance_fields(layout, s, character: str = "") -> None:
    """The appearance settings ``s``: the shot's, or a character's own (``character``: its armature's name)."""
    layout.prop(s, "appearance")
    if s.appearance in ("PHOTO", "IMAGE_IUV"):
        layout.prop(s, "appearance_image")
    if s.appearance == "PHOTO":
        row = layout.row()
        row.operator("btdm.use_reference_pose", icon="ARMATURE_DATA").character = character
        if s.reference_frame >= 0:
            row.label(text=f"frame {s.reference_frame}")
    if s.appearance == "IMAGE_IUV":
        layout.prop(s, "appearance_iuv")
        layout.prop(s, "iuv_order")
    if s.appearance == "RENDER":
        layout.prop(s, "render_frame")
        layout.prop(s, "render_views")


def draw_characters(layout, context) -> None:
    """Several characters: the selected armatures Generate makes one job each for, their own seeds and looks."""
    scene = context.scene
    s = scene.btdm
    several = selected_armatures(context)
    if not several:
        lines = _wrap("Several characters: leave Armature empty and select their armatures; Generate makes one "
                      "job each, the nearer person covering the farther", 48)
        for n, line in enumerate(lines):
            layout.label(text=line, icon="INFO" if n == 0 else "NONE")
        return
    layout.label(text=f"{len(several)} characters, one job each (queued)", icon="COMMUNITY")
    labels = {key: label for key, label, _d in APPEARANCE_ITEMS}
    for index, armature in enumerate(several):
        c = armature.btdm_character
        box = layout.box()
        box.label(text=armature.name, icon="ARMATURE_DATA")
        row = box.row(align=True)
        row.prop(c, "use_own_seed", text="Own Seed")
        if c.use_own_seed:
            row.prop(c, "seed", text="")
        else:
            row.label(text=f"seed {character_seed(s, armature, index)}")
        box.prop(c, "use_own_appearance")
        if c.use_own_appearance:
            draw_appearance_fields(box, c, armature.name)
        else:
            box.label(text=f"Appearance: the shot's ({labels.get(s.appearance, s.appearance)})")


def draw_quality(layout, context) -> None:
    s = context.scene.btdm
    layout.prop(s, "method")
    if s.method == "TEXTURE":
        layout.label(text="Texture transfer: no network, seconds", icon="INFO")
        return
    layout.prop(s, "model")
    col = layout.column(align=True)
    col.prop(s, "steps")
    col.prop(s, "sr_steps")
    col.prop(s, "seed")
    layout.prop(s, "finetune_steps")
    if s.finetune_steps:
        layout.label(text=f"Fine-tuning: {s.finetune_steps} steps before sampling", icon="INFO")


def draw_output(layout, context) -> None:
    scene = context.scene
    layout.prop(scene.btdm, "output_dir")
    if not scene.btdm.output_dir:
        camera = scene.btdm.camera or scene.camera
        if camera is not None and bpy.data.filepath:
            layout.label(text=f"Empty: {default_output(scene, camera)}")
        elif not bpy.data.filepath:
            layout.label(text="Empty: //previs/... once the .blend is saved")
    draw_takes(layout, context)


def draw_takes(layout, context) -> None:
    """The shot's takes, newest first: which one the strip shows, Show and Delete for each."""
    try:
        camera, _out, _shot, takes = shot_takes(context)
    except UserError:
        return
    box = layout.box()
    if not takes:
        box.label(text="Takes: none yet (each Generate keeps one)")
        return
    box.label(text=f"Takes ({len(takes)})")
    shown = shown_take(context.scene, camera)
    for take in reversed(takes):
        row = box.row(align=True)
        row.label(text=take.label, icon="HIDE_OFF" if take.number == shown else "BLANK1")
        op = row.operator("btdm.take_show", text="", icon="SEQUENCE")
        op.take = take.number
        op = row.operator("btdm.take_delete", text="", icon="TRASH")
        op.take = take.number


SECTIONS = (
    ("main", "BTDM Pre-vis", draw_main, None),
    ("view", "View", draw_view, None),
    ("engine", "Engine", draw_engine, "DEFAULT_CLOSED"),
    ("motion", "Motion", draw_motion, None),
    ("appearance", "Appearance", draw_appearance, "DEFAULT_CLOSED"),
    ("characters", "Characters", draw_characters, "DEFAULT_CLOSED"),
    ("quality", "Quality", draw_quality, "DEFAULT_CLOSED"),
    ("output", "Output", draw_output, "DEFAULT_CLOSED"),
)


def _drawer(draw):
    def panel_draw(self, context):
        draw(self.layout, context)

    return panel_draw


def _panel(space: str, prefix: str, key: str, label: str, draw, options):
    parent = f"BTDM_PT_{prefix}main" if key != "main" else None
    attrs = {
        "bl_idname": f"BTDM_PT_{prefix}{key}", "bl_label": label, "bl_space_type": space, "bl_region_type": "UI",
        "bl_category": "BTDM", "draw": _drawer(draw),
        "poll": classmethod(lambda cls, context: getattr(context, "scene", None) is not None
                            and hasattr(context.scene, "btdm")),
    }
    if parent:
        attrs["bl_parent_id"] = parent
    if options:
        attrs["bl_options"] = {options}
    return type(f"BTDM_PT_{prefix}{key}", (bpy.types.Panel,), attrs)


# BTDM_PT_main and its sub-panels in the 3D viewport; BTDM_PT_seq_* the same in the sequencer.
PANELS = tuple(_panel("VIEW_3D", "", *section) for section in SECTIONS) + tuple(
    _panel("SEQUENCE_EDITOR", "seq_", *section) for section in SECTIONS)
CLASSES = (BTDM_UL_bone_map, *PANELS)


def draw_status(self, context) -> None:
    """Status bar: the running job's stage, frames and ETA."""
    scene = getattr(context, "scene", None)
    entry = runs.active(scene) if scene is not None else None
    if entry is None:
        return
    snap = entry.run.snapshot()
    self.layout.progress(factor=snap.fraction, type="RING", text=f"BTDM: {snap.line()}")


def register() -> None:
    bpy.types.STATUSBAR_HT_header.append(draw_status)


def unregister() -> None:
    bpy.types.STATUSBAR_HT_header.remove(draw_status)
