"""Main-thread preparation of a run: scene checks, armature sampling, appearance image, params.

Every problem the user can fix raises :class:`UserError` with one sentence naming it; the
operators report it (and in background mode ``bpy.ops`` turns that report into a RuntimeError).
"""

from __future__ import annotations

import io
import os
import tempfile

import bpy
import numpy as np

from . import preferences
from .armature import ArmatureError, camera_matrices, sample_armature, save_skeleton_npz
from .engine import MANAGER
from .jobs import RunFailed, RunRequest, check_output_folder
from .layers import body_depths
from .pngio import encode_png, png_size
from .properties import JOINT_NAMES
from .sequencer import all_strips
from .takes import check_takes, new_take_dir
from .units import UnitsError, armature_scale, rest_height

DEFAULT_MAX_FRAMES = 2000
"""Frames per job when the engine has not said yet (``btdm serve``'s limit, /v1/health max_frames)."""

__all__ = ["UserError", "build_group", "build_request", "resolve_armature", "resolve_camera", "selected_armatures",
           "strip_key"]


class UserError(Exception):
    """Something in the scene or the settings that the user must change; the message says what."""


def resolve_armature(context):
    scene = context.scene
    s = scene.btdm
    if s.armature is not None:
        if s.armature.name not in scene.objects:
            raise UserError(f"armature {s.armature.name!r} is not in scene {scene.name!r}")
        return s.armature
    active = context.active_object if hasattr(context, "active_object") else None
    if active is not None and active.type == "ARMATURE":
        return active
    found = [o for o in scene.objects if o.type == "ARMATURE"]
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"no armature: scene {scene.name!r} has none; add the character's armature or pick it "
                        "in the BTDM panel")
    raise UserError(f"several armatures ({', '.join(sorted(o.name for o in found))}): pick one in the BTDM panel "
                    "or select it")


def resolve_camera(context):
    scene = context.scene
    camera = scene.btdm.camera or scene.camera
    if camera is None:
        raise UserError(f"no camera: scene {scene.name!r} has no camera; plates are seen through the shot camera, "
                        "so add one (or pick one in the BTDM panel)")
    if camera.type != "CAMERA":
        raise UserError(f"{camera.name!r} is not a camera")
    return camera


def strip_key(scene, camera) -> str:
    return f"{scene.name}_{camera.name}"


def shot_identity(scene, camera) -> dict:
    """Whose plates a folder holds: the .blend's file name, the scene and the camera (see ``jobs.check_output_folder``)."""
    return {"blend": os.path.basename(bpy.data.filepath), "scene": scene.name, "camera": camera.name}


def default_output(scene, camera) -> str:
    """``//previs/<blend>_<scene>_<camera>/``: two .blend files in one folder never share one by default."""
    blend = os.path.splitext(os.path.basename(bpy.data.filepath))[0]
    return f"//previs/{bpy.path.clean_name(f'{blend}_{strip_key(scene, camera)}')}/"


def output_dir(scene, camera, override: str = "") -> str:
    raw = override or scene.btdm.output_dir or default_output(scene, camera)
    if raw.startswith("//") and not bpy.data.filepath:
        raise UserError("save the .blend first: plates go next to it (//previs/...), or set an output folder")
    return os.path.normpath(bpy.path.abspath(raw))


def shown_folders(scene) -> tuple[str, ...]:
    """The folders this scene's pre-vis strips show (their frames are this shot's even when a folder's record,
    written by an older add-on, does not say whose they are)."""
    editor = scene.sequence_editor
    if editor is None:
        return ()
    return tuple(sorted({os.path.normpath(bpy.path.abspath(s.directory)) for s in all_strips(editor)
                         if s.get("btdm_kind") and getattr(s, "directory", "")}))


def check_folders(folders, shot: dict, adopt: tuple[str, ...]) -> None:
    """Refuse, before any work, an output folder holding frames that are not this shot's (``UserError``)."""
    for folder in folders:
        if folder:
            try:
                check_output_folder(folder, shot, adopt=folder in adopt)
            except RunFailed as exc:
                raise UserError(str(exc)) from None


def next_take(out: str, shot: dict) -> str:
    """The folder of this Generate's take in the shot's output folder (see :mod:`.takes`); ``UserError`` when
    the folder holds another shot's takes or frames pre-vis did not write."""
    try:
        check_takes(out, shot)
    except RunFailed as exc:
        raise UserError(str(exc)) from None
    return new_take_dir(out)


def custom_bone_map(settings, armature) -> dict:
    bones = armature.data.bones
    mapping, used = {}, {}
    for row in settings.bone_map:
        if row.joint not in JOINT_NAMES:
            raise UserError(f"bone map: {row.joint!r} is not an SMPL joint (reset the map)")
        bone = row.bone.strip()
        if not bone:
            mapping[row.joint] = None
            continue
        if bone not in bones:
            raise UserError(f"bone map: joint {row.joint} names bone {bone!r}, which armature {armature.name!r} "
                            "does not have")
        if bone in used:
            raise UserError(f"bone map: bone {bone!r} is given to both {used[bone]} and {row.joint}")
        used[bone] = row.joint
        mapping[row.joint] = bone
    if not used:
        raise UserError("bone map: the custom map is empty; fill in the bones (or choose a preset)")
    return mapping


def _npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ---------------------------------------------------------------------------- appearance
def load_rgb(path: str, what: str) -> np.ndarray:
    """An image file -> uint8 (H, W, 3), top row first, through Blender's image reader."""
    path = bpy.path.abspath(path)
    if not path or not os.path.isfile(path):
        raise UserError(f"{what}: no such file {path!r}")
    try:
        image = bpy.data.images.load(path, check_existing=False)
    except RuntimeError as exc:
        raise UserError(f"{what}: Blender cannot read {path} ({exc})") from None
    try:
        image.colorspace_settings.name = "Non-Color"  # raw values, no view transform
        w, h = image.size
        if w == 0 or h == 0:
            raise UserError(f"{what}: {path} is empty")
        pixels = np.empty(w * h * 4, np.float32)
        image.pixels.foreach_get(pixels)
    finally:
        bpy.data.images.remove(image)
    rgba = pixels.reshape(h, w, 4)[::-1]
    return np.clip(np.round(rgba[..., :3] * 255.0), 0, 255).astype(np.uint8)


def square(pixels: np.ndarray, centre: tuple[float, float] | None = None, side: int | None = None) -> np.ndarray:
    """A square crop of ``side`` px around ``centre`` (default: the whole image, padded with black)."""
    h, w = pixels.shape[:2]
    side = side or max(w, h)
    cx, cy = centre or (w / 2.0, h / 2.0)
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    out = np.zeros((side, side, pixels.shape[2]), np.uint8)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(w, x0 + side), min(h, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = pixels[sy0:sy1, sx0:sx1]
    return out


def fit_to_camera(pixels: np.ndarray, scene) -> np.ndarray:
    """A photo inside the shot camera's frame, as the camera view shows a background image with
    ``frame_method="FIT"``: centred, its aspect kept, the rest white (what the armature was posed to)."""
    h, w = pixels.shape[:2]
    aspect = scene.render.resolution_x / scene.render.resolution_y
    if w / h > aspect:  # wider than the frame: bands above and below
        side = int(round(w / aspect)) - h
        pad = ((side // 2, side - side // 2), (0, 0), (0, 0))
    else:
        side = int(round(h * aspect)) - w
        pad = ((0, 0), (side // 2, side - side // 2), (0, 0))
    return np.pad(pixels, pad, constant_values=255)


def shown_frame(scene, frame: int) -> int | None:
    """``frame`` (a scene frame number) as the job's zero-based frame, None outside the frame range."""
    return frame - scene.frame_start if scene.frame_start <= frame <= scene.frame_end else None


def render_appearance(context, armature, camera, whole: bool = False, frame: int | None = None) -> bytes:
    """The scene rendered at ``frame`` (default: the panel's Render frame) through the shot camera: cropped square
    around the armature, or with ``whole`` the camera's whole view (the engine then cuts it with that frame's window)."""
    scene = context.scene
    frame = scene.btdm.render_frame if frame is None else frame
    old_frame, old_path, old_camera = scene.frame_current, scene.render.filepath, scene.camera
    fd, path = tempfile.mkstemp(prefix="btdm-appearance-", suffix=".png")
    os.close(fd)
    try:
        scene.camera = camera
        scene.frame_set(frame)
        scene.render.filepath = path
        old_format = scene.render.image_settings.file_format
        scene.render.image_settings.file_format = "PNG"
        try:
            bpy.ops.render.render(write_still=True)
        finally:
            scene.render.image_settings.file_format = old_format
        K, w2c, _w, _h = camera_matrices(scene, camera)
        heads = np.array([list(armature.matrix_world @ pb.head) + [1.0] for pb in armature.pose.bones])
        cam = (w2c @ heads.T)[:3]
        uv = (K @ cam)[:2] / np.maximum(cam[2], 1e-6)
        rgb = load_rgb(path, "scene render")
    finally:
        scene.render.filepath, scene.camera = old_path, old_camera
        scene.frame_set(old_frame)
        os.unlink(path)
    if whole:
        return encode_png(rgb)
    lo, hi = uv.min(axis=1), uv.max(axis=1)
    side = int(max(hi - lo) * 1.25) + 8
    side = max(32, min(side, max(rgb.shape[:2])))
    return encode_png(square(rgb, ((lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0), side))


def appearance_files(context, armature, camera, a=None) -> tuple[bytes | None, bytes | None, bool, int | None]:
    """(appearance PNG, its IUV PNG, use the model's own appearance, the job frame it shows) for the chosen mode.

    ``a`` holds the appearance settings (mode, image, IUV file, reference and render frames): the shot's
    (``scene.btdm``, the default) or a character's own (``armature.btdm_character``, several characters).

    A photo with its reference pose, or a scene render, at a frame of the shot is sent whole (the
    camera's view) with that frame (``params.appearance_frame``): the engine cuts it with that
    frame's window and fine-tunes with that frame's pose map as its IUV map.
    """
    scene = context.scene
    s = scene.btdm
    a = s if a is None else a
    mode = a.appearance
    finetune = s.finetune_steps > 0
    if mode == "MODEL":
        return None, None, True, None
    if mode == "NONE":
        if finetune:
            raise UserError("fine-tuning needs an appearance image: choose one, or set fine-tuning steps to 0")
        return None, None, False, None
    if mode == "IMAGE_IUV":
        image = load_rgb(a.appearance_image, "appearance image")
        if image.shape[0] != image.shape[1]:
            raise UserError(f"appearance image: {image.shape[1]}x{image.shape[0]} px; with an IUV file it must be "
                            "square (the networks are square)")
        iuv = None
        # the IUV file serves fine-tuning, the texture-transfer method and models that read the prior
        if finetune or a.appearance_iuv or s.method == "TEXTURE":
            path = bpy.path.abspath(a.appearance_iuv)
            if not os.path.isfile(path):
                raise UserError(f"appearance IUV: no such file {path!r}")
            with open(path, "rb") as fh:
                iuv = fh.read()
            size = png_size(iuv)
            if size is None:
                raise UserError(f"appearance IUV: {path} is not a PNG")
            if size != (image.shape[1], image.shape[0]):
                raise UserError(f"appearance IUV: {size[0]}x{size[1]} px, but the image is "
                                f"{image.shape[1]}x{image.shape[0]}")
        return encode_png(image), iuv, False, None
    span = f"the frame range {scene.frame_start}..{scene.frame_end}"
    if mode == "PHOTO":
        photo = load_rgb(a.appearance_image, "photo")
        frame = shown_frame(scene, a.reference_frame)
        if frame is not None:
            return encode_png(fit_to_camera(photo, scene)), None, False, frame
        if finetune:
            where = f" (frame {a.reference_frame} lies outside {span})" if a.reference_frame >= 0 else ""
            raise UserError("fine-tuning on a photo needs its reference pose: pose the armature to match the photo "
                            f"at a frame of the shot and press Use as Reference Pose{where}")
        return encode_png(square(photo)), None, False, None
    frame = shown_frame(scene, a.render_frame)
    if frame is not None:
        return render_appearance(context, armature, camera, whole=True, frame=a.render_frame), None, False, frame
    if finetune:
        raise UserError(f"fine-tuning on the scene render needs a render frame inside {span} "
                        f"(it is {a.render_frame})")
    return render_appearance(context, armature, camera, frame=a.render_frame), None, False, None


def model_reads_iuv(name: str) -> bool:
    """Whether the engine says model ``name`` takes the texture-transfer prior (which reads the
    appearance's IUV map without fine-tuning, and further views). Before the add-on has talked to
    the engine (a session's first Generate, which connects), the model list is unknown: then only
    ``default``, the embedded model every engine serves under that name, is taken to (were that
    engine's default another model, it refuses the IUV map or views naming them; were every
    unknown model taken not to, the first run of the default would lose its prior)."""
    if not MANAGER.status.models:
        return name == "default"
    return any(m.get("name") == name and m.get("texture_prior") for m in MANAGER.status.models)


# ---------------------------------------------------------------------------- the request
_PANEL_NAMES = {"steps": "Steps", "sr_steps": "SR steps", "seed": "Seed", "finetune_steps": "Fine-tuning steps",
                "fps": "the scene's frame rate", "appearance_frame": "the appearance frame"}


def check_params(params: dict, job_limits: dict) -> None:
    """Refuse before sending what the engine would refuse: ``job_limits`` is its ``GET /v1/limits``
    (``{param: {"min", "max"}}``, the numbers its CLI and request model check with); empty when not known."""
    for key, value in params.items():
        bounds = job_limits.get(key)
        if bounds is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        lo, hi = bounds["min"], bounds["max"]
        low = value <= lo if key == "finetune_lr" else value < lo
        if low or value > hi:
            raise UserError(f"{_PANEL_NAMES.get(key, key)} is {value:g}; the engine takes {lo:g} to {hi:g}")


def _shot(context):
    """(scene, its settings, the camera, first frame, last frame), checked before anything is sampled."""
    scene = context.scene
    s = scene.btdm
    if scene.get("btdm_previs_key") is not None:
        raise UserError(f"scene {scene.name!r} is the pre-vis of scene {scene.get('btdm_shot_scene', '')!r} (the set "
                        "with the plates): generate from that scene")
    camera = resolve_camera(context)
    start, end = scene.frame_start, scene.frame_end
    if end < start:
        raise UserError(f"the scene's frame range {start}..{end} is empty")
    # Checked before the armature is sampled (frame by frame, on the main thread), not by the engine after.
    limit = MANAGER.status.max_frames or DEFAULT_MAX_FRAMES
    if end - start + 1 > limit:
        raise UserError(f"the scene's frame range {start}..{end} is {end - start + 1} frames; the engine generates "
                        f"at most {limit} per job: shorten the frame range, or split the shot")
    return scene, s, camera, start, end


def _motion_params(scene, s, armature, seed: int) -> dict:
    params = {"model": s.model or "default", "steps": s.steps, "seed": seed, "video": False,
              "fps": float(scene.render.fps / scene.render.fps_base)}
    if s.sr_steps > 0:
        params["sr_steps"] = s.sr_steps
    if s.skeleton == "CUSTOM":
        params["bone_map"] = custom_bone_map(s, armature)
    else:
        params["skeleton"] = s.skeleton
    if s.fit_shape:
        params["fit_shape"] = True
    return params


def view_frames(scene, render_frame: int, count: int) -> list[int]:
    """The scene frames of a Scene render's further views: ``count - 1`` frames spread over the frame
    range (the middles of as many equal parts of it), leaving out the Render frame itself."""
    start, end = scene.frame_start, scene.frame_end
    others = count - 1
    frames = {int(round(start + (end - start) * (i + 0.5) / others)) for i in range(others)} if others > 0 else set()
    return sorted(frames - {render_frame})


def _appearance_params(context, s, a, armature, camera, params: dict
                       ) -> tuple[bytes | None, bytes | None, dict[int, bytes], tuple[str, ...]]:
    """The appearance files of a plates job, its params filled in (``a``: the appearance settings, see
    :func:`appearance_files`), a Scene render's further views ``{job frame: PNG}`` (``a.render_views``),
    and notes for the result (Views not rendered for a model that would not read them)."""
    appearance, appearance_iuv, use_default, shown = appearance_files(context, armature, camera, a)
    if shown is not None:
        params["appearance_frame"] = shown
    if s.finetune_steps > 0:
        params["finetune_steps"] = s.finetune_steps
    if appearance_iuv is not None:
        params["iuv_order"] = a.iuv_order  # the IUV file's channel order, as the panel says
        if s.finetune_steps == 0 and s.method != "TEXTURE" and not model_reads_iuv(s.model or "default"):
            appearance_iuv = None  # this model reads g(c) only to fine-tune
    if s.method == "TEXTURE":
        if appearance_iuv is None and shown is None and not use_default:
            raise UserError("Texture transfer needs the appearance's pose: choose Model's own, Image + IUV, a "
                            "photo with its reference pose, or a scene render at a frame of the shot")
        if s.finetune_steps > 0:
            raise UserError("Texture transfer has no network to fine-tune: set Fine-tuning steps to 0")
        params["method"] = "texture"
    params["use_default_appearance"] = use_default
    views, notes = {}, ()
    # further renders feed the texture-transfer prior only: none are made for a model that takes none
    wanted = a.appearance == "RENDER" and a.render_views > 1
    if wanted and not (s.method == "TEXTURE" or model_reads_iuv(s.model or "default")):
        notes = (f"Views {a.render_views}: model {s.model or 'default'} takes no texture-transfer prior, which is "
                 "all further views feed; only the Render frame was rendered",)
    elif wanted:
        if shown is None:
            raise UserError(f"Views: several views need the Render frame inside the frame range "
                            f"{context.scene.frame_start}..{context.scene.frame_end} (it is {a.render_frame}), so the "
                            "engine knows the body's pose in each; set it there, or Views to 1")
        for frame in view_frames(context.scene, a.render_frame, a.render_views):
            views[frame - context.scene.frame_start] = render_appearance(context, armature, camera, whole=True,
                                                                         frame=frame)
    return appearance, appearance_iuv, views, notes


def _sample(scene, armature, camera, start: int, end: int, skeleton_path: str = "") -> tuple[dict, str | None]:
    """The armature sampled with the shot camera, in the unit that makes a person of it (and the note saying so)."""
    try:
        arrays = sample_armature(scene, armature, start, end, camera=camera)
    except ArmatureError as exc:
        raise UserError(str(exc)) from None
    # A live armature states the scene's unit scale; a rig that is no person's height at that scale (a
    # centimetre BVH imported at Blender's default scale) gets the unit a motion file would get, or is refused.
    try:
        scale, note = armature_scale(rest_height(arrays["rest"], arrays["tails"]), float(arrays["scale"]),
                                     armature.name)
    except UnitsError as exc:
        raise UserError(str(exc)) from None
    arrays["scale"] = np.float64(scale)
    if skeleton_path:
        save_skeleton_npz(skeleton_path, arrays)
    return arrays, note


def build_request(context, kind: str, *, out_override: str = "", posemaps_dir: str = "",
                  skeleton_path: str = "") -> RunRequest:
    """Everything a run needs, read from the scene on the main thread; raises :class:`UserError`."""
    scene, s, camera, start, end = _shot(context)
    armature = resolve_armature(context)
    params = _motion_params(scene, s, armature, s.seed)
    out = output_dir(scene, camera, out_override)
    if kind == "posemaps":
        out = os.path.join(out, "posemaps")
    keep_maps = os.path.normpath(posemaps_dir) if posemaps_dir else None
    shot, adopt = shot_identity(scene, camera), shown_folders(scene)
    check_folders((out, keep_maps), shot, adopt)
    take = kind == "plates" and not out_override  # a folder named by a script gets the plates themselves
    if take:
        out = next_take(out, shot)
    if kind == "posemaps":
        appearance = appearance_iuv = None
        views, view_notes = {}, ()
        # the whole camera view scaled into the square, not the window that follows the body: the camera's
        # background and the strips crop the square's middle band, which is the camera frame (display.py)
        params["plate"] = False
        params["use_default_appearance"] = True
    else:
        appearance, appearance_iuv, views, view_notes = _appearance_params(context, s, s, armature, camera, params)
    check_params(params, MANAGER.status.job_limits)
    arrays, note = _sample(scene, armature, camera, start, end, skeleton_path)
    without_camera = {k: v for k, v in arrays.items() if not k.startswith("cam_")}
    os.makedirs(out, exist_ok=True)
    return RunRequest(
        kind=kind, skeleton=_npz_bytes(arrays), params=params, out_dir=out, first_frame=start,
        num_frames=end - start + 1, settings=preferences.engine_settings(context), appearance=appearance,
        appearance_iuv=appearance_iuv, views=views, skeleton_without_camera=_npz_bytes(without_camera),
        posemaps_dir=keep_maps, shot=shot, adopt=adopt, notes=((note,) if note else ()) + view_notes, take=take,
        armature=armature.name)


# ---------------------------------------------------------------------------- several characters
def selected_armatures(context) -> list:
    """The armatures Generate makes one job each for: with the panel's Armature empty, the selected armatures of
    the scene when there are two or more (by name, so each keeps its place: the default seeds follow it);
    else [] (one character, :func:`resolve_armature`)."""
    scene = context.scene
    if scene.btdm.armature is not None:
        return []
    try:
        found = [o for o in scene.objects if o.type == "ARMATURE" and o.select_get()]
    except RuntimeError:  # an object not in the active view layer
        found = []
    return sorted(found, key=lambda o: o.name) if len(found) > 1 else []


def character_seed(s, armature, index: int) -> int:
    """A character's seed: its own, else the shot's plus its place among the characters (so two characters without
    an appearance image are two people)."""
    c = armature.btdm_character
    return c.seed if c.use_own_seed else s.seed + index


def _folder_names(armatures) -> list[str]:
    names, seen = [], set()
    for arm in armatures:
        base = bpy.path.clean_name(arm.name) or "character"
        name, n = base, 1
        while name.lower() in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name.lower())
        names.append(name)
    return names


def build_group(context, armatures, *, out_override: str = "") -> list[RunRequest]:
    """One plates run per character (``armatures``, two or more), each with its own appearance and seed, into one
    take: ``<take>/<armature>/NNNNNN.png``; each request carries the character's distance from the camera per frame
    (``depths``, :func:`.layers.body_depths`), by which the plates are stacked. Raises :class:`UserError` naming
    the character whose settings are wrong."""
    scene, s, camera, start, end = _shot(context)
    out = output_dir(scene, camera, out_override)
    shot, adopt = shot_identity(scene, camera), shown_folders(scene)
    check_folders((out,), shot, adopt)
    take = not out_override
    if take:
        out = next_take(out, shot)
    settings = preferences.engine_settings(context)
    requests = []
    for index, (armature, folder) in enumerate(zip(armatures, _folder_names(armatures), strict=True)):
        c = armature.btdm_character
        try:
            params = _motion_params(scene, s, armature, character_seed(s, armature, index))
            appearance, appearance_iuv, views, view_notes = _appearance_params(
                context, s, c if c.use_own_appearance else s, armature, camera, params)
            check_params(params, MANAGER.status.job_limits)
            arrays, note = _sample(scene, armature, camera, start, end)
        except UserError as exc:
            raise UserError(f"{armature.name}: {exc}") from None
        sub = os.path.join(out, folder)
        requests.append(RunRequest(
            kind="plates", skeleton=_npz_bytes(arrays), params=params, out_dir=sub, first_frame=start,
            num_frames=end - start + 1, settings=settings, appearance=appearance, appearance_iuv=appearance_iuv,
            views=views, skeleton_without_camera=None, shot=shot,
            notes=tuple(f"{armature.name}: {n}" for n in ((note,) if note else ()) + view_notes),
            armature=armature.name, character=armature.name, depths=body_depths(arrays)))
    for request in requests:
        os.makedirs(request.out_dir, exist_ok=True)
    return requests
