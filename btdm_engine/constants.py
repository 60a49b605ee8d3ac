"""The names a command-line choice and the library's own check share, each listed once.

``btdm --help`` builds every subcommand's parser; taking the choices from here instead of from the
modules that use them keeps it instant (no torch, numpy or OpenCV) without copying the lists into
the CLI. Standard library only.
"""

from __future__ import annotations

__all__ = [
    "CYCLES_DEVICES",
    "DEFAULT_NOISE",
    "DEVICES",
    "FIT_MODES",
    "FLOW_SOURCES",
    "IUV_ORDERS",
    "MODEL_KINDS",
    "MODEL_PRESETS",
    "NOISE_MODES",
    "PRECISIONS",
    "SAMPLERS",
    "THREADS_HELP",
    "TRAIN_MODES",
    "UP_AXES",
]

# Channel orders of IUV PNG files (btdm_engine.posemaps.encoding): ours (red = I) and detectron2's
# DensePose files (blue = I).
IUV_ORDERS: tuple[str, ...] = ("btdm", "densepose")

# The two networks (checkpoint "kind") and their presets (BTUNetConfig / SR3Config.PRESET_FIELDS).
MODEL_KINDS: tuple[str, ...] = ("btunet", "sr3")
MODEL_PRESETS: tuple[str, ...] = ("tiny", "tiny-warp", "base", "paper")
# A model folder's SR3 stages, in order: ``sr3/`` (the BTU-Net's frames in), then optionally
# ``sr3-2/`` (``sr3/``'s frames in), ``sr3-3/``, ...: a cascade of super-resolution models (Ho et
# al., "Cascaded Diffusion Models for High Fidelity Image Generation", JMLR 2022), each stage
# conditioned on the one before at its own size (pipeline.Animator).
SR3_STAGE_DIRS: tuple[str, ...] = ("sr3",) + tuple(f"sr3-{k}" for k in range(2, 5))

# Samplers' noise across frames: one draw every frame shares, or one per frame (diffusion.samplers).
NOISE_MODES: tuple[str, ...] = ("shared", "independent")
# The one default, for jobs (jobspec.JobSpec) and the samplers alike: shared noise keeps the frames
# steady (docs/results/ablation_wide.md, docs/results/sr3_noise_wide.md).
DEFAULT_NOISE: str = NOISE_MODES[0]

# Animator samplers: algorithm 1 and the autoregressive baseline of table 3.
SAMPLERS: tuple[str, ...] = ("bidirectional", "unidirectional")

# BTU-Net training objectives (training.config.TrainConfig.mode).
TRAIN_MODES: tuple[str, ...] = ("bidirectional", "unidirectional", "person", "unconditional")

# A motion file's up axis (BVH's Y, or Blender's Z with forward -Y) for retargeting.
UP_AXES: tuple[str, ...] = ("Y", "Z")

# Where training and fine-tuning run ("auto": CUDA when present).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")

# How non-square frames become square: pad with the background, or take the centre square.
FIT_MODES: tuple[str, ...] = ("pad", "crop")

# Where Blender's Cycles renders the synthetic set (synthetic_data.presets.RenderSettings.device).
CYCLES_DEVICES: tuple[str, ...] = ("CPU", "GPU")

# Whose optical flow the warping error warps with (btdm_engine.metrics.flow): the ground truth's or the prediction's.
FLOW_SOURCES: tuple[str, ...] = ("gt", "pred")

# Network arithmetic when sampling ("auto": bf16 autocast on CUDA and on CPUs with native bf16).
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")
# ``--threads`` of the commands that run the networks (animate, demo, serve): sampling runs that many
# network calls side by side, one intra-op thread each (``pipeline.sampling_workers``).
THREADS_HELP = ("CPU threads (default: one per core); sampling runs that many network calls side by side, "
                "so it keeps its speed when another job shares the cores")
