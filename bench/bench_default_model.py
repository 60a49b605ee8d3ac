"""Two generator models and the texture-transfer baseline side by side on a dataset's held-out characters.

The same held-out sequences (the manifest's ``test`` split: characters neither model trained on),
the same appearance image (each sequence's frame 0, with its pose map as g(c)), the same seed and
steps go through both models' full inference path (``Animator``: bidirectional recursive sampling,
then SR3), with and without single-image fine-tuning, and through the learning-free texture
transfer (:mod:`btdm_engine.posemaps.texture`: c's pixels moved onto every pose map through the
UV atlas), the strongest simple baseline. Frames 1.. are scored (frame 0 is c itself) against the
ground truth at the output resolution, foreground only (``btdm_engine.metrics.evaluate``: SSIM,
PSNR, tOF, warping error), overall and per held-out person, next to the truth's own warping
error; a picture shows, for a few held-out characters, the appearance image, the pose maps, the
truth, the texture transfer and each model's frames.

    python -m bench.bench_default_model --data data/wide --old OLD_MODEL --new NEW_MODEL \\
        [--frames 24 --steps 25 --sr-steps 10 --finetune-steps 300 --finetune-lr 1e-4]

``python -m bench default_model`` (no arguments) compares the shipped model with itself on a toy
dataset, a smoke run of this script. Everything goes to ``--out`` (default
``out/bench_default_model``): ``pred/<model>[_ft]/<sequence>/``, ``gt/``, ``iuv/``,
``metrics_<model>[_ft].json``, ``table.md`` (with the per-person table) and ``comparison.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.heldout import fresh_dir, score, sequence_inputs, smoke_dataset, to_uint8, truth_frame, write_frames
from btdm_engine.imageio import read_image, resize_labels, resize_rgb
from btdm_engine.metrics.evaluate import evaluate, format_table, write_report
from btdm_engine.pipeline import Animator
from btdm_engine.posemaps.encoding import read_iuv_png
from btdm_engine.posemaps.preview import colorize_iuv, contact_sheet, write_rgb_png
from btdm_engine.posemaps.texture import build_texture, transfer
from btdm_engine.weights import default_model_dir
from training.dataset_format import DatasetManifest


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_default_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="dataset with a test split (default: a toy set)")
    p.add_argument("--old", type=Path, default=None, help="model folder (default: the shipped default model)")
    p.add_argument("--new", type=Path, default=None, help="model folder (default: the shipped default model)")
    p.add_argument("--out", type=Path, default=Path("out/bench_default_model"), help="output folder (replaced)")
    p.add_argument("--frames", type=int, default=24, help="frames per held-out sequence")
    p.add_argument("--steps", type=int, default=25, help="BTU-Net steps (the demo's 25)")
    p.add_argument("--sr-steps", type=int, default=10, help="SR3 steps (the demo's 10)")
    p.add_argument("--finetune-steps", type=int, default=300, help="fine-tuning steps of the second pass (0: skip it)")
    p.add_argument("--finetune-lr", type=float, default=1e-4)
    p.add_argument("--finetune-sequences", type=int, default=None,
                   help="fine-tune on only the first N held-out sequences per character order (default: all)")
    p.add_argument("--split", default="test",
                   help="the manifest split to score (default test; `train` of a wide256-val build holds only its "
                        "validation people, whom settings are chosen on)")
    p.add_argument("--motion", default=None, help="only the held-out sequences of this motion (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--picture-characters", type=int, default=3, help="held-out characters in comparison.png")
    p.add_argument("--first", type=int, default=1, help="first scored frame (default 1: frame 0 is c itself)")
    p.add_argument("--resolution", type=int, default=None,
                   help="score everything at this size: a model making smaller frames is enlarged bicubically, as "
                        "its plates are (default: the models' own output size, which must then agree)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)

    fresh_dir(args.out)
    models = {"old": args.old or default_model_dir(), "new": args.new or default_model_dir()}
    if Path(models["old"]).resolve() == Path(models["new"]).resolve():  # one model: score it once, as "new"
        del models["old"]
    if args.data is None:  # smoke run: tiny frames, few steps
        data = smoke_dataset(args.out)
        args.frames, args.steps, args.sr_steps = 4, 2, 2
        args.finetune_steps = min(args.finetune_steps, 2)
        args.first = min(args.first, 1)
    else:
        data = args.data
    tests = DatasetManifest.load(data).sequence_frames(args.split)
    if args.motion is not None:
        tests = [s for s in tests if s.id.endswith(f"-{args.motion}")]
    if not tests:
        raise SystemExit(f"{data}: the manifest's {args.split} split has no sequences"
                         + (f" of motion {args.motion!r}" if args.motion else ""))
    passes = [("", 0)] + ([("_ft", args.finetune_steps)] if args.finetune_steps > 0 else [])

    res = None
    reports: dict[str, dict] = {}
    persons: dict[str, dict] = {}  # the same, scored over the whole person (the truth's alpha) where it has one
    person = _truth_has_alpha(tests[0])
    timings: dict[str, float] = {}
    frames_of: dict[tuple[str, str], np.ndarray] = {}
    for name, folder in models.items():
        animator = Animator.from_pretrained(folder, device="cpu")
        if args.resolution is None and res is not None and animator.resolution != res:
            raise SystemExit(f"{folder}: makes {animator.resolution} px frames, the other model {res} px "
                             f"(give --resolution to score both at one size)")
        res = args.resolution or animator.resolution
        for suffix, ft_steps in passes:
            key = name + suffix
            chosen = tests if not ft_steps or args.finetune_sequences is None else tests[: args.finetune_sequences]
            t0 = time.perf_counter()
            for seq in chosen:
                poses, c = sequence_inputs(seq, args.frames)
                g = poses[0] if ft_steps or animator.uses_warp else None
                frames = animator.animate(poses, c, g, steps=args.steps,
                                          sr_steps=args.sr_steps, seed=args.seed, finetune_steps=ft_steps,
                                          finetune_lr=args.finetune_lr)
                if frames.shape[1] != res:  # a smaller model's frames, enlarged as its plates are
                    frames = np.stack([to_uint8(resize_rgb(f / 255.0, (res, res))) for f in frames])
                frames_of[(key, seq.id)] = frames
                write_frames(args.out, key, seq, frames, poses, res, args.first)
            timings[key] = time.perf_counter() - t0
            reports[key] = score(args.out, key)
            reports[key]["timing"] = {"animate_s": timings[key], "sequences": len(chosen)}
            write_report(reports[key], args.out / f"metrics_{key}.json")
            if person:
                persons[key] = score(args.out, key, "person")
                write_report(persons[key], args.out / f"metrics_{key}_person.json")
            print(f"{key}: {len(chosen)} sequences in {timings[key]:.0f} s", file=sys.stderr, flush=True)

    # The learning-free baseline: c's pixels through g(c) into the UV atlas, looked up per pose map.
    assert res is not None
    t0 = time.perf_counter()
    for seq in tests:
        poses, c = sequence_inputs(seq, args.frames)
        texture = build_texture([(c, poses[0])])
        frames = np.stack([transfer(texture, resize_labels(p, (res, res))) for p in poses])
        frames_of[("texture", seq.id)] = frames
        write_frames(args.out, "texture", seq, frames, poses, res, args.first)
    timings["texture"] = time.perf_counter() - t0
    reports["texture"] = score(args.out, "texture")
    reports["truth"] = evaluate(args.out / "gt", args.out / "gt", args.out / "iuv")  # its own warping error
    for key in ("texture", "truth"):
        write_report(reports[key], args.out / f"metrics_{key}.json")
    if person:
        persons["texture"] = score(args.out, "texture", "person")
        persons["truth"] = evaluate(args.out / "gt", args.out / "gt", args.out / "iuv", foreground="person")
        for key in ("texture", "truth"):
            write_report(persons[key], args.out / f"metrics_{key}_person.json")

    # The picture: per character (its first held-out sequence), 8 frames of each row.
    rows: list[tuple[str, np.ndarray]] = []
    seen: list[str] = []
    for seq in tests:
        if seq.character in seen or len(seen) >= args.picture_characters:
            continue
        seen.append(seq.character)
        n = len(frames_of[(next(iter(models)), seq.id)])
        pick = np.linspace(0, n - 1, min(n, 8)).round().astype(int)
        c = truth_frame(seq.rgb[0], res)
        poses = colorize_iuv(np.stack([resize_labels(read_iuv_png(seq.iuv[t]), (res, res)) for t in pick]))
        truth = np.stack([truth_frame(seq.rgb[t], res) for t in pick])
        rows += [(f"{seq.id} c", np.stack([c] + [np.full_like(c, 255)] * (len(pick) - 1))),
                 ("pose", poses), ("truth", truth), ("texture", frames_of[("texture", seq.id)][pick])]
        for suffix, _ in passes:
            for name in models:
                if (name + suffix, seq.id) in frames_of:
                    rows.append((name + suffix, frames_of[(name + suffix, seq.id)][pick]))
    cols = max(len(r[1]) for r in rows)
    images = [r[1][t] for r in rows for t in range(cols)]
    labels = [label if t == 0 else "" for label, _ in rows for t in range(cols)]
    write_rgb_png(args.out / "comparison.png", contact_sheet(images, cols=cols, labels=labels))

    order = ["texture"] + [name + suffix for suffix, _ in passes for name in models]
    table = format_table([(key, reports[key]) for key in order + ["truth"]], extra=True)
    people = _per_person(reports, order)
    lines = [
        f"data: {data} ({args.split} split: {len(tests)} sequences of {len({s.character for s in tests})} held-out characters)",
        "models: " + ", ".join(f"{name} = {folder}" for name, folder in models.items()),
        f"sampling: first {args.frames} frames, c = frame 0 of each sequence, {args.steps} BTU-Net + {args.sr_steps} SR3 "
        f"steps, seed {args.seed}, {res} px, foreground only; fine-tuning pass: {args.finetune_steps} steps at lr "
        f"{args.finetune_lr}" + (f" on the first {args.finetune_sequences} sequences" if args.finetune_sequences else "")
        + f"; frames {args.first}..{args.frames - 1} scored",
        "", "Foreground: the pose maps' body (the paper's protocol; hair and loose clothes beyond the body's "
        "surface are not scored):", "", table, "", "per held-out person (mean over their sequences), SSIM / PSNR:", "",
        people, "",
        "animate wall time: " + ", ".join(f"{k} {timings[k]:.0f} s" for k in order),
    ]
    if person:
        lines[-1:-1] = [
            "Foreground: the whole person (the body and the truth's alpha: hair, sleeves, skirts count):", "",
            format_table([(key, persons[key]) for key in order + ["truth"]], extra=True), "",
            "per held-out person, whole person, SSIM / PSNR:", "", _per_person(persons, order), "",
        ]
    text = "\n".join(lines)
    (args.out / "table.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(json.dumps({k: {m: v for m, v in reports[k]["metrics"].items() if isinstance(v, float)} for k in order}))


def _truth_has_alpha(seq) -> bool:
    """Whether the set's frames carry the person's alpha (the synthetic sets do), for the ``person`` foreground."""
    raw = read_image(seq.rgb[0])
    return raw.ndim == 3 and raw.shape[2] == 4


def _per_person(reports: dict[str, dict], order: list[str]) -> str:
    """A markdown table: per held-out character, each method's mean SSIM / PSNR over its sequences."""
    by_person: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for key in order:
        for name, seq in reports[key]["per_sequence"].items():
            person = name.split("-")[0]
            by_person.setdefault(person, {}).setdefault(key, []).append((seq["ssim"], seq["psnr"]))
    rows = ["| person | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for person in sorted(by_person):
        cells = []
        for key in order:
            values = np.array(by_person[person].get(key, [(np.nan, np.nan)]))
            cells.append(f"{values[:, 0].mean():.3f} / {values[:, 1].mean():.2f}")
        rows.append(f"| {person} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
