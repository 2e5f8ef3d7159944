"""The memory model (pure Python): estimate, verdicts against GPU classes, and fixes that make a run fit."""

from __future__ import annotations

from typing import Any

from flux2_lora.config import TrainConfig
from flux2_lora.memory.estimate import Estimate, estimate
from flux2_lora.memory.gpus import GPUS, Gpu, find_gpu, gpu_label, local_gpu, verdict
from flux2_lora.memory.recommend import auto_fit, recommendations

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


def estimate_report(
    config: TrainConfig, *, gpu: str | None = None, num_processes: int | None = None
) -> dict[str, Any]:
    """Everything the CLI's --json and the web UI show, for one configuration. Figures are per GPU;
    ``num_gpus`` is how many the run uses (``num_processes``, default the config's), each verdict is for
    that many of the class."""
    world = num_processes or config.distributed.world_size
    est = estimate(config, num_processes=world)
    report = est.to_dict()
    cards = list(GPUS)
    local = local_gpu()
    if local is not None:
        cards.append(local)
    report["num_gpus"] = world
    report["strategy"] = config.distributed.strategy if world > 1 else "single"
    report["gpus"] = [
        {
            "name": g.name,
            "gib": g.gib,
            "verdict": verdict(est.total_gib, g.gib),
            "label": gpu_label(g.name, world),
        }
        for g in cards
    ]
    chosen = find_gpu(gpu) or local or GPUS[0]
    report["gpu"] = {
        "name": chosen.name,
        "gib": chosen.gib,
        "verdict": verdict(est.total_gib, chosen.gib),
        "label": gpu_label(chosen.name, world),
    }
    report["recommendations"] = recommendations(config, chosen.gib, num_processes=num_processes)
    from flux2_lora.memory.host import host_estimate

    on_gpu = config.model.device != "cpu" and (local is not None or config.model.device.startswith("cuda"))
    report["host"] = host_estimate(config, on_gpu=on_gpu)
    report["host_peak_gib"] = report["host"]["peak_gib"]
    return report
