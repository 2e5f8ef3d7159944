"""GPU memory harness: real training steps at full size with random weights, measured vs estimated.

    python benchmarks/vram/run.py            # on a CUDA machine: writes benchmarks/vram/measured.json
    python benchmarks/vram/run.py --dry      # anywhere: traces each config on meta tensors instead

Each row: device, config overrides, measured (max_memory_allocated, max_memory_reserved, NVML process
peak), estimated (tensor peak, total) and the error of the total estimate against NVML. The steps are
the trainer's own: model construction from the variant's config, `inject_lora`, quantization by
`flux2_lora.model`, `flow_matching_loss`, `build_optimizer`. Weights are random (memory and speed do not
depend on their values).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HUB = {
    "dev": "black-forest-labs/FLUX.2-dev",
    "klein-4b": "black-forest-labs/FLUX.2-klein-base-4B",
    "klein-9b": "black-forest-labs/FLUX.2-klein-base-9B",
}
# variant, overrides: ≥ 12 configs over variants, resolutions 512–1536, ranks 8–128, checkpointing, batch, optimizers.
CONFIGS = [
    ("klein-4b", ["dataset.resolution=512", "lora.rank=8", "training.batch_size=1"]),
    ("klein-4b", ["dataset.resolution=1024", "lora.rank=16"]),
    ("klein-4b", ["dataset.resolution=1024", "lora.rank=64", "memory.gradient_checkpointing=false"]),
    ("klein-4b", ["dataset.resolution=1536", "lora.rank=32", "training.batch_size=2"]),
    ("klein-4b", ["dataset.resolution=1024", "lora.rank=128", "training.optimizer=adafactor"]),
    ("klein-9b", ["dataset.resolution=512", "lora.rank=16", "training.batch_size=4"]),
    ("klein-9b", ["dataset.resolution=1024", "lora.rank=32"]),
    ("klein-9b", ["dataset.resolution=1024", "lora.rank=16", "training.optimizer=adamw8bit"]),
    ("klein-9b", ["dataset.resolution=1024", "lora.rank=16", "memory.quantization=nf4"]),
    ("klein-9b", ["dataset.resolution=768", "lora.rank=64", "memory.gradient_checkpointing=false"]),
    ("dev", ["dataset.resolution=1024", "lora.rank=16", "memory.quantization=nf4"]),
    ("dev", ["dataset.resolution=512", "lora.rank=32", "memory.quantization=nf4", "training.batch_size=2"]),
    ("dev", ["dataset.resolution=1024", "lora.rank=16"]),
    ("dev", ["dataset.resolution=1536", "lora.rank=8", "memory.quantization=nf4", "training.optimizer=sgd"]),
]


def config_for(variant: str, overrides: list[str]):  # type: ignore[no-untyped-def]
    from flux2_lora.config_io import load_config

    return load_config(overrides=[f"model.path={HUB[variant]}", "model.dtype=bfloat16", *overrides])[0]


def nvml_used_mib() -> float | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()[0]
        return float(out)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def measure_cuda(config) -> dict:  # type: ignore[no-untyped-def]
    import torch
    from diffusers import Flux2Transformer2DModel

    from flux2_lora.flow import flow_matching_loss
    from flux2_lora.memory.estimate import resolve_shapes
    from flux2_lora.model import _quantize_int8, inject_lora
    from flux2_lora.optim import build_optimizer

    sh = resolve_shapes(config)
    arch = sh.arch
    baseline = nvml_used_mib()
    torch.ones(1, device="cuda") @ torch.ones(1, device="cuda")
    context = (nvml_used_mib() or 0) - (baseline or 0)
    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):
        model = Flux2Transformer2DModel(**arch.diffusers_config()).to(torch.bfloat16)
    model.requires_grad_(False)
    if config.memory.quantization == "int8":
        _quantize_int8(model)
    elif config.memory.quantization == "nf4":
        from flux2_lora.model import _quantize_nf4_manual

        model.to("cpu")
        _quantize_nf4_manual(model, torch.bfloat16)
        model.to("cuda")
    inject_lora(model, config.lora, arch)
    if config.memory.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(config.training, params)
    b = config.training.batch_size
    peak_nvml = 0.0
    for _ in range(3):
        lat = torch.randn(b, sh.image_tokens, arch.in_channels, device="cuda", dtype=torch.bfloat16)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = flow_matching_loss(
                model,
                latents=lat,
                latent_ids=torch.zeros(b, sh.image_tokens, 4, dtype=torch.long, device="cuda"),
                prompt_embeds=torch.randn(
                    b, sh.text_tokens, arch.joint_attention_dim, device="cuda", dtype=torch.bfloat16
                ),
                text_ids=torch.zeros(b, sh.text_tokens, 4, dtype=torch.long, device="cuda"),
                sigmas=torch.rand(b, device="cuda"),
                noise=torch.randn_like(lat),
                guidance=torch.ones(b, device="cuda") if arch.guidance_embeds else None,
            )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        peak_nvml = max(peak_nvml, nvml_used_mib() or 0.0)
    return {
        "allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "nvml_gib": (peak_nvml - (baseline or 0)) / 1024 if peak_nvml else None,
        "context_gib": context / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--dry", action="store_true", help="no GPU: trace each config on meta tensors (2+3 blocks)"
    )
    parser.add_argument(
        "--only", type=int, help="run one config index (the GPU run isolates each in a process)"
    )
    args = parser.parse_args()
    from flux2_lora.memory import estimate

    rows = []
    indices = [args.only] if args.only is not None else range(len(CONFIGS))
    for i in indices:
        variant, overrides = CONFIGS[i]
        config = config_for(variant, overrides)
        est = estimate(config)
        t0 = time.perf_counter()
        if args.dry:
            from flux2_lora.memory.trace import reduced, trace_training_step
            from flux2_lora.variants import VARIANTS

            arch = reduced(VARIANTS[variant].transformer, 2, 3)
            measured = {"traced_reduced_depth_gib": trace_training_step(config, arch)["peak_gib"]}
            device = "cpu (dry: meta-tensor trace, 2 double + 3 single blocks)"
        else:
            import torch

            measured = measure_cuda(config)
            device = torch.cuda.get_device_name(0)
        err = None
        if measured.get("nvml_gib"):
            # The harness runs training steps only: compare the training phase plus context and slack.
            from flux2_lora.memory.estimate import ALLOCATOR_SLACK, CUDA_CONTEXT_GIB

            train_total = est.phases["training"] * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_GIB
            err = (train_total - measured["nvml_gib"]) / measured["nvml_gib"]
        rows.append(
            {
                "device": device,
                "variant": variant,
                "overrides": overrides,
                "measured": measured,
                "estimated": {
                    "allocated_peak_gib": est.allocated_peak_gib,
                    "total_gib": est.total_gib,
                    "training_phase_gib": est.phases["training"],
                },
                "error": err,
                "seconds": time.perf_counter() - t0,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    out = Path(__file__).with_name("measured.dry.json" if args.dry else "measured.json")
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
