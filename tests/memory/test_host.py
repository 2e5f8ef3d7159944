"""Host-RAM estimate: phases, machine comparison, and the direction of each setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux2_lora.config.io import load_config
from flux2_lora.memory import estimate_report
from flux2_lora.memory.estimate import resolve_shapes
from flux2_lora.memory.host import GPU_LOAD_FACTOR, PROCESS_BASELINE_GIB, host_estimate


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


def test_fsdp_on_four_gpus_needs_one_dev_copy_of_host_ram_not_four() -> None:
    """[dev] on 4 GPUs: under DDP each process reads the 60 GiB transformer; under FSDP only rank 0 does
    (the others receive their shards), so the machine's peak drops by three copies of it. With FSDP's
    CPU offload each process keeps its quarter of the weights in host RAM instead."""
    from flux2_lora.memory.static import transformer_params

    def machine(*overrides: str) -> float:
        c, _ = load_config(presets=["dev"], overrides=["distributed.num_processes=4", *overrides])
        return float(host_estimate(c, on_gpu=True)["machine_peak_gib"])

    ddp, fsdp = machine("distributed.strategy=ddp"), machine("distributed.strategy=fsdp")
    offload = machine("distributed.strategy=fsdp", "distributed.fsdp_cpu_offload=true")
    c, _ = load_config(presets=["dev"])
    weights = sum(transformer_params(resolve_shapes(c).arch)) * 2 / 2**30
    assert ddp > 4 * weights  # about 360 GiB
    # Each other process: its loading peak (the read weights) gives way to its training figure (0.5 GiB
    # of pinned batches and CUDA host allocations).
    assert ddp - fsdp == pytest.approx(3 * (GPU_LOAD_FACTOR * weights - 0.5))
    assert fsdp < GPU_LOAD_FACTOR * weights + 4  # one copy read (rank 0), three bare processes
    assert offload - fsdp == pytest.approx(3 * weights / 4)


def test_without_cached_embeddings_every_process_loads_the_text_encoder() -> None:
    """Cached: rank 0 encodes for all (the others never load the encoder). Live: each process encodes its
    own batches, so each needs the encoder (host RAM while it encodes on the CPU)."""

    def others(*overrides: str) -> float:
        c, _ = load_config(
            presets=["dev"],
            overrides=[
                "distributed.num_processes=2",
                "distributed.strategy=fsdp",
                "memory.cpu_offload=true",
                *overrides,
            ],
        )
        h = host_estimate(c, on_gpu=True)
        return float(h["machine_peak_gib"] - h["peak_gib"])

    assert others() < 2
    assert others("memory.cache_text_embeddings=false") > 40  # Mistral 24B in bf16


def test_cache_to_disk_takes_the_cached_latents_and_embeddings_out_of_ram(tmp_path: Path) -> None:
    """Every training process holds the cached latents and prompt embeddings in RAM; memory.cache_to_disk
    reads them from the run's .cache per step instead."""
    from flux2_lora.memory.host import ram_cache_gib

    for i in range(10):
        (tmp_path / f"{i}.png").write_bytes(b"")
    overrides = [f"dataset.path={tmp_path}", "dataset.resolution=1024", "dataset.random_flip=false"]
    in_ram, _ = load_config(presets=["dev"], overrides=overrides)
    on_disk, _ = load_config(presets=["dev"], overrides=[*overrides, "memory.cache_to_disk=true"])
    sh = resolve_shapes(in_ram)
    per_image = (32 * 128 * 128 + 512 * sh.arch.joint_attention_dim) * 2  # bf16 latent + embedding
    assert ram_cache_gib(in_ram) == pytest.approx(10 * per_image / 2**30)
    assert ram_cache_gib(on_disk) == 0
    a, b = host_estimate(in_ram, on_gpu=True), host_estimate(on_disk, on_gpu=True)
    assert a["phases"]["training"] - b["phases"]["training"] == pytest.approx(10 * per_image / 2**30)


def test_cached_latents_count_every_dataset_at_its_own_resolution(tmp_path: Path) -> None:
    """A dataset.extra entry's images are cached too, at the entry's resolution (512 here, the primary
    at 1024): the RAM for them is exactly their latents and embeddings at 512 px."""
    from flux2_lora.memory.host import ram_cache_gib

    main, extra = tmp_path / "main", tmp_path / "extra"
    for folder, n in ((main, 10), (extra, 5)):
        folder.mkdir()
        for i in range(n):
            (folder / f"{i}.png").write_bytes(b"")
    overrides = [f"dataset.path={main}", "dataset.resolution=1024", "dataset.random_flip=false"]
    alone, _ = load_config(presets=["dev"], overrides=overrides)
    both, _ = load_config(
        presets=["dev"], overrides=[*overrides, f"dataset.extra=[{{path: {extra}, resolution: 512}}]"]
    )
    dim = resolve_shapes(alone).arch.joint_attention_dim
    per_512 = (32 * 64 * 64 + 512 * dim) * 2  # bf16 latent at 512 px + embedding
    assert ram_cache_gib(both) - ram_cache_gib(alone) == pytest.approx(5 * per_512 / 2**30)


def test_cpu_fsdp_processes_other_than_rank_0_read_no_weights() -> None:
    """A CPU run (klein 4B widths): under FSDP the second process never holds the loading peak."""
    fsdp, _ = load_config(
        presets=["klein-4b"],
        overrides=["model.device=cpu", "distributed.num_processes=2", "distributed.strategy=fsdp"],
    )
    ddp, _ = load_config(
        presets=["klein-4b"],
        overrides=["model.device=cpu", "distributed.num_processes=2", "distributed.strategy=ddp"],
    )
    a, b = host_estimate(fsdp, on_gpu=False), host_estimate(ddp, on_gpu=False)
    assert a["peak_gib"] == pytest.approx(b["peak_gib"])
    assert a["machine_peak_gib"] - a["peak_gib"] < 0.5 * (b["machine_peak_gib"] - b["peak_gib"])
