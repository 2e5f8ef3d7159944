"""Will a trial fit? The memory model's verdict for one trial config, and the largest trial of a plan
(pure Python: :mod:`flux2_lora.memory`, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux2_lora.config import TrainConfig
from flux2_lora.experiments.spec import Plan
from flux2_lora.memory import Gpu, estimate, find_gpu, local_gpu, recommendations, verdict


@dataclass(frozen=True)
class Target:
    """What trials are vetted against: a GPU (local or named), or this machine's RAM when trials run on
    the CPU."""

    gpu: Gpu | None

    @property
    def name(self) -> str:
        return self.gpu.name if self.gpu else "this machine's RAM (CPU trials)"

    @classmethod
    def choose(cls, gpu: str | None) -> Target:
        """``--gpu NAME`` (ValueError naming it when unknown), else the local GPU, else the CPU."""
        if gpu:
            found = find_gpu(gpu)
            if found is None:
                raise ValueError(f"--gpu: unknown GPU {gpu!r}; give a class like 24, 48, 80 or a size in GiB")
            return cls(found)
        return cls(local_gpu())


@dataclass(frozen=True)
class Verdict:
    fits: bool
    verdict: str  # fits | tight | does_not_fit | unknown
    need_gib: float | None
    have_gib: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "fits": self.fits,
            "verdict": self.verdict,
            "need_gib": self.need_gib,
            "have_gib": self.have_gib,
            "reason": self.reason,
        }


def vet(config: TrainConfig, target: Target) -> Verdict:
    """The memory model's verdict; a trial that does not fit gets the reason and the cheapest fix."""
    try:
        if target.gpu is None:
            from flux2_lora.memory.host import host_estimate

            host = host_estimate(config, on_gpu=False)
            need, have = float(host["peak_gib"]), host.get("total_gib")
        else:
            need, have = estimate(config).total_gib, target.gpu.gib
    except ValueError as e:  # a local model folder whose config cannot describe a FLUX.2 model
        return Verdict(False, "unknown", None, None, f"no memory estimate: {e}")
    if have is None:
        return Verdict(True, "unknown", need, None, f"needs {need:.2f} GiB; this machine's RAM is unknown")
    v = verdict(need, float(have))
    if v != "does_not_fit":
        return Verdict(True, v, need, float(have), f"needs {need:.2f} GiB of {have:.1f} GiB on {target.name}")
    reason = f"needs {need:.2f} GiB but {target.name} has {have:.1f} GiB"
    if target.gpu is not None:
        recs = recommendations(config, target.gpu.gib, limit=1)
        if recs and recs[0]["fits_after"]:
            sets = ", ".join(f"{k}={v}" for k, v in recs[0]["overrides"].items())
            reason += f"; it would fit with {recs[0]['title']} ({sets})"
    return Verdict(False, v, need, float(have), reason)


def largest_trial(plan: Plan, target: Target) -> dict[str, Any] | None:
    """The trial of the plan that needs the most memory (parameter extremes), with its verdict."""
    best: tuple[float, dict[str, Any], TrainConfig] | None = None
    for params in plan.corners():
        config, _ = plan.trial_config(params, Path("sweep-trial"))
        if config is None:
            continue
        try:
            need = estimate(config).total_gib if target.gpu else _host_peak(config)
        except ValueError:
            continue
        if best is None or need > best[0]:
            best = (need, params, config)
    if best is None:
        return None
    v = vet(best[2], target)
    return {"params": best[1], "gib": best[0], "target": target.name, **v.to_dict()}


def _host_peak(config: TrainConfig) -> float:
    from flux2_lora.memory.host import host_estimate

    return float(host_estimate(config, on_gpu=False)["peak_gib"])
