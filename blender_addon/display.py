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

Several characters (one PNG sequence each) are stacked by :func:`place_layers`: per stretch of frames in which
their order of distance from the camera stays the same (:mod:`.layers`), one strip per character on
consecutive channels, the nearer higher, and one camera background image per character, farthest first, so
the nearer person covers the farther in every frame.

The camera's images carry ``btdm_kind``, ``btdm_key``, ``btdm_character`` and ``btdm_scene``; the pre-vis scene carries
``btdm_previs_key`` and ``btdm_shot_scene``, its Scene strip ``btdm_kind`` ``"shot"``. All are plain
data: removing the add-on leaves the .blend as it is.
"""

from __future__ import annotations

import contextlib
import os

import bpy

from . import sequencer

__all__ = ["KINDS", "camera_layers", "place", "place_layers", "previs_scene", "shot_of", "sync"]

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
    return place_layers(scene, camera, [(folder, name, props)], [(first, first + count, (0,))], kind=kind,
                        key=key)[0]


def place_layers(scene, camera, layers, segments, *, kind: str, key: str) -> list:
    """Several characters' results at once: ``layers`` ``[(folder, name, props)]`` (one PNG sequence each, named by
    scene frame), stacked by ``segments`` ``[(start, end, order)]`` (scene frames ``start .. end-1``, ``order``
    indexing ``layers`` farthest first, :func:`.layers.depth_segments`) so the nearer person covers the farther:
    on higher sequencer channels (the shot's muted strips, the pre-vis scene's) and later in the camera's
    background images, which Blender draws in list order. One layer and one segment is the single-character case.
    Returns the shot's (muted) strips."""
    made = sequencer.place_layered_strips(scene, layers, segments, key=key, kind=kind, above=kind == "plates",
                                          fit=STRIP_FIT[kind], mute=True)
    if camera is not None and camera.type == "CAMERA":
        camera_layers(scene, camera, layers, segments, kind=kind, key=key)
        previs = previs_scene(scene, camera, key)
        sequencer.place_layered_strips(previs, layers, segments, key=key, kind=kind, above=True, fit=STRIP_FIT[kind])
    s = scene.btdm
    s.show_plates, s.show_posemaps = kind == "plates", kind == "posemaps"
    sync(scene)
    return made


def _our_image(image, key: str, kind: str) -> bool:
    return image is not None and image.get("btdm_key") == key and image.get("btdm_kind") == kind


def _layer_image(scene, folder: str, first: int, *, kind: str, key: str, character: str):
    """The image (a PNG sequence) of one character's result, reused from an earlier placement when there is one."""
    path = sequencer.blend_relative(os.path.join(folder, f"{first:06d}.png"))
    found = [im for im in bpy.data.images if _our_image(im, key, kind) and im.get("btdm_character", "") == character]
    if found:
        image = found[0]
    else:
        image = bpy.data.images.load(bpy.path.abspath(path), check_existing=False)
        image.name = f"BTDM {kind} {key}" + (f" {character}" if character else "")
        image["btdm_kind"], image["btdm_key"], image["btdm_character"] = kind, key, character
    image["btdm_scene"] = scene.name
    image.source = "SEQUENCE"
    if image.filepath != path:
        image.filepath = path
    image.reload()
    return image


def camera_layers(scene, camera, layers, segments, *, kind: str, key: str) -> list:
    """The camera's background images showing this result: per segment one per character, farthest first (Blender
    draws a camera's background images in list order, so the nearer covers the farther). The earlier images of
    this key and kind are replaced. Returns the new backgrounds."""
    data = camera.data
    for background in [b for b in data.background_images if _our_image(b.image, key, kind)]:
        data.background_images.remove(background)
    first = min(seg[0] for seg in segments)
    images = [_layer_image(scene, folder, first, kind=kind, key=key, character=str(props.get("character", "")))
              for folder, _name, props in layers]
    made = []
    # Later segments first: Blender also shows a sequence at the frame just before its range, so at a segment's
    # last frame the next segment's images are drawn too; listed before, they lie under the segment's own.
    for start, stop, order in sorted(segments, reverse=True):
        for index in order:
            background = data.background_images.new()
            background.image = images[index]
            user = background.image_user
            # Blender shows file number (F - frame_start + 1) + frame_offset at scene frame F: file F.
            user.frame_start, user.frame_duration, user.frame_offset = start, stop - start, start - 1
            user.use_auto_refresh, user.use_cyclic = True, False
            background.frame_method = CAMERA_FIT[kind]
            background.display_depth = "FRONT"  # over the set: the plates are transparent outside the person
            made.append(background)
    data.show_background_images = True
    return made


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
