"""The add-on at its edges: shots sharing a folder, rigs in other units, Ctrl-C in a headless run.

As in ``test_addon.py``: every bpy test runs in its own Python process, against a real ``btdm
serve`` subprocess on a free loopback port (the embedded model, the texture-transfer method or two
sampling steps), killed at teardown.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_addon import REPO, Engine, run_bpy

from blender_addon.engine_client import EngineClient

pytestmark = [pytest.mark.blender, pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                                     reason="needs the bpy module (pip install -e .[blender])")]

SHOT = {"blend": "shot010.blend", "scene": "Scene", "camera": "Camera"}


def _frames(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


# ---------------------------------------------------------------------------- shots sharing a folder
def test_a_folder_belongs_to_one_shot(tmp_path: Path) -> None:
    from blender_addon.jobs import WRITTEN_FILE, RunFailed, _commit, check_output_folder

    out = tmp_path / "out"

    def stage(names: list[str], tag: str) -> str:
        staging = out / ".btdm-job"
        staging.mkdir(parents=True)
        for name in names:
            (staging / name).write_bytes(tag.encode() + name.encode())
        return str(staging)

    _commit(stage(["000001.png", "000002.png"], "010"), str(out), SHOT)
    record = json.loads((out / WRITTEN_FILE).read_text())
    assert record == {"shot": SHOT, "frames": ["000001.png", "000002.png"]}
    check_output_folder(str(out), SHOT)  # its own shot: fine
    for other in ({**SHOT, "blend": "shot020.blend"}, {**SHOT, "scene": "Scene.001"}, {**SHOT, "camera": "CamB"}):
        with pytest.raises(RunFailed, match=r"holds the 2 frame\(s\) of another shot \(shot010.blend, scene 'Scene', "
                                            r"camera 'Camera'\); choose another Output folder"):
            check_output_folder(str(out), other)
        with pytest.raises(RunFailed, match="another shot"):
            _commit(stage(["000001.png"], "020"), str(out), other)
        (out / ".btdm-job" / "000001.png").unlink()
        (out / ".btdm-job").rmdir()
    assert _frames(out) == {"000001.png": b"010000001.png", "000002.png": b"010000002.png"}
    # Frames recorded by an older add-on, without their shot: taken only when this scene's strip shows them.
    (out / WRITTEN_FILE).write_text(json.dumps({"frames": ["000001.png", "000002.png"]}))
    with pytest.raises(RunFailed, match=r"2 frame\(s\) that pre-vis wrote for a shot it did not record"):
        check_output_folder(str(out), SHOT)
    _commit(stage(["000001.png"], "new"), str(out), SHOT, adopt=True)
    assert _frames(out) == {"000001.png": b"new000001.png"}
    assert json.loads((out / WRITTEN_FILE).read_text())["shot"] == SHOT
    # Another shot's frames that are gone from the disk hold nothing: the folder is free again.
    (out / "000001.png").unlink()
    check_output_folder(str(out), {**SHOT, "blend": "shot020.blend"})
    for bad in ("[1, 2]", '{"frames": 3}', "{not json"):
        (out / WRITTEN_FILE).write_text(bad)
        with pytest.raises(RunFailed, match="unreadable"):
            check_output_folder(str(out), SHOT)


def test_two_blend_files_in_one_folder_keep_their_plates(engine: Engine, tmp_path: Path) -> None:
    result = run_bpy(f"""
        import os
        import blender_addon
        from test_addon_scenes import make_scene
        out = {{}}
        def generate(**kw):
            try:
                bpy.ops.btdm.generate_previs(**kw)
                return "ok"
            except RuntimeError as exc:
                return str(exc)
        def strips(scene):
            se = scene.sequence_editor
            return [] if se is None else sorted(bpy.path.abspath(s.directory) for s in se.strips_all)
        scene, arm = make_scene("mixamo", frames=4)
        blender_addon.register()
        scene.btdm.method = "TEXTURE"  # no network: seconds
        bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / 'shot010.blend')!r})
        out["first"] = generate()
        import hashlib
        def digest(folder):
            folder = os.path.join({str(tmp_path)!r}, "previs", folder, "take_001")
            return {{f: hashlib.sha1(open(os.path.join(folder, f), "rb").read()).hexdigest()
                    for f in sorted(os.listdir(folder)) if f.endswith(".png")}}
        out["first_files"] = digest("shot010_Scene_ShotCam")
        bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / 'shot020.blend')!r})  # same scene and camera names
        scene = bpy.context.scene
        out["second"] = generate()
        out["second_strips"] = strips(scene)
        # The second shot pointed at the first's folder (as the old default did): refused, before any work.
        scene.btdm.output_dir = "//previs/shot010_Scene_ShotCam/"
        out["shared"] = generate()
        out["shared_strips"] = strips(scene)
        # Another camera of the same .blend in that folder: refused too.
        scene.btdm.output_dir = "//previs/shot020_Scene_ShotCam/"
        cam = bpy.data.objects.new("CamB", scene.camera.data.copy())
        scene.collection.objects.link(cam)
        cam.matrix_world = scene.camera.matrix_world
        scene.btdm.camera = cam
        out["other_camera"] = generate()
        # Pose-map previews have their own folder inside the shot's, owned the same way.
        scene.btdm.camera = None
        out["posemaps"] = "ok"
        try:
            bpy.ops.btdm.preview_posemaps()
        except RuntimeError as exc:
            out["posemaps"] = str(exc)
        blender_addon.unregister()
        print("RESULT " + json.dumps(out))
    """, tmp_path, env={"BTDM_ENGINE_URL": engine.url})
    # each shot's Generate keeps its take in take_001/ of its own folder
    first = tmp_path / "previs" / "shot010_Scene_ShotCam" / "take_001"
    second = tmp_path / "previs" / "shot020_Scene_ShotCam" / "take_001"
    assert result["first"] == "ok" and result["second"] == "ok", result
    assert result["second_strips"] == [str(second) + "/"]
    names = [f"{n:06d}.png" for n in range(1, 5)]
    assert sorted(_frames(first)) == names and sorted(_frames(second)) == names
    import hashlib

    assert {f: hashlib.sha1(b).hexdigest() for f, b in _frames(first).items()} == result["first_files"]
    for folder, blend in ((first, "shot010.blend"), (second, "shot020.blend")):
        record = json.loads((folder / ".btdm-frames.json").read_text())
        assert record["shot"] == {"blend": blend, "scene": "Scene", "camera": "ShotCam"}
    assert result["shared"] == (
        f"Error: BTDM: {first} holds the 4 frame(s) of another shot (shot010.blend, scene 'Scene', camera "
        "'ShotCam'); choose another Output folder for this one (or delete those frames to reuse it)\n"), result
    assert result["shared_strips"] == result["second_strips"]  # nothing placed, nothing replaced
    assert "of another shot (shot020.blend, scene 'Scene', camera 'ShotCam')" in result["other_camera"]
    assert result["posemaps"] == "ok"
    assert sorted(p.name for p in (second.parent / "posemaps").glob("*.png")) == names
    for folder in (first, second, second.parent / "posemaps"):
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".btdm-") and p.name != ".btdm-frames.json"]
    print(json.dumps(result, indent=1))


# ---------------------------------------------------------------------------- rigs in other units
def test_the_add_on_and_motion_files_share_one_units_rule() -> None:
    import numpy as np

    from blender_addon import units
    from btdm_engine.motion import retarget
    from btdm_engine.motion.skeleton_animation import SkeletonAnimation

    assert units.UNITS == retarget.UNITS
    for height in np.geomspace(0.05, 20000, 400):
        rest = np.tile(np.eye(4), (2, 1, 1))
        rest[1, 2, 3] = height / 2
        anim = SkeletonAnimation(names=("a", "b"), parents=np.array([-1, 0]), rest=rest,
                                 tails=np.array([[0, 0, height / 2], [0, 0, height]]), frames=rest[None], fps=30.0,
                                 up="Z")
        assert units.rest_height(rest, anim.tails) == pytest.approx(height)
        try:
            scale, name, _notes = retarget.detect_units(anim, "Z", "rig")
        except retarget.RetargetError:
            with pytest.raises(units.UnitsError, match=r"armature 'Rig' is .* units tall, which is no person's"):
                units.armature_scale(height, 1.0, "Rig")
            continue
        got, note = units.armature_scale(height, 1.0, "Rig")
        if units.PLAUSIBLE[0] <= height <= units.PLAUSIBLE[1]:  # a person in metres: the scene's scale stands
            assert (got, note) == (1.0, None)
        else:
            assert got == scale and units.nearest_unit(height) == name and note is not None
    # The scene's unit scale counts: a 176-unit rig in a centimetre scene is a person as it is.
    assert units.armature_scale(176.0, 0.01, "Rig") == (0.01, None)
    scale, note = units.armature_scale(176.0, 1.0, "Rig")
    assert scale == 0.01 and note == ("armature 'Rig' is 176 units tall: taken as centimetres (1.76 m); set the "
                                      "scene's Unit Scale if that is wrong")


def _person_pixels(folder: Path) -> list[int]:
    import cv2

    return [int((cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[..., 3] > 0).sum()) for p in sorted(folder.glob("0*.png"))]


def test_a_centimetre_bvh_in_a_metre_scene_makes_whole_plates(engine: Engine, tmp_path: Path) -> None:
    # A BVH in centimetres imported by Blender's own importer at its default scale: 1.7 m of person is 170
    # units, 170 m in a metre scene. Its plates must show the person as the same file in metres does.
    from btdm_engine.motion.bvh import save_bvh
    from btdm_engine.motion.library import make_motion

    clip = make_motion("walk", seconds=0.2, fps=20.0)
    for units in ("cm", "m"):
        save_bvh(clip, tmp_path / f"walk_{units}.bvh", units=units)
    result = run_bpy(f"""
        import math, os
        import blender_addon
        out = {{}}
        for units in ("cm", "m", "tiny"):
            bpy.ops.wm.read_factory_settings(use_empty=True)
            scene = bpy.context.scene
            scene.render.resolution_x, scene.render.resolution_y = 192, 108
            path = os.path.join({str(tmp_path)!r}, f"walk_{{'cm' if units == 'tiny' else units}}.bvh")
            bpy.ops.import_anim.bvh(filepath=path, global_scale=1.0, update_scene_duration=True)
            arm = bpy.context.active_object
            if units == "tiny":
                arm.scale = (0.0005, 0.0005, 0.0005)  # 8.5 cm tall: no unit makes a person of it
            bpy.context.view_layer.update()
            scene.frame_start, scene.frame_end = 1, 4
            tops = [(arm.matrix_world @ b.tail_local).z for b in arm.data.bones]
            height = max(tops) - min((arm.matrix_world @ b.head_local).z for b in arm.data.bones)
            cam = bpy.data.objects.new("ShotCam", bpy.data.cameras.new("ShotCam"))
            scene.collection.objects.link(cam)
            cam.location = (0.0, -3.0 * height, 0.5 * height)
            cam.rotation_euler = (math.radians(90), 0, 0)
            scene.camera = cam
            blender_addon.register()
            scene.btdm.method = "TEXTURE"  # no network: seconds
            try:
                bpy.ops.btdm.generate_previs(output_dir=os.path.join(os.getcwd(), units))
                message = "ok"
            except RuntimeError as exc:
                message = str(exc)
            from blender_addon import runs
            entry = runs.latest(scene)
            out[units] = {{"height": height, "message": message, "name": arm.name,
                          "result": entry.result if entry else ""}}
            blender_addon.unregister()
        print("RESULT " + json.dumps(out))
    """, tmp_path, env={"BTDM_ENGINE_URL": engine.url})
    cm, m, tiny = result["cm"], result["m"], result["tiny"]
    assert 150 < cm["height"] < 200 and 1.5 < m["height"] < 2.0
    assert cm["message"] == m["message"] == "ok", result
    assert m["result"] == f"4 plates in {tmp_path / 'm'}"
    assert re.fullmatch(re.escape(f"4 plates in {tmp_path / 'cm'} (armature {cm['name']!r} is ") + r"1\d\d units tall: "
                        r"taken as centimetres \(1\.\d\d m\); set the scene's Unit Scale if that is wrong\)",
                        cm["result"]), cm["result"]
    in_metres, in_cm = _person_pixels(tmp_path / "m"), _person_pixels(tmp_path / "cm")
    assert len(in_metres) == len(in_cm) == 4 and min(in_metres) > 500
    for a, b in zip(in_metres, in_cm, strict=True):
        assert abs(a - b) <= 0.02 * a, (in_metres, in_cm)  # the same person, not a few pixels
    assert tiny["message"].startswith(f"Error: BTDM: armature {tiny['name']!r} is 0.0") and (
        "units tall, which is no person's height in metres, centimetres, millimetres or inches; scale the armature "
        "object to the character's real size" in tiny["message"]), tiny
    assert not (tmp_path / "tiny").exists() or not list((tmp_path / "tiny").iterdir())
    print(json.dumps(result, indent=1), in_metres, in_cm)


# ---------------------------------------------------------------------------- Ctrl-C in a headless run
INTERRUPTED_SCRIPT = """
import json, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import bpy
import blender_addon
from test_addon_scenes import make_scene
scene, arm = make_scene("mixamo", frames={frames})
bpy.ops.wm.save_as_mainfile(filepath={blend!r})
blender_addon.register()
scene.btdm.steps, scene.btdm.sr_steps = 2, {sr_steps}
bpy.ops.btdm.generate_previs(posemaps_dir={posemaps!r})
print("RESULT " + json.dumps({{"returned": True}}), flush=True)
"""


@pytest.mark.parametrize("when, presses", [("computing", 1), ("downloading", 2)])
def test_ctrl_c_cancels_a_headless_run_and_leaves_nothing_half_written(engine: Engine, tmp_path: Path, when: str,
                                                                       presses: int) -> None:
    # `blender -b shot.blend --python-expr "bpy.ops.btdm.generate_previs()"`, then Ctrl-C while the engine
    # makes the frames (pose maps already downloading) or while the frames download: the job is cancelled
    # on the engine, no frame and no staging folder is left, and the program ends as an interrupted one
    # does (exit 130). A second Ctrl-C stops waiting for the engine to confirm, and leaves nothing either.
    frames = 16 if when == "computing" else 48
    script = tmp_path / "shot.py"
    posemaps = tmp_path / "maps"
    script.write_text(INTERRUPTED_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), frames=frames,
                                                sr_steps=30 if when == "computing" else 2, posemaps=str(posemaps),
                                                blend=str(tmp_path / "shot.blend")), encoding="utf-8")
    out = tmp_path / "previs" / "shot_Scene_ShotCam"
    client = EngineClient(engine.url)
    env = {**os.environ, "BTDM_ENGINE_URL": engine.url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not a bound on speed
        job_id = None
        while True:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never got there"
            staged = [f for f in posemaps.glob(".btdm-*") if any(f.glob("0*.png"))] if posemaps.is_dir() else []
            if staged:
                job_id = staged[0].name.removeprefix(".btdm-")
                if when == "computing" and client.job(job_id)["stage"] == "sr3":
                    break
                if when == "downloading" and any(out.glob("take_*/.btdm-*/0*.png")):
                    break
            time.sleep(0.05)
        for n in range(presses):
            proc.send_signal(signal.SIGINT)
            if n + 1 < presses:
                time.sleep(0.2)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert "RESULT" not in stdout  # the script does not go on as if the plate had been made
    assert "Traceback" not in stderr, stderr
    assert "BTDM: Ctrl-C: cancelling the job on the engine; no frame or strip will be left" in stderr, stderr
    if presses == 2:
        assert "BTDM: Ctrl-C again: not waiting for the engine" in stderr, stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "previs").rglob("*"))
    left += sorted(str(p.relative_to(tmp_path)) for p in posemaps.rglob("*"))
    names = [f"{n:06d}.png" for n in range(1, frames + 1)]
    print(stderr[-600:])
    if "interrupted (Ctrl-C): cancelled: no plate was placed" in stderr:
        assert left == ["previs/shot_Scene_ShotCam"], left  # the empty folder: no frame, no staging, no take
        if when == "computing":
            deadline = time.monotonic() + 120
            while (job := client.job(job_id))["state"] not in ("cancelled", "failed", "succeeded"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert job["state"] == "cancelled", job
    else:  # the last frame came in before the Ctrl-C was seen: the whole plate, committed, and nothing else
        assert when == "downloading" and f"interrupted (Ctrl-C): {frames} plates in {out}" in stderr, stderr
        assert sorted(p.name for p in out.iterdir()) == [".btdm-frames.json", *names]
        assert sorted(p.name for p in posemaps.iterdir()) == [".btdm-frames.json", *names]


def test_the_engine_settings_carry_blenders_online_access(tmp_path: Path) -> None:
    result = run_bpy("""
        import blender_addon
        from blender_addon import preferences
        blender_addon.register()
        seen = [bpy.app.online_access, preferences.engine_settings().online_access]
        bpy.context.preferences.system.use_online_access = True
        seen += [bpy.app.online_access, preferences.engine_settings().online_access]
        blender_addon.unregister()
        print("RESULT " + json.dumps({"seen": seen}))
    """, tmp_path)
    assert result["seen"] == [False, False, True, True]
