"""CUDA-only paths: bf16 autocast, bitsandbytes NF4 through diffusers' loader, 8-bit AdamW, the attention
kernels and regional compilation."""

from __future__ import annotations

import pytest

from flux2_lora import runs
from flux2_lora.training.trainer import run_training
from tests.conftest import MakeConfig
from tests.helpers import NEEDS_BNB, NEEDS_TORCHAO, assert_finished

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    "extra",
    [
        (),
        pytest.param(("memory.quantization=nf4",), marks=NEEDS_BNB),
        pytest.param(("memory.quantization=int8",), marks=NEEDS_TORCHAO),
        pytest.param(("training.optimizer=adamw8bit",), marks=NEEDS_BNB),
        ("performance.attention_backend=flash",),
        ("performance.attention_backend=efficient",),
        ("performance.compile=true",),
        ("memory.blocks_to_swap=2",),
        ("memory.quantization=fp8",),
        ("memory.quantization=fp8", "memory.blocks_to_swap=2"),
        pytest.param(("memory.quantization=nf4", "memory.blocks_to_swap=2"), marks=NEEDS_BNB),
    ],
)
def test_demo_trains_on_cuda(make_config: MakeConfig, extra: tuple[str, ...]) -> None:
    import torch

    config = make_config("model.device=cuda", "model.dtype=bfloat16", *extra)
    assert_finished(run_training(config), config)
    status = runs.read_status(config.output.dir)
    assert status.state == "finished" and status.extra["measured"]["gpu_allocated_peak_gib"] > 0
    assert torch.cuda.max_memory_allocated() > 0


def test_phase_peaks_are_recorded_apart(make_config: MakeConfig) -> None:
    config = make_config("model.device=cuda", "model.dtype=bfloat16")
    assert_finished(run_training(config), config)
    phases = runs.read_status(config.output.dir).extra["measured"]["gpu_phases"]
    assert set(phases) == {"setup", "training", "export"}
    assert all(p["allocated_gib"] > 0 and p["reserved_gib"] >= p["allocated_gib"] for p in phases.values())
