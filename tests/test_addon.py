"""The Blender add-on: registration, the extension package, headless generation against a real engine.

Every bpy test runs in its own Python process (bpy holds one scene per process; the test process
never imports bpy). The engine is a real ``btdm serve`` subprocess on a free 127.0.0.1 port with
the embedded tiny model and two sampling steps; it is killed at teardown. No traffic leaves
loopback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from blender_addon.engine_client import EngineClient, EngineError
from btdm_engine.procs import stop_process

REPO = Path(__file__).resolve().parents[1]
ADDON = REPO / "blender_addon"
BTDM = [sys.executable, "-m", "btdm_engine.cli"]

pytestmark = [pytest.mark.blender, pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                                     reason="needs the bpy module (pip install -e .[blender])")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bpy(code: str, tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh Python with bpy, the repo and tests/ importable; returns its last ``RESULT`` JSON.

    Blender's user folders (``BLENDER_USER_RESOURCES``: preferences, extensions, the add-on's user folder) and
    ``XDG_CONFIG_HOME`` (where an earlier ``btdm addon install`` wrote) are the test's own unless ``env`` names them.
    """
    script = tmp_path / f"script_{time.monotonic_ns()}.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        import bpy
    """) + textwrap.dedent(code), encoding="utf-8")
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", "BLENDER_USER_RESOURCES": str(tmp_path / "blender-user"),
                 "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"), **(env or {})}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout,
                          env=child_env, cwd=tmp_path)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise AssertionError(f"no RESULT (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------------------- without an engine
def test_register_unregister_twice(tmp_path: Path) -> None:
    result = run_bpy("""
        import blender_addon
        from blender_addon import properties
        from btdm_engine.body.skeleton import JOINT_NAMES
        seen = []
        for _ in range(2):
            blender_addon.register()
            scene = bpy.context.scene
            seen.append({
                "btdm": hasattr(scene, "btdm"), "skeleton": scene.btdm.skeleton,
                "ops": [hasattr(bpy.types, n) for n in ("BTDM_OT_generate_previs", "BTDM_PT_main", "BTDM_PT_seq_main")],
                "status": len(bpy.types.STATUSBAR_HT_header._dyn_ui_initialize()),
                "poll": bpy.ops.btdm.generate_previs.poll(),
            })
            blender_addon.unregister()
            seen.append({"btdm": hasattr(bpy.types.Scene, "btdm"),
                         "ops": [hasattr(bpy.types, n) for n in ("BTDM_OT_generate_previs", "BTDM_PT_main")],
                         "status": len(bpy.types.STATUSBAR_HT_header._dyn_ui_initialize())})
        print("RESULT " + json.dumps({"seen": seen, "joints": list(properties.JOINT_NAMES) == list(JOINT_NAMES),
                                     "heavy": sorted(m for m in ("torch", "btdm_engine.pipeline") if m in sys.modules)}))
    """, tmp_path)
    on1, off1, on2, off2 = result["seen"]
    for on in (on1, on2):
        assert on["btdm"] and on["skeleton"] == "auto" and all(on["ops"]) and on["poll"]
    for off in (off1, off2):
        assert not off["btdm"] and not any(off["ops"])
    assert on1["status"] == on2["status"] == off1["status"] + 1 == off2["status"] + 1
    assert result["joints"], "properties.JOINT_NAMES must equal btdm_engine.body.skeleton.JOINT_NAMES"
    assert result["heavy"] == [], "registering the add-on must not import torch or the engine"


def test_addon_imports_only_bpy_numpy_and_the_standard_library() -> None:
    import ast

    allowed = set(sys.stdlib_module_names) | {"bpy", "bpy_extras", "numpy", "mathutils", "addon_utils", "__future__"}
    for path in ADDON.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.relative_to(REPO)} imports {name}"


def test_manifest_validates_with_blenders_extension_tool() -> None:
    from btdm_engine.commands.addon import REQUIRED_MANIFEST_KEYS, blender_ext_tool

    manifest = tomllib.loads((ADDON / "blender_manifest.toml").read_text(encoding="utf-8"))
    assert all(k in manifest for k in REQUIRED_MANIFEST_KEYS)
    assert manifest["schema_version"] == "1.0.0" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] == "4.2.0"
    assert set(manifest["permissions"]) == {"network", "files"}
    tool = blender_ext_tool()
    assert tool is not None, "the bpy module ships Blender's extension tool (bl_pkg/cli/blender_ext.py)"
    proc = subprocess.run([sys.executable, str(tool), "validate", str(ADDON)], capture_output=True, text=True)
    assert proc.returncode == 0 and "Success" in proc.stdout, proc.stdout + proc.stderr
    # The tool does refuse a bad manifest (so the check above can fail).
    bad = (ADDON / "blender_manifest.toml").read_text(encoding="utf-8").replace('"4.2.0"', '"four"')
    bad_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"btdm-bad-manifest-{os.getpid()}"
    bad_dir.mkdir(exist_ok=True)
    (bad_dir / "blender_manifest.toml").write_text(bad, encoding="utf-8")
    (bad_dir / "__init__.py").write_text("", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(tool), "validate", str(bad_dir)], capture_output=True, text=True)
    assert proc.returncode != 0 or "Success" not in proc.stdout


def test_addon_build_and_install_into_an_extensions_folder(tmp_path: Path) -> None:
    out = subprocess.run([*BTDM, "addon", "build", "--out", str(tmp_path / "dist")], capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    zips = list((tmp_path / "dist").glob("*.zip"))
    assert [z.name for z in zips] == ["btdm_previs-0.1.0.zip"]
    with zipfile.ZipFile(zips[0]) as zf:
        names = zf.namelist()
    assert "blender_manifest.toml" in names and "__init__.py" in names and "operators/generate.py" in names
    # the code shared with the engine is vendored, so the installed add-on imports nothing outside itself
    assert {"_vendor/__init__.py", "_vendor/btdm_bridge/engine_client.py", "_vendor/btdm_bridge/armature.py"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/." in n or n.startswith(".")]

    fake_btdm = tmp_path / "bin" / "btdm"
    fake_btdm.parent.mkdir()
    fake_btdm.write_text("#!/bin/sh\nexit 0\n")
    fake_btdm.chmod(0o755)
    # Blender's user folders are the test's (BLENDER_USER_RESOURCES): extensions in tmp_path/extensions
    blender_env = {"BLENDER_USER_RESOURCES": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env = {**os.environ, **blender_env}
    repo_dir = tmp_path / "extensions" / "user_default"
    out = subprocess.run([*BTDM, "addon", "install", "--extensions-dir", str(repo_dir), "--btdm", str(fake_btdm)],
                         capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert (repo_dir / "btdm_previs" / "blender_manifest.toml").is_file()
    # the engine is recorded in the extension's user folder, not in ~/.config
    user_dir = tmp_path / "extensions" / ".user" / "user_default" / "btdm_previs"
    assert json.loads((user_dir / "config.json").read_text()) == {"btdm_executable": str(fake_btdm.resolve())}
    assert not (tmp_path / "config" / "btdm").exists()
    # Enabled as Blender's --addons does (an extension, bl_ext.user_default.btdm_previs): it registers under that
    # package name (relative imports), imports its vendored bridge and finds the recorded btdm in its user folder.
    result = run_bpy("""
        from _bpy_internal.addons.cli import set_from_cli
        set_from_cli("bl_ext.user_default.btdm_previs")
        mod = sys.modules["bl_ext.user_default.btdm_previs"]
        settings = mod.preferences.engine_settings()
        ok = hasattr(bpy.context.scene, "btdm") and mod.preferences.BTDM_AddonPreferences.bl_idname
        homes = [mod.engine_client.EngineClient.__module__, mod.armature.sample_armature.__module__]
        print("RESULT " + json.dumps({"exe": settings.find_executable(), "idname": ok, "homes": homes,
                                     "user_dir": settings.user_dir}))
    """, tmp_path, env=blender_env)
    ext = "bl_ext.user_default.btdm_previs"
    assert result == {"exe": str(fake_btdm.resolve()), "idname": ext, "user_dir": str(user_dir),
                      "homes": [f"{ext}._vendor.btdm_bridge.engine_client", f"{ext}._vendor.btdm_bridge.armature"]}


def test_panel_draws_every_mode(tmp_path: Path) -> None:
    """The panels' draw code, run against a layout that records what it is asked to show."""
    result = run_bpy("""
        import blender_addon
        from blender_addon.ui import panels
        from test_addon_scenes import make_scene
        scene, arm = make_scene("mixamo")
        blender_addon.register()

        class Recorder:
            def __init__(self, lines): self.lines = lines
            def _sub(self, *a, **k): return Recorder(self.lines)
            row = column = box = split = _sub
            def __setattr__(self, k, v): object.__setattr__(self, k, v)
            def prop(self, data, name, **k): self.lines.append(f"prop {name}")
            def prop_search(self, data, name, *a, **k): self.lines.append(f"search {name}")
            def operator(self, idname, **k):
                self.lines.append(f"op {idname}")
                return type("OperatorProperties", (), {})()
            def label(self, text="", **k): self.lines.append(f"label {text}")
            def progress(self, **k): self.lines.append(f"progress {k.get('text')}")
            def template_list(self, *a, **k): self.lines.append(f"list {a[0]}")
            def separator(self, **k): pass

        out = {}
        ctx = bpy.context
        for skeleton in ("auto", "CUSTOM"):
            for mode in ("MODEL", "PHOTO", "IMAGE_IUV", "RENDER", "NONE"):
                scene.btdm.skeleton, scene.btdm.appearance = skeleton, mode
                if skeleton == "CUSTOM":
                    bpy.ops.btdm.bone_map_reset()
                lines = []
                for _key, _label, draw, _opts in panels.SECTIONS:
                    draw(Recorder(lines), ctx)
                out[f"{skeleton}/{mode}"] = lines
        # no engine talked to yet: the embedded default is taken to read the prior (its IUV map and views are sent)
        import dataclasses
        from blender_addon import prepare
        from blender_addon.engine import MANAGER
        out["reads_iuv"] = [prepare.model_reads_iuv("default"), prepare.model_reads_iuv("toy")]
        # an engine whose model reads no prior: Views are not rendered, and the result says so
        MANAGER.status = dataclasses.replace(MANAGER.status, models=[{"name": "plain", "texture_prior": False}])
        scene.render.engine = "BLENDER_WORKBENCH"
        scene.btdm.model, scene.btdm.appearance, scene.btdm.render_frame, scene.btdm.render_views = "plain", "RENDER", 1, 3
        _app, _iuv, views, notes = prepare._appearance_params(ctx, scene.btdm, scene.btdm, arm, scene.camera, {})
        out["plain_views"] = [len(views), list(notes)]
        blender_addon.unregister()
        print("RESULT " + json.dumps(out))
    """, tmp_path)
    assert result.pop("reads_iuv") == [True, False]
    count, notes = result.pop("plain_views")
    assert count == 0 and notes == ["Views 3: model plain takes no texture-transfer prior, which is all further views "
                                    "feed; only the Render frame was rendered"]
    auto = result["auto/MODEL"]
    assert "op btdm.generate_previs" in auto and "op btdm.preview_posemaps" in auto
    assert "label Not connected" in auto and "op btdm.connect_engine" in auto
    assert "prop armature" in auto and "prop camera" in auto and "prop steps" in auto
    assert "op btdm.use_reference_pose" in result["auto/PHOTO"]
    assert "prop appearance_iuv" in result["auto/IMAGE_IUV"] and "prop render_frame" in result["auto/RENDER"]
    assert "prop render_views" in result["auto/RENDER"] and "prop render_views" not in result["auto/PHOTO"]
    assert "list BTDM_UL_bone_map" in result["CUSTOM/MODEL"]
    print("\n".join(auto))


ERRORS_SCRIPT = """
    import os
    import blender_addon
    from test_addon_scenes import make_scene
    out = {}
    def attempt(name, **overrides):
        blender_addon.register()
        s = bpy.context.scene.btdm
        s.steps, s.sr_steps = 2, 2
        for k, v in overrides.items():
            setattr(s, k, v)
        try:
            bpy.ops.btdm.generate_previs(output_dir=os.path.join(os.getcwd(), name))
            out[name] = "no error"
        except RuntimeError as exc:
            out[name] = str(exc)
        se = bpy.context.scene.sequence_editor
        out[name + "/strips"] = 0 if se is None else len(se.strips_all)
        blender_addon.unregister()

    make_scene("mixamo", armature=False)
    attempt("no_armature")
    make_scene("mixamo", camera=False)
    attempt("no_camera")
    make_scene("mixamo")
    attempt("custom_map", skeleton="CUSTOM")
    make_scene("mixamo")
    blender_addon.register(); bpy.ops.btdm.bone_map_reset(); bpy.context.scene.btdm.bone_map[0].bone = "Pelvis"
    blender_addon.unregister()
    attempt("missing_bone", skeleton="CUSTOM")
    make_scene("rigify")
    attempt("wrong_preset", skeleton="mixamo")
    scene, _arm = make_scene("mixamo")
    scene.frame_end = scene.frame_start + 2500
    attempt("too_long")
    make_scene("mixamo")
    os.makedirs("foreign_frames")
    with open(os.path.join("foreign_frames", "000001.png"), "wb") as fh:
        fh.write(b"someone's render")
    attempt("foreign_frames")
    out["foreign_kept"] = open(os.path.join("foreign_frames", "000001.png"), "rb").read() == b"someone's render"
    os.environ["BTDM_ENGINE_URL"] = UNREACHABLE
    make_scene("mixamo")
    attempt("unreachable")
    print("RESULT " + json.dumps(out))
"""


def _messages(tmp_path: Path, engine_url: str) -> dict:
    code = f"UNREACHABLE = 'http://127.0.0.1:{free_port()}'\n" + textwrap.dedent(ERRORS_SCRIPT)
    return run_bpy(code, tmp_path, env={"BTDM_ENGINE_URL": engine_url})


# ---------------------------------------------------------------------------- a real engine
class Engine:
    """`btdm serve` on a free loopback port; killed at teardown."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(data.parent / "serve.log", "wb")  # noqa: SIM115 (open while the server runs; stop() closes it)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([*BTDM, "serve", "--port", str(self.port), "--data", str(data), "--device", "cpu",
                                      "--threads", "1", *extra], cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        client = EngineClient(self.url, timeout=2.0)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, "btdm serve exited at start"
            try:
                client.health()
                break
            except EngineError:
                assert time.monotonic() < deadline, "btdm serve did not answer"
                time.sleep(0.2)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def _heads_inside(frames_dir: Path, skeleton: Path, bones: list[str], first: int) -> float:
    """Fraction of the named bones' heads (projected by the sampled camera) that land on the plate's person."""
    data = np.load(skeleton)
    names = list(data["names"])
    idx = [names.index(b) for b in bones]
    inside = total = 0
    for t in range(data["frames"].shape[0]):
        plate = cv2.imread(str(frames_dir / f"{first + t:06d}.png"), cv2.IMREAD_UNCHANGED)
        alpha = cv2.dilate((plate[..., 3] > 0).astype(np.uint8), np.ones((7, 7), np.uint8))
        for i in idx:
            head = data["cam_world_to_cam"][t] @ np.append(data["frames"][t, i, :3, 3], 1.0)
            u, v, w = data["cam_K"][t] @ head[:3]
            x, y = int(round(u / w)), int(round(v / w))
            total += 1
            inside += bool(0 <= y < alpha.shape[0] and 0 <= x < alpha.shape[1] and alpha[y, x])
    return inside / total


def test_one_clear_message_per_problem(engine: Engine, tmp_path: Path) -> None:
    m = _messages(tmp_path, engine.url)
    assert "no armature" in m["no_armature"]
    assert "no camera" in m["no_camera"]
    assert "custom map is empty" in m["custom_map"]
    assert "'Pelvis', which armature 'MixamoRig' does not have" in m["missing_bone"]
    assert "the engine refused the job" in m["wrong_preset"] and "mixamo" in m["wrong_preset"].lower()
    # the engine's message in the panel's words, not its command line's (--skeleton, --bone-map)
    assert "pick another bone map or load a custom map" in m["wrong_preset"].lower()
    assert "cannot connect to the engine" in m["unreachable"] and "127.0.0.1" in m["unreachable"]
    assert "2501 frames; the engine generates at most 2000 per job" in m["too_long"]
    assert "1 frame file(s) that pre-vis did not write (000001.png)" in m["foreign_frames"] and m["foreign_kept"]
    for key in ("no_armature", "no_camera", "custom_map", "missing_bone", "wrong_preset", "unreachable", "too_long",
                "foreign_frames"):
        assert m[key].startswith("Error: BTDM: ") and m[key].count("\n") <= 1, m[key]
        assert "--" not in m[key], m[key]
        assert m[f"{key}/strips"] == 0
    print(json.dumps(m, indent=1))


def test_rigify_metarig_generates_plates_over_the_shot(engine: Engine, tmp_path: Path) -> None:
    result = run_bpy(f"""
        import blender_addon
        from test_addon_scenes import make_scene
        scene, arm = make_scene("rigify")
        bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / 'shot.blend')!r})
        blender_addon.register()
        scene.btdm.steps, scene.btdm.sr_steps = 2, 2
        bpy.ops.btdm.generate_previs(skeleton_path={str(tmp_path / 'skeleton.npz')!r})
        # Regenerating replaces the strip (another seed): still one plate strip.
        scene.btdm.seed = 3
        bpy.ops.btdm.generate_previs()
        strips = [dict(name=s.name, start=s.frame_final_start, end=s.frame_final_end, channel=s.channel,
                       n=len(s.elements), dir=bpy.path.abspath(s.directory), props={{k: s[k] for k in s.keys()}})
                  for s in scene.sequence_editor.strips_all]
        blender_addon.unregister()
        print("RESULT " + json.dumps({{"strips": strips}}))
    """, tmp_path, env={"BTDM_ENGINE_URL": engine.url})
    [strip] = result["strips"]
    assert (strip["start"], strip["end"], strip["n"]) == (1, 9, 8)
    assert strip["props"]["btdm_seed"] == 3 and strip["props"]["btdm_model"] == "default"
    assert len(strip["props"]["btdm_job_id"]) == 32 and "take 2" in strip["name"], strip["name"]
    folder = tmp_path / "previs" / "shot_Scene_ShotCam" / "take_002"  # each Generate keeps its take
    assert Path(strip["dir"]).resolve() == folder.resolve()
    files = sorted(p.name for p in folder.iterdir())
    assert files == [".btdm-frames.json"] + [f"{n:06d}.png" for n in range(1, 9)] + ["take.json"], files  # nothing staged left
    plate = cv2.imread(str(folder / "000001.png"), cv2.IMREAD_UNCHANGED)
    assert plate.shape == (108, 192, 4) and 0 < (plate[..., 3] > 0).mean() < 0.5
    hands_feet_head = ["hand.L", "hand.R", "foot.L", "foot.R", "spine.006", "forearm.L", "shin.R"]
    assert _heads_inside(folder, tmp_path / "skeleton.npz", hands_feet_head, 1) >= 0.9


def test_every_appearance_mode_generates_plates(engine: Engine, tmp_path: Path) -> None:
    from btdm_engine.weights import default_appearance

    image, iuv = default_appearance()
    photo = cv2.imread(str(image))
    cv2.imwrite(str(tmp_path / "photo.png"), np.pad(photo, ((0, 0), (40, 40), (0, 0)), constant_values=255))  # wide
    result = run_bpy(f"""
        import blender_addon
        from test_addon_scenes import make_scene
        scene, arm = make_scene("rigify")
        bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / 'shot.blend')!r})
        scene.render.engine = "BLENDER_WORKBENCH"
        blender_addon.register()
        scene.btdm.steps, scene.btdm.sr_steps = 2, 2
        # what each mode sends does not depend on the model's size: the engine's toy model (conftest), which
        # has its own appearance like the embedded one (the MODEL mode)
        scene.btdm.model = "toy"
        scene.btdm.iuv_order = "btdm"  # the shipped appearance's IUV map was written by btdm
        seen = {{}}
        # fine-tuning in every mode with an image: the IUV file, the photo's reference pose (frame 3),
        # the render's frame (2): the engine cuts the camera's view with that frame's window
        scene.btdm.render_frame = 2
        for mode, image, iuv, finetune in (("IMAGE_IUV", {str(image)!r}, {str(iuv)!r}, 2),
                                           ("PHOTO", {str(tmp_path / 'photo.png')!r}, "", 2),
                                           ("RENDER", "", "", 2), ("NONE", "", "", 0)):
            scene.btdm.appearance, scene.btdm.appearance_image, scene.btdm.appearance_iuv = mode, image, iuv
            scene.btdm.finetune_steps = finetune
            if mode == "PHOTO":
                scene.frame_set(3)
                bpy.ops.btdm.use_reference_pose()
                method = scene.camera.data.background_images[0].frame_method
            bpy.ops.btdm.generate_previs()
            [strip] = list(scene.sequence_editor.strips_all)
            seen[mode] = {{"job": strip["btdm_job_id"], "n": len(strip.elements)}}
        # the texture-transfer method: the model's own appearance through its IUV map, no network
        scene.btdm.appearance, scene.btdm.finetune_steps, scene.btdm.method = "MODEL", 0, "TEXTURE"
        bpy.ops.btdm.generate_previs()
        [strip] = list(scene.sequence_editor.strips_all)
        seen["TEXTURE"] = {{"job": strip["btdm_job_id"], "n": len(strip.elements)}}
        # the scene render at three frames: the Render frame (2) and two more spread over 1..8 join its texture
        scene.btdm.appearance, scene.btdm.render_views = "RENDER", 3
        bpy.ops.btdm.generate_previs()
        [strip] = list(scene.sequence_editor.strips_all)
        seen["VIEWS"] = {{"job": strip["btdm_job_id"], "n": len(strip.elements)}}
        scene.btdm.render_views = 1
        scene.btdm.method = "DIFFUSION"
        # a photo without its reference pose in the shot cannot be fine-tuned on: said before any work
        scene.btdm.appearance, scene.btdm.appearance_image = "PHOTO", {str(tmp_path / 'photo.png')!r}
        scene.btdm.reference_frame, scene.btdm.finetune_steps = 50, 2
        try:
            bpy.ops.btdm.generate_previs()
            refused = ""
        except RuntimeError as exc:
            refused = str(exc)
        blender_addon.unregister()
        print("RESULT " + json.dumps({{"modes": seen, "refused": refused, "method": method}}))
    """, tmp_path, env={"BTDM_ENGINE_URL": engine.url})
    modes = result["modes"]
    assert set(modes) == {"IMAGE_IUV", "PHOTO", "RENDER", "NONE", "TEXTURE", "VIEWS"}
    assert all(r["n"] == 8 for r in modes.values()) and len({r["job"] for r in modes.values()}) == 6
    client = EngineClient(engine.url)
    params = {mode: client.job(r["job"])["params"] for mode, r in modes.items()}
    assert {p["model"] for p in params.values()} == {"toy"}
    assert params["IMAGE_IUV"]["finetune_steps"] == 2 and params["IMAGE_IUV"]["iuv_order"] == "btdm"
    assert params["IMAGE_IUV"]["appearance_frame"] is None
    assert params["TEXTURE"]["method"] == "texture" and params["IMAGE_IUV"]["method"] == "diffusion"
    assert params["PHOTO"]["iuv_order"] == "btdm"  # the server's default: no IUV file was sent
    # scene frames 3 and 2 of the range 1..8 are the job's frames 2 and 1
    assert (params["PHOTO"]["appearance_frame"], params["PHOTO"]["finetune_steps"]) == (2, 2)
    assert (params["RENDER"]["appearance_frame"], params["RENDER"]["finetune_steps"]) == (1, 2)
    # scene frames 3 and 6 (the middles of 1..8's two halves) as job frames 2 and 5: whole renders of the shot
    assert params["VIEWS"]["appearance_frame"] == 1 and params["VIEWS"]["method"] == "texture"
    views = engine.data / "jobs" / modes["VIEWS"]["job"] / "input" / "views"
    assert sorted(p.name for p in views.iterdir()) == ["000002.png", "000005.png"]
    assert cv2.imread(str(views / "000005.png")).shape == (108, 192, 3)  # the camera's view, cut by the engine
    assert result["method"] == "FIT"
    assert "reference pose" in result["refused"] and "frame 50 lies outside the frame range 1..8" in result["refused"]
    plate = cv2.imread(str(tmp_path / "previs" / "shot_Scene_ShotCam" / "take_005" / "000001.png"), cv2.IMREAD_UNCHANGED)
    assert plate.shape[2] == 4 and (plate[..., 3] > 0).any()


@pytest.mark.slow
def test_btdm_previs_mixamo_end_to_end_saved_in_the_blend(engine: Engine, tmp_path: Path) -> None:
    shot = tmp_path / "mixamo_shot.blend"
    run_bpy(f"""
        from test_addon_scenes import make_scene
        make_scene("mixamo", frames=6)
        bpy.ops.wm.save_as_mainfile(filepath={str(shot)!r})
        print("RESULT {{}}")
    """, tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([*BTDM, "previs", str(shot), str(tmp_path / "missing.blend"), "--out", str(out), "--engine",
                           engine.url, "--steps", "2", "--sr-steps", "2", "--seed", "5", "--save"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 2 and "missing.blend: no such .blend file" in proc.stderr  # checked before any work
    proc = subprocess.run([*BTDM, "previs", str(shot), "--out", str(out), "--engine", engine.url, "--steps", "2",
                           "--sr-steps", "2", "--seed", "5", "--save", "--armature", "MixamoRig"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    d = out / "mixamo_shot"
    assert sorted(p.name for p in (d / "frames").glob("*.png")) == [f"{n:06d}.png" for n in range(1, 7)]
    assert len(list((d / "posemaps").glob("*.png"))) == 6
    from btdm_engine.motion.clip import MotionClip

    clip = MotionClip.load(d / "clip.npz")
    assert clip.num_frames == 6 and (clip.width, clip.height) == (192, 108)
    job = json.loads((d / "job.json").read_text())
    assert job["has_plates"] and job["params"]["seed"] == 5 and job["retarget"]["skeleton"] == "mixamo"
    bones = ["mixamorig:LeftHand", "mixamorig:RightHand", "mixamorig:LeftFoot", "mixamorig:RightFoot",
             "mixamorig:Head", "mixamorig:LeftForeArm"]
    assert _heads_inside(d / "frames", d / "skeleton.npz", bones, 1) >= 0.9
    # The saved .blend has the strip over the scene's frame range.
    result = run_bpy(f"""
        bpy.ops.wm.open_mainfile(filepath={str(shot)!r})
        scene = bpy.context.scene
        strips = [(s.frame_final_start, s.frame_final_end, len(s.elements), s.get("btdm_seed"), s.blend_type)
                  for s in scene.sequence_editor.strips_all]
        print("RESULT " + json.dumps({{"strips": strips, "range": [scene.frame_start, scene.frame_end]}}))
    """, tmp_path)
    assert result["strips"] == [[1, 7, 6, 5, "ALPHA_OVER"]] and result["range"] == [1, 6]
    # A shot that fails gives one line naming it and a non-zero exit.
    proc = subprocess.run([*BTDM, "previs", str(shot), "--out", str(out), "--engine", engine.url, "--armature",
                           "Nobody"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"{shot}: error: --armature Nobody: scene 'Scene' has no armature of that name (it has: MixamoRig)"]
    # The same shot as a Ray task on a local cluster (--ray ADDRESS spreads shots over a real one).
    ray_out = tmp_path / "ray_out"
    proc = subprocess.run([*BTDM, "previs", str(shot), "--out", str(ray_out), "--engine", engine.url, "--steps", "2",
                           "--sr-steps", "2", "--seed", "5", "--ray", "local"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ray_frames = sorted(p.name for p in (ray_out / "mixamo_shot" / "frames").glob("*.png"))
    assert ray_frames == [f"{n:06d}.png" for n in range(1, 7)]


def test_cancel_leaves_no_strip_and_no_partial_frame(engine: Engine, tmp_path: Path) -> None:
    result = run_bpy(f"""
        import time
        import blender_addon
        from blender_addon import runs
        from blender_addon.jobs import PrevisRun
        from blender_addon.prepare import build_request
        from test_addon_scenes import make_scene
        scene, arm = make_scene("mixamo", frames=24)
        blender_addon.register()
        scene.btdm.steps, scene.btdm.sr_steps = 200, 200
        out = {str(tmp_path / 'plates')!r}
        run = PrevisRun(build_request(bpy.context, "plates", out_override=out))
        entry = runs.Entry(run=run, scene=scene.name, key="Scene_ShotCam", camera="ShotCam")
        run.start()
        deadline = time.monotonic() + 120
        while run.snapshot().stage not in ("btunet", "sr3") and time.monotonic() < deadline:
            time.sleep(0.05)
        staged = run.snapshot().stage
        run.cancel()
        run.join(60)
        runs.finalize(entry)
        snap = run.snapshot()
        se = scene.sequence_editor
        strips = 0 if se is None else len(se.strips_all)  # read now: the objects die with the file below
        # Opening another .blend mid-run: the run is cancelled and forgotten, nothing lands in the new file.
        bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / 'shot.blend')!r})
        other = PrevisRun(build_request(bpy.context, "plates", out_override=out))
        runs.start(scene, scene.camera, "Scene_ShotCam", other)
        while other.snapshot().stage not in ("btunet", "sr3") and time.monotonic() < deadline + 120:
            time.sleep(0.05)
        bpy.ops.wm.open_mainfile(filepath={str(tmp_path / 'shot.blend')!r})
        forgotten = runs.RUNS == {{}} and runs.active(bpy.context.scene) is None
        other.join(60)
        se2 = bpy.context.scene.sequence_editor
        blender_addon.unregister()
        print("RESULT " + json.dumps({{"phase": snap.phase, "job": snap.job_id, "stage": staged,
                                      "strips": strips, "ok": entry.ok,
                                      "result": entry.result, "forgotten": forgotten,
                                      "other": other.snapshot().phase, "other_job": other.snapshot().job_id,
                                      "strips_after_load": 0 if se2 is None else len(se2.strips_all)}}))
    """, tmp_path, env={"BTDM_ENGINE_URL": engine.url})
    assert result["stage"] in ("btunet", "sr3")
    assert result["phase"] == "cancelled" and result["strips"] == 0 and not result["ok"]
    leftovers = [p.name for p in (tmp_path / "plates").rglob("*")]
    assert leftovers == [], leftovers  # no frame, no staging folder, no temporary file
    assert EngineClient(engine.url).job(result["job"])["state"] == "cancelled"
    assert result["forgotten"] and result["other"] == "cancelled" and result["strips_after_load"] == 0
    assert EngineClient(engine.url).job(result["other_job"])["state"] == "cancelled"


def test_local_engine_is_started_on_a_free_port_and_stopped(tmp_path: Path) -> None:
    """Local mode: nothing answers at the local URL, so the add-on starts `btdm serve` itself, then stops it."""
    result = run_bpy(f"""
        import os
        from blender_addon.engine import MANAGER, EngineSettings, EngineUnavailable
        settings = EngineSettings(local_url="http://127.0.0.1:{free_port()}", device="cpu",
                                  executable={str(Path(sys.executable).with_name('btdm'))!r},
                                  data_dir={str(tmp_path / 'data')!r})
        MANAGER.connect(settings)
        status = MANAGER.status
        pid = MANAGER.child_pid
        MANAGER.stop()
        alive = True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        try:
            MANAGER.connect(EngineSettings(local_url=settings.local_url, executable="/nonexistent/btdm"))
            missing = "no error"
        except EngineUnavailable as exc:
            missing = str(exc)
        print("RESULT " + json.dumps({{"connected": status.connected, "local": status.local_child,
                                      "device": status.device, "models": [m["name"] for m in status.models],
                                      "url": status.url, "alive": alive, "missing": missing}}))
    """, tmp_path)
    assert result["connected"] and result["local"] and result["device"] == "cpu" and result["models"] == ["default"]
    assert result["url"].startswith("http://127.0.0.1:") and not result["alive"]
    assert "the `btdm` command was not found (/nonexistent/btdm is not an executable file)" in result["missing"]


def test_an_output_folder_keeps_every_file_pre_vis_did_not_write(tmp_path: Path) -> None:
    # Generate replaces its own earlier frames and removes the ones a shorter run no longer makes,
    # and refuses, before any work, a folder holding frames it did not write (a render, a plate).
    from blender_addon.jobs import WRITTEN_FILE, RunFailed, _commit, check_output_folder

    def stage(names: list[str]) -> str:
        staging = tmp_path / "out" / ".btdm-job"
        staging.mkdir(parents=True)
        for name in names:
            (staging / name).write_bytes(b"new " + name.encode())
        return str(staging)

    out = tmp_path / "out"
    _commit(stage(["000001.png", "000002.png", "000003.png"]), str(out))
    _commit(stage(["000001.png", "000002.png"]), str(out))  # a shorter run: 000003 was ours, so it goes
    assert sorted(p.name for p in out.iterdir()) == [WRITTEN_FILE, "000001.png", "000002.png"]
    assert json.loads((out / WRITTEN_FILE).read_text())["frames"] == ["000001.png", "000002.png"]
    (out / "000007.png").write_bytes(b"someone's render")
    (out / "notes.txt").write_text("kept")
    with pytest.raises(RunFailed, match=r"out holds 1 frame file\(s\) that pre-vis did not write \(000007.png\)"):
        check_output_folder(str(out))
    staging = stage(["000001.png"])
    with pytest.raises(RunFailed, match="did not write"):
        _commit(staging, str(out))
    assert (out / "000007.png").read_bytes() == b"someone's render" and (out / "notes.txt").read_text() == "kept"
    assert (out / "000002.png").read_bytes() == b"new 000002.png"  # nothing of ours was touched either
    (out / WRITTEN_FILE).write_text("{not json")
    with pytest.raises(RunFailed, match="unreadable"):
        check_output_folder(str(out))
    check_output_folder(str(tmp_path / "missing"))  # a folder that does not exist yet is fine


def test_stop_never_waits_behind_a_starting_engine(tmp_path: Path) -> None:
    # The Stop button, unregister and quitting call stop() on Blender's main thread while a worker
    # may be inside connect(), waiting (up to minutes) for a local engine to answer: stop() returns
    # at once, the start gives up with a clear reason and the child is gone.
    import threading

    from blender_addon.engine import START_TIMEOUT_S, EngineManager, EngineSettings, EngineUnavailable

    silent = tmp_path / "btdm"
    silent.write_text("#!/bin/sh\nexec sleep 600\n")  # starts, never answers
    silent.chmod(0o755)
    manager = EngineManager()
    settings = EngineSettings(local_url=f"http://127.0.0.1:{free_port()}", executable=str(silent))
    outcome: list[BaseException] = []

    def connect() -> None:
        try:
            manager.connect(settings)
        except BaseException as exc:  # the outcome is asserted below
            outcome.append(exc)

    worker = threading.Thread(target=connect)
    worker.start()
    deadline = time.monotonic() + 30
    while manager.child_pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = manager.child_pid
    assert pid is not None and manager.status.checking
    t0 = time.monotonic()
    manager.stop(wait=False)
    # "At once": not behind connect(), which would give up only after START_TIMEOUT_S (180 s). The
    # bound is that, not a fraction of a second, so a busy machine does not fail it.
    assert time.monotonic() - t0 < START_TIMEOUT_S / 6
    worker.join(15)
    assert not worker.is_alive()
    assert isinstance(outcome[0], EngineUnavailable) and "stopped while it was starting" in str(outcome[0])
    assert not manager.status.checking and not manager.status.connected
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the child {pid} is still running")
