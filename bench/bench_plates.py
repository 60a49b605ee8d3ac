"""The plates' cost and edges: the new default model against the old one, side by side, and the halo.

1. **Time per frame.** ``make demo``'s job (a 60-frame dance at 30 fps, 25 BTU-Net steps and the
   demo's SR3 steps: the model's own choice, else 10; the shipped appearance image and its IUV
   map) through the old default model (``--old``, the ``tiny`` model without the texture-transfer
   prior: by default the model folder at git commit ``OLD_COMMIT``), the new one (``--new``, the
   shipped ``tiny-warp`` model with its residual SR3, one SR3 step) and the
   learning-free texture transfer alone, each in a fresh subprocess with the CLI's settings (two
   threads, glibc keeping freed memory), interleaved rounds, best of ``--repeat``. The new model
   pays for the prior (texture, lookups at the output size) on top of the networks; the target is
   at most 1.5x the old per frame.
2. **The halo.** Real figures (the truth frames of a dataset's held-out people, or the toy set) are
   given a known soft edge (their pose map's foreground, blurred: alpha) over the generated white
   background, as a generated frame has; both composites, the old matte (the pose map's foreground
   and a key against the background, colours kept as they are) and the unmixed one
   (:func:`btdm_engine.motion.shot.unmix_edges`), are laid over black and compared with the ideal
   alpha x figure in the edge band: the **white excess** is the mean of how much brighter than the
   ideal the edge is (grey levels), the error the mean absolute difference. Also written: a
   picture of both over a dark plate (``halo.png``).

``python -m bench plates`` (smoke: 12 frames, one round, the toy set) or
``python -m bench.bench_plates --frames 60 --repeat 3 --data data/wide``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from btdm_engine.procs import keep_freed_memory
from btdm_engine.weights import default_appearance, default_model_dir

# The last commit whose default model is the `tiny` one without the prior (the old path).
OLD_COMMIT = "a3d2da4"
MODEL_PATH = "btdm_engine/weights/default"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_plates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", type=Path, default=None, help=f"old model folder (default: {MODEL_PATH} at {OLD_COMMIT})")
    p.add_argument("--new", type=Path, default=None, help="new model folder (default: the shipped one)")
    p.add_argument("--frames", type=int, default=None, help="frames of the dance (default 60; smoke run 12)")
    p.add_argument("--repeat", type=int, default=1, help="interleaved rounds (best of)")
    p.add_argument("--data", type=Path, default=None, help="dataset whose test split gives the halo's figures")
    p.add_argument("--out", type=Path, default=Path("out/bench_plates"))
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)  # internal: one timed run
    return p.parse_args(argv)


def _one_job(spec: dict) -> dict:
    """One timed generation in this (fresh) process, as ``btdm animate`` runs it."""
    keep_freed_memory()
    import torch  # lazy: torch, after keep_freed_memory() (the job process imports this module)

    from btdm_engine.body.model import load_body_model  # lazy: loads torch, after keep_freed_memory()
    from btdm_engine.imageio import read_rgb  # lazy: loads cv2, after keep_freed_memory()
    from btdm_engine.motion import make_motion  # lazy: loads scipy, after keep_freed_memory()
    from btdm_engine.pipeline import Animator  # lazy: loads torch, after keep_freed_memory()
    from btdm_engine.posemaps.encoding import read_iuv_png  # lazy: loads torch, after keep_freed_memory()
    from btdm_engine.posemaps.renderer import IUVRenderer  # lazy: loads pyrender/OpenGL, after keep_freed_memory()
    from btdm_engine.posemaps.texture import build_texture, transfer  # lazy: loads torch, after keep_freed_memory()

    clip = make_motion("dance", seconds=spec["frames"] / 30.0, fps=30.0)
    with IUVRenderer(load_body_model(clip.body_model), 128, 128) as renderer:
        maps = np.stack(list(renderer.render_clip(clip, size=128, progress=False)))
    app, app_iuv = default_appearance()
    c = np.round(read_rgb(app) * 255).astype(np.uint8)
    g = read_iuv_png(app_iuv)
    t0 = time.perf_counter()
    if spec["model"] == "texture":
        texture = build_texture([(c, g)])
        frames = np.stack([transfer(texture, m) for m in maps])
    else:
        animator = Animator.from_pretrained(spec["model"], device="cpu")
        frames = animator.animate(maps, c, g if animator.uses_warp else None, steps=25,
                                   sr_steps=animator.sr_steps_for(10), seed=0)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "frames": len(frames), "threads": torch.get_num_threads()}


def _old_model(out: Path) -> Path:
    """The old default model folder, from git history."""
    target = out / "old_model"
    if (target / "btunet").is_dir():
        return target
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", OLD_COMMIT, MODEL_PATH], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"cannot read {MODEL_PATH} at {OLD_COMMIT} from git ({archive.stderr.decode().strip()}); "
                         "pass --old MODEL_FOLDER")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        (Path(tmp) / MODEL_PATH).rename(target)
    return target


def timing(args: argparse.Namespace) -> dict[str, float]:
    models = {"old": str(args.old or _old_model(args.out)), "new": str(args.new or default_model_dir()),
              "texture": "texture"}
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, model in models.items():
            spec = json.dumps({"model": model, "frames": args.frames})
            proc = subprocess.run([sys.executable, "-m", "bench.bench_plates", "--job", spec],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            if proc.returncode != 0:
                raise SystemExit(f"{name}: {proc.stderr.strip()[-2000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            per_frame = result["seconds"] / result["frames"]
            best[name] = min(best.get(name, float("inf")), per_frame)
    return best


def halo(args: argparse.Namespace) -> dict[str, float]:
    """White excess and error of the old and the unmixed edge, over black (module docstring, 2.)."""
    import cv2  # lazy: cv2; the timed job processes import this module

    from bench.heldout import smoke_dataset  # lazy: loads torch; the timed job processes import this module
    from btdm_engine.imageio import read_rgb  # lazy: loads cv2; the timed job processes import this module
    from btdm_engine.motion.shot import unmix_edges  # lazy: loads scipy; the timed job processes import this module
    from btdm_engine.posemaps.encoding import read_iuv_png  # lazy: loads torch; the timed job processes import this module
    from btdm_engine.posemaps.preview import write_rgb_png  # lazy: loads torch; the timed job processes import this module
    from training.dataset_format import DatasetManifest  # lazy: loads cv2; the timed job processes import this module

    data = args.data or smoke_dataset(args.out)
    tests = DatasetManifest.load(data).sequence_frames("test")
    stats = {"old_excess": [], "new_excess": [], "old_error": [], "new_error": []}
    picture = []
    for seq in tests:
        for t in range(0, seq.num_frames, max(1, seq.num_frames // 4)):
            figure = read_rgb(seq.rgb[t]) * 255.0
            body = (read_iuv_png(seq.iuv[t])[..., 0] > 0).astype(np.uint8)
            res = body.shape[0]
            alpha = np.clip(cv2.GaussianBlur(body.astype(np.float32), (0, 0), 0.8), 0, 1)[..., None]
            frame = np.round(alpha * figure + (1 - alpha) * 255.0).astype(np.uint8)
            ideal = alpha * figure
            grow = int(round(0.04 * res))
            old = old_matte(frame, body, grow)[..., None] * frame
            colour, a = unmix_edges(frame, body, grow)
            new = a[..., None] * colour
            ring = (alpha[..., 0] > 0.02) & (alpha[..., 0] < 0.98)
            for key, comp in (("old", old), ("new", new)):
                diff = (comp - ideal)[ring].mean(axis=-1)
                stats[f"{key}_excess"].append(float(np.maximum(diff, 0).mean()))
                stats[f"{key}_error"].append(float(np.abs(diff).mean()))
            if len(picture) < 4:
                dark = np.full(frame.shape, 30.0)
                picture.append(np.concatenate([old + (1 - old_matte(frame, body, grow)[..., None]) * dark,
                                               new + (1 - a[..., None]) * dark], axis=1))
    if picture:
        sheet = np.concatenate(picture, axis=0)
        write_rgb_png(args.out / "halo.png", np.clip(np.round(cv2.resize(sheet, None, fx=3, fy=3,
                                                       interpolation=cv2.INTER_NEAREST)), 0, 255).astype(np.uint8))
    return {k: float(np.mean(v)) for k, v in stats.items()}


def old_matte(frame: np.ndarray, body: np.ndarray, grow_px: int) -> np.ndarray:
    """The matte plates had before the edge was unmixed: the body, plus what differs from the
    background in the band around it; the colours were kept as generated."""
    import cv2  # lazy: cv2; the timed job processes import this module

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow_px + 1, 2 * grow_px + 1))
    band = cv2.dilate(body, kernel).astype(bool)
    outside = frame[~band]
    background = np.median(outside, axis=0) if len(outside) else np.full(3, 255.0)
    distance = np.linalg.norm(frame.astype(np.float32) - background.astype(np.float32), axis=-1)
    key = np.clip((distance - 16.0) / 48.0, 0.0, 1.0)
    return np.maximum(body.astype(np.float32), np.where(band, key, 0.0)).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.job is not None:
        print(json.dumps(_one_job(json.loads(args.job))))
        return
    smoke = args.frames is None and args.data is None
    args.frames = args.frames or (12 if smoke else 60)
    args.out.mkdir(parents=True, exist_ok=True)
    best = timing(args)
    edges = halo(args)
    lines = [
        f"time per frame ({args.frames}-frame dance, 25 + the model's SR3 steps (else 10), best of {args.repeat} "
        "interleaved rounds, "
        "fresh processes, 2 threads):",
        "",
        "| path | ms / frame | x old |",
        "|---|---:|---:|",
    ]
    for name in ("old", "new", "texture"):
        lines.append(f"| {name} | {1000 * best[name]:.1f} | {best[name] / best['old']:.2f} |")
    lines += [
        "",
        f"edge over black ({args.data or 'toy set'}; soft edge band, grey levels): white excess old "
        f"{edges['old_excess']:.1f} -> new {edges['new_excess']:.1f}; mean error old {edges['old_error']:.1f} -> "
        f"new {edges['new_error']:.1f}",
    ]
    text = "\n".join(lines)
    (args.out / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
