"""Will a trial run and fit? The assessment's verdict for one trial config, and the largest trial of a
plan (pure Python: :func:`flux2_lora.assess.assess`, no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux2_lora.assess import Environment, assess
from flux2_lora.config import TrainConfig
from flux2_lora.experiments.spec import Plan
from flux2_lora.memory import Gpu, find_gpu, local_gpu, verdict


@dataclass(frozen=True)
class Target:
    """What trials are vetted against: a GPU (local or named), or this machine's RAM when trials run on
    the CPU."""

    gpu: Gpu | None
    env: Environment | None = None  # what the machine has; None: this machine's (assess.environment)

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
    """The assessment's verdict for one trial: an error (a missing package, a CUDA-only choice here, an
    unknown model) refuses it with the assessment's words; one that does not fit gets the cheapest fix."""
    on_gpu = target.gpu is not None
    a = assess(config, gpu=target.gpu, env=target.env, recommendations=on_gpu)
    if a.errors or a.report is None:
        reason = "; ".join(str(e) for e in a.errors) or a.message
        return Verdict(False, "unknown", None, None, f"cannot run: {reason}")
    report = a.report
    if target.gpu is None:
        host = (report.get("here") or {}).get("host") or report["host"]
        need, have = float(host["peak_gib"]), host.get("total_gib")
        if have is None:
            return Verdict(
                True, "unknown", need, None, f"needs {need:.2f} GiB; this machine's RAM is unknown"
            )
        v = verdict(need, float(have))
    else:
        need, have, v = float(report["total_gib"]), target.gpu.gib, report["gpu"]["verdict"]
    if v != "does_not_fit":
        return Verdict(True, v, need, float(have), f"needs {need:.2f} GiB of {have:.1f} GiB on {target.name}")
    reason = f"needs {need:.2f} GiB but {target.name} has {have:.1f} GiB"
    fixes = report.get("recommendations") or []
    if fixes and fixes[0]["fits_after"]:
        sets = ", ".join(f"{k}={v}" for k, v in fixes[0]["overrides"].items())
        reason += f"; it would fit with {fixes[0]['title']} ({sets})"
    return Verdict(False, v, need, float(have), reason)


def largest_trial(plan: Plan, target: Target) -> dict[str, Any] | None:
    """The trial of the plan that needs the most memory (parameter extremes), with its verdict."""
    best: tuple[float, dict[str, Any], TrainConfig] | None = None
    for params in plan.corners():
        config, _ = plan.trial_config(params, Path("sweep-trial"))
        if config is None:
            continue
        need = _need(config, target)
        if need is not None and (best is None or need > best[0]):
            best = (need, params, config)
    if best is None:
        return None
    v = vet(best[2], target)
    return {"params": best[1], "gib": best[0], "target": target.name, **v.to_dict()}


def _need(config: TrainConfig, target: Target) -> float | None:
    """GiB the trial needs where it runs (the GPU's peak, or this machine's RAM for CPU trials)."""
    report = assess(config, gpu=target.gpu, env=target.env, recommendations=False).report
    if report is None:
        return None
    if target.gpu is not None:
        return float(report["total_gib"])
    return float(((report.get("here") or {}).get("host") or report["host"])["peak_gib"])
