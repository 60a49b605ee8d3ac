"""Import SMPL Motion: an AMASS-style ``.npz`` (SMPL, SMPL-H, SMPL-X) as an armature with SMPL's joint names.

The armature is an ordinary rig: 24 bones named as SMPL's joints (``pelvis``, ``left_hip``, ...,
the engine's SMPL bone map), resting where the engine's body has its joints for the file's shape
(betas), each pointing at its child; every frame keys the bones' quaternions (and the pelvis's
location) so that each joint has exactly the file's rotation (:func:`..smpl.bone_rotations`). It
can be edited, and generated from like any rig.
"""

from __future__ import annotations

import os

import bpy
import numpy as np
from bpy.props import BoolProperty, StringProperty

from ..smpl import (
    JOINT_NAMES,
    PARENTS,
    TAIL_CHILD,
    Y_TO_Z,
    SmplError,
    bone_rotations,
    matrix_to_quaternion,
    read_amass,
    rest_joints,
)

__all__ = ["BTDM_OT_import_smpl", "build_armature"]


def _tails(heads: np.ndarray) -> np.ndarray:
    tails = np.empty_like(heads)
    for j in range(len(heads)):
        if j in TAIL_CHILD:
            tails[j] = heads[TAIL_CHILD[j]]
        else:  # a leaf: continue the parent's direction, a tenth of a metre
            d = heads[j] - heads[PARENTS[j]]
            tails[j] = heads[j] + 0.1 * d / max(np.linalg.norm(d), 1e-6)
    short = np.linalg.norm(tails - heads, axis=1) < 0.01  # a bone needs a length: point such ones up
    tails[short] = heads[short] + np.array([0.0, 0.0, 0.05])
    return tails


def _fcurves(obj):
    """The F-curves of the object's action (Blender 4.4+ keeps them in the action slot's channel bag)."""
    anim = obj.animation_data
    action = anim.action
    if getattr(action, "layers", None) and getattr(anim, "action_slot", None) is not None:
        return action.layers[0].strips[0].channelbag(anim.action_slot).fcurves
    return action.fcurves


def _key_all(obj, data_path: str, values: np.ndarray, first: int) -> None:
    """Key ``data_path`` (every index) at frames ``first..first+T-1`` to ``values`` (T, K) in one go."""
    curves = {fc.array_index: fc for fc in _fcurves(obj) if fc.data_path == data_path}
    frames = first + np.arange(len(values), dtype=np.float64)
    for index in range(values.shape[1]):
        fc = curves[index]
        points = fc.keyframe_points
        missing = len(values) - len(points)
        if missing > 0:
            points.add(missing)
        co = np.empty(2 * len(values), np.float32)
        co[0::2], co[1::2] = frames, values[:, index]
        points.foreach_set("co", co)
        fc.update()


def build_armature(context, motion, name: str, first_frame: int):
    """The armature for ``motion`` (a :class:`..smpl.SmplMotion`), keyed from ``first_frame``; returns the object."""
    scene = context.scene
    joints = rest_joints(motion.betas)  # SMPL's rest frame
    heads = joints @ Y_TO_Z.T  # Blender's: Z up, facing -Y
    tails = _tails(heads)
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    scene.collection.objects.link(obj)
    for other in context.view_layer.objects:
        other.select_set(False)
    context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        for j, joint in enumerate(JOINT_NAMES):
            bone = data.edit_bones.new(joint)
            bone.head, bone.tail = heads[j].tolist(), tails[j].tolist()
            bone.roll = 0.0
            if PARENTS[j] >= 0:
                bone.parent = data.edit_bones[JOINT_NAMES[PARENTS[j]]]
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
    rest_axes = np.array([[list(row) for row in data.bones[joint].matrix_local.to_3x3()] for joint in JOINT_NAMES])
    quats = _quaternions(bone_rotations(motion.poses, rest_axes))
    # The pelvis's head goes where SMPL puts it: its rest position plus trans (in the file's Z-up world).
    pelvis = joints[0] + motion.trans
    loc = (pelvis - heads[0]) @ rest_axes[0]  # C_0^T (p - h_0), row-wise
    obj.animation_data_create()
    for j, joint in enumerate(JOINT_NAMES):
        pb = obj.pose.bones[joint]
        pb.rotation_mode = "QUATERNION"
        pb.keyframe_insert("rotation_quaternion", frame=first_frame)
        if j == 0:
            pb.keyframe_insert("location", frame=first_frame)
    for j, joint in enumerate(JOINT_NAMES):
        _key_all(obj, f'pose.bones["{joint}"].rotation_quaternion', quats[:, j], first_frame)
    _key_all(obj, 'pose.bones["pelvis"].location', loc, first_frame)
    obj["btdm_smpl_betas"] = [float(b) for b in motion.betas]
    obj["btdm_smpl_gender"] = motion.gender
    obj["btdm_smpl_model"] = motion.model
    return obj


def _quaternions(mats: np.ndarray) -> np.ndarray:
    q = matrix_to_quaternion(mats)
    # Neighbouring keys on the same hemisphere, so interpolating between frames takes the short way.
    for t in range(1, len(q)):
        flip = (q[t] * q[t - 1]).sum(-1) < 0
        q[t, flip] *= -1
    return q


class BTDM_OT_import_smpl(bpy.types.Operator):
    """Import an AMASS-style SMPL, SMPL-H or SMPL-X motion (.npz) as an armature with SMPL's joint names"""

    bl_idname = "btdm.import_smpl"
    bl_label = "Import SMPL Motion"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="File", subtype="FILE_PATH", default="")
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    set_scene: BoolProperty(name="Set frame range and rate", default=True,
                            description="Make the scene's frame range and frame rate the motion's")
    use_for_previs: BoolProperty(name="Use for Pre-vis", default=True,
                                 description="Make it the BTDM panel's armature, with the SMPL bone map (and Fit body "
                                 "shape when the file gives a shape)")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        path = bpy.path.abspath(self.filepath)
        try:
            motion = read_amass(path)
        except SmplError as exc:
            self.report({"ERROR"}, f"BTDM: {exc}")
            return {"CANCELLED"}
        if context.object is not None and context.object.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        scene = context.scene
        first = scene.frame_start
        rate = ""
        if self.set_scene:
            fps = motion.fps
            scene.render.fps = max(1, round(fps))
            scene.render.fps_base = scene.render.fps / fps
            scene.frame_end = first + motion.num_frames - 1
        elif abs(scene.render.fps / scene.render.fps_base - motion.fps) > 1e-3:
            rate = (f"; keyed one file frame per scene frame: the file is {motion.fps:g} fps, the scene "
                    f"{scene.render.fps / scene.render.fps_base:g}")
        name = os.path.splitext(os.path.basename(path))[0] or "SMPL"
        obj = build_armature(context, motion, name, first)
        shape = bool(np.abs(motion.betas).max(initial=0.0) > 0)
        if self.use_for_previs and hasattr(scene, "btdm"):
            scene.btdm.armature = obj
            scene.btdm.skeleton = "smpl"
            if shape:
                scene.btdm.fit_shape = True
        dropped = f"; {motion.model.upper()} fingers, jaw and eyes left out" if motion.model != "smpl" else ""
        more = f"; the first 10 of {motion.all_betas} betas shape the rig" if motion.all_betas > 10 else ""
        self.report({"INFO"}, f"BTDM: {obj.name}: {motion.num_frames} frames at {motion.fps:g} fps from frame {first}, "
                    f"{motion.model.upper()}, {motion.gender}{more}{dropped}{rate}")
        return {"FINISHED"}


CLASSES = (BTDM_OT_import_smpl,)
