"""The add-on at its edges: shots sharing a folder, rigs in other units, Ctrl-C in a headless run.

As in ``test_addon.py``: every bpy test runs in its own Python process, against a real ``btdm
serve`` subprocess on a free loopback port (the embedded model, the texture-transfer method or two
sampling steps), killed at teardown.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from test_addon import Engine, run_bpy

pytestmark = [pytest.mark.blender, pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                                     reason="needs the bpy module (pip install -e .[blender])")]

SHOT = {"blend": "shot010.blend", "scene": "Scene", "camera": "Camera"}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    server = Engine(tmp_path_factory.mktemp("edges-engine") / "data")
    yield server
    server.stop()


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
            folder = os.path.join({str(tmp_path)!r}, "previs", folder)
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
    first, second = tmp_path / "previs" / "shot010_Scene_ShotCam", tmp_path / "previs" / "shot020_Scene_ShotCam"
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
    assert sorted(p.name for p in (second / "posemaps").glob("*.png")) == names
    for folder in (first, second, second / "posemaps"):
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".btdm-") and p.name != ".btdm-frames.json"]
    print(json.dumps(result, indent=1))

