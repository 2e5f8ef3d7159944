"""On a CUDA GPU (the device machine): the measured training peak of full-size FLUX.2 [klein] 4B (random
weights) with N blocks swapped, and with fp8 weights, within 3% of the estimate; seconds per step against N
are printed for the note (benchmarks/gpu_session.sh runs this file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.memory.matrix import config

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "vram"))

BASE = ("dataset.resolution=512", "lora.rank=16", "training.batch_size=1")


def _measured_vs_estimate(*overrides: str) -> tuple[float, float, float]:
    import torch
    from measure import run_steps  # benchmarks/vram: the harness the calibration table was measured with

    from flux2_lora.memory import estimate
    from flux2_lora.memory.estimate import resolve_shapes

    c = config(*BASE, *overrides)
    torch.cuda.empty_cache()
    out = run_steps(c, resolve_shapes(c).arch, "cuda", steps=3)
    est = estimate(c).phases["training"]
    seconds = sorted(out["step_seconds"][1:])[0]  # the first step warms kernels
    return out["allocated_gib"], est, seconds


@pytest.mark.parametrize("swapped", [0, 4, 12, 23])
def test_measured_peak_with_swapped_blocks_within_3_percent(swapped: int) -> None:
    measured, est, seconds = _measured_vs_estimate(f"memory.blocks_to_swap={swapped}")
    print(
        f"klein-4b 512² rank 16, {swapped} blocks swapped: {measured:.3f} GiB measured, {est:.3f} estimated, "
        f"{seconds:.3f} s/step"
    )
    assert abs(est - measured) / measured <= 0.03


@pytest.mark.parametrize("swapped", [0, 12])
def test_measured_peak_with_fp8_weights_within_3_percent(swapped: int) -> None:
    measured, est, seconds = _measured_vs_estimate(
        "memory.quantization=fp8", f"memory.blocks_to_swap={swapped}"
    )
    print(
        f"klein-4b fp8, {swapped} blocks swapped: {measured:.3f} GiB measured, {est:.3f} estimated, "
        f"{seconds:.3f} s/step"
    )
    assert abs(est - measured) / measured <= 0.03
