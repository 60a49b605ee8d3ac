"""Several views of the person: the texture transfer and a model from 1, 2, 4 ... pictures of each held-out person.

A user with more than one picture of the character (the add-on's Scene render at several frames,
``btdm animate --view K IMG``, the service's ``views`` zip) gives the UV texture what one picture
hides: the back as the body turns, the far arm. This scores that, on the held-out people of a
dataset (the manifest's ``test`` split): for N views, the pictures are frame 0 (the appearance
image c, its pose map as g(c)) and N - 1 more frames spread over the sequence (the middles of as
many equal parts of frames 1..F-1), each with its pose map as its IUV map. The scored frames are
1..F-1 less every frame any setting used as a view (a view's own frame would be an easy copy), the
same frames for every setting; body only (the pose maps' foreground), SSIM and PSNR
(``btdm_engine.metrics.evaluate``; the temporal measures are left out, the scored frames having gaps).

    python -m bench.bench_views --data data/wide256 [--views 1,2,4 --model DIR --steps 25 --sr-steps 1]

``python -m bench views`` (no arguments) is a smoke run on a toy dataset with the shipped model.
Everything goes to ``--out`` (default ``out/bench_views``): ``<setting>/`` (pred, gt, iuv) and
``table.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench.heldout import fresh_dir, score, sequence_inputs, smoke_dataset, to_uint8, write_frames
from btdm_engine.imageio import read_rgb, resize_labels, resize_rgb
from btdm_engine.pipeline import Animator
from btdm_engine.posemaps.texture import texture_from_image, transfer_frames
from btdm_engine.weights import default_model_dir
from training.dataset_format import DatasetManifest


def view_frames(count: int, frames: int) -> list[int]:
    """Frame 0 and ``count - 1`` more: the middles of as many equal parts of frames 1..frames-1."""
    others = count - 1
    return [0] + sorted({int(round(1 + (frames - 2) * (i + 0.5) / others)) for i in range(others)})


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_views", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="dataset with a test split (default: a toy set)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped default model)")
    p.add_argument("--out", type=Path, default=Path("out/bench_views"), help="output folder (replaced)")
    p.add_argument("--views", default="1,2", help="numbers of views to compare (default 1,2)")
    p.add_argument("--frames", type=int, default=24, help="frames per held-out sequence")
    p.add_argument("--split", default="test", help="the manifest split to score")
    p.add_argument("--steps", type=int, default=25, help="BTU-Net steps")
    p.add_argument("--sr-steps", type=int, default=1, help="SR3 steps (the shipped SR3's own choice is 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-model", action="store_true", help="the texture transfer only (seconds)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    fresh_dir(args.out)
    data = args.data if args.data is not None else smoke_dataset(args.out)
    sequences = DatasetManifest.load(data).sequence_frames(args.split)
    if not sequences:
        sys.exit(f"{data}: no sequences in the {args.split!r} split")
    counts = [int(n) for n in args.views.split(",")]
    animator = None if args.no_model else Animator.from_pretrained(args.model or default_model_dir(), device="cpu")
    rows = []
    for method in ("texture",) + (() if animator is None else ("model",)):
        for count in counts:
            key = f"{method}_{count}"
            out = args.out / key
            start = time.perf_counter()
            for seq in sequences:
                poses, c = sequence_inputs(seq, args.frames)
                num = len(poses)
                res = 256 if animator is None else animator.resolution
                used = {k for n in counts for k in view_frames(n, num)}
                kept = [t for t in range(1, num) if t not in used]
                mine = view_frames(count, num)
                pictures = [to_uint8(resize_rgb(read_rgb(seq.rgb[k]), c.shape[:2])) for k in mine[1:]]
                views = [(picture, poses[k]) for picture, k in zip(pictures, mine[1:], strict=True)]
                if animator is None or method == "texture":
                    texture = texture_from_image(c, poses[0], views=views)
                    frames = np.stack(list(transfer_frames(texture, [resize_labels(p, (res, res)) for p in poses])))
                else:
                    frames = np.stack(list(animator.animate_iter(poses, c, poses[0], views=views, steps=args.steps,
                                                                 sr_steps=args.sr_steps, seed=args.seed)))
                scored = SimpleNamespace(id=seq.id, rgb=[seq.rgb[t] for t in kept])
                write_frames(out, key, scored, frames[kept], poses[kept], res, 0)
            m = score(out, key, "pose")["metrics"]
            rows.append((method, count, m["ssim"], m["psnr"], time.perf_counter() - start))
            print(f"{method} {count} views: SSIM {m['ssim']:.4f} PSNR {m['psnr']:.2f} "
                  f"({rows[-1][4]:.0f} s)", flush=True)
    lines = ["| method | views | body SSIM | body PSNR | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {n} | {s:.4f} | {p:.2f} | {t:.0f} |" for m, n, s, p, t in rows]
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
