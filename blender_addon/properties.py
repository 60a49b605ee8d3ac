"""The add-on's settings: one ``PropertyGroup`` at ``scene.btdm``, saved in the .blend.

Runtime state (the running job, the engine's status) is not stored here: it lives in
:mod:`.jobs` and :mod:`.engine` and is gone with the Blender session.
"""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import display

# SMPL's 24 joints in order (btdm_engine/body/skeleton.py JOINT_NAMES; tests check they agree).
JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand",
    "right_hand",
)
# Bone-map presets the engine knows (btdm_engine.motion.bonemaps.SKELETONS) plus the custom map.
SKELETON_ITEMS = (
    ("auto", "Auto", "The preset that maps the most joints of this rig"),
    ("smpl", "SMPL", "SMPL joint names (Pelvis, L_Hip, m_avg_L_Knee, ...)"),
    ("mixamo", "Mixamo", "Hips, LeftUpLeg, ... with or without mixamorig:"),
    ("rigify", "Rigify", "The human metarig or a generated rig's DEF- bones"),
    ("cmu", "CMU", "CMU mocap conversions (ASF, MotionBuilder and Daz names)"),
    ("mocapbank", "MocapBank", "Biovision-style names (Chest, LeftCollar, LeftHip, ...)"),
    ("CUSTOM", "Custom", "The 24-row map below"),
)
APPEARANCE_ITEMS = (
    ("MODEL", "Model's own", "The appearance image the model ships with (the embedded model has one)"),
    ("PHOTO", "Photo", "A photo of a person; pose the armature to match it and press Use as Reference Pose"),
    ("IMAGE_IUV", "Image + IUV", "An image and its DensePose IUV file"),
    ("RENDER", "Scene render", "A render of the scene's own character through the shot camera"),
    ("NONE", "None", "No appearance image (person-specific or unconditional model; the seed picks the person)"),
)


def _view_changed(self, _context) -> None:
    display.sync(self.id_data)


def _is_armature(_self, obj) -> bool:
    return obj.type == "ARMATURE"


def _is_camera(_self, obj) -> bool:
    return obj.type == "CAMERA"


class BTDM_PG_bone_row(bpy.types.PropertyGroup):
    """One row of the custom bone map: an SMPL joint and the rig's bone that drives it."""

    joint: StringProperty(name="Joint", description="SMPL joint name")
    bone: StringProperty(name="Bone", description="The armature's bone that drives this joint (empty: unmapped)")


class _Appearance:
    """The appearance settings: the shot's (``scene.btdm``) and a character's own (``object.btdm_character``)."""

    appearance: EnumProperty(name="Appearance", items=APPEARANCE_ITEMS, default="MODEL")
    appearance_image: StringProperty(name="Image", subtype="FILE_PATH",
                                     description="The person's photo or image (PNG or JPEG)")
    appearance_iuv: StringProperty(name="IUV", subtype="FILE_PATH", description="The image's DensePose IUV PNG")
    iuv_order: EnumProperty(name="IUV channels", default="densepose", items=(
        ("densepose", "DensePose", "Written by detectron2 (blue = part index)"),
        ("btdm", "BTDM", "Written by btdm (red = part index)")))
    reference_frame: IntProperty(name="Reference frame", default=-1,
                                 description="Frame where the armature was posed to match the photo (-1: not set); "
                                 "inside the frame range, the photo shows the body at this frame, which fine-tuning "
                                 "needs")
    render_frame: IntProperty(name="Render frame", default=1,
                              description="Frame rendered as the appearance image (Scene render); inside the frame "
                              "range, fine-tuning uses this frame's pose")
    render_views: IntProperty(name="Views", default=1, min=1, max=8,
                              description="Renders of the character at this many frames of the shot: the Render frame "
                              "and others spread over the frame range (one render each). Each shows more of the body "
                              "(its back as it turns, the far arm), which the texture-transfer prior (Texture "
                              "transfer, the embedded model) then shows instead of guessing")


class BTDM_PG_character(_Appearance, bpy.types.PropertyGroup):
    """One of several characters of a shot (``object.btdm_character``, on its armature): its own appearance and seed,
    used when several armatures are generated together; else the shot's."""

    use_own_appearance: BoolProperty(name="Own Appearance", default=False,
                                     description="This character's own appearance (else the shot's, in the "
                                     "Appearance section)")
    use_own_seed: BoolProperty(name="Own Seed", default=False,
                               description="This character's own seed (else the shot's seed plus its place among "
                               "the characters, by name)")
    seed: IntProperty(name="Seed", default=0, min=0, description="Same seed, same person")


class BTDM_PG_settings(_Appearance, bpy.types.PropertyGroup):
    """Everything one shot's pre-vis needs; ``scene.btdm``."""

    # motion
    armature: PointerProperty(name="Armature", type=bpy.types.Object, poll=_is_armature,
                              description="The character's armature (empty: the active object)")
    camera: PointerProperty(name="Camera", type=bpy.types.Object, poll=_is_camera,
                            description="The shot camera (empty: the scene camera)")
    skeleton: EnumProperty(name="Bone map", items=SKELETON_ITEMS, default="auto",
                           description="How the rig's bones map onto the body's 24 joints")
    bone_map: CollectionProperty(type=BTDM_PG_bone_row)
    bone_map_index: IntProperty(default=0)
    fit_shape: BoolProperty(name="Fit body shape", default=False,
                            description="Fit the body's proportions to the rig's bone lengths")
    # generation
    method: EnumProperty(name="Method", default="DIFFUSION", items=(
        ("DIFFUSION", "Diffusion", "The model's networks (BTU-Net + SR3): the plate"),
        ("TEXTURE", "Texture transfer", "The appearance's pixels moved onto every pose through the body's UV atlas: "
         "seconds, no network, an instant preview (needs the appearance's pose: Model's own, Image + IUV, a photo "
         "with its reference pose, or a scene render inside the frame range)")))
    model: StringProperty(name="Model", default="default", description="A model name the engine offers")
    steps: IntProperty(name="Steps", default=50, min=1, max=1000, description="BTU-Net denoising steps")
    sr_steps: IntProperty(name="SR steps", default=0, min=0, max=1000,
                          description="SR3 denoising steps (0: as many as Steps)")
    seed: IntProperty(name="Seed", default=0, min=0, description="Same seed, same plate")
    # max: the engine's (btdm_engine/limits.py JOB_LIMITS; a test keeps them equal); Generate checks every
    # value against the connected engine's GET /v1/limits before it sends the job
    finetune_steps: IntProperty(name="Fine-tuning steps", default=0, min=0, max=5000,
                                description="Single-image fine-tuning on the appearance image (paper sec. 3.3); "
                                            "better likeness, slower")
    output_dir: StringProperty(name="Output", subtype="DIR_PATH", default="",
                               description="Folder for the plates (empty: //previs/<blend file>_<scene>_<camera>/ "
                               "next to the .blend); a folder holding another shot's plates is refused")
    # where the results are seen (display.py): the shot camera's background and the pre-vis scene
    show_plates: BoolProperty(name="Plates in Camera", default=True, update=_view_changed,
                              description="Show the plates over the set in camera view (the shot camera's "
                              "background) and in the pre-vis scene; the shot's own render never shows them")
    show_posemaps: BoolProperty(name="Pose Maps in Camera", default=False, update=_view_changed,
                                description="Show the pose-map previews on the camera frame in camera view and in "
                                "the pre-vis scene")
    plate_opacity: FloatProperty(name="Opacity", default=0.8, min=0.0, max=1.0, subtype="FACTOR",
                                 update=_view_changed,
                                 description="How opaque the plates and pose maps are over the set in camera view")
    last_bone_map: StringProperty(default="", description="The map the engine used last (JSON)",
                                  options={"HIDDEN"})


CLASSES = (BTDM_PG_bone_row, BTDM_PG_character, BTDM_PG_settings)


def register() -> None:
    bpy.types.Scene.btdm = PointerProperty(type=BTDM_PG_settings)
    bpy.types.Object.btdm_character = PointerProperty(type=BTDM_PG_character)


def unregister() -> None:
    del bpy.types.Object.btdm_character
    del bpy.types.Scene.btdm
