"""Where a result is seen: the shot camera's background, a pre-vis scene, and the shot's own strip.

Animators look through the shot camera in the 3D viewport while they animate, so every result (a
take's plates, or the pose-map previews) goes to three places, by :func:`place`:

1. **The shot camera's background images**: the result's PNG sequence as one image (source
   ``SEQUENCE``; scene frame F shows file ``F``), drawn in front of the set (display depth
   ``FRONT``: the plates are transparent outside the person) at the panel's Opacity, in camera view.
   Plates have the camera frame's aspect (``FIT`` fills it exactly); pose maps are square pictures
   of the whole camera view (the engine renders them through the shot camera scaled into the
   square, ``params.plate`` false), so ``CROP`` fills the frame with their middle band: they lie on
   the camera frame too. The panel's toggles (``scene.btdm.show_plates`` / ``show_posemaps``) show
   or hide each.
2. **A pre-vis scene of the shot** (``<scene>_<camera> pre-vis``, made here): a Scene strip of the
   shot through its camera on channel 1 and the result above it (plates alpha over; pose maps at
   the Opacity), so its Video Sequencer plays, and F12 or Render Animation there renders, the set
   with the person. It follows the shot's resolution, frame rate, frame range and colour management.
3. **The shot's own sequencer**: the strip the takes switch and whose properties record the take,
   as before, but **muted**. An unmuted strip makes F12 render the sequencer instead of the 3D scene
   (Post Processing > Sequencer), and the plate alone is not the shot: the shot's render stays the
   set's, whatever the sequencer holds.

The camera's images carry ``btdm_kind``, ``btdm_key`` and ``btdm_scene``; the pre-vis scene carries
``btdm_previs_key`` and ``btdm_shot_scene``, its Scene strip ``btdm_kind`` ``"shot"``. All are plain
data: removing the add-on leaves the .blend as it is.
"""

from __future__ import annotations

import contextlib
import os

import bpy

from . import sequencer

__all__ = ["KINDS", "camera_background", "place", "previs_scene", "shot_of", "sync"]

KINDS = ("plates", "posemaps")
CAMERA_FIT = {"plates": "FIT", "posemaps": "CROP"}  # camera background frame_method
STRIP_FIT = {"plates": "FIT", "posemaps": "FILL"}  # sequencer strip fit_method, the same framing
SHOT_STRIP = "shot"
_RENDER_COPIED = ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y",
                  "fps", "fps_base")


def place(scene, camera, folder: str, first: int, count: int, *, kind: str, name: str, key: str, props: dict):
    """Show ``folder/NNNNNN.png`` (scene frames ``first .. first+count-1``) everywhere (see the module
    docstring); the camera and the pre-vis scene then show this kind, the other kind is hidden.
    Returns the shot's (muted) strip."""
    strip = sequencer.place_image_strip(scene, folder, first, count, name=name, key=key, kind=kind, props=props,
                                        above=kind == "plates", fit=STRIP_FIT[kind], mute=True)
    if camera is not None and camera.type == "CAMERA":
        camera_background(scene, camera, folder, first, count, kind=kind, key=key)
        previs = previs_scene(scene, camera, key)
        sequencer.place_image_strip(previs, folder, first, count, name=name, key=key, kind=kind, props=props,
                                    above=True, fit=STRIP_FIT[kind])
    s = scene.btdm
    s.show_plates, s.show_posemaps = kind == "plates", kind == "posemaps"
    sync(scene)
    return strip


def _our_image(image, key: str, kind: str) -> bool:
    return image is not None and image.get("btdm_key") == key and image.get("btdm_kind") == kind


def camera_background(scene, camera, folder: str, first: int, count: int, *, kind: str, key: str):
    """The camera's background image showing this result (made, or pointed at this folder); returns it."""
    data = camera.data
    path = sequencer.blend_relative(os.path.join(folder, f"{first:06d}.png"))
    found = [bg for bg in data.background_images if _our_image(bg.image, key, kind)]
    background = found[0] if found else data.background_images.new()
    image = background.image if found else None
    if image is None:
        image = bpy.data.images.load(bpy.path.abspath(path), check_existing=False)
        image.name = f"BTDM {kind} {key}"
        image["btdm_kind"], image["btdm_key"] = kind, key
    image["btdm_scene"] = scene.name
    image.source = "SEQUENCE"
    if image.filepath != path:
        image.filepath = path
    image.reload()
    background.image = image
    user = background.image_user
    # Blender shows file number (F - frame_start + 1) + frame_offset at scene frame F: file F.
    user.frame_start, user.frame_duration, user.frame_offset = first, count, first - 1
    user.use_auto_refresh, user.use_cyclic = True, False
    background.frame_method = CAMERA_FIT[kind]
    background.display_depth = "FRONT"  # over the set: the plates are transparent outside the person
    data.show_background_images = True
    return background


def previs_scene(shot, camera, key: str):
    """The shot's pre-vis scene for ``key`` (``<scene>_<camera>``), made when missing, fitted to the shot now."""
    found = [sc for sc in bpy.data.scenes if sc.get("btdm_previs_key") == key and sc != shot]
    if found:
        previs = found[0]
    else:
        previs = bpy.data.scenes.new(f"{key} pre-vis")
        previs["btdm_previs_key"] = key
    previs["btdm_shot_scene"] = shot.name
    for attr in _RENDER_COPIED:
        setattr(previs.render, attr, getattr(shot.render, attr))
    previs.render.use_sequencer = True
    previs.frame_start, previs.frame_end = shot.frame_start, shot.frame_end
    previs.display_settings.display_device = shot.display_settings.display_device
    # The Scene strip's pixels go through this scene's view transform: the shot's, so the set looks as
    # F12 on the shot renders it (the plates then pass through it as well, as any strip does).
    for attr in ("view_transform", "look", "exposure", "gamma"):
        with contextlib.suppress(TypeError, ValueError):  # a look this colour configuration lacks
            setattr(previs.view_settings, attr, getattr(shot.view_settings, attr))
    editor = previs.sequence_editor or previs.sequence_editor_create()
    shots = [s for s in sequencer.all_strips(editor) if s.get("btdm_kind") == SHOT_STRIP]
    fits = (len(shots) == 1 and shots[0].scene == shot and shots[0].scene_camera == camera
            and shots[0].frame_final_start == shot.frame_start and shots[0].frame_final_end == shot.frame_end + 1)
    if not fits:
        for strip in shots:
            sequencer.strips(editor).remove(strip)
        strip = sequencer.strips(editor).new_scene(name=f"{shot.name} {camera.name}", scene=shot, channel=1,
                                                   frame_start=shot.frame_start)
        strip.scene_camera = camera
        strip.scene_input = "CAMERA"
        strip["btdm_kind"], strip["btdm_key"] = SHOT_STRIP, key
    return previs


def shot_of(scene) -> str | None:
    """The name of the shot scene whose pre-vis ``scene`` is, None for any other scene."""
    if scene.get("btdm_previs_key") is None:
        return None
    return str(scene.get("btdm_shot_scene", ""))


def previs_scenes(shot) -> list:
    return [sc for sc in bpy.data.scenes if sc.get("btdm_shot_scene") == shot.name and sc != shot]


def sync(scene) -> None:
    """Apply the panel's toggles and Opacity to the shot's camera backgrounds and pre-vis scenes."""
    s = scene.btdm
    shown = {"plates": s.show_plates, "posemaps": s.show_posemaps}
    for data in bpy.data.cameras:
        for background in data.background_images:
            image = background.image
            if image is None or image.get("btdm_scene") != scene.name or image.get("btdm_kind") not in shown:
                continue
            background.show_background_image = shown[image["btdm_kind"]]
            background.alpha = s.plate_opacity
    for previs in previs_scenes(scene):
        if previs.sequence_editor is None:
            continue
        for strip in sequencer.all_strips(previs.sequence_editor):
            kind = strip.get("btdm_kind")
            if kind in shown:
                strip.mute = not shown[kind]
                strip.blend_alpha = s.plate_opacity if kind == "posemaps" else 1.0
