"""Ablation of table 3: the same BTU-Net trained bidirectionally (eq. 4) and unidirectionally.

Both models get the same data, preset, seed, batch size, learning rate and number of steps;
the bidirectional run is timed first and its step count (from ``--minutes``, or ``--steps``) is
then given to the unidirectional run. The held-out characters' sequences (the manifest's
``test`` split) are then animated from their first frame (c) and pose maps through the real
inference path (``Animator``: bidirectional recursive sampling vs the autoregressive sampler)
and scored against the ground truth at the network resolution, foreground only, with
``btdm_engine.metrics.evaluate``: SSIM, LPIPS, tLPIPS (table 3), plus tOF, PSNR and the
warping error (LPIPS/tLPIPS/FID only with ``--lpips-weights`` / ``--inception-weights``).

    python -m bench ablation                                  # toy data, 2 minutes per model
    python -m bench.bench_ablation --data DATA --minutes 12   # a synthetic set, 12 min per model

Without ``--data`` a procedural toy dataset (``training.toy_data``) is written and used; the
output says so. Everything goes to ``--out`` (default ``out/ablation``): the two runs, predicted
and ground-truth frames, ``metrics_bidirectional.json``, ``metrics_unidirectional.json``,
``table.md`` and ``comparison.png`` (pose | truth | bidirectional | unidirectional).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from btdm_engine.constants import MODEL_PRESETS, NOISE_MODES
from training.config import TrainConfig

MODES = ("bidirectional", "unidirectional")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_ablation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="dataset folder with train/test splits (default: a toy set)")
    p.add_argument("--out", type=Path, default=Path("out/ablation"), help="output folder (replaced)")
    p.add_argument("--preset", default="tiny", choices=MODEL_PRESETS)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None, help="training time of the bidirectional model (default 2)")
    budget.add_argument("--steps", type=int, default=None, help="training steps of each model")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=16, help="frames animated per held-out sequence")
    p.add_argument("--sample-steps", type=int, default=50, help="denoising steps (paper: 50)")
    p.add_argument("--finetune-steps", type=int, default=0, help="single-image fine-tuning before sampling (paper: 300)")
    p.add_argument("--noise", choices=NOISE_MODES, default="shared",
                   help="both samplers' noise across frames (the Animator's default: shared)")
    p.add_argument("--lpips-weights", type=Path, default=None)
    p.add_argument("--inception-weights", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    for mode in MODES:
        p.add_argument(f"--{mode}-run", type=Path, default=None,
                       help=f"an existing {mode} run folder to use (trained with this script's settings, e.g. the "
                            "default model's BTU-Net run); its steps set the budget. Default: train into OUT/runs")
    return p.parse_args(argv)


def _reused_steps(data: Path, runs: dict[str, Path], args: argparse.Namespace) -> int | None:
    """Check that given run folders were trained with this script's settings; their common steps."""
    steps = set()
    for mode, run in runs.items():
        if getattr(args, f"{mode}_run") is None:
            continue
        cfg_path = run / "train_config.json"
        if not (run / "checkpoint").is_dir() or not cfg_path.is_file():
            raise SystemExit(f"--{mode}-run {run}: not a finished run (no checkpoint/ or train_config.json)")
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        want = {"kind": "btunet", "mode": mode, "preset": args.preset, "batch_size": args.batch_size, "lr": args.lr,
                "seed": args.seed}
        wrong = {k: cfg.get(k) for k, v in want.items() if cfg.get(k) != v}
        if Path(cfg.get("data", "")).resolve() != data.resolve():
            wrong["data"] = cfg.get("data")
        if wrong:
            raise SystemExit(f"--{mode}-run {run}: trained with {wrong}, this comparison needs {want} on {data}")
        steps.add(cfg["steps"])
    if len(steps) > 1:
        raise SystemExit(f"the given runs trained for different steps {sorted(steps)}")
    return steps.pop() if steps else None


def _train(data: Path, run: Path, mode: str, args: argparse.Namespace, steps: int, resume: bool) -> float:
    from training.trainer import train  # lazy: loads torch; --help stays light

    config = TrainConfig(
        kind="btunet", data=str(data), preset=args.preset, mode=mode, steps=steps, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, checkpoint_every=max(steps, 1), sample_every=0, log_every=10, cache_frames=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    train(config, run, resume=resume, progress=sys.stderr.isatty())
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    import torch  # lazy: --help stays torch-free

    # lazy: loads torch; --help stays light
    from bench.heldout import fresh_dir, score, sequence_inputs, truth_frame, write_frames
    from btdm_engine.imageio import resize_labels  # lazy: loads cv2; --help stays light
    from btdm_engine.metrics.evaluate import format_table, write_report  # lazy: loads torch; --help stays light
    from btdm_engine.pipeline import Animator  # lazy: loads torch; --help stays light
    from btdm_engine.posemaps.encoding import read_iuv_png  # lazy: loads torch; --help stays light
    from btdm_engine.posemaps.preview import colorize_iuv, contact_sheet, write_rgb_png  # lazy: loads torch; --help stays light
    from training.dataset_format import DatasetManifest  # lazy: loads cv2; --help stays light
    from training.toy_data import write_toy_dataset  # lazy: loads torch; --help stays light

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    fresh_dir(args.out)
    if args.data is None:
        data = write_toy_dataset(args.out / "toy_data", num_characters=6, sequences_per_character=2, num_frames=24, size=64,
                                 test_characters=2)
        data_note = f"toy procedural dataset (training.toy_data, 6 characters, 24 frames each) written to {data}; no --data given"
    else:
        data = args.data
        data_note = str(data)
    manifest = DatasetManifest.load(data)
    tests = manifest.sequence_frames("test")

    # 1. training budget: time the bidirectional run, give its step count to the other mode
    runs = {m: getattr(args, f"{m}_run") or args.out / "runs" / m for m in MODES}
    reused = _reused_steps(data, runs, args)
    if reused is not None and args.steps not in (None, reused):
        raise SystemExit(f"--steps {args.steps} differs from the given run's {reused} steps")
    if reused is not None:
        steps = reused
        seconds = {}
        for mode in MODES:  # a given run is reused as is; a missing one is trained to the same steps
            seconds[mode] = 0.0 if getattr(args, f"{mode}_run") else _train(data, runs[mode], mode, args, steps, False)
    elif args.steps is not None:
        steps = args.steps
        seconds = {"bidirectional": _train(data, runs["bidirectional"], "bidirectional", args, steps, False)}
    else:
        minutes = 2.0 if args.minutes is None else args.minutes
        probe = 10
        t_probe = _train(data, runs["bidirectional"], "bidirectional", args, probe, False)
        # the loop's own time (the snapshot records it), without start-up and data indexing
        state = json.loads((runs["bidirectional"] / "snapshots" / f"step_{probe:07d}" / "training_state.json").read_text())
        per_step = state["elapsed_s"] / probe
        steps = max(probe, int(minutes * 60 / per_step))
        seconds = {"bidirectional": t_probe + _train(data, runs["bidirectional"], "bidirectional", args, steps, True)}
    if reused is None:
        seconds["unidirectional"] = _train(data, runs["unidirectional"], "unidirectional", args, steps, False)

    # 2. animate the held-out sequences from their first frame through the Animator
    res = None
    reports = {}
    previews: dict[str, np.ndarray] = {}
    for mode in MODES:
        model_dir = args.out / "models" / mode
        model_dir.mkdir(parents=True)
        shutil.copytree(runs[mode] / "checkpoint", model_dir / "btunet")
        animator = Animator.from_pretrained(model_dir, device="cpu")
        res = animator.resolution
        t0 = time.perf_counter()
        for seq in tests:
            poses, c = sequence_inputs(seq, args.frames)
            frames = animator.animate(
                poses, c, poses[0] if args.finetune_steps else None, steps=args.sample_steps, seed=args.seed,
                sampler=mode, finetune_steps=args.finetune_steps, noise=args.noise,
            )  # fmt: skip
            write_frames(args.out, mode, seq, frames, poses, res)
            if seq is tests[0]:
                previews[mode] = frames
        sample_s = time.perf_counter() - t0
        reports[mode] = score(args.out, mode, lpips_weights=args.lpips_weights, inception_weights=args.inception_weights)
        reports[mode]["timing"] = {"train_s": seconds[mode], "sample_s": sample_s}
        write_report(reports[mode], args.out / f"metrics_{mode}.json")

    # 3. a picture to look at, and the table
    seq = tests[0]
    n = len(previews[MODES[0]])
    up = max(1, 96 // res)
    poses_small = [resize_labels(read_iuv_png(p), (res, res)) for p in seq.iuv[:n]]
    rows = [colorize_iuv(np.stack(poses_small))]
    rows.append(np.stack([truth_frame(p, res) for p in seq.rgb[:n]]))
    rows += [previews[m] for m in MODES]
    cols = min(n, 8)
    images = [row[t].repeat(up, 0).repeat(up, 1) for row in rows for t in range(cols)]
    labels = [name if t == 0 else "" for name in ("pose", "truth", "bidir", "unidir") for t in range(cols)]
    write_rgb_png(args.out / "comparison.png", contact_sheet(images, cols=cols, labels=labels))

    table = format_table([("Ours w/ Unidirectional Model", reports["unidirectional"]),
                          ("Ours (bidirectional)", reports["bidirectional"])])
    budget = (
        f"budget: {steps} steps per model, batch {args.batch_size}, lr {args.lr}, preset {args.preset}, seed {args.seed}; "
        "training wall time " + " and ".join(
            f"{seconds[m] / 60:.1f} min ({m})" if not getattr(args, f"{m}_run") else f"a given run ({m}: {runs[m]})"
            for m in MODES) + f" on {torch.get_num_threads()} CPU thread(s)"
    )
    sampling = (
        f"evaluation: {len(tests)} held-out sequence(s) ({', '.join(s.character for s in tests)}), first {args.frames} frames, "
        f"c = frame 0, {args.sample_steps} denoising steps, {args.noise} noise, fine-tuning {args.finetune_steps} steps, "
        f"{res} px, foreground only"
    )
    text = "\n".join([f"data: {data_note}", budget, sampling, "", table, ""])
    (args.out / "table.md").write_text(text)
    print(text)
    summary = {m: dict(reports[m]["metrics"]) for m in MODES}

    def finite(v):
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(v, 5)

    print(json.dumps({"steps": steps, "metrics": {m: {k: finite(v) for k, v in d.items()} for m, d in summary.items()}}))


if __name__ == "__main__":
    main()
