"""Several characters in one shot (issue 24 item 4): several armatures selected, one engine job each (queued), each
with its own appearance and seed, their plates stacked by distance from the camera frame by frame, so the nearer
person covers the farther where they overlap, in the pre-vis scene's render and in camera view; takes of several
characters shown and deleted like any take; all or nothing when one character fails.

As in ``test_addon.py``: every bpy test runs in its own Python process against a real ``btdm serve`` on a free
loopback port (texture transfer: no network, seconds). Renders are real Workbench renders; camera view is put
together from what the camera's background images say (the bpy module draws no viewport), by Blender's rule: in
list order, each image of a sequence from the frame before its range to its last frame. Set
``BTDM_VIEW_IMAGES=DIR`` to keep the pictures there to look at.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_addon import Engine, run_bpy

from blender_addon.engine_client import EngineClient

pytestmark = [pytest.mark.blender, pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                                     reason="needs the bpy module (pip install -e .[blender])")]

SCRIPT = r"""
import os
import blender_addon
from blender_addon import sequencer
from test_addon_scenes import make_scene

OUT = os.getcwd()
scene, alice = make_scene("mixamo", frames=8)
scene.render.resolution_x, scene.render.resolution_y = 320, 180
for name, loc, rot, size, color in (("Floor", (0, 0, 0), (0, 0, 0), 30, (0.35, 0.3, 0.25, 1)),
                                    ("Wall", (0, 4, 0), (1.5708, 0, 0), 30, (0.05, 0.45, 0.1, 1))):
    bpy.ops.mesh.primitive_plane_add(size=size, location=loc, rotation=rot)
    obj = bpy.context.active_object
    obj.name, obj.color = name, color
scene.render.engine = "BLENDER_WORKBENCH"
scene.display.shading.light, scene.display.shading.color_type = "FLAT", "OBJECT"
scene.view_settings.view_transform = "Standard"
alice.name = "Alice"  # stands still, 5 m from the camera
# Bob: the same rig and motion, carried by an empty from 2 m behind Alice to 1.5 m in front of her (he walks past)
bob = alice.copy()
bob.name = "Bob"
scene.collection.objects.link(bob)
carrier = bpy.data.objects.new("BobPath", None)
scene.collection.objects.link(carrier)
bob.parent = carrier
for frame, y in ((1, 2.0), (8, -1.5)):
    carrier.location = (0.2, y, 0)
    carrier.keyframe_insert("location", frame=frame)
for fc in carrier.animation_data.action.fcurves if hasattr(carrier.animation_data.action, "fcurves") else ():
    for k in fc.keyframe_points:
        k.interpolation = "LINEAR"
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(OUT, "shot.blend"))
blender_addon.register()
s = scene.btdm
s.method, s.seed = "TEXTURE", 3
c = bob.btdm_character
c.use_own_seed, c.seed = True, 7
c.use_own_appearance, c.appearance = True, "PHOTO"  # his own look: a red and white photo, posed at frame 4
c.appearance_image, c.reference_frame = os.path.join(OUT, "bob_photo.png"), 4
for o in scene.objects:
    o.select_set(o.name in ("Alice", "Bob"))

def render(sc, name, frame):
    for each in bpy.data.scenes:  # render(scene=...) takes the frame of the window's scene
        each.frame_current = frame
    sc.render.filepath = os.path.join(OUT, name)
    sc.render.image_settings.file_format = "PNG"
    bpy.ops.render.render(write_still=True, scene=sc.name)
    return name

def strips(sc):
    se = sc.sequence_editor
    return [] if se is None else sorted(
        ({"name": x.name, "kind": x.get("btdm_kind"), "character": x.get("btdm_character"), "channel": x.channel,
          "start": x.frame_final_start, "end": x.frame_final_end, "mute": x.mute, "take": x.get("btdm_take"),
          "dir": bpy.path.abspath(getattr(x, "directory", "")), "seed": x.get("btdm_seed")}
         for x in sequencer.all_strips(se)), key=lambda d: (d["start"], d["channel"]))

def backgrounds(cam):
    return [{"character": b.image.get("btdm_character") if b.image else None, "kind": b.image.get("btdm_kind"),
             "path": bpy.path.abspath(b.image.filepath), "start": b.image_user.frame_start,
             "duration": b.image_user.frame_duration, "offset": b.image_user.frame_offset, "depth": b.display_depth,
             "alpha": round(b.alpha, 4), "show": b.show_background_image} for b in cam.data.background_images]

out = {}
# the panel lists both characters, Bob with his own seed and look
from blender_addon.ui import panels
class Recorder:
    def __init__(self, lines): self.lines = lines
    def _sub(self, *a, **k): return Recorder(self.lines)
    row = column = box = split = _sub
    def prop(self, data, name, **k): self.lines.append(f"prop {name}")
    def operator(self, idname, **k):
        self.lines.append(f"op {idname}")
        return type("Props", (), {})()
    def label(self, text="", **k): self.lines.append(f"label {text}")
lines = []
panels.draw_characters(Recorder(lines), bpy.context)
out["panel"] = lines
try:  # btdm previs keeps one character's skeleton file: refused with several selected
    bpy.ops.btdm.generate_previs(skeleton_path=os.path.join(OUT, "skeleton.npz"))
    out["one_only"] = "no error"
except RuntimeError as exc:
    out["one_only"] = str(exc)
bpy.ops.btdm.generate_previs()
previs = bpy.data.scenes["Scene_ShotCam pre-vis"]
out["take1"] = {"shot": strips(scene), "previs": strips(previs), "camera": backgrounds(scene.camera)}
for frame in (2, 7):
    render(previs, f"previs_{frame}.png", frame)
    render(scene, f"set_{frame}.png", frame)
out["result"] = [str(x) for x in blender_addon.runs.latest(scene).result.split("\n")]
# a second take (other seeds), then the first one back, then the second deleted
s.seed, c.seed = 4, 8
bpy.ops.btdm.generate_previs()
out["take2"] = {"shot": strips(scene), "camera": len(scene.camera.data.background_images)}
bpy.ops.btdm.take_show(take=1)
out["shown1"] = {"shot": strips(scene), "previs": strips(previs), "camera": backgrounds(scene.camera)}
bpy.ops.btdm.take_delete(take=2)
# a character whose own look cannot be made: refused before any job, naming him
c.appearance, c.appearance_image = "PHOTO", "//missing.png"
try:
    bpy.ops.btdm.generate_previs()
    out["refused"] = "no error"
except RuntimeError as exc:
    out["refused"] = str(exc)
blender_addon.unregister()
print("RESULT " + json.dumps(out))
"""


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def _over(under: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4].astype(np.float64) / 255.0
    return np.round(rgba[..., :3] * a + under[..., :3] * (1.0 - a)).astype(np.uint8)


def _camera_view(set_bgr: np.ndarray, backgrounds: list[dict], frame: int) -> np.ndarray:
    """What camera view draws at ``frame``: the set, then each background image Blender shows at that frame (from the
    frame before its range to its last frame, the file its image user picks), alpha over, in list order."""
    view = set_bgr[..., :3].copy()
    for b in backgrounds:
        if not b["start"] - 1 <= frame <= b["start"] + b["duration"] - 1:
            continue
        number = min(max(frame - b["start"] + 1, 0), b["duration"]) + b["offset"]
        view = _over(view, _read(Path(b["path"]).with_name(f"{number:06d}.png")))
    return view


def _who_is_on_top(picture: np.ndarray, near: np.ndarray, far: np.ndarray) -> tuple[float, float, int]:
    """Mean colour difference of ``picture`` to the nearer and to the farther plate where both show the person (the
    nearer opaque: what lies under it cannot show through)."""
    both = (near[..., 3] >= 250) & (far[..., 3] >= 128)
    diff_near = np.abs(picture[both].astype(int) - near[..., :3][both].astype(int)).mean()
    diff_far = np.abs(picture[both].astype(int) - far[..., :3][both].astype(int)).mean()
    return float(diff_near), float(diff_far), int(both.sum())


def test_two_characters_one_job_each_the_nearer_covers_the_farther(engine: Engine, tmp_path: Path) -> None:
    stripes = np.zeros((180, 320, 3), np.uint8)
    stripes[...] = (40, 40, 230)  # BGR: red
    stripes[::12] = stripes[1::12] = stripes[2::12] = (255, 255, 255)
    cv2.imwrite(str(tmp_path / "bob_photo.png"), stripes)
    result = run_bpy(SCRIPT, tmp_path, env={"BTDM_ENGINE_URL": engine.url})
    panel = result["panel"]
    assert "label 2 characters, one job each (queued)" in panel
    assert "label Alice" in panel and "label Bob" in panel and "label seed 3" in panel  # Alice: the shot's seed
    assert "prop seed" in panel and "op btdm.use_reference_pose" in panel  # Bob: his own seed and look

    assert "2 armatures are selected" in result["one_only"] and "pick it in the panel's Armature" in result["one_only"]
    take = tmp_path / "previs" / "shot_Scene_ShotCam" / "take_001"
    record = json.loads((take / "take.json").read_text())
    chars = {c["name"]: c for c in record["characters"]}
    assert sorted(chars) == ["Alice", "Bob"] and chars["Alice"]["seed"] == 3 and chars["Bob"]["seed"] == 7
    for name in ("Alice", "Bob"):
        assert sorted(p.name for p in (take / name).glob("*.png")) == [f"{f:06d}.png" for f in range(1, 9)]
    # one engine job each, with its own seed and look
    client = EngineClient(engine.url)
    jobs = {name: client.job(c["job_id"]) for name, c in chars.items()}
    assert jobs["Alice"]["id"] != jobs["Bob"]["id"] and all(j["state"] == "succeeded" for j in jobs.values())
    # Bob walks from 2 m behind Alice to 1.5 m in front of her: farther, then nearer
    alice_d, bob_d = np.array(chars["Alice"]["depths"]), np.array(chars["Bob"]["depths"])
    assert bob_d[0] > alice_d[0] + 1.5 and bob_d[-1] < alice_d[-1] - 1.0

    # the pre-vis scene: per stretch of frames one strip per character, the nearer on the higher channel
    plates = [x for x in result["take1"]["previs"] if x["kind"] == "plates"]
    segments = sorted({(x["start"], x["end"]) for x in plates})
    assert len(segments) == 2 and segments[0][0] == 1 and segments[-1][1] == 9 and segments[0][1] == segments[1][0]
    for (start, end), near in zip(segments, ("Alice", "Bob"), strict=True):
        here = {x["character"]: x["channel"] for x in plates if (x["start"], x["end"]) == (start, end)}
        far = "Bob" if near == "Alice" else "Alice"
        assert here[near] > here[far] > 1, (start, here)  # channel 1: the shot itself
    shot_strips = [x for x in result["take1"]["shot"] if x["kind"] == "plates"]
    assert len(shot_strips) == 4 and all(x["mute"] and x["take"] == 1 for x in shot_strips)
    assert {x["character"]: x["seed"] for x in shot_strips} == {"Alice": 3, "Bob": 7}

    # the camera's background images: later stretch first, farthest first within each
    cam = [b for b in result["take1"]["camera"] if b["kind"] == "plates"]
    assert [(b["start"], b["character"]) for b in cam] == [
        (segments[1][0], "Alice"), (segments[1][0], "Bob"), (1, "Bob"), (1, "Alice")]
    assert all(b["depth"] == "FRONT" and b["offset"] == b["start"] - 1 for b in cam)

    # look: where the two overlap, the picture is the nearer one's, in the render and in camera view
    keep = {}
    for frame, near, far in ((2, "Alice", "Bob"), (7, "Bob", "Alice")):
        near_plate, far_plate = _read(take / near / f"{frame:06d}.png"), _read(take / far / f"{frame:06d}.png")
        render = _read(tmp_path / f"previs_{frame}.png")
        view = _camera_view(_read(tmp_path / f"set_{frame}.png"), cam, frame)
        for picture in (render[..., :3], view):
            d_near, d_far, overlap = _who_is_on_top(picture, near_plate, far_plate)
            assert overlap > 50, f"frame {frame}: the two barely overlap ({overlap} px)"
            assert d_near < 6 and d_far > d_near + 10, (frame, d_near, d_far)
        keep[f"previs_{frame}.png"] = render
        keep[f"camera_view_{frame}.png"] = view
    # Bob wears his own photo's red and white, Alice the model's look: they are told apart by colour
    alice, bob = _read(take / "Alice" / "000007.png"), _read(take / "Bob" / "000007.png")
    assert np.abs(alice[alice[..., 3] == 255][:, :3].mean(0) - bob[bob[..., 3] == 255][:, :3].mean(0)).max() > 20
    out = os.environ.get("BTDM_VIEW_IMAGES")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        for name, image in keep.items():
            cv2.imwrite(str(Path(out) / name), image)

    assert "2 characters (Alice, Bob)" in result["result"][0]
    # takes: the second take replaced the strips, Show Take 1 put the first back (stacked as before), take 2 deleted
    assert {x["take"] for x in result["take2"]["shot"] if x["kind"] == "plates"} == {2}
    assert result["take2"]["camera"] == len(result["take1"]["camera"])
    assert result["shown1"]["previs"] == result["take1"]["previs"]
    assert [b["character"] for b in result["shown1"]["camera"]] == [b["character"] for b in result["take1"]["camera"]]
    assert not (take.parent / "take_002").exists()
    assert result["refused"].startswith("Error: BTDM: Bob: photo: no such file") and "missing.png" in result["refused"]
    assert not (take.parent / "take_002").exists() and not (take.parent / "take_003").exists()
    print(json.dumps({k: v for k, v in result.items() if k != "panel"}, indent=1)[:3000])


# ---------------------------------------------------------------------------- no bpy
def test_depth_segments() -> None:
    from blender_addon.layers import depth_segments

    assert depth_segments([[5.0] * 4], 1) == [(1, 5, (0,))]
    # B (index 1) walks from behind A to in front of it: farthest first
    a, b = [5.0] * 8, [7.0, 6.5, 6.0, 5.5, 4.9, 4.5, 4.0, 3.5]
    assert depth_segments([a, b], 10) == [(10, 14, (1, 0)), (14, 18, (0, 1))]
    # a swap of one or two frames (side by side, about as far) is merged into the order before it
    b = [7.0, 7.0, 7.0, 4.9, 7.0, 7.0, 7.0, 7.0]
    assert depth_segments([a, b], 1) == [(1, 9, (1, 0))]
    b = [4.0, 7.0, 7.0, 7.0, 7.0, 4.0, 4.0, 4.0]  # a short first stretch joins the next
    assert depth_segments([a, b], 1) == [(1, 6, (1, 0)), (6, 9, (0, 1))]
    three = [[5.0] * 6, [6.0] * 6, [4.0] * 6]
    assert depth_segments(three, 1) == [(1, 7, (1, 0, 2))]


def test_a_group_is_all_or_nothing() -> None:
    """One character fails: the others are cancelled, and the group says who failed."""
    from blender_addon.engine import EngineSettings
    from blender_addon.jobs import RunGroup, RunRequest, RunSnapshot

    def request(name: str) -> RunRequest:
        return RunRequest(kind="plates", skeleton=b"", params={"seed": 0}, out_dir=f"/nonexistent/take_001/{name}",
                          first_frame=1, num_frames=4, settings=EngineSettings(), character=name)

    group = RunGroup([request("Alice"), request("Bob")])
    alice, bob = group.members
    stopped = threading.Event()

    def alice_runs() -> RunSnapshot:  # a long job, until it is cancelled
        alice._update(phase="running", job_id="a" * 32, frames_done=2)
        while not alice._cancel.is_set():
            time.sleep(0.01)
        stopped.set()
        alice._update(phase="cancelled", message="cancelled: no plate was placed")
        return alice.snapshot()

    def bob_fails() -> RunSnapshot:
        time.sleep(0.05)
        bob._update(phase="failed", message="the engine refused the job: pick another Bone map or load a custom map")
        return bob.snapshot()

    alice.run, bob.run = alice_runs, bob_fails
    snap = group.run()
    assert stopped.is_set() and snap.phase == "failed"
    assert snap.message == ("Bob: the engine refused the job: pick another Bone map or load a custom map; the other "
                            "characters were cancelled: no plate was placed")
    assert snap.frames_done == 2 and snap.frames_total == 8

