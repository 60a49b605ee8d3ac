"""The custom bone map: 24 rows (SMPL joint -> bone), reset, filled from the engine's last map, JSON in and out."""

from __future__ import annotations

import json
import os

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..pngio import atomic_write_bytes
from ..properties import JOINT_NAMES

MAX_MAP_BYTES = 64 * 1024  # as the engine's bonemaps.read_bone_map


def reset_rows(settings) -> None:
    settings.bone_map.clear()
    for joint in JOINT_NAMES:
        settings.bone_map.add().joint = joint


def apply_map(settings, data: dict) -> None:
    """Fill the 24 rows from ``{joint: bone or None}`` (joints not named are left unmapped)."""
    unknown = [k for k in data if k not in JOINT_NAMES]
    if unknown:
        raise ValueError(f"unknown SMPL joint {unknown[0]!r}; allowed: {', '.join(JOINT_NAMES)}")
    bad = [k for k, v in data.items() if v is not None and not isinstance(v, str)]
    if bad:
        raise ValueError(f"joint {bad[0]!r} must name a bone (a string) or be null")
    reset_rows(settings)
    for row in settings.bone_map:
        row.bone = data.get(row.joint) or ""


def map_dict(settings) -> dict:
    return {row.joint: (row.bone or None) for row in settings.bone_map}


class BTDM_OT_bone_map_reset(bpy.types.Operator):
    """Make the custom bone map's 24 rows (all unmapped)"""

    bl_idname = "btdm.bone_map_reset"
    bl_label = "Reset Bone Map"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        reset_rows(context.scene.btdm)
        return {"FINISHED"}


class BTDM_OT_bone_map_from_engine(bpy.types.Operator):
    """Copy the map the engine used for the last preview or plate into the custom map, to edit it"""

    bl_idname = "btdm.bone_map_from_engine"
    bl_label = "Copy Engine's Map"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return bool(context.scene.btdm.last_bone_map)

    def execute(self, context):
        s = context.scene.btdm
        apply_map(s, json.loads(s.last_bone_map))
        s.skeleton = "CUSTOM"
        return {"FINISHED"}


class BTDM_OT_bone_map_export(bpy.types.Operator, ExportHelper):
    """Save the custom bone map as JSON ({smpl_joint: bone}; btdm motion import --bone-map reads it)"""

    bl_idname = "btdm.bone_map_export"
    bl_label = "Export Bone Map"
    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def execute(self, context):
        s = context.scene.btdm
        if not len(s.bone_map):
            reset_rows(s)
        atomic_write_bytes(self.filepath, (json.dumps(map_dict(s), indent=1) + "\n").encode("utf-8"))
        self.report({"INFO"}, f"BTDM: bone map written to {self.filepath}")
        return {"FINISHED"}


class BTDM_OT_bone_map_import(bpy.types.Operator, ImportHelper):
    """Load a custom bone map from JSON ({smpl_joint: bone or null})"""

    bl_idname = "btdm.bone_map_import"
    bl_label = "Import Bone Map"
    bl_options = {"REGISTER", "UNDO"}
    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    def execute(self, context):
        path = self.filepath
        try:
            if os.path.getsize(path) > MAX_MAP_BYTES:
                raise ValueError(f"a bone-map file is at most {MAX_MAP_BYTES} bytes")
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if not isinstance(data, dict):
                raise ValueError("a bone map is a JSON object {smpl_joint_name: bone_name}")
            apply_map(context.scene.btdm, data)
        except (OSError, ValueError) as exc:
            self.report({"ERROR"}, f"BTDM: {path}: {exc}")
            return {"CANCELLED"}
        context.scene.btdm.skeleton = "CUSTOM"
        return {"FINISHED"}


CLASSES = (BTDM_OT_bone_map_reset, BTDM_OT_bone_map_from_engine, BTDM_OT_bone_map_export, BTDM_OT_bone_map_import)
