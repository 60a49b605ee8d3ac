"""The add-on as Blender's conventions want it (issue 24 items 5 and 6): its files in the extension's user folder
(configuration, the remote token at 0600, the local engine's jobs and logs), the old ~/.config record read once;
``btdm addon install`` and Install from Disk both leaving an add-on that finds its engine, enabled as the README's
headless line enables it (``--addons bl_ext.user_default.btdm_previs``); Esc consumed by the running Generate; Undo
that never leaves a job pointing at data it took away; the engine's messages in the panel's words.

As in ``test_addon.py``: every bpy test runs in its own Python process with its own Blender user folders
(``BLENDER_USER_RESOURCES``), against a real ``btdm serve`` on a free loopback port where one is needed. No Blender
executable is needed: a stand-in (``fake_blender``) answers ``btdm addon install --blender`` with the bpy module,
running the same extension operator and ``bpy.utils.extension_path_user`` that Blender runs.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_addon import BTDM, REPO, Engine, free_port, run_bpy

pytestmark = [pytest.mark.blender, pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                                     reason="needs the bpy module (pip install -e .[blender])")]

EXT = "bl_ext.user_default.btdm_previs"
VENV_BTDM = Path(sys.executable).with_name("btdm")

FAKE_BLENDER = '''#!{python}
"""A stand-in for the blender executable: the two command lines btdm addon install runs, done with the bpy module."""
import sys
args = sys.argv[1:]
import bpy
if args[:3] == ["--command", "extension", "install-file"]:
    rest = args[3:]
    result = bpy.ops.extensions.package_install_files(filepath=rest[-1], repo=rest[rest.index("--repo") + 1],
                                                      enable_on_install="--enable" in rest)
    if "--enable" in rest and "--no-prefs" not in rest:
        bpy.ops.wm.save_userpref()  # as Blender's command does: enabled for the next start
    sys.exit(0 if result == {{"FINISHED"}} else 1)
if "--python-expr" in args:
    exec(args[args.index("--python-expr") + 1])
    sys.exit(0)
sys.exit(2)
'''


def _blender_env(tmp_path: Path, name: str) -> dict[str, str]:
    return {"BLENDER_USER_RESOURCES": str(tmp_path / name), "XDG_CONFIG_HOME": str(tmp_path / f"{name}-xdg"),
            "PATH": "/usr/bin:/bin"}  # no btdm on PATH: what a Blender started from a desktop sees


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------- the user folder
def test_configuration_and_token_live_in_the_user_folder_and_the_old_record_is_read_once(tmp_path: Path) -> None:
    env = _blender_env(tmp_path, "blender")
    legacy = tmp_path / "blender-xdg" / "btdm" / "blender_addon.json"
    legacy.parent.mkdir(parents=True)
    old = json.dumps({"btdm_executable": str(VENV_BTDM)}) + "\n"
    legacy.write_text(old)
    result = run_bpy(f"""
        import os, stat
        import blender_addon
        from blender_addon import engine, preferences
        blender_addon.register()
        first = preferences.engine_settings()
        config = json.load(open(os.path.join(first.user_dir, "config.json")))
        # the old record changes (an old btdm addon install): the user folder's copy is the one read now
        open({str(legacy)!r}, "w").write(json.dumps({{"btdm_executable": "/elsewhere/btdm"}}))
        second = preferences.engine_settings()
        bpy.ops.btdm.set_token(token="  a-token-of-twenty-chars  ")
        token_file = os.path.join(first.user_dir, "token")
        stored = preferences.engine_settings()
        mode = stat.S_IMODE(os.stat(token_file).st_mode)
        os.environ["BTDM_TOKEN"] = "from-the-environment-0123"
        from_env = preferences.engine_settings().token
        del os.environ["BTDM_TOKEN"]
        forgot = bpy.ops.btdm.forget_token()
        after = preferences.engine_settings().token
        print("RESULT " + json.dumps({{
            "user_dir": first.user_dir, "exe": first.find_executable(), "source": first.executable_source(),
            "config": config, "exe2": second.find_executable(), "jobs": first.jobs_dir(),
            "token": stored.token, "mode": mode, "repr": repr(stored),
            "from_env": from_env, "forgot": list(forgot), "after": after, "left": os.path.exists(token_file)}}))
        blender_addon.unregister()
    """, tmp_path, env=env)
    user_dir = tmp_path / "blender" / "config" / "btdm_previs"  # not an extension: Blender's config folder
    assert result["user_dir"] == str(user_dir)
    assert result["exe"] == result["exe2"] == str(VENV_BTDM) and result["source"] == "recorded by btdm addon install"
    assert result["config"] == {"btdm_executable": str(VENV_BTDM), "migrated_from": str(legacy)}
    assert legacy.read_text() == json.dumps({"btdm_executable": "/elsewhere/btdm"})  # read, never removed
    assert result["jobs"] == str(user_dir / "engine")
    assert result["token"] == "a-token-of-twenty-chars" and result["mode"] == 0o600
    assert "a-token" not in result["repr"]  # never in a log line
    assert result["from_env"] == "from-the-environment-0123"
    assert result["forgot"] == ["FINISHED"] and result["after"] is None and not result["left"]


def test_btdm_addon_install_and_install_from_disk_both_find_their_engine(engine: Engine, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    out = subprocess.run([*BTDM, "addon", "build", "--out", str(dist)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    [zip_path] = dist.glob("*.zip")
    fake_blender = tmp_path / "blender"
    fake_blender.write_text(FAKE_BLENDER.format(python=sys.executable))
    fake_blender.chmod(0o755)

    # 1. btdm addon install --blender: installed, enabled, the engine recorded in the extension's user folder
    env = _blender_env(tmp_path, "installed")
    out = subprocess.run([*BTDM, "addon", "install", "--blender", str(fake_blender), "--btdm", str(VENV_BTDM)],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, **env})
    assert out.returncode == 0, out.stdout + out.stderr
    user_dir = tmp_path / "installed" / "extensions" / ".user" / "user_default" / "btdm_previs"
    assert json.loads((user_dir / "config.json").read_text()) == {"btdm_executable": str(VENV_BTDM.resolve())}
    assert str(user_dir / "config.json") in out.stdout
    assert not (tmp_path / "installed-xdg" / "btdm").exists()
    result = run_bpy(f"""
        import glob, os, stat
        bpy.ops.wm.read_userpref()  # Blender's start: the preferences btdm addon install saved, the add-on enabled
        mod = sys.modules[{EXT!r}]
        prefs = bpy.context.preferences.addons[{EXT!r}].preferences
        prefs.local_url = "http://127.0.0.1:{free_port()}"  # nothing answers there: the add-on starts its engine
        prefs.device = "cpu"
        prefs.remote_token = "an-old-token-in-the-prefs"  # an earlier version kept it there
        settings = mod.preferences.engine_settings()
        token_file = os.path.join(settings.user_dir, "token")
        mod.engine.MANAGER.connect(settings)
        status = mod.engine.MANAGER.status
        mod.engine.MANAGER.stop()
        print("RESULT " + json.dumps({{
            "user_dir": settings.user_dir, "exe": settings.find_executable(), "connected": status.connected,
            "local": status.local_child, "jobs": sorted(os.listdir(os.path.join(settings.user_dir, "engine"))),
            "logs": [os.path.basename(p) for p in glob.glob(os.path.join(settings.user_dir, "logs", "*.log"))],
            "prefs_token": prefs.remote_token, "token": settings.token,
            "token_mode": stat.S_IMODE(os.stat(token_file).st_mode)}}))
    """, tmp_path, env={**env, "OMP_NUM_THREADS": "1"})
    assert result["user_dir"] == str(user_dir) and result["exe"] == str(VENV_BTDM.resolve())
    assert result["connected"] and result["local"]
    assert result["jobs"], "the local engine keeps its jobs in the add-on's user folder"
    assert len(result["logs"]) == 1 and result["logs"][0].startswith("serve-")
    assert result["prefs_token"] == "" and result["token"] == "an-old-token-in-the-prefs"
    assert result["token_mode"] == 0o600

    # 2. Install from Disk (the zip, into user_default): nothing recorded, no btdm on PATH: a first-run message in
    # the panel's words; with an engine running here at the Local URL, the README's headless line makes plates.
    env = _blender_env(tmp_path, "from-disk")
    run_bpy(f"""
        result = bpy.ops.extensions.package_install_files(filepath={str(zip_path)!r}, repo="user_default",
                                                          enable_on_install=True)
        bpy.ops.wm.save_userpref()  # Blender saves the preferences by itself (Auto-Save Preferences)
        print("RESULT " + json.dumps(list(result)))
    """, tmp_path, env=env)
    shot = tmp_path / "shot.blend"
    result = run_bpy(f"""
        import os
        from test_addon_scenes import make_scene
        scene, arm = make_scene("mixamo", frames=4)
        bpy.ops.wm.save_as_mainfile(filepath={str(shot)!r})
        bpy.ops.wm.read_userpref()  # Blender's start
        mod = sys.modules[{EXT!r}]
        prefs = bpy.context.preferences.addons[{EXT!r}].preferences
        prefs.local_url = "http://127.0.0.1:{free_port()}"
        settings = mod.preferences.engine_settings()
        hint = mod.engine.first_run_hint(settings)
        scene.btdm.method = "TEXTURE"  # seconds, no network
        bpy.ops.wm.save_mainfile()
        try:
            bpy.ops.btdm.generate_previs()
            error = "no error"
        except RuntimeError as exc:
            error = str(exc)
        # the user starts `btdm serve` here (the test's engine) and gives its URL: the headless line works
        prefs.local_url = {engine.url!r}
        bpy.ops.wm.save_userpref()
        print("RESULT " + json.dumps({{"hint": hint, "error": error, "user_dir": settings.user_dir}}))
    """, tmp_path, env=env)
    assert "set the btdm executable in the add-on's preferences" in result["hint"]
    assert "cannot connect to the engine" in result["error"] and "set the btdm executable" in result["error"]
    assert "--" not in result["error"]
    assert result["user_dir"] == str(tmp_path / "from-disk" / "extensions" / ".user" / "user_default" / "btdm_previs")
    # `blender -b shot.blend --addons bl_ext.user_default.btdm_previs --python-expr "...generate_previs()"`:
    # Blender's start (its saved preferences), the file, the add-on enabled as --addons does, the expression
    result = run_bpy(f"""
        import glob, os
        bpy.ops.wm.read_userpref()
        bpy.ops.wm.open_mainfile(filepath={str(shot)!r})
        from _bpy_internal.addons.cli import set_from_cli
        set_from_cli({EXT!r})
        import bpy; bpy.ops.btdm.generate_previs()
        folder = os.path.join(os.path.dirname({str(shot)!r}), "previs", "shot_Scene_ShotCam", "take_001")
        print("RESULT " + json.dumps(sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.png")))))
    """, tmp_path, env=env)
    assert result == ["000001.png", "000002.png", "000003.png", "000004.png"]


# ---------------------------------------------------------------------------- Esc, Undo
def test_esc_is_consumed_by_the_running_generate(tmp_path: Path) -> None:
    result = run_bpy("""
        from types import SimpleNamespace as NS
        import blender_addon
        blender_addon.register()
        op_class = bpy.types.BTDM_OT_generate_previs

        class Run:
            def __init__(self): self.cancels, self.finalized, self.done = [], False, False
            def cancel(self, wait=True): self.cancels.append(wait)
            def snapshot(self): return NS(finished=self.done, line=lambda: "denoise 1/2")

        def step(op, event, playing=False):
            status = []
            ctx = NS(screen=NS(is_animation_playing=playing), window_manager=NS(event_timer_remove=lambda t: None),
                     workspace=NS(status_text_set=status.append))
            return sorted(op_class.modal(op, ctx, NS(type=event[0], value=event[1])))

        run = Run()
        op = NS(_entry=NS(run=run), _timer=None, kind="plates", report=lambda *a: None)
        seen = {"mouse": step(op, ("MOUSEMOVE", "NOTHING")), "timer": step(op, ("TIMER", "NOTHING")),
                "g": step(op, ("G", "PRESS")), "esc_playing": step(op, ("ESC", "PRESS"), playing=True),
                "cancels_while_playing": list(run.cancels), "esc": step(op, ("ESC", "PRESS")),
                "esc_release": step(op, ("ESC", "RELEASE")), "esc_again": step(op, ("ESC", "PRESS")),
                "cancels": list(run.cancels)}
        blender_addon.unregister()
        print("RESULT " + json.dumps(seen))
    """, tmp_path)
    assert result["mouse"] == result["timer"] == result["g"] == ["PASS_THROUGH"]
    assert result["esc_playing"] == ["PASS_THROUGH"] and result["cancels_while_playing"] == []  # Esc stops playback
    assert result["esc"] == result["esc_again"] == ["RUNNING_MODAL"]  # consumed
    assert result["esc_release"] == ["PASS_THROUGH"]
    assert result["cancels"] == [True, False]  # cancel, then stop waiting for the engine


UNDO_SCRIPT = """
import os, time
import blender_addon
from blender_addon import display, prepare, runs, sequencer
from blender_addon.jobs import PrevisRun
from test_addon_scenes import make_scene
scene, arm = make_scene("mixamo", frames=4)
bpy.ops.wm.save_as_mainfile(filepath=os.path.join(os.getcwd(), "shot.blend"))
blender_addon.register()
s = scene.btdm
s.method, s.steps, s.sr_steps = "TEXTURE", 2, 2
bpy.ops.ed.undo_push(message="the animator's last edit")

def state():
    sc = bpy.data.scenes["Scene"]
    cam = bpy.data.objects["ShotCam"]
    return {"strips": sorted(x.name for x in sequencer.all_strips(sc.sequence_editor)) if sc.sequence_editor else [],
            "backgrounds": len(cam.data.background_images), "previs": sorted(x.name for x in bpy.data.scenes),
            "objects": sorted(o.name for o in sc.objects)}

out = {}
bpy.ops.btdm.generate_previs()
out["generated"] = state()
bpy.ops.ed.undo()
out["undone"] = state()
bpy.ops.ed.redo()
out["redone"] = state()

# a job is running when Ctrl-Z takes away the camera it was for
bpy.ops.ed.undo_push(message="before the new camera")
cam2 = bpy.data.objects.new("Cam2", bpy.data.cameras.new("Cam2"))
bpy.context.scene.collection.objects.link(cam2)
cam2.location, cam2.rotation_euler = (0.6, -6.0, 1.1), (1.5708, 0, 0.1)
bpy.context.scene.camera = cam2
bpy.ops.ed.undo_push(message="new camera")
scene = bpy.context.scene
camera = prepare.resolve_camera(bpy.context)
request = prepare.build_request(bpy.context, "plates")
run = PrevisRun(request)
entry = runs.start(scene, camera, prepare.strip_key(scene, camera), run, (request.armature,))
bpy.ops.ed.undo()  # the camera is gone
out["why"] = entry.why
deadline = time.time() + 120
while not run.snapshot().finished and time.time() < deadline:
    time.sleep(0.1)
runs._tick()
out["after_job"] = state()
out["result"], out["ok"], out["job"], out["phase"] = entry.result, entry.ok, run.snapshot().job_id, run.snapshot().phase
blender_addon.unregister()
print("RESULT " + json.dumps(out))
"""


def test_undo_takes_a_placed_plate_away_and_cancels_a_job_for_data_it_removed(engine: Engine, tmp_path: Path) -> None:
    from blender_addon.engine_client import EngineClient

    result = run_bpy(UNDO_SCRIPT, tmp_path, env={"BTDM_ENGINE_URL": engine.url})
    generated, undone, redone = result["generated"], result["undone"], result["redone"]
    assert len(generated["strips"]) == 1 and generated["backgrounds"] == 1 and "Scene_ShotCam pre-vis" in generated[
        "previs"]
    # Ctrl-Z after the plate arrived takes the plate away (strip, camera background, pre-vis scene), nothing else
    assert undone["strips"] == [] and undone["backgrounds"] == 0 and undone["previs"] == ["Scene"]
    assert undone["objects"] == generated["objects"]
    assert redone == generated
    assert (tmp_path / "previs" / "shot_Scene_ShotCam" / "take_001" / "000004.png").is_file()  # the take stays
    # Undo during a job took its camera away: the run is cancelled (or, done first, not placed), no strip for it
    assert result["why"] == "camera 'Cam2' was taken away by Undo"
    assert "camera 'Cam2' was taken away by Undo" in result["result"] and not result["ok"]
    assert result["after_job"]["strips"] == redone["strips"] and "Cam2" not in result["after_job"]["objects"]
    if result["phase"] == "cancelled":
        assert result["result"] == "cancelled: camera 'Cam2' was taken away by Undo; no plate was placed"
        if result["job"]:  # else it was cancelled before it was sent
            assert EngineClient(engine.url).job(result["job"])["state"] in ("cancelled", "succeeded")
    print(json.dumps(result, indent=1))


# ---------------------------------------------------------------------------- the panel's words
def test_the_engines_messages_reach_the_panel_in_its_words() -> None:
    from blender_addon.words import panel_words
    from btdm_engine import limits
    from btdm_engine.errors import BtdmError, UsageError
    from btdm_engine.jobspec import JobSpec
    from btdm_engine.motion import bonemaps

    missing = bonemaps._missing_error("skeleton.npz", "the mixamo map", {0: 0}, ["Hips", "Spine"])
    assert "--skeleton" in str(missing)  # the engine's own words (the CLI's), as the service passes them on
    said = panel_words(str(missing))
    assert said.endswith("Pick another Bone map or load a custom map") and "--" not in said
    with pytest.raises(UsageError) as over:
        JobSpec(steps=5000).check(UsageError, {"steps": "--steps"})
    said = panel_words(str(over.value))
    assert said.startswith("Steps: 5000 is over the steps limit") and "--" not in said and "engine's own limit" in said
    with pytest.raises(BtdmError) as fps:
        limits.check_fps(0.0, "--fps")
    assert "--" not in panel_words(str(fps.value)) and "the scene's frame rate" in panel_words(str(fps.value))
    for text, words in (
            ("skeleton.npz: an AMASS-style SMPL motion (poses, trans, betas) is SMPL already, in metres: --bone-map, "
             "--skeleton mixamo cannot apply to it", "a custom bone map, Bone map mixamo cannot apply"),
            ("--fit-shape ignored: the file's own betas are kept", "Fit body shape ignored"),
            ("skeleton.npz: the rest skeleton has no height along z; pass --scale and --up",
             "apply the armature's scale"),
            ("params.sr_steps given but model tiny has no SR3 stage", "SR steps given but model tiny"),
            ("params.steps: Input should be less than or equal to 1000", "Steps: Input should be"),
            ("the up axis is ambiguous; pass --up or check the bone map", "check the Bone map")):
        said = panel_words(text)
        assert words in said and "--" not in said and "params." not in said, said


def test_the_addons_own_messages_name_no_command_line_flags() -> None:
    """Every string the add-on shows (docstrings and the engine command line it runs aside) is free of ``--flags``."""
    allowed = {("engine.py", "serve"), ("engine.py", "--host"), ("engine.py", "--port"), ("engine.py", "--parent-pid"),
               ("engine.py", "--device"), ("engine.py", "--data")}
    found = []
    for path in sorted((REPO / "blender_addon").rglob("*.py")):
        if path.name in ("headless.py", "words.py"):  # btdm previs's own program (its flags are its user's words);
            continue                                    # the translation table itself
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and "--" in node.value and (path.name, node.value) not in allowed):
                found.append((path.name, node.lineno, node.value))
    assert found == []
