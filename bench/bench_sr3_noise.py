"""SR3 noise across frames: shared against independent, and the low-resolution noise level.

SR3 invents the detail the 32 px frames do not hold. With a fresh noise draw per frame (the
old behaviour) that detail differs from frame to frame, a flicker the bidirectional stage cannot
remove; ``sample_sr3(noise="shared")`` gives every frame the same noise. SR3 is trained on
downsampled ground truth but fed generated frames, so a non-zero conditioning-augmentation
level at inference (``sr_low_res_logsnr``; training draws it from U[3, 20]) may help too.

Every setting animates the same held-out sequences (the manifest's ``test`` split, the first
``--per-character`` sequences of each held-out character) through ``Animator.animate`` with the
same seed (so the BTU-Net frames are identical and only SR3 differs) and is scored against the
ground truth at the output resolution, foreground only: the temporal metrics tOF and warping
error (tLPIPS needs LPIPS weights, not shipped), plus SSIM and PSNR.

    python -m bench.bench_sr3_noise --data data/wide [--model DIR] [--levels none,12,8,5]

``python -m bench sr3_noise`` (no arguments) runs a smoke version on a toy dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from btdm_engine.weights import default_model_dir


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_sr3_noise", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="dataset with a test split (default: a toy set)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped default model)")
    p.add_argument("--out", type=Path, default=Path("out/bench_sr3_noise"), help="output folder (replaced)")
    p.add_argument("--per-character", type=int, default=1, help="held-out sequences per character")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sr-steps", type=int, default=10)
    p.add_argument("--levels", default="none,12,8,5",
                   help="comma-separated sr_low_res_logsnr values tried with shared noise ('none' = clean)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    # lazy: loads torch; --help stays light
    from bench.heldout import fresh_dir, score, sequence_inputs, smoke_dataset, write_frames
    from btdm_engine.metrics.evaluate import format_table, write_report  # lazy: loads torch; --help stays light
    from btdm_engine.pipeline import Animator  # lazy: loads torch; --help stays light
    from training.dataset_format import DatasetManifest  # lazy: loads cv2; --help stays light

    fresh_dir(args.out)
    if args.data is None:
        data = smoke_dataset(args.out)
        args.frames, args.steps, args.sr_steps, args.levels = 4, 2, 2, "none,8"
    else:
        data = args.data
    levels = [None if v.strip() == "none" else float(v) for v in args.levels.split(",")]
    tests = DatasetManifest.load(data).sequence_frames("test")
    chosen, count = [], {}
    for seq in tests:
        if count.get(seq.character, 0) < args.per_character:
            chosen.append(seq)
            count[seq.character] = count.get(seq.character, 0) + 1
    animator = Animator.from_pretrained(args.model or default_model_dir(), device="cpu")
    res = animator.resolution
    settings = [("independent", None)] + [("shared", level) for level in levels]
    reports, rows = {}, []
    for noise, level in settings:
        key = f"{noise}_{'clean' if level is None else f'l{level:g}'}"
        t0 = time.perf_counter()
        for seq in chosen:
            poses, c = sequence_inputs(seq, args.frames)
            frames = animator.animate(poses, c, steps=args.steps, sr_steps=args.sr_steps, seed=args.seed,
                                      sr_noise=noise, sr_low_res_logsnr=level)
            write_frames(args.out, key, seq, frames, poses, res)
        reports[key] = score(args.out, key)
        write_report(reports[key], args.out / f"metrics_{key}.json")
        rows.append((f"{noise} noise, low-res {'clean' if level is None else f'lambda {level:g}'}", reports[key]))
        print(f"{key}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    text = "\n".join([
        f"data: {data}; {len(chosen)} held-out sequences ({', '.join(s.id for s in chosen)}), first {args.frames} frames,"
        f" c = frame 0, {args.steps} BTU-Net + {args.sr_steps} SR3 steps, seed {args.seed}, {res} px, foreground only",
        "", format_table(rows), ""])
    (args.out / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(json.dumps({k: {m: v for m, v in r["metrics"].items() if isinstance(v, float)} for k, r in reports.items()}))


if __name__ == "__main__":
    main()
