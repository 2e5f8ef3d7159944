"""Block swap, fp8 weights, the quantized text encoder, the time model and the one-GPU plans for FLUX.2
[dev] on 16-24 GB (issue 21): figures checked against independent counts from the architecture
(docs FLUX2_FACTS: per-block shapes), not against the code's own helpers."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from flux2_lora.config.io import ConfigError, load_config
from flux2_lora.config.presets import list_presets
from flux2_lora.memory import GPUS, estimate, recommendations
from flux2_lora.memory.gpus import find_gpu, verdict
from flux2_lora.memory.host import PROCESS_BASELINE_GIB, gpu_host_peak, host_estimate
from flux2_lora.memory.timing import step_time
from flux2_lora.units import GIB

D = 6144  # [dev] inner dim; MLP hidden 18432
# [dev] double block: 8 attention Linears d→d, ff and ff_context linear_in d→36864, linear_out 18432→d.
DOUBLE_WEIGHTS = 8 * D * D + 2 * D * 36864 + 2 * 18432 * D
DOUBLE_ROWS = 8 * D + 2 * 36864 + 2 * D
SINGLE_WEIGHTS = D * 55296 + 24576 * D  # to_qkv_mlp_proj, to_out
SINGLE_ROWS = 55296 + D
DOUBLE_NORMS, SINGLE_NORMS = 4 * 128, 2 * 128  # q/k RMSNorm scales (and added_q/k in double blocks)


def _dev(*overrides: str):
    return load_config(presets=["dev"], overrides=list(overrides))[0]


def test_block_shapes_match_the_published_parameter_counts() -> None:
    assert DOUBLE_WEIGHTS + DOUBLE_NORMS == 981_467_648
    assert SINGLE_WEIGHTS + SINGLE_NORMS == 490_733_824


@pytest.mark.parametrize(("n", "doubles"), [(3, 0), (48, 0), (50, 2), (54, 6)])
def test_swap_keeps_two_buffers_and_pins_the_rest(n: int, doubles: int) -> None:
    base = estimate(_dev())
    est = estimate(_dev(f"memory.blocks_to_swap={n}"))
    single, double = (SINGLE_WEIGHTS + SINGLE_NORMS) * 2, (DOUBLE_WEIGHTS + DOUBLE_NORMS) * 2
    pinned = (n - doubles) * single + doubles * double
    largest = double if doubles else single
    c = est.phase_components["training"]
    assert est.swap["pinned_gib"] == pytest.approx(pinned / GIB, rel=1e-9)
    assert c["swap_buffers"] == pytest.approx(2 * largest / GIB, rel=1e-9)
    assert c["weights"] == pytest.approx(
        base.phase_components["training"]["weights"] - pinned / GIB, rel=1e-9
    )
    assert est.swap["copied_gib_per_step"] == pytest.approx(2 * pinned / GIB, rel=1e-9)
    # The pinned copy is host RAM while training.
    host = host_estimate(_dev(f"memory.blocks_to_swap={n}"), on_gpu=True)["phases"]["training"]
    assert host == pytest.approx(PROCESS_BASELINE_GIB + 0.5 + pinned / GIB, rel=1e-9)


def test_swap_beyond_the_maximum_is_refused_and_the_maximum_is_sized() -> None:
    # The schema's rule refuses more than the variant's maximum (config/rules.py): the estimate never sees it.
    with pytest.raises(ConfigError, match="at most 54"):
        _dev("memory.blocks_to_swap=64")
    assert estimate(_dev("memory.blocks_to_swap=54")).swap["blocks"] == 8 + 48 - 2


def test_fp8_weights_are_one_byte_plus_a_row_scale() -> None:
    bf16 = estimate(_dev()).phase_components["training"]["weights"]
    fp8 = estimate(_dev("memory.quantization=fp8")).phase_components["training"]["weights"]
    # A quantized Linear of n weights and r rows: 2n bytes in bf16, n + 4r in fp8.
    saved_blocks = 8 * (DOUBLE_WEIGHTS - 4 * DOUBLE_ROWS) + 48 * (SINGLE_WEIGHTS - 4 * SINGLE_ROWS)
    # Outside the blocks only the three modulation Linears are quantized (embedders, norm_out and
    # proj_out stay bf16); the largest Linear (to_qkv_mlp_proj) is dequantized to bf16 for its matmul.
    modulation, modulation_rows = 2 * D * 6 * D + D * 3 * D, 2 * 6 * D + 3 * D
    transient = 2 * D * 55296
    expected = bf16 - (saved_blocks + modulation - 4 * modulation_rows - transient) / GIB
    assert fp8 == pytest.approx(expected, rel=1e-9)


def _mistral_linears() -> int:
    h, q, kv, i = 5120, 32 * 128, 8 * 128, 32768
    return 40 * (h * q + 2 * h * kv + q * h + 3 * h * i)


@pytest.mark.parametrize("q", ["nf4", "int8"])
def test_caching_holds_the_quantized_text_encoder(q: str) -> None:
    params = 24_011_361_280
    linear = _mistral_linears()
    if q == "nf4":
        weights = (params - linear) * 2 + linear * (0.5 + 1 / 64 + 4 / (64 * 256))
    else:
        rows = 40 * (32 * 128 + 2 * 8 * 128 + 5120 + 2 * 32768 + 5120)
        weights = (params - linear) * 2 + linear + 4 * rows
    est = estimate(_dev(f"memory.text_encoder_quantization={q}"))
    assert est.phase_components["caching"]["text_encoder"] == pytest.approx(weights / GIB, rel=1e-9)
    assert est.phases["caching"] < estimate(_dev()).phases["caching"] - 20


def test_other_ranks_need_no_text_encoder_in_host_ram() -> None:
    # fp8 streams the transformer block by block: rank 0's peak is the bf16 text encoder it loads.
    one = host_estimate(_dev("memory.quantization=fp8"), on_gpu=True)
    two = host_estimate(_dev("memory.quantization=fp8", "distributed.num_processes=2"), on_gpu=True)
    assert one["peak_gib"] == pytest.approx(PROCESS_BASELINE_GIB + 1.5 * 24_011_361_280 * 2 / GIB, rel=1e-9)
    # The other rank: one bf16 double block in flight while loading, then the training phase.
    other = PROCESS_BASELINE_GIB + 1.5 * (DOUBLE_WEIGHTS + DOUBLE_NORMS) * 2 / GIB
    assert two["machine_peak_gib"] == pytest.approx(one["peak_gib"] + other, rel=1e-9)


def test_time_model_counts_two_copies_per_swapped_block_and_hides_them_behind_compute() -> None:
    card = GPUS[0]
    base = step_time(_dev(), card)
    swapped = step_time(_dev("memory.blocks_to_swap=48"), card)
    assert swapped.gb_per_step == pytest.approx(2 * 48 * (SINGLE_WEIGHTS + SINGLE_NORMS) * 2 / 1e9, rel=1e-9)
    assert swapped.transfer_s == pytest.approx(swapped.gb_per_step / card.host_gbs, rel=1e-9)
    # At 1024² a single block computes longer than its copy takes: only backward's first copy shows.
    assert base.step_s < swapped.step_s < base.step_s + 2 * swapped.transfer_s / 96
    # At 256² the copies outlast the compute: the swap costs time.
    small = step_time(_dev("memory.blocks_to_swap=48", "dataset.resolution=256"), card)
    assert small.step_s > small.compute_s + 0.5 * small.transfer_s


def test_time_model_reproduces_its_calibration_row() -> None:
    # benchmarks/vram/measured.json: [dev] bf16 1024² r16 on an H200, 2.17 s/step.
    assert step_time(_dev("lora.rank=16"), find_gpu("H200")).step_s == pytest.approx(2.17, rel=0.02)


def test_dev_on_24gb_offers_swap_fp8_and_text_encoder_choices_on_one_gpu() -> None:
    recs = recommendations(_dev(), GPUS[0].gib, host_gib=64.0)
    assert recs and all(r["verdict_after"] == "fits" and r["host_gib_after"] <= 64 for r in recs)
    keys = [set(r["overrides"]) for r in recs]
    assert any("memory.blocks_to_swap" in k for k in keys)
    assert any(r["overrides"].get("memory.quantization") == "fp8" for r in recs)
    assert any("memory.text_encoder_quantization" in k for k in keys)
    assert not any("distributed.num_processes" in k for k in keys)  # never more GPUs while one fits
    assert all(r["time_factor"] >= 1.0 for r in recs if "dataset.resolution" not in r["overrides"])


def _cli(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "flux2_lora.cli", "estimate", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize(("gpu", "host_limit"), [("24", 64.0), ("16", None)])
def test_estimate_auto_fit_gives_one_gpu_config_for_dev(gpu: str, host_limit: float | None) -> None:
    fit = _cli("--preset", "dev", "--gpu", gpu, "--auto-fit")["auto_fit"]
    assert fit is not None and fit["num_gpus"] == 1 and fit["verdict"] == "fits"
    assert fit["total_gib"] <= float(gpu) * 0.9
    assert fit["host_gib"] > 0  # stated
    if host_limit is not None:
        assert fit["host_fits"] and fit["host_gib"] <= host_limit
    # What it returns is what the estimate of that config says.
    config = load_config(
        presets=["dev"], overrides=[f"memory.{k}={v}" for k, v in fit["config"]["memory"].items()]
    )[0]
    est = estimate(config)
    assert est.total_gib == pytest.approx(fit["total_gib"]) and gpu_host_peak(config, est) == pytest.approx(
        fit["host_gib"]
    )


_SIZED = re.compile(r"-(\d+)gb$")


@pytest.mark.parametrize("name", [p.name for p in list_presets() if _SIZED.search(p.name)])
def test_every_sized_preset_fits_its_gpu_and_states_its_host_ram(name: str) -> None:
    gib = float(_SIZED.search(name).group(1))
    config = load_config(presets=[name])[0]
    est = estimate(config)
    assert verdict(est.total_gib, gib) == "fits"
    desc = next(p.description for p in list_presets() if p.name == name)
    host = float(re.search(r"(\d+) GiB host RAM", desc).group(1))
    assert host == pytest.approx(gpu_host_peak(config, est), abs=1.0)
    on_gpu = float(re.search(r"estimated ([\d.]+) GiB on the GPU", desc).group(1))
    assert on_gpu == pytest.approx(est.total_gib, abs=0.1)
