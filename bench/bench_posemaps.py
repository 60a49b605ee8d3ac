"""Pose-map throughput: a 300-frame walk at 256 x 256 on the mannequin, skinning included.

Rows: skinning alone (``body.forward`` in chunks), rendering alone (pre-skinned vertices),
``IUVRenderer.render_clip`` (both), and ``export_posemaps`` (both plus PNG writing). The target
on the 2-core CI machine is >= 40 frames/s for ``render_clip``. Memory: process peak RSS
(``getrusage``; includes the GL driver's allocations, which tracemalloc cannot see) and the peak
of Python allocations during one ``render_clip`` pass (tracemalloc, in a separate untimed pass).

Run: ``python -m bench posemaps``.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import tracemalloc

import numpy as np

from btdm_engine.posemaps.atlas import build_atlas
from btdm_engine.posemaps.export import export_posemaps

FRAMES = 300
SIZE = 256
FPS = 30.0
TARGET_FPS = 40.0


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark; ``argv`` as for ``python -m bench.bench_posemaps``."""
    parser = argparse.ArgumentParser(prog="python -m bench.bench_posemaps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=FRAMES, help=f"clip length (default {FRAMES})")
    parser.add_argument("--size", type=int, default=SIZE, help=f"pixels (default {SIZE})")
    args = parser.parse_args(argv)
    frames, size = args.frames, args.size

    from btdm_engine.body import load_body_model  # lazy: loads torch; --help stays light
    from btdm_engine.motion import make_motion  # lazy: loads scipy; --help stays light
    from btdm_engine.posemaps.renderer import IUVRenderer  # lazy: loads pyrender/OpenGL; --help stays light

    body = load_body_model("mannequin")
    clip = make_motion("walk", seconds=frames / FPS, fps=FPS, seed=0, width=size, height=size)
    t0 = time.perf_counter()
    atlas = build_atlas(body)
    t_atlas = time.perf_counter() - t0
    rows: list[tuple[str, float, float]] = []  # (what, seconds, frames/s)

    with IUVRenderer(body, size, size, atlas=atlas) as renderer:
        # Warm-up: shader compilation and the first buffer upload happen once per renderer.
        t0 = time.perf_counter()
        v0, _ = body.forward(clip.poses[:1], clip.betas, clip.trans[:1])
        renderer.render(v0[0], clip.K[0], clip.world_to_cam[0])
        t_first = time.perf_counter() - t0

        t0 = time.perf_counter()
        chunks = [body.forward(clip.poses[i : i + renderer.chunk_size], clip.betas,
                               clip.trans[i : i + renderer.chunk_size])[0]
                  for i in range(0, frames, renderer.chunk_size)]
        dt = time.perf_counter() - t0
        rows.append(("skinning alone (body.forward)", dt, frames / dt))
        verts = np.concatenate(chunks)

        t0 = time.perf_counter()
        for t in range(frames):
            renderer.render(verts[t], clip.K[t], clip.world_to_cam[t])
        dt = time.perf_counter() - t0
        rows.append(("render alone (IUVRenderer.render)", dt, frames / dt))

        t0 = time.perf_counter()
        count = sum(1 for _ in renderer.render_clip(clip, progress=False))
        dt = time.perf_counter() - t0
        assert count == frames
        rows.append(("render_clip (skinning + render)", dt, frames / dt))

        tracemalloc.start()
        for _ in renderer.render_clip(clip, progress=False):
            pass
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_posemaps(clip, tmp, size=None, mp4=False, body=body, atlas=atlas, progress=False)
        dt = time.perf_counter() - t0
        rows.append(("export_posemaps (+ PNG files, new renderer)", dt, frames / dt))

    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"pose maps: {frames} frames at {size}x{size}, mannequin V={body.num_vertices}, "
          f"split V'={atlas.num_vertices}, F={atlas.faces.shape[0]}")
    print(f"{'what':46s} {'seconds':>8s} {'frames/s':>9s}")
    for what, seconds, fps in rows:
        print(f"{what:46s} {seconds:8.2f} {fps:9.1f}")
    print(f"{'atlas build (cached after first call)':46s} {t_atlas:8.2f}")
    print(f"{'renderer setup + first frame':46s} {t_first:8.2f}")
    print(f"peak RSS {rss_mib:.0f} MiB; peak Python allocations in render_clip "
          f"{py_peak / 2**20:.1f} MiB")
    clip_fps = rows[2][2]
    verdict = "meets" if clip_fps >= TARGET_FPS else "MISSES"
    print(f"render_clip {clip_fps:.1f} frames/s {verdict} the {TARGET_FPS:.0f} frames/s target")


if __name__ == "__main__":
    main()
