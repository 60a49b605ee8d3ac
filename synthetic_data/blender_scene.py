"""The thin Blender layer: mirror a character spec, its meshes and a MotionClip into ``bpy``.

Only this module (and the shard runner that calls it) imports ``bpy``. It turns plain data into
objects and keyframes and never decides anything about how a character looks:

* the armature is built from the body's rest joints for the character's betas, one bone per SMPL
  joint, each bone pointing at its child; SMPL's local joint rotations (world-aligned frames) are
  conjugated into each bone's rest frame, so Blender's armature deformation is SMPL's linear blend
  skinning (tests/test_synthetic_coincidence.py checks it to well under a millimetre);
* the body mesh carries SMPL's skinning weights as vertex groups (and pose blend shapes as
  shape keys when the model has any); it is the cloth's collider;
* garments are cloth objects: Armature modifier (holds the pinned band on the body), then Cloth
  with the ``pin`` vertex group, body collisions and, where the spec asks, self-collision; an
  inner garment also collides with the outer one;
* cameras come from the clip's OpenCV ``K`` / ``world_to_cam`` through
  :func:`synthetic_data.coords.blender_camera`, the single SMPL -> Blender conversion.

Blender frame numbers: frames ``1 .. preroll`` blend from the rest pose into the clip's first
pose while the cloth settles; clip frame ``t`` is Blender frame ``preroll + 1 + t``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import bpy
import cv2
import numpy as np
from bpy_extras import anim_utils
from mathutils import Matrix
from scipy.spatial.transform import Rotation, Slerp

from btdm_engine.body.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS
from btdm_engine.fileio import atomic_write_bytes
from synthetic_data.coords import SMPL_TO_BLENDER, blender_camera, smpl_to_blender
from synthetic_data.garments import BodyRest, GarmentMesh
from synthetic_data.hair import HeadMesh
from synthetic_data.presets import ClothSettings, Preset, RenderSettings
from synthetic_data.spec import CharacterSpec, GarmentSpec, LightSpec, TextureSpec
from synthetic_data.textures import logo_image

if TYPE_CHECKING:
    from btdm_engine.body import BodyModel
    from btdm_engine.motion import MotionClip

__all__ = [
    "Rig",
    "add_garment",
    "add_lights",
    "add_pose_blend_keys",
    "add_skinned_mesh",
    "bake_cloth",
    "bone_quaternions",
    "build_armature",
    "build_character",
    "configure_render",
    "evaluated_vertices",
    "flat_material",
    "garment_material",
    "hair_material",
    "keyframe_poses",
    "make_collider",
    "preroll_poses",
    "quiet",
    "render_frame",
    "reset_scene",
    "set_camera",
    "skin_material",
]

_C = SMPL_TO_BLENDER[:3, :3]
# Which child a bone points at (SMPL joints with several children: pelvis -> spine, spine3 -> neck).
_MAIN_CHILD = {0: 3, 9: 12}


@dataclass
class Rig:
    """The Blender objects of one character."""

    armature: bpy.types.Object
    rest: np.ndarray  # (24, 4, 4) bone rest matrices in armature (= Blender world) space
    body: bpy.types.Object | None = None
    garments: list[bpy.types.Object] = field(default_factory=list)
    extras: list[bpy.types.Object] = field(default_factory=list)


# ------------------------------------------------------------------------------ housekeeping
@contextlib.contextmanager
def quiet(log_path: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Send everything written to file descriptors 1 and 2 (Blender's C-level prints) to a log."""
    sys.stdout.flush()
    sys.stderr.flush()
    target = os.open(os.fspath(log_path) if log_path else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


def reset_scene() -> bpy.types.Scene:
    """An empty scene (factory settings, no startup objects); idempotent."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def _link(obj: bpy.types.Object) -> bpy.types.Object:
    bpy.context.scene.collection.objects.link(obj)
    return obj


# ------------------------------------------------------------------------------ armature
def build_armature(joints_smpl: np.ndarray, name: str = "skeleton") -> Rig:
    """An armature with one bone per SMPL joint, heads at ``joints_smpl`` (24,3) (SMPL world).

    Bones point at their (main) child joint; end bones continue their parent's direction.
    Returns the rig with each bone's rest matrix (Blender world) read back from Blender.
    """
    joints = smpl_to_blender(np.asarray(joints_smpl, dtype=np.float64))
    if joints.shape != (NUM_JOINTS, 3):
        raise ValueError(f"joints: expected ({NUM_JOINTS}, 3), got {joints.shape}")
    arm = bpy.data.armatures.new(name)
    obj = _link(bpy.data.objects.new(name, arm))
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    children: dict[int, list[int]] = {i: [] for i in range(NUM_JOINTS)}
    for j, p in enumerate(PARENTS):
        if p >= 0:
            children[p].append(j)
    bones = []
    for j, jname in enumerate(JOINT_NAMES):
        eb = arm.edit_bones.new(jname)
        head = joints[j]
        if children[j]:
            tail = joints[_MAIN_CHILD.get(j, children[j][0])]
        else:
            d = head - joints[PARENTS[j]]
            tail = head + 0.5 * d
        if np.linalg.norm(tail - head) < 1e-3:
            tail = head + np.array([0.0, 0.0, 0.05])
        eb.head, eb.tail, eb.roll = head.tolist(), tail.tolist(), 0.0
        bones.append(eb)
    for j, p in enumerate(PARENTS):
        if p >= 0:
            bones[j].parent = bones[p]
            bones[j].use_connect = False
    bpy.ops.object.mode_set(mode="OBJECT")
    rest = np.stack([np.array(arm.bones[n].matrix_local) for n in JOINT_NAMES])
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    return Rig(armature=obj, rest=rest)


def add_skinned_mesh(
    rig: Rig,
    name: str,
    vertices_smpl: np.ndarray,
    faces: np.ndarray,
    weights: np.ndarray,
    material: bpy.types.Material | None = None,
) -> bpy.types.Object:
    """A mesh deformed by the rig: vertex groups named after the joints hold ``weights`` (N,24).

    Also stores the rest position as the point attribute ``rest_co`` (SMPL world), which
    procedural textures read so prints stay fixed to the cloth.
    """
    verts = smpl_to_blender(vertices_smpl)
    faces = np.asarray(faces, dtype=np.int64)
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts.tolist(), [], faces.tolist())
    mesh.validate(verbose=False)
    if len(mesh.vertices) != len(verts):
        raise ValueError(f"{name}: Blender dropped vertices while validating the mesh")
    rest = mesh.attributes.new("rest_co", "FLOAT_VECTOR", "POINT")
    rest.data.foreach_set("vector", np.asarray(vertices_smpl, dtype=np.float32).ravel())
    obj = _link(bpy.data.objects.new(name, mesh))
    weights = np.asarray(weights, dtype=np.float64)
    for j, jname in enumerate(JOINT_NAMES):
        idx = np.flatnonzero(weights[:, j] > 0.0)
        if len(idx) == 0:
            continue
        vg = obj.vertex_groups.new(name=jname)
        # Blender has no batch setter for vertex-group weights; group vertices sharing a weight.
        w = weights[idx, j].astype(np.float32)
        order = np.argsort(w, kind="stable")
        w_sorted, idx_sorted = w[order], idx[order]
        bounds = np.flatnonzero(np.diff(w_sorted)) + 1
        for chunk_w, chunk_i in zip(np.split(w_sorted, bounds), np.split(idx_sorted, bounds)):
            vg.add(chunk_i.tolist(), float(chunk_w[0]), "REPLACE")
    mod = obj.modifiers.new("Armature", "ARMATURE")
    mod.object = rig.armature
    mod.use_vertex_groups = True
    mod.use_bone_envelopes = False
    if material is not None:
        mesh.materials.append(material)
    for poly in mesh.polygons:
        poly.use_smooth = True
    return obj


def add_pose_blend_keys(obj: bpy.types.Object, posedirs: np.ndarray) -> None:
    """SMPL's pose blend shapes (posedirs (V,3,207)) as shape keys ``pose_000`` .. ``pose_206``."""
    base = obj.shape_key_add(name="Basis", from_mix=False)
    co = np.zeros(len(obj.data.vertices) * 3, dtype=np.float32)
    base.data.foreach_get("co", co)
    co = co.reshape(-1, 3)
    for p in range(posedirs.shape[2]):
        key = obj.shape_key_add(name=f"pose_{p:03d}", from_mix=False)
        key.slider_min, key.slider_max = -10.0, 10.0
        key.data.foreach_set("co", (co + smpl_to_blender(posedirs[:, :, p])).astype(np.float32).ravel())


# ------------------------------------------------------------------------------ animation
def _fcurve_keys(channelbag, data_path: str, index: int, frames: np.ndarray, values: np.ndarray) -> None:
    fc = channelbag.fcurves.new(data_path, index=index)
    fc.keyframe_points.add(len(frames))
    fc.keyframe_points.foreach_set("co", np.stack([frames, values], 1).astype(np.float32).ravel())
    linear = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["LINEAR"].value
    fc.keyframe_points.foreach_set("interpolation", [linear] * len(frames))
    fc.update()


def _channelbag(idblock: bpy.types.ID, id_type: str):
    ad = idblock.animation_data or idblock.animation_data_create()
    if ad.action is None:
        ad.action = bpy.data.actions.new(f"{idblock.name}_action")
    if ad.action_slot is None:
        ad.action_slot = ad.action.slots.new(id_type=id_type, name=idblock.name)
    return anim_utils.action_ensure_channelbag_for_slot(ad.action, ad.action_slot)


def bone_quaternions(rest: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Pose-bone rotations (T,24,4) (w,x,y,z) equal to SMPL's local rotations ``poses`` (T,24,3).

    SMPL rotates joint j by R_j about its rest position in world-aligned axes; a Blender bone
    rotates in its own rest frame B_j, so its basis rotation is B_j^T (C R_j C^T) B_j, with C
    the SMPL -> Blender turn. Quaternion signs are kept continuous in time for interpolation.
    """
    T = poses.shape[0]
    R = Rotation.from_rotvec(poses.reshape(-1, 3)).as_matrix().reshape(T, NUM_JOINTS, 3, 3)
    B = rest[:, :3, :3]
    basis = np.einsum("jba,bc,tjcd,ed,jef->tjaf", B, _C, R, _C, B)
    q = Rotation.from_matrix(basis.reshape(-1, 3, 3)).as_quat().reshape(T, NUM_JOINTS, 4)
    q = q[..., [3, 0, 1, 2]]
    for t in range(1, T):
        flip = np.einsum("jk,jk->j", q[t], q[t - 1]) < 0
        q[t, flip] *= -1.0
    return q


def keyframe_poses(rig: Rig, poses: np.ndarray, trans: np.ndarray, first_frame: int,
                   body: bpy.types.Object | None = None) -> None:
    """Keyframe SMPL ``poses`` (T,24,3) and ``trans`` (T,3) on frames first_frame .. +T-1.

    The root bone's location carries the translation (in its rest frame). Pose blend shapes, when
    ``body`` has them, get SMPL's pose feature (R - I of joints 1..23, SMPL eq. 9) as key values.
    """
    poses = np.asarray(poses, dtype=np.float64)
    trans = np.asarray(trans, dtype=np.float64)
    T = poses.shape[0]
    frames = np.arange(first_frame, first_frame + T, dtype=np.float64)
    q = bone_quaternions(rig.rest, poses)
    cb = _channelbag(rig.armature, "OBJECT")
    for j, jname in enumerate(JOINT_NAMES):
        for i in range(4):
            _fcurve_keys(cb, f'pose.bones["{jname}"].rotation_quaternion', i, frames, q[:, j, i])
    loc = smpl_to_blender(trans) @ rig.rest[0, :3, :3]  # B_0^T t, row-vector form
    for i in range(3):
        _fcurve_keys(cb, 'pose.bones["pelvis"].location', i, frames, loc[:, i])
    if body is not None and body.data.shape_keys is not None:
        R = Rotation.from_rotvec(poses[:, 1:].reshape(-1, 3)).as_matrix().reshape(T, NUM_JOINTS - 1, 3, 3)
        feature = (R - np.eye(3)).reshape(T, -1)
        kb = _channelbag(body.data.shape_keys, "KEY")
        for p in range(feature.shape[1]):
            _fcurve_keys(kb, f'key_blocks["pose_{p:03d}"].value', 0, frames, feature[:, p])


def preroll_poses(first_pose: np.ndarray, first_trans: np.ndarray, frames: int, hold: int) -> tuple[np.ndarray, np.ndarray]:
    """Poses (frames,24,3) and trans that blend from the rest pose into ``first_pose``.

    The blend (slerp per joint, smoothstep in time) ends ``hold`` frames before the clip starts,
    so the cloth comes to rest in the first pose; the translation stays at the first frame's.
    """
    if frames < 1 or not 0 <= hold < frames:
        raise ValueError(f"preroll: need frames >= 1 and 0 <= hold < frames, got {frames}, {hold}")
    moving = frames - hold
    s = np.clip(np.arange(1, frames + 1) / moving, 0.0, 1.0)
    s = s * s * (3.0 - 2.0 * s)
    out = np.zeros((frames, NUM_JOINTS, 3))
    for j in range(NUM_JOINTS):
        key = Rotation.from_rotvec(np.stack([np.zeros(3), first_pose[j]]))
        out[:, j] = Slerp([0.0, 1.0], key)(s).as_rotvec()
    # Frame 1 is the exact rest pose: the garments were fitted to it.
    out[0] = 0.0
    return out, np.repeat(np.asarray(first_trans, dtype=np.float64)[None], frames, axis=0)


# ------------------------------------------------------------------------------ materials
def _srgb_to_linear(c: Sequence[float]) -> tuple[float, float, float, float]:
    c = np.asarray(c, dtype=np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return (float(lin[0]), float(lin[1]), float(lin[2]), 1.0)


class _Nodes:
    """Small helper over a material's node tree."""

    def __init__(self, name: str):
        self.mat = bpy.data.materials.new(name)
        self.tree = self.mat.node_tree
        self.tree.nodes.clear()
        self.out = self.tree.nodes.new("ShaderNodeOutputMaterial")
        self.bsdf = self.tree.nodes.new("ShaderNodeBsdfPrincipled")
        self.link(self.bsdf.outputs["BSDF"], self.out.inputs["Surface"])

    def new(self, kind: str, **inputs: object) -> bpy.types.Node:
        node = self.tree.nodes.new(kind)
        for key, value in inputs.items():
            node.inputs[key].default_value = value
        return node

    def link(self, a, b) -> None:
        self.tree.links.new(a, b)

    def math(self, op: str, a, b=None, value: float | None = None) -> bpy.types.NodeSocket:
        node = self.tree.nodes.new("ShaderNodeMath")
        node.operation = op
        for i, x in enumerate((a, b)):
            if x is None:
                continue
            if isinstance(x, (int, float)):
                node.inputs[i].default_value = float(x)
            else:
                self.link(x, node.inputs[i])
        return node.outputs[0]

    def mix(self, factor, a, b) -> bpy.types.NodeSocket:
        node = self.tree.nodes.new("ShaderNodeMix")
        node.data_type = "RGBA"
        self.link(factor, node.inputs["Factor"])
        for sock, value in ((node.inputs["A"], a), (node.inputs["B"], b)):
            if isinstance(value, tuple):
                sock.default_value = value
            else:
                self.link(value, sock)
        return node.outputs["Result"]


def garment_material(name: str, tex: TextureSpec, mesh: GarmentMesh, roughness: float) -> bpy.types.Material:
    """The garment's print as nodes on its ``rest_co`` attribute (metres, SMPL world).

    stripes: bands across the direction at ``angle`` in the x-y plane; checks: 3D checker;
    dots: a regular Voronoi grid thresholded into discs; print: Voronoi cells with outlines and
    two tones. The logo image is projected along +Z onto the front, centred on the anchor.
    """
    n = _Nodes(name)
    attr = n.new("ShaderNodeAttribute")
    attr.attribute_name = "rest_co"
    attr.attribute_type = "GEOMETRY"
    co = attr.outputs["Vector"]
    base, accent = _srgb_to_linear(tex.base), _srgb_to_linear(tex.accent)
    a = np.radians(tex.angle)
    rot = n.new("ShaderNodeVectorRotate")
    rot.rotation_type = "Z_AXIS"
    rot.inputs["Angle"].default_value = float(a)
    n.link(co, rot.inputs["Vector"])
    scaled = n.new("ShaderNodeVectorMath")
    scaled.operation = "SCALE"
    n.link(rot.outputs["Vector"], scaled.inputs[0])
    scaled.inputs["Scale"].default_value = tex.frequency
    p = scaled.outputs["Vector"]
    if tex.pattern == "stripes":
        sep = n.new("ShaderNodeSeparateXYZ")
        n.link(p, sep.inputs[0])
        band = n.math("LESS_THAN", n.math("FRACT", sep.outputs["Y"]), 0.45)
        colour = n.mix(band, base, accent)
    elif tex.pattern == "checks":
        chk = n.new("ShaderNodeTexChecker", Scale=1.0, Color1=base, Color2=accent)
        half = n.new("ShaderNodeVectorMath")
        half.operation = "SCALE"
        half.inputs["Scale"].default_value = 0.5  # Blender's checker has two squares per unit
        n.link(p, half.inputs[0])
        n.link(half.outputs["Vector"], chk.inputs["Vector"])
        colour = chk.outputs["Color"]
    elif tex.pattern == "dots":
        vor = n.new("ShaderNodeTexVoronoi", Scale=1.0, Randomness=0.0)
        n.link(p, vor.inputs["Vector"])
        dot = n.math("LESS_THAN", vor.outputs["Distance"], 0.3)
        colour = n.mix(dot, base, accent)
    else:  # print
        vor = n.new("ShaderNodeTexVoronoi", Scale=1.0, Randomness=1.0)
        n.link(p, vor.inputs["Vector"])
        edge = n.new("ShaderNodeTexVoronoi", Scale=1.0, Randomness=1.0)
        edge.feature = "DISTANCE_TO_EDGE"
        n.link(p, edge.inputs["Vector"])
        cell = n.new("ShaderNodeSeparateColor")
        n.link(vor.outputs["Color"], cell.inputs["Color"])
        tint = n.mix(n.math("GREATER_THAN", cell.outputs["Red"], 0.6), base,
                     tuple(0.35 * x + 0.65 * y for x, y in zip(base, accent)))
        line = n.math("LESS_THAN", edge.outputs["Distance"], 0.12)
        colour = n.mix(line, tint, accent)
    if tex.logo is not None:
        colour = _add_logo(n, name, tex, mesh, co, colour)
    n.link(colour, n.bsdf.inputs["Base Color"])
    n.bsdf.inputs["Roughness"].default_value = roughness
    return n.mat


def _add_logo(n: _Nodes, name: str, tex: TextureSpec, mesh: GarmentMesh, co, colour):
    logo = tex.logo
    size = 128
    rgba = logo_image(logo, size)[::-1]  # Blender images start at the bottom row
    img = bpy.data.images.new(f"{name}_logo", size, size, alpha=True)
    img.pixels.foreach_set(np.ascontiguousarray(rgba, dtype=np.float32).ravel())
    img.pack()
    node = n.new("ShaderNodeTexImage")
    node.image = img
    node.extension = "CLIP"
    node.interpolation = "Linear"
    # uv = (co.xy - (anchor + offset)) / size + 0.5, on the front half only.
    centre = mesh.logo_anchor + np.array([logo.offset[0], logo.offset[1], 0.0])
    shift = n.new("ShaderNodeVectorMath")
    shift.operation = "SUBTRACT"
    n.link(co, shift.inputs[0])
    shift.inputs[1].default_value = (float(centre[0] - 0.5 * logo.size), float(centre[1] - 0.5 * logo.size), 0.0)
    uv = n.new("ShaderNodeVectorMath")
    uv.operation = "SCALE"
    uv.inputs["Scale"].default_value = 1.0 / logo.size
    n.link(shift.outputs["Vector"], uv.inputs[0])
    n.link(uv.outputs["Vector"], node.inputs["Vector"])
    sep = n.new("ShaderNodeSeparateXYZ")
    n.link(co, sep.inputs[0])
    front = n.math("GREATER_THAN", sep.outputs["Z"], mesh.front_z)
    alpha = n.math("MULTIPLY", node.outputs["Alpha"], front)
    return n.mix(alpha, colour, node.outputs["Color"])


def skin_material(skin: Sequence[float], shoes: Sequence[float]) -> bpy.types.Material:
    """Skin tone with a faint mottling; the ``paint`` colour attribute marks the shoes."""
    n = _Nodes("skin")
    noise = n.new("ShaderNodeTexNoise", Scale=40.0, Detail=2.0)
    tone = _srgb_to_linear(skin)
    darker = tuple(0.85 * x for x in tone[:3]) + (1.0,)
    mottled = n.mix(noise.outputs["Fac"], darker, tone)
    paint = n.new("ShaderNodeAttribute")
    paint.attribute_name = "paint"
    paint.attribute_type = "GEOMETRY"
    colour = n.mix(paint.outputs["Fac"], mottled, _srgb_to_linear(shoes))
    n.link(colour, n.bsdf.inputs["Base Color"])
    n.bsdf.inputs["Roughness"].default_value = 0.55
    return n.mat


def hair_material(colour: Sequence[float]) -> bpy.types.Material:
    """Hair colour with fine streaks along the strands (vertical waves on the rest position)."""
    n = _Nodes("hair")
    attr = n.new("ShaderNodeAttribute")
    attr.attribute_name = "rest_co"
    attr.attribute_type = "GEOMETRY"
    wave = n.new("ShaderNodeTexWave", Scale=60.0, Distortion=4.0, Detail=3.0)
    wave.wave_type = "BANDS"
    wave.bands_direction = "X"
    n.link(attr.outputs["Vector"], wave.inputs["Vector"])
    base = _srgb_to_linear(colour)
    light = tuple(min(1.0, 1.6 * x + 0.02) for x in base[:3]) + (1.0,)
    n.link(n.mix(wave.outputs["Fac"], base, light), n.bsdf.inputs["Base Color"])
    n.bsdf.inputs["Roughness"].default_value = 0.45
    return n.mat


def flat_material(name: str, colour: Sequence[float], roughness: float = 0.3) -> bpy.types.Material:
    n = _Nodes(name)
    n.bsdf.inputs["Base Color"].default_value = _srgb_to_linear(colour)
    n.bsdf.inputs["Roughness"].default_value = roughness
    return n.mat


def set_paint(obj: bpy.types.Object, paint: np.ndarray) -> None:
    """A per-vertex float attribute ``paint`` (0..1) that the skin material mixes shoes with."""
    att = obj.data.attributes.new("paint", "FLOAT", "POINT")
    att.data.foreach_set("value", np.asarray(paint, dtype=np.float32))


# ------------------------------------------------------------------------------ cloth
_ROUGHNESS = {"cotton": 0.8, "denim": 0.75, "silk": 0.35, "leather": 0.45}


def add_garment(rig: Rig, mesh: GarmentMesh, spec: GarmentSpec, name: str, cloth: ClothSettings,
                frame_end: int, collider: bool) -> bpy.types.Object:
    """A cloth object: armature (for the pinned band), cloth, and a collider if ``collider``."""
    mat = garment_material(f"{name}_print", spec.texture, mesh, _ROUGHNESS[spec.cloth.material])
    obj = add_skinned_mesh(rig, name, mesh.vertices, mesh.faces, mesh.skin_weights, mat)
    pin = obj.vertex_groups.new(name="pin")
    idx = np.flatnonzero(mesh.pin > 0)
    for w in np.unique(mesh.pin[idx]):
        pin.add(idx[mesh.pin[idx] == w].tolist(), float(w), "REPLACE")
    c = spec.cloth
    mod = obj.modifiers.new("Cloth", "CLOTH")
    s = mod.settings
    s.quality = cloth.quality
    s.mass = c.mass
    s.tension_stiffness = s.compression_stiffness = c.tension
    s.shear_stiffness = c.shear
    s.bending_stiffness = c.bending
    s.air_damping = c.air_damping
    s.vertex_group_mass = "pin"
    s.pin_stiffness = c.pin_stiffness
    cs = mod.collision_settings
    cs.use_collision = True
    cs.collision_quality = cloth.collision_quality
    cs.distance_min = cloth.distance
    cs.use_self_collision = c.self_collision and cloth.self_collision
    cs.self_distance_min = 0.5 * cloth.distance
    mod.point_cache.frame_start = 1
    mod.point_cache.frame_end = frame_end
    if collider:
        obj.modifiers.new("Collision", "COLLISION")
        obj.collision.thickness_outer = 0.5 * cloth.distance
    rig.garments.append(obj)
    return obj


def make_collider(obj: bpy.types.Object, cloth: ClothSettings) -> None:
    obj.modifiers.new("Collision", "COLLISION")
    obj.collision.thickness_outer = cloth.body_thickness
    obj.collision.thickness_inner = 0.02
    obj.collision.cloth_friction = 5.0


def bake_cloth(log_path: str | os.PathLike[str] | None = None) -> None:
    """Simulate every cloth object over the scene's frame range, once, into memory caches."""
    scene = bpy.context.scene
    with quiet(log_path), bpy.context.temp_override(scene=scene):
        result = bpy.ops.ptcache.bake_all(bake=True)
    if "FINISHED" not in result:
        raise RuntimeError(f"cloth bake did not finish: {result}")


# ------------------------------------------------------------------------------ camera, lights
def set_camera(K: np.ndarray, world_to_cam: np.ndarray, width: int, height: int, first_frame: int) -> bpy.types.Object:
    """The scene camera from per-frame OpenCV cameras ``K`` (T,3,3), ``world_to_cam`` (T,4,4).

    A static camera is set once; a moving one is keyframed on frames first_frame .. +T-1.
    """
    K = np.asarray(K, dtype=np.float64)
    w2c = np.asarray(world_to_cam, dtype=np.float64)
    cams = [blender_camera(K[t], w2c[t], width, height) for t in range(len(K))]
    data = bpy.data.cameras.new("camera")
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = cams[0].sensor_width
    obj = _link(bpy.data.objects.new("camera", data))
    scene = bpy.context.scene
    scene.camera = obj
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    static = all(np.allclose(K[t], K[0]) and np.allclose(w2c[t], w2c[0]) for t in range(len(K)))
    for t, cam in enumerate(cams[: 1 if static else len(cams)]):
        data.lens, data.shift_x, data.shift_y = cam.lens, cam.shift_x, cam.shift_y
        data.clip_start, data.clip_end = cam.clip_start, cam.clip_end
        obj.matrix_world = Matrix(cam.matrix_world.tolist())
        if not static:
            frame = first_frame + t
            obj.keyframe_insert("location", frame=frame)
            obj.keyframe_insert("rotation_euler", frame=frame)
            for prop in ("lens", "shift_x", "shift_y"):
                data.keyframe_insert(prop, frame=frame)
    return obj


def add_lights(lights: Sequence[tuple[str, LightSpec]], target_smpl: np.ndarray, view_dir_smpl: np.ndarray,
               world_colour: Sequence[float], world_strength: float) -> None:
    """Area lights around ``target`` placed relative to the camera's horizontal viewing direction."""
    target = smpl_to_blender(np.asarray(target_smpl, dtype=np.float64))
    back = -np.asarray(view_dir_smpl, dtype=np.float64)  # from the target towards the camera
    back[1] = 0.0
    back /= np.linalg.norm(back)
    for name, spec in lights:
        az, el = np.radians(spec.azimuth), np.radians(spec.elevation)
        # Positive azimuth swings to the camera's right (x right = up x back, in SMPL's Y-up world).
        right = np.cross([0.0, 1.0, 0.0], back)
        d = np.cos(el) * (np.cos(az) * back + np.sin(az) * right) + np.sin(el) * np.array([0.0, 1.0, 0.0])
        pos = target + smpl_to_blender(d * spec.distance)
        data = bpy.data.lights.new(name, "AREA")
        data.energy = spec.energy
        data.size = spec.size
        data.color = _srgb_to_linear(spec.colour)[:3]
        obj = _link(bpy.data.objects.new(name, data))
        # Point the light's -Z at the target.
        z = pos - target
        z /= np.linalg.norm(z)
        x = np.cross([0.0, 0.0, 1.0], z)
        x = x / np.linalg.norm(x) if np.linalg.norm(x) > 1e-6 else np.array([1.0, 0.0, 0.0])
        y = np.cross(z, x)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, pos
        obj.matrix_world = Matrix(m.tolist())
    world = bpy.data.worlds.new("world")
    bpy.context.scene.world = world
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = _srgb_to_linear(world_colour)
    bg.inputs["Strength"].default_value = world_strength


# ------------------------------------------------------------------------------ render
def configure_render(settings: RenderSettings, seed: int, fps: float) -> None:
    """Cycles, RGBA PNG with a transparent film, few samples (+ OIDN), Khronos PBR Neutral view."""
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    cy = scene.cycles
    cy.device = settings.device
    if settings.device == "GPU":
        prefs = bpy.context.preferences.addons["cycles"].preferences
        available = [t for t in ("OPTIX", "CUDA", "HIP", "METAL", "ONEAPI") if _has_device(prefs, t)]
        if not available:
            raise RuntimeError("render device GPU requested but Cycles finds no GPU")
        prefs.compute_device_type = available[0]
        for dev in prefs.get_devices_for_type(available[0]):
            dev.use = True
    cy.samples = settings.samples
    cy.use_adaptive_sampling = True
    cy.use_denoising = settings.denoise
    if settings.denoise:
        cy.denoiser = "OPENIMAGEDENOISE"
    cy.seed = int(seed) % (2**31)
    cy.max_bounces = 4
    cy.use_light_tree = True
    if settings.threads:
        scene.render.threads_mode = "FIXED"
        scene.render.threads = settings.threads
    scene.render.film_transparent = True
    scene.render.fps = int(round(fps))
    scene.render.fps_base = scene.render.fps / fps
    # Khronos PBR Neutral keeps base colours (prints, skin tones) and rolls highlights off
    # instead of clipping light fabrics and skin under the key light (Standard clipped ~25 %).
    scene.view_settings.view_transform = "Khronos PBR Neutral"
    img = scene.render.image_settings
    img.file_format = "PNG"
    img.color_mode = "RGBA"
    img.color_depth = "8"
    img.compression = 15


def _has_device(prefs, kind: str) -> bool:
    try:
        return len(prefs.get_devices_for_type(kind)) > 0
    except (TypeError, ValueError):
        return False


def render_frame(frame: int, path: str | os.PathLike[str], log_path: str | os.PathLike[str] | None = None) -> None:
    """Render Blender frame ``frame`` to ``path`` (8-bit RGBA PNG), atomically.

    Blender's PNG carries render times and dates as text chunks; the pixels are re-encoded
    without them, so the same scene gives byte-identical files (and checksums).
    """
    path = Path(path)
    raw = path.with_name(f".{path.name}.render.png")
    scene = bpy.context.scene
    scene.frame_set(frame)
    scene.render.filepath = os.fspath(raw)
    try:
        with quiet(log_path):
            bpy.ops.render.render(write_still=True)
        pixels = cv2.imread(os.fspath(raw), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise RuntimeError(f"Cycles did not write a readable {raw}")
        ok, data = cv2.imencode(".png", pixels)
        if not ok:
            raise RuntimeError(f"{path}: OpenCV could not encode the frame")
        atomic_write_bytes(path, data.tobytes())
    finally:
        raw.unlink(missing_ok=True)


def evaluated_vertices(obj: bpy.types.Object) -> np.ndarray:
    """The object's evaluated (deformed) vertex positions, converted back to SMPL's world."""
    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    mesh = ev.to_mesh()
    try:
        co = np.zeros(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
        mw = np.array(ev.matrix_world)
    finally:
        ev.to_mesh_clear()
    co = co.reshape(-1, 3).astype(np.float64) @ mw[:3, :3].T + mw[:3, 3]
    return co @ _C  # Blender -> SMPL: C^T applied to row vectors


# ------------------------------------------------------------------------------ one character
_FOOT_JOINTS = [JOINT_NAMES.index(n) for n in ("left_ankle", "right_ankle", "left_foot", "right_foot")]


def build_character(spec: CharacterSpec, rest: BodyRest, body: BodyModel, garments: Sequence[GarmentMesh],
                    hair: HeadMesh, face: HeadMesh, clip: MotionClip, preset: Preset, threads: int = 0) -> Rig:
    """The whole scene of one shard: rig, body, hair, garments, keyframes, camera, lights, render.

    ``rest`` is the :class:`~synthetic_data.garments.BodyRest` for the spec's betas, ``body`` the
    BodyModel (faces, weights, posedirs), ``hair``/``face`` :class:`~synthetic_data.hair.HeadMesh`,
    ``clip`` the MotionClip; frames: pre-roll 1..P, clip from P + 1.
    """
    scene = reset_scene()
    P, T = preset.cloth.preroll, clip.num_frames
    scene.frame_start, scene.frame_end = 1, P + T
    rig = build_armature(rest.joints)
    skin = skin_material(spec.skin, spec.shoes)
    body_obj = add_skinned_mesh(rig, "body", rest.vertices, body.faces, body.weights, skin)
    owner = np.asarray(body.weights).argmax(1)
    ankle_y = rest.joints[_FOOT_JOINTS[:2], 1].mean()
    set_paint(body_obj, (np.isin(owner, _FOOT_JOINTS) & (rest.vertices[:, 1] < ankle_y + 0.03)).astype(np.float32))
    posedirs = np.asarray(body.posedirs)
    if np.any(posedirs != 0):
        add_pose_blend_keys(body_obj, posedirs)
    make_collider(body_obj, preset.cloth)
    rig.body = body_obj
    rig.extras.append(add_skinned_mesh(rig, "hair", hair.vertices, hair.faces, hair.skin_weights,
                                       hair_material(spec.hair.colour)))
    rig.extras.append(add_skinned_mesh(rig, "face", face.vertices, face.faces, face.skin_weights,
                                       flat_material("face_marks", (0.06, 0.04, 0.04), 0.25)))
    for i, (g, mesh) in enumerate(zip(spec.garments, garments)):
        # Inner garments (all but the last) are also colliders for the ones worn over them.
        add_garment(rig, mesh, g, f"garment_{i}_{g.kind}", preset.cloth, P + T, collider=i < len(garments) - 1)
    pre_poses, pre_trans = preroll_poses(np.asarray(clip.poses[0], np.float64), clip.trans[0], P, preset.cloth.hold)
    keyframe_poses(rig, np.concatenate([pre_poses, clip.poses]), np.concatenate([pre_trans, clip.trans]), 1, body_obj)
    set_camera(clip.K, clip.world_to_cam, clip.width, clip.height, P + 1)
    verts, _ = body.forward(clip.poses, np.asarray(spec.betas, np.float32), clip.trans)
    target = np.asarray(verts).reshape(-1, 3).mean(0)
    view = np.asarray(clip.world_to_cam[0, 2, :3], np.float64)  # camera z axis in the world
    lit = spec.lighting
    add_lights([("key", lit.key), ("fill", lit.fill), ("rim", lit.rim)], target, view, lit.world_colour, lit.world_strength)
    render = preset.render
    if threads:
        render = replace(render, threads=threads)
    configure_render(render, spec.render_seed, clip.fps)
    return rig
