"""Scenes for the add-on tests (no tests here), written in code and run inside a bpy process: a Rigify human
metarig or a Mixamo-named armature with keyed rotations, a shot camera, a small render size."""

from __future__ import annotations

import math

MIXAMO_BONES = [  # (name, parent, head, tail) in metres, Z up, facing -Y
    ("Hips", None, (0, 0, 1.0), (0, 0, 1.1)), ("Spine", "Hips", (0, 0, 1.1), (0, 0, 1.25)),
    ("Spine1", "Spine", (0, 0, 1.25), (0, 0, 1.38)), ("Spine2", "Spine1", (0, 0, 1.38), (0, 0, 1.5)),
    ("Neck", "Spine2", (0, 0, 1.5), (0, 0, 1.6)), ("Head", "Neck", (0, 0, 1.6), (0, 0, 1.8)),
]
for _side, _x in (("Left", 1), ("Right", -1)):
    MIXAMO_BONES += [
        (f"{_side}UpLeg", "Hips", (0.09 * _x, 0, 0.95), (0.09 * _x, 0, 0.52)),
        (f"{_side}Leg", f"{_side}UpLeg", (0.09 * _x, 0, 0.52), (0.09 * _x, 0, 0.1)),
        (f"{_side}Foot", f"{_side}Leg", (0.09 * _x, 0, 0.1), (0.09 * _x, -0.12, 0.03)),
        (f"{_side}ToeBase", f"{_side}Foot", (0.09 * _x, -0.12, 0.03), (0.09 * _x, -0.2, 0.03)),
        (f"{_side}Shoulder", "Spine2", (0.04 * _x, 0, 1.45), (0.17 * _x, 0, 1.45)),
        (f"{_side}Arm", f"{_side}Shoulder", (0.17 * _x, 0, 1.45), (0.45 * _x, 0, 1.45)),
        (f"{_side}ForeArm", f"{_side}Arm", (0.45 * _x, 0, 1.45), (0.7 * _x, 0, 1.45)),
        (f"{_side}Hand", f"{_side}ForeArm", (0.7 * _x, 0, 1.45), (0.78 * _x, 0, 1.45)),
        (f"{_side}HandIndex1", f"{_side}Hand", (0.78 * _x, 0, 1.45), (0.82 * _x, 0, 1.45)),
    ]


def make_scene(kind: str, frames: int = 8, camera: bool = True, armature: bool = True, size: float = 1.0):
    """A fresh scene: frames 1..frames, 192x108 px, the rig (``rigify`` or ``mixamo``) and a camera.

    ``size`` scales the Mixamo rig's bones and the camera's place (100: a centimetre rig in Blender
    units, as Blender's BVH importer at its default scale makes of a Mixamo file).
    """
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, frames
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 192, 108, 100
    arm = None
    if armature and kind == "rigify":
        import addon_utils

        addon_utils.enable("rigify", default_set=True)
        bpy.ops.object.armature_human_metarig_add()
        arm = bpy.context.active_object
        keyed = {"upper_arm.L": (0, 0, 1), "upper_arm.R": (0, 0, -1), "thigh.L": (1, 0, 0), "forearm.L": (1, 0, 0)}
    elif armature:
        data = bpy.data.armatures.new("MixamoRig")
        arm = bpy.data.objects.new("MixamoRig", data)
        scene.collection.objects.link(arm)
        bpy.context.view_layer.objects.active = arm
        bpy.ops.object.mode_set(mode="EDIT")
        for name, parent, head, tail in MIXAMO_BONES:
            bone = data.edit_bones.new("mixamorig:" + name)
            bone.head, bone.tail = [size * c for c in head], [size * c for c in tail]
            if parent:
                bone.parent = data.edit_bones["mixamorig:" + parent]
        bpy.ops.object.mode_set(mode="OBJECT")
        keyed = {"mixamorig:LeftArm": (0, 1, 0), "mixamorig:RightArm": (0, -1, 0), "mixamorig:LeftUpLeg": (1, 0, 0),
                 "mixamorig:LeftForeArm": (0, 0, 1)}
    if arm is not None:
        for f in range(1, frames + 1):
            t = (f - 1) / max(1, frames - 1)
            for name, axis in keyed.items():
                pb = arm.pose.bones[name]
                pb.rotation_mode = "XYZ"
                pb.rotation_euler = [a * math.radians(60) * math.sin(2 * math.pi * t) for a in axis]
                pb.keyframe_insert("rotation_euler", frame=f)
    if camera:
        cam = bpy.data.objects.new("ShotCam", bpy.data.cameras.new("ShotCam"))
        scene.collection.objects.link(cam)
        cam.location = (0.6 * size, -5.0 * size, 1.1 * size)
        cam.rotation_euler = (math.radians(90), 0, math.radians(6))
        scene.camera = cam
    return scene, arm
