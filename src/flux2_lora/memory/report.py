"""The estimate report: what every caller shows of the memory model for one config (the one builder;
:func:`flux2_lora.assess.assess` puts it beside the errors and warnings)."""

from __future__ import annotations

from typing import Any

from flux2_lora.config import TrainConfig
from flux2_lora.memory.estimate import estimate
from flux2_lora.memory.gpus import GPUS, Gpu, find_gpu, gpu_label, local_gpu, verdict


def estimate_report(
    config: TrainConfig,
    *,
    gpu: str | Gpu | None = None,
    recommendations: bool = True,
    num_processes: int | None = None,
    host_gib: float | None = None,
) -> dict[str, Any]:
    """Figures per GPU of the run (``num_processes``, default the config's): components, phases, verdicts
    per class and for ``gpu`` (default the local GPU, else the first class), host RAM for the device the
    verdict is about (and for this machine, when a Start here would train on its CPU), the fixes (which
    must fit ``host_gib`` of host RAM: default this machine's for its own GPU, else 64 GiB), their step
    time relative to now."""
    from flux2_lora.memory.host import host_budget, host_estimate
    from flux2_lora.memory.recommend import recommendations as fixes
    from flux2_lora.memory.timing import step_time

    world = num_processes or config.distributed.world_size
    est = estimate(config, num_processes=world)
    report = est.to_dict()
    report["num_gpus"] = world
    report["strategy"] = config.distributed.strategy if world > 1 else "single"
    local = local_gpu()
    card = gpu if isinstance(gpu, Gpu) else (find_gpu(gpu) if gpu else None) or local or GPUS[0]

    def judged(g: Gpu) -> dict[str, Any]:
        return {
            "name": g.name,
            "gib": g.gib,
            "verdict": verdict(est.total_gib, g.gib),
            "label": gpu_label(g.name, world),
        }

    report["gpus"] = [judged(g) for g in [*GPUS, *([local] if local is not None else [])]]
    report["gpu"] = judged(card)
    device = config.model.device
    # Host RAM for the device the verdict is about: a GPU run unless the config says cpu.
    report["host"] = {
        **host_estimate(config, on_gpu=device != "cpu"),
        "device": "cpu" if device == "cpu" else "gpu",
    }
    if device == "auto" and local is None:
        report["here"] = {"device": "cpu", "host": host_estimate(config, on_gpu=False)}
    report["host_peak_gib"] = report["host"]["peak_gib"]
    # Seconds per step on the card (memory/timing.py): what the swap count and other choices cost in time.
    t = step_time(config, card)
    report["step_time"] = {
        "step_s": t.step_s,
        "compute_s": t.compute_s,
        "transfer_s": t.transfer_s,
        "gb_per_step": t.gb_per_step,
    }
    report["host_gib"] = (
        host_gib if host_gib is not None else host_budget(local is not None and card == local)
    )
    report["recommendations"] = (
        fixes(config, card.gib, num_processes=num_processes, host_gib=report["host_gib"])
        if recommendations
        else []
    )
    return report
