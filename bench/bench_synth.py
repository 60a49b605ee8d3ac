"""Synthetic-set throughput: cloth simulation and Cycles rendering, seconds per frame.

Builds a small dataset with the ``mini`` recipe (cloth quality, samples, garment resolution) for
``--characters`` people x one motion at each ``--sizes`` resolution, through the real builder
(one worker process per shard), and reads the per-shard timings each shard records in its
``meta.json``: cloth bake (pre-roll included) per simulated frame, Cycles render per frame, and
the fixed cost per shard (imports, scene set-up, pose maps). On the 2-core CI machine a mini
shard (48 frames) should stay under a minute so the whole ``mini`` preset builds in < 15 min.

Run: ``python -m bench synth`` (or ``python -m bench.bench_synth --sizes 128 256``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from synthetic_data.build import build_dataset
from synthetic_data.presets import MotionSpec, get_preset


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; ``argv`` as for ``python -m bench.bench_synth``."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="render resolutions (default 128 256)")
    parser.add_argument("--frames", type=int, default=24, help="recorded frames per shard (default 24)")
    parser.add_argument("--characters", type=int, default=2, help="characters per size (default 2)")
    parser.add_argument("--motion", default="dance", help="procedural motion (default dance)")
    parser.add_argument("--workers", type=int, default=1, help="shards at once (default 1: clean timings)")
    parser.add_argument("--keep", default=None, help="build into this folder and keep it")
    args = parser.parse_args(argv)

    base = get_preset("mini").with_overrides(
        name="bench", characters=args.characters, test_characters=1, frames=args.frames,
        motions=(MotionSpec(args.motion),),
    )
    print(f"mini recipe: {base.render.samples} samples, denoise {base.render.denoise}, cloth quality "
          f"{base.cloth.quality}/{base.cloth.collision_quality}, spacing {base.cloth.spacing} m, "
          f"pre-roll {base.cloth.preroll}; {args.characters} characters x {args.frames} frames of {args.motion}")
    print(f"{'size':>5} {'cloth s/frame':>14} {'render s/frame':>15} {'posemaps s/frame':>17} {'fixed s/shard':>14} "
          f"{'wall s/shard':>13}  garments (vertices)")
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        for size in args.sizes:
            preset = base.with_overrides(render_resolution=size)
            out = root / f"{size}px"
            t0 = time.perf_counter()
            build_dataset(preset, out, workers=args.workers, progress=False)
            wall = time.perf_counter() - t0
            metas = [json.loads(p.read_text()) for p in sorted(out.glob("sequences/*/meta.json"))]
            t = {k: np.mean([m["timings"][k] for m in metas]) for k in metas[0]["timings"]}
            fixed = t["setup_s"] + t["scene_s"]
            verts = ", ".join("+".join(str(v) for v in m["garment_vertices"]) for m in metas)
            print(f"{size:5d} {t['cloth_s_per_frame']:14.3f} {t['render_s_per_frame']:15.3f} "
                  f"{t['posemaps_s'] / args.frames:17.4f} {fixed:14.2f} {wall / len(metas):13.1f}  {verts}")


if __name__ == "__main__":
    main()
