"""Host-RAM estimate: phases, machine comparison, and the direction of each setting."""

from __future__ import annotations

from flux2_lora.config.io import load_config
from flux2_lora.memory import estimate_report
from flux2_lora.memory.host import PROCESS_BASELINE_GIB, host_estimate


def test_cpu_run_phases_and_machine_verdict() -> None:
    c, _ = load_config(presets=["quickstart"])
    h = host_estimate(c, on_gpu=False)
    assert set(h["phases"]) == {"loading", "caching", "training"}
    assert PROCESS_BASELINE_GIB <= h["peak_gib"] < 1.0  # the demo is tiny
    assert h["total_gib"] and h["available_gib"] and h["verdict"] == "fits"


def test_training_without_checkpointing_needs_more_host_ram_on_cpu() -> None:
    on, _ = load_config(
        presets=["klein-4b"], overrides=["memory.gradient_checkpointing=true", "model.device=cpu"]
    )
    off, _ = load_config(
        presets=["klein-4b"], overrides=["memory.gradient_checkpointing=false", "model.device=cpu"]
    )
    assert (
        host_estimate(off, on_gpu=False)["phases"]["training"]
        > host_estimate(on, on_gpu=False)["phases"]["training"]
    )


def test_gpu_run_offload_keeps_the_text_encoder_in_host_ram() -> None:
    plain, _ = load_config(presets=["dev"])
    offload, _ = load_config(presets=["dev"], overrides=["memory.cpu_offload=true"])
    assert host_estimate(offload, on_gpu=True)["phases"]["caching"] > 40  # Mistral 24B in bf16
    assert host_estimate(plain, on_gpu=True)["phases"]["caching"] < 1
    assert "host" in estimate_report(plain)


def test_gpu_lookup_by_class_and_name() -> None:
    from flux2_lora.memory import find_gpu

    assert find_gpu("40").name.startswith("40 GB")
    assert find_gpu("24").name.startswith("24 GB")
    assert find_gpu("H200").name.startswith("141 GB")
    assert find_gpu("4090").name.startswith("24 GB")
    assert find_gpu("33.5").gib == 33.5
    assert find_gpu("nonsense") is None
