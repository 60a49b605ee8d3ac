"""Takes: every Generate keeps its take in the shot's output folder; the panel lists them, puts one on the plate
strip, deletes old ones (only the files pre-vis wrote). Strip paths stay relative to the .blend.

As in ``test_addon.py``: every bpy test runs in its own Python process, against a real ``btdm serve`` subprocess
on a free loopback port (texture transfer: no network, seconds), killed at teardown.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from test_addon import Engine, run_bpy

pytestmark = [pytest.mark.blender, pytest.mark.skipif(importlib.util.find_spec("bpy") is None,
                                                     reason="needs the bpy module (pip install -e .[blender])")]


RECORDER = """
class Recorder:
    def __init__(self, lines): self.lines = lines
    def _sub(self, *a, **k): return Recorder(self.lines)
    row = column = box = split = _sub
    def __setattr__(self, k, v): object.__setattr__(self, k, v)
    def prop(self, data, name, **k): self.lines.append(f"prop {name}")
    def prop_search(self, data, name, *a, **k): self.lines.append(f"search {name}")
    def operator(self, idname, **k):
        self.lines.append(f"op {idname}")
        return type("Op", (), {})()
    def label(self, text="", icon="", **k): self.lines.append(f"label {text}" + (f" [{icon}]" if icon else ""))
    def progress(self, **k): self.lines.append(f"progress {k.get('text')}")
    def template_list(self, *a, **k): self.lines.append(f"list {a[0]}")
    def separator(self, **k): pass

def output_panel():
    from blender_addon.ui import panels
    lines = []
    panels.draw_output(Recorder(lines), bpy.context)
    return lines
"""


def test_takes_are_kept_switched_and_deleted(engine: Engine, tmp_path: Path) -> None:
    result = run_bpy(RECORDER + f"""
import os
import blender_addon
from test_addon_scenes import make_scene
scene, arm = make_scene("mixamo", frames=4)
bpy.ops.wm.save_as_mainfile(filepath={str(tmp_path / 'shot.blend')!r})
blender_addon.register()
scene.btdm.method = "TEXTURE"
out = {{"panel0": output_panel()}}
def strip():
    [s] = list(scene.sequence_editor.strips_all)
    return {{"dir": s.directory, "take": s.get("btdm_take"), "seed": s["btdm_seed"], "job": s["btdm_job_id"],
            "n": len(s.elements), "start": s.frame_final_start, "channel": s.channel, "name": s.name}}
for seed in (1, 2, 3):
    scene.btdm.seed = seed
    bpy.ops.btdm.generate_previs()
    out[f"gen{{seed}}"] = strip()
out["panel3"] = output_panel()
bpy.ops.btdm.take_show(take=1)
out["show1"] = strip()
def attempt(**kw):
    try:
        bpy.ops.btdm.take_delete(**kw)
        return "ok"
    except RuntimeError as exc:
        return str(exc)
out["delete_shown"] = attempt(take=1)
folder = os.path.join({str(tmp_path)!r}, "previs", "shot_Scene_ShotCam")
with open(os.path.join(folder, "take_002", "notes.txt"), "w") as fh:
    fh.write("the animator's note")
out["delete2"] = attempt(take=2)
out["delete3"] = attempt(take=3)
out["delete_missing"] = attempt(take=9)
out["panel_after"] = output_panel()
# a cancelled or failed Generate leaves no take folder
os.environ["BTDM_ENGINE_URL"] = "http://127.0.0.1:9"
try:
    bpy.ops.btdm.generate_previs()
except RuntimeError as exc:
    out["failed"] = str(exc)
blender_addon.unregister()
print("RESULT " + json.dumps(out))
""", tmp_path, env={"BTDM_ENGINE_URL": engine.url})
    folder = tmp_path / "previs" / "shot_Scene_ShotCam"
    for seed in (1, 2, 3):
        s = result[f"gen{seed}"]
        assert s["dir"] == f"//previs/shot_Scene_ShotCam/take_{seed:03d}/", s  # relative to the .blend
        assert (s["take"], s["seed"], s["n"], s["start"]) == (seed, seed, 4, 1) and f"take {seed}" in s["name"]
    assert len({result[f"gen{s}"]["channel"] for s in (1, 2, 3)}) == 1  # the same strip, replaced
    shown = result["show1"]
    assert shown["dir"] == "//previs/shot_Scene_ShotCam/take_001/" and shown["take"] == 1
    assert shown["job"] == result["gen1"]["job"] and shown["channel"] == result["gen1"]["channel"]
    # take.json: seed, settings, model, job id
    record = json.loads((folder / "take_001" / "take.json").read_text())
    assert record["seed"] == 1 and record["method"] == "texture" and record["model"] == "default"
    assert record["job_id"] == result["gen1"]["job"] and record["frames"] == 4 and record["first_frame"] == 1
    assert record["shot"] == {"blend": "shot.blend", "scene": "Scene", "camera": "ShotCam"}
    # the panel lists the takes newest first and marks the one on the strip
    p3 = result["panel3"]
    takes = [line for line in p3 if line.startswith("label Take ")]
    assert takes == ["label Take 3: seed 3, default texture [HIDE_OFF]", "label Take 2: seed 2, default texture [BLANK1]",
                     "label Take 1: seed 1, default texture [BLANK1]"], p3
    assert "label Takes (3)" in p3 and p3.count("op btdm.take_show") == 3 and p3.count("op btdm.take_delete") == 3
    assert "label Takes: none yet (each Generate keeps one)" in result["panel0"]
    # deleting: never the take on the strip; only pre-vis's files
    assert "take 1 is on the plate strip; show another take first" in result["delete_shown"]
    assert result["delete2"] == result["delete3"] == "ok"
    assert "this shot has no take 9" in result["delete_missing"]
    assert sorted(p.name for p in (folder / "take_002").iterdir()) == ["notes.txt"]
    assert not (folder / "take_003").exists()
    assert sorted(p.name for p in (folder / "take_001").iterdir()) == [".btdm-frames.json"] + [
        f"{n:06d}.png" for n in range(1, 5)] + ["take.json"]
    assert [line for line in result["panel_after"] if line.startswith("label Take")] == [
        "label Takes (1)", "label Take 1: seed 1, default texture [HIDE_OFF]"]
    assert "cannot connect to the engine" in result["failed"]
    assert sorted(p.name for p in folder.iterdir()) == ["take_001", "take_002"]  # no empty take_003 left
    print("\n".join(result["panel3"]))


def test_another_shots_takes_are_refused(tmp_path: Path) -> None:
    """Two shots sharing an Output folder: the second is refused before any work, and never sees the first's takes."""
    from blender_addon.jobs import RunFailed, _commit
    from blender_addon.takes import check_takes, delete_take, list_takes, new_take_dir, write_take

    out = tmp_path / "out"
    shot = {"blend": "shot010.blend", "scene": "Scene", "camera": "Camera"}
    other = {**shot, "blend": "shot020.blend"}
    assert new_take_dir(str(out)).endswith("take_001")
    take = Path(new_take_dir(str(out)))
    staging = take / ".btdm-job"
    staging.mkdir(parents=True)
    (staging / "000001.png").write_bytes(b"plate")
    _commit(str(staging), str(take), shot)
    write_take(str(take), 1, 1, {"seed": 4}, "f" * 32, shot)
    assert [t.number for t in list_takes(str(out), shot)] == [1] and list_takes(str(out), other) == []
    check_takes(str(out), shot)
    with pytest.raises(RunFailed, match=r"holds the 1 frame\(s\) of another shot \(shot010.blend"):
        check_takes(str(out), other)
    with pytest.raises(RunFailed, match="another shot"):
        delete_take(list_takes(str(out), shot)[0], other)
    assert new_take_dir(str(out)).endswith("take_002")
    (out / "take_002").mkdir()  # left empty by a cancelled run: reused
    assert new_take_dir(str(out)).endswith("take_002")
    (out / "000001.png").write_bytes(b"someone's render")  # a file pre-vis did not write, in the folder itself
    with pytest.raises(RunFailed, match="did not write"):
        check_takes(str(out), shot)
    assert (out / "000001.png").read_bytes() == b"someone's render"
