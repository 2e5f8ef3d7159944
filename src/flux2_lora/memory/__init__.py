"""The memory model (pure Python): estimate, verdicts against GPU classes, and fixes that make a run fit."""

from __future__ import annotations

from flux2_lora.memory.estimate import Estimate, estimate
from flux2_lora.memory.gpus import GPUS, Gpu, find_gpu, gpu_label, local_gpu, verdict
from flux2_lora.memory.recommend import auto_fit, recommendations
from flux2_lora.memory.report import estimate_report

__all__ = [
    "GPUS",
    "Estimate",
    "Gpu",
    "auto_fit",
    "estimate",
    "estimate_report",
    "find_gpu",
    "gpu_label",
    "local_gpu",
    "recommendations",
    "verdict",
]
