"""The EMA's memory (training.ema_decay): 4 bytes per adapter parameter on the GPU or in host RAM."""

from __future__ import annotations

import pytest

from flux2_lora.config.io import load_config
from flux2_lora.memory import estimate
from flux2_lora.memory.host import host_estimate
from flux2_lora.units import GIB
from tests.conftest import MakeConfig

EMA = "training.ema_decay=0.999"


def test_an_ema_on_the_gpu_adds_one_fp32_adapter_to_training_and_sampling() -> None:
    plain, _ = load_config(presets=["klein-4b"])
    ema, _ = load_config(presets=["klein-4b"], overrides=[EMA, "training.ema_device=gpu"])
    a, b = estimate(plain), estimate(ema)
    adapter = 4.0 * a.trainable_params / GIB
    assert a.trainable_params == b.trainable_params and adapter > 0.01
    for phase in ("training", "sampling"):
        assert "ema" not in a.phase_components[phase]
        assert b.phase_components[phase]["ema"] == pytest.approx(adapter, rel=1e-12)
        assert b.phases[phase] - a.phases[phase] == pytest.approx(adapter, rel=1e-9)
    assert b.phases["caching"] == a.phases["caching"]  # made after the encoders are gone
    assert host_estimate(ema, on_gpu=True)["phases"] == host_estimate(plain, on_gpu=True)["phases"]


def test_an_ema_on_the_cpu_costs_host_ram_instead() -> None:
    plain, _ = load_config(presets=["klein-4b"])
    ema, _ = load_config(presets=["klein-4b"], overrides=[EMA, "training.ema_device=cpu"])
    assert estimate(ema).phases == estimate(plain).phases
    adapter = 4.0 * estimate(plain).trainable_params / GIB
    gained = host_estimate(ema, on_gpu=True)["phases"]["training"]
    assert gained - host_estimate(plain, on_gpu=True)["phases"]["training"] == pytest.approx(adapter)
    # Training on the CPU, the EMA is in host RAM wherever ema_device says.
    for where in ("cpu", "gpu"):
        cpu_run, _ = load_config(presets=["klein-4b"], overrides=[EMA, f"training.ema_device={where}"])
        more = host_estimate(cpu_run, on_gpu=False)["phases"]["training"]
        assert more - host_estimate(plain, on_gpu=False)["phases"]["training"] == pytest.approx(adapter)


def test_the_estimated_ema_is_the_trainers_ema_exactly(make_config: MakeConfig) -> None:
    from flux2_lora.training.trainer import Trainer

    config = make_config(EMA)
    t = Trainer(config)
    t.setup()
    assert t.ema is not None
    assert estimate(config).phase_components["training"]["ema"] * GIB == t.ema.num_bytes()
