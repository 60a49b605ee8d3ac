"""Evaluation metrics of the paper (sec. 4.1): SSIM, LPIPS, tLPIPS, tOF, FID, plus PSNR and the
flow-warping error, with foreground-only evaluation from pose-map masks.

LPIPS and FID use networks written in :mod:`.lpips` and :mod:`.fid` whose weights the user
provides as safetensors files; nothing is downloaded. ``btdm eval`` drives :func:`evaluate`.
"""

from __future__ import annotations

from btdm_engine.metrics.evaluate import EvaluationError, evaluate, format_table, write_report
from btdm_engine.metrics.fid import FIDInceptionV3, frechet_distance, inception_features
from btdm_engine.metrics.flow import optical_flow, sequence_flows, tof, warping_error
from btdm_engine.metrics.image import fill_background, psnr, ssim, ssim_map
from btdm_engine.metrics.lpips import LPIPS, lpips_pairs, tlpips_per_pair
from btdm_engine.metrics.weights import MetricWeightsError

__all__ = [
    "LPIPS",
    "EvaluationError",
    "FIDInceptionV3",
    "MetricWeightsError",
    "evaluate",
    "fill_background",
    "format_table",
    "frechet_distance",
    "inception_features",
    "lpips_pairs",
    "optical_flow",
    "psnr",
    "sequence_flows",
    "ssim",
    "ssim_map",
    "tlpips_per_pair",
    "tof",
    "warping_error",
    "write_report",
]
