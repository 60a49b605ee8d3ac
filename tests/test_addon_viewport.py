"""Seeing pre-vis while animating (issue 24 item 1): the plates on the shot camera's background, over the set, with
an opacity and a toggle; a pre-vis scene that plays and renders the set with the plates; the shot's own F12 still
renders the set; pose-map previews that lie on the camera frame.

As in ``test_addon.py``: every bpy test runs in its own Python process, against a real ``btdm serve`` subprocess
on a free loopback port (texture transfer: no network, seconds), killed at teardown. Renders are real Workbench
renders at 192x108. The bpy module cannot draw a 3D viewport (GPU drawing is refused in background mode), so the
camera view is put together from what the camera's background says: the image and the file Blender picks for the
frame (``image_user.frame_current``), its frame method, depth and opacity, over the shot's render. Set
``BTDM_VIEW_IMAGES=DIR`` to keep the pictures there to look at.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_addon import Engine, run_bpy

pytestmark = [pytest.mark.blender, pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                                     reason="needs the bpy module (pip install -e .[blender])")]

SCRIPT = r"""
import os
import blender_addon
from blender_addon import display
from test_addon_scenes import make_scene

OUT = @OUT@
scene, arm = make_scene("mixamo", frames=4)
# the set: a floor and a green wall behind the rig, flat-lit object colours, no view transform
for name, loc, rot, size, color in (("Floor", (0, 0, 0), (0, 0, 0), 30, (0.35, 0.3, 0.25, 1)),
                                    ("Wall", (0, 3, 0), (1.5708, 0, 0), 30, (0.05, 0.45, 0.1, 1))):
    bpy.ops.mesh.primitive_plane_add(size=size, location=loc, rotation=rot)
    obj = bpy.context.active_object
    obj.name, obj.color = name, color
scene.render.engine = "BLENDER_WORKBENCH"
scene.display.shading.light, scene.display.shading.color_type = "FLAT", "OBJECT"
scene.view_settings.view_transform = "Standard"
bpy.context.view_layer.objects.active = arm
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(OUT, "shot.blend"))

def render(sc, name, frame=2):
    sc.frame_current = frame
    sc.render.filepath = os.path.join(OUT, name)
    sc.render.image_settings.file_format = "PNG"
    bpy.ops.render.render(write_still=True, scene=sc.name)
    return name

def backgrounds(cam):
    return [{"kind": b.image.get("btdm_kind") if b.image else None, "path": b.image.filepath if b.image else "",
             "source": b.image.source if b.image else "", "method": b.frame_method, "depth": b.display_depth,
             "alpha": round(b.alpha, 4), "show": b.show_background_image} for b in cam.data.background_images]

def strips(sc):
    se = sc.sequence_editor
    return [] if se is None else [
        {"name": s.name, "type": s.type, "kind": s.get("btdm_kind"), "channel": s.channel, "mute": s.mute,
         "blend": s.blend_type, "alpha": round(s.blend_alpha, 4), "start": s.frame_final_start, "end": s.frame_final_end,
         "dir": bpy.path.abspath(getattr(s, "directory", "")), "scale": round(s.transform.scale_x, 4),
         "scene": s.scene.name if s.type == "SCENE" else None,
         "camera": s.scene_camera.name if s.type == "SCENE" and s.scene_camera else None}
        for s in sc.sequence_editor.strips_all]

def camera_frames(cam, kind):
    # the file Blender's image user picks at each scene frame (what camera view draws)
    [bg] = [b for b in cam.data.background_images if b.image and b.image.get("btdm_kind") == kind]
    picked = {}
    for f in range(scene.frame_start, scene.frame_end + 1):
        scene.frame_set(f)
        picked[f] = bg.image_user.frame_current
    scene.frame_set(2)
    return picked

class Recorder:
    def __init__(self, lines): self.lines = lines
    def _sub(self, *a, **k): return Recorder(self.lines)
    row = column = box = split = _sub
    def __setattr__(self, k, v): object.__setattr__(self, k, v)
    def prop(self, data, name, **k): self.lines.append(f"prop {name}")
    def operator(self, idname, **k): self.lines.append(f"op {idname}")
    def label(self, text="", **k): self.lines.append(f"label {text}")
    def separator(self, **k): pass

out = {"before": render(scene, "shot_before.png")}
blender_addon.register()
scene.btdm.method = "TEXTURE"
cam = scene.camera
out["poll_before"] = bpy.ops.btdm.open_previs_scene.poll()
bpy.ops.btdm.generate_previs()
out["after"] = render(scene, "shot_after_generate.png")
out["shot_strips"] = strips(scene)
out["backgrounds"] = backgrounds(cam)
out["picked"] = camera_frames(cam, "plates")
previs = bpy.data.scenes.get("Scene_ShotCam pre-vis")
out["previs_strips"] = strips(previs)
out["previs"] = [previs.render.resolution_x, previs.render.resolution_y, previs.frame_start, previs.frame_end,
                 previs.view_settings.view_transform]
out["previs_render"] = render(previs, "previs_frame2.png")
out["poll_after"] = bpy.ops.btdm.open_previs_scene.poll()
lines = []
from blender_addon.ui import panels
panels.draw_view(Recorder(lines), bpy.context)
out["panel"] = lines
# the toggle and the opacity
scene.btdm.plate_opacity = 0.5
scene.btdm.show_plates = False
out["hidden"] = [backgrounds(cam), strips(previs)]
out["shot_hidden"] = render(scene, "shot_plates_hidden.png")
scene.btdm.show_plates = True
out["shown"] = backgrounds(cam)
# generating from the pre-vis scene is refused in the panel's words
with bpy.context.temp_override(scene=previs):
    try:
        bpy.ops.btdm.generate_previs()
        out["from_previs"] = "no error"
    except RuntimeError as exc:
        out["from_previs"] = str(exc)
    lines = []
    panels.draw_view(Recorder(lines), bpy.context)
    out["previs_panel"] = lines
# a second take, then the first one back: the camera and the pre-vis scene follow the strip
scene.btdm.seed = 2
bpy.ops.btdm.generate_previs()
out["take2"] = [backgrounds(cam), strips(previs), strips(scene)]
bpy.ops.btdm.take_show(take=1)
out["take1"] = [backgrounds(cam), strips(previs), strips(scene)]
# pose-map previews: on the camera frame, in the camera and in the pre-vis scene; the shot's F12 unchanged
bpy.ops.btdm.preview_posemaps()
out["posemaps"] = [backgrounds(cam), strips(previs), strips(scene), [scene.btdm.show_plates, scene.btdm.show_posemaps]]
out["posemaps_picked"] = camera_frames(cam, "posemaps")
out["shot_after_posemaps"] = render(scene, "shot_after_posemaps.png")
scene.btdm.plate_opacity = 1.0
out["previs_posemaps"] = render(previs, "previs_posemaps_frame2.png")
blender_addon.unregister()
print("RESULT " + json.dumps(out))
"""


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def _over(under: np.ndarray, rgba: np.ndarray, opacity: float) -> np.ndarray:
    """``rgba`` (BGRA uint8) alpha over ``under`` (BGR) at ``opacity``: what camera view draws in front of the set."""
    a = rgba[..., 3:4].astype(np.float64) / 255.0 * opacity
    return np.round(rgba[..., :3] * a + under[..., :3] * (1.0 - a)).astype(np.uint8)


def _crop_fill(square: np.ndarray, width: int, height: int) -> np.ndarray:
    """A square picture scaled to cover ``width`` x ``height`` and cut to it (camera background ``CROP``,
    sequencer ``FILL``)."""
    side = square.shape[0]
    scale = max(width, height) / side
    big = cv2.resize(square, (round(side * scale), round(side * scale)), interpolation=cv2.INTER_LINEAR)
    y0, x0 = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
    return big[y0:y0 + height, x0:x0 + width]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _keep(out: Path, names: dict[str, np.ndarray | Path]) -> None:
    keep = os.environ.get("BTDM_VIEW_IMAGES")
    if not keep:
        return
    Path(keep).mkdir(parents=True, exist_ok=True)
    for name, image in names.items():
        if isinstance(image, Path):
            shutil.copy(image, Path(keep) / name)
        else:
            cv2.imwrite(str(Path(keep) / name), image)


def test_plates_in_camera_view_a_previs_scene_and_the_shots_own_render(engine: Engine, tmp_path: Path) -> None:
    result = run_bpy(SCRIPT.replace("@OUT@", repr(str(tmp_path))), tmp_path, env={"BTDM_ENGINE_URL": engine.url})
    folder = tmp_path / "previs" / "shot_Scene_ShotCam"
    take1, take2 = folder / "take_001", folder / "take_002"

    # F12 on the shot renders the set, exactly as before Generate, plates on the strip or not, pose maps too
    before = _read(tmp_path / result["before"])
    wall = np.all(np.abs(before[..., :3].astype(int) - before[5, 96, :3]) <= 2, axis=-1)
    assert before[5, 96, 1] > 2 * before[5, 96, 2] and wall.mean() > 0.3  # the green wall fills the top
    for name in ("after", "shot_hidden", "shot_after_posemaps"):
        assert np.abs(_read(tmp_path / result[name]).astype(int) - before).max() <= 1, name

    # the shot keeps its one plate strip (takes switch it), muted: F12 does not render the sequencer instead
    [strip] = result["shot_strips"]
    assert strip["kind"] == "plates" and strip["mute"] and strip["blend"] == "ALPHA_OVER"
    assert Path(strip["dir"]).resolve() == take1.resolve() and (strip["start"], strip["end"]) == (1, 5)

    # the camera's background: the take's PNG sequence, frame F shows file F, in front of the set, at the opacity
    [bg] = result["backgrounds"]
    assert bg == {"kind": "plates", "path": "//previs/shot_Scene_ShotCam/take_001/000001.png", "source": "SEQUENCE",
                  "method": "FIT", "depth": "FRONT", "alpha": 0.8, "show": True}
    assert result["picked"] == {"1": 1, "2": 2, "3": 3, "4": 4}

    # the toggle and the opacity reach the camera and the pre-vis scene
    [hidden_bg], hidden_previs = result["hidden"]
    assert not hidden_bg["show"] and hidden_bg["alpha"] == 0.5
    assert [s["mute"] for s in hidden_previs if s["kind"] == "plates"] == [True]
    assert result["shown"][0]["show"] and result["shown"][0]["alpha"] == 0.5

    # the pre-vis scene: the shot through its camera on channel 1, the plates alpha over it
    shot_strip, plate_strip = sorted(result["previs_strips"], key=lambda s: s["channel"])
    assert (shot_strip["type"], shot_strip["scene"], shot_strip["camera"], shot_strip["channel"]) == (
        "SCENE", "Scene", "ShotCam", 1)
    assert (shot_strip["start"], shot_strip["end"]) == (1, 5)
    assert plate_strip["kind"] == "plates" and plate_strip["blend"] == "ALPHA_OVER" and not plate_strip["mute"]
    assert Path(plate_strip["dir"]).resolve() == take1.resolve()
    assert result["previs"] == [192, 108, 1, 4, "Standard"]
    # its render is the set with the person: the plate where it is opaque, the set where it is clear
    plate = _read(take1 / "000002.png")
    composite = _read(tmp_path / result["previs_render"])[..., :3]
    opaque, clear = plate[..., 3] == 255, plate[..., 3] == 0
    assert opaque.sum() > 50 and clear.mean() > 0.5
    assert np.abs(composite[clear].astype(int) - before[..., :3][clear]).max() <= 2  # the set
    assert np.abs(composite[opaque].astype(int) - plate[..., :3][opaque]).mean() <= 2  # the person
    assert np.abs(composite.astype(int) - _over(before, plate, 1.0)).mean() <= 1.0  # alpha over, everywhere

    # the camera view at frame 2: the set with the file Blender picks for frame 2, FIT (same aspect), at 0.8
    picked = take1 / f"{result['picked']['2']:06d}.png"
    camera_view = _over(before, _read(picked), 0.8)
    assert (np.abs(camera_view.astype(int) - before[..., :3]).max(axis=-1) > 20).sum() >= opaque.sum() * 0.9

    assert not result["poll_before"] and result["poll_after"]
    assert "prop show_plates" in result["panel"] and "prop plate_opacity" in result["panel"]
    assert "op btdm.open_previs_scene" in result["panel"]
    assert "is the pre-vis of scene 'Scene' (the set with the plates): generate from that scene" in result["from_previs"]
    assert "label The pre-vis of scene Scene: the set with the plates" in result["previs_panel"]

    # a new take moves the camera and the pre-vis scene to it; Show Take moves them back
    for (bgs, previs, shot), take in ((result["take2"], take2), (result["take1"], take1)):
        assert [b["path"] for b in bgs] == [f"//previs/shot_Scene_ShotCam/{take.name}/000001.png"]
        assert [Path(s["dir"]).resolve() for s in previs if s["kind"] == "plates"] == [take.resolve()]
        assert [(Path(s["dir"]).resolve(), s["mute"]) for s in shot] == [(take.resolve(), True)]
        assert len([s for s in previs if s["type"] == "SCENE"]) == 1

    # pose maps: square pictures of the whole camera view; the camera crops (and the strips fill) the frame with
    # their middle band, so the body lies where the plate's person does
    bgs, previs, shot, toggles = result["posemaps"]
    assert toggles == [False, True]  # the camera shows the latest result
    maps_bg = [b for b in bgs if b["kind"] == "posemaps"]
    assert maps_bg == [{"kind": "posemaps", "path": "//previs/shot_Scene_ShotCam/posemaps/000001.png",
                        "source": "SEQUENCE", "method": "CROP", "depth": "FRONT", "alpha": 0.5, "show": True}]
    assert [b["show"] for b in bgs if b["kind"] == "plates"] == [False]
    assert result["posemaps_picked"] == {"1": 1, "2": 2, "3": 3, "4": 4}
    shot_maps = [s for s in shot if s["kind"] == "posemaps"]
    assert len(shot_maps) == 1 and shot_maps[0]["mute"]
    previs_maps = [s for s in previs if s["kind"] == "posemaps"]
    assert len(previs_maps) == 1 and not previs_maps[0]["mute"]
    maps = _read(folder / "posemaps" / "000002.png")
    assert maps.shape[0] == maps.shape[1]  # square, as the engine renders them
    scale = 192 / maps.shape[0]
    assert previs_maps[0]["scale"] == pytest.approx(scale, abs=1e-3) and shot_maps[0]["scale"] == pytest.approx(scale, abs=1e-3)
    person = cv2.dilate((plate[..., 3] > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    on_frame = _crop_fill(maps[..., :3], 192, 108)
    body = on_frame.max(axis=-1) > 30
    assert _iou(body, person) > 0.5, _iou(body, person)
    # the pre-vis scene's own render of the pose maps (opacity 1, plates hidden): Blender's FILL puts them there too
    rendered_maps = _read(tmp_path / result["previs_posemaps"])[..., :3]
    rendered_body = np.abs(rendered_maps.astype(int) - before[..., :3]).max(axis=-1) > 30
    rendered_body &= rendered_maps.max(axis=-1) > 30
    assert _iou(rendered_body, person) > 0.5, _iou(rendered_body, person)
    camera_maps = _over(before, np.dstack([on_frame, np.full(on_frame.shape[:2], 255, np.uint8)]), 0.5)

    _keep(tmp_path, {"shot_before.png": tmp_path / result["before"], "shot_after_generate.png": tmp_path / result["after"],
                     "previs_frame2.png": tmp_path / result["previs_render"], "camera_view_frame2.png": camera_view,
                     "camera_posemaps_frame2.png": camera_maps,
                     "previs_posemaps_frame2.png": tmp_path / result["previs_posemaps"],
                     "plate_frame2.png": take1 / "000002.png", "posemap_frame2.png": folder / "posemaps" / "000002.png"})
