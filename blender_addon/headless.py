"""One shot of ``btdm previs``, in its own bpy process: ``python -m blender_addon.headless SPEC_JSON``.

The engine's ``btdm previs`` runs this program by name (it never imports the add-on): it opens the
shot's .blend, registers the add-on, calls ``bpy.ops.btdm.generate_previs`` exactly as an
animator's Generate button does, writes ``job.json``, optionally saves the .blend, and prints one
``BTDM-RESULT {json}`` line that the batch reads (exit status 0 when the shot succeeded).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import bpy

from . import register, runs, unregister

__all__ = ["shot_main"]


def shot_main(spec: dict[str, Any]) -> dict[str, Any]:
    """Open the shot, register the add-on, generate, optionally save; the shot's outcome as a dict."""
    bpy.ops.wm.open_mainfile(filepath=spec["blend"])
    register()
    try:
        scene = bpy.context.scene
        s = scene.btdm
        for key, kind in (("armature", "ARMATURE"), ("camera", "CAMERA")):
            name = spec.get(key)
            if name is None:
                continue
            obj = scene.objects.get(name)
            if obj is None or obj.type != kind:
                found = sorted(o.name for o in scene.objects if o.type == kind)
                return {"ok": False, "error": f"--{key} {name}: scene {scene.name!r} has no {kind.lower()} of that "
                        f"name (it has: {', '.join(found) or 'none'})"}
            setattr(s, key, obj)
        for key in ("steps", "sr_steps", "seed"):
            if spec.get(key) is not None:
                setattr(s, key, spec[key])
        out = Path(spec["out"])
        try:
            bpy.ops.btdm.generate_previs(output_dir=str(out / "frames"), posemaps_dir=str(out / "posemaps"),
                                         skeleton_path=str(out / "skeleton.npz"))
        except RuntimeError as exc:
            return {"ok": False, "error": str(exc).removeprefix("Error: ").strip()}
        entry = runs.latest(scene)
        snap = entry.run.snapshot()
        report = {"job_id": snap.job_id, "params": entry.run.request.params, "retarget": snap.retarget,
                  "has_plates": snap.has_plates, "notes": list(snap.notes)}
        (out / "job.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        if spec.get("save"):
            bpy.ops.wm.save_mainfile()
        return {"ok": True, "frames": snap.frames_done, "params": entry.run.request.params}
    finally:
        unregister()


if __name__ == "__main__":
    try:
        outcome = shot_main(json.loads(sys.argv[1]))
    except Exception as exc:  # report it as the shot's one line; the traceback goes to blender.log
        import traceback

        traceback.print_exc()
        outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print("BTDM-RESULT " + json.dumps(outcome), flush=True)
    sys.exit(0 if outcome.get("ok") else 1)
