"""Where and how a run computes: device, precision, CPU threads, and the kernels that make steps fast
(attention backend, regional compilation, FP8 matrix products)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch

from flux2_lora.config import DTYPE_TO_MIXED, PerformanceSection, TrainConfig
from flux2_lora.training.model import ModelLoadError

if TYPE_CHECKING:
    from diffusers import ModelMixin  # Any to mypy (see pyproject), named for the reader

log = logging.getLogger("flux2_lora")

# The resolved weight dtype → accelerate's mixed precision (the schema's one table, keyed by torch dtype).
MIXED_PRECISION = {getattr(torch, name): mixed for name, mixed in DTYPE_TO_MIXED.items()}
# performance.attention_backend → diffusers' attention dispatcher names (PyTorch SDPA kernels).
ATTENTION_BACKENDS = {
    "flash": "_native_flash",
    "efficient": "_native_efficient",
    "math": "_native_math",
}


def resolve_device(spec: str, local_rank: int | None = None) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank or 0)
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"model.device: {spec!r} was asked for but no CUDA GPU is available; use 'cpu'"
            )
        idx = int(spec.split(":")[1]) if ":" in spec else (local_rank or 0)
        if idx >= torch.cuda.device_count():
            raise ModelLoadError(
                f"model.device: {spec!r} does not exist ({torch.cuda.device_count()} GPU(s))"
            )
        return torch.device("cuda", idx)
    return torch.device("cpu")


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPUs that support it, fp16 on older ones, fp32 on CPU (CPU bf16 matmuls are slow)."""
    if spec != "auto":
        return getattr(torch, spec)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def cpu_threads(requested: int, num_processes: int) -> tuple[int, str]:
    """Intra-op threads for one process, and why: torch's default (every core, in every process)
    oversubscribes a shared or loaded host, and N training processes would each take all cores."""
    if requested > 0:
        return requested, "performance.cpu_threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, num_processes)), f"{cores} usable cores / {num_processes} process(es)"


def apply_cpu_threads(perf: PerformanceSection, num_processes: int) -> None:
    threads, why = cpu_threads(perf.cpu_threads, num_processes)
    torch.set_num_threads(threads)
    log.info("CPU threads: %d per process (%s)", threads, why)


def apply_kernels(transformer: ModelMixin, perf: PerformanceSection, device: torch.device) -> None:
    """Attention backend, FP8 base layers and regional compilation, in that order (compile last: it
    traces what the other two installed). Call after the LoRA is added."""
    cuda = device.type == "cuda"
    if perf.attention_backend != "auto":
        if not cuda and perf.attention_backend != "math":
            raise ModelLoadError(
                f"performance.attention_backend: {perf.attention_backend!r} needs a CUDA GPU; use auto"
            )
        transformer.set_attention_backend(ATTENTION_BACKENDS[perf.attention_backend])
    if perf.float8:
        enable_float8(transformer, device)
    if perf.compile:
        if not cuda:
            log.warning("performance.compile: skipped on CPU (it pays off on GPUs only)")
        else:
            transformer.compile_repeated_blocks()
            log.info("performance.compile: the transformer blocks compile on the first steps")


def _float8_ok(module: torch.nn.Module, fqn: str) -> bool:
    # FP8 kernels need both dimensions divisible by 16; the output projection stays in bf16 (as
    # diffusers' FLUX.2 scripts do), and the LoRA's own small layers stay in full precision.
    if "lora_" in fqn or fqn.endswith("proj_out"):
        return False
    return (
        isinstance(module, torch.nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0
    )


def enable_float8(transformer: torch.nn.Module, device: torch.device) -> None:
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise ModelLoadError(
            "performance.float8: needs a CUDA GPU with FP8 units (compute capability 8.9 or newer: Ada, "
            "Hopper, Blackwell)"
        )
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise ModelLoadError("performance.float8: needs torchao; install flux2-lora[quantization]") from None
    convert_to_float8_training(
        transformer, module_filter_fn=_float8_ok, config=Float8LinearConfig(pad_inner_dim=True)
    )


def make_accelerator(config: TrainConfig) -> Any:
    """The accelerate state for this process: its device, mixed precision from model.dtype, the seed."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = resolve_device(config.model.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda" and not distributed:
        torch.cuda.set_device(device)
    dtype = resolve_dtype(config.model.dtype, device)
    if not distributed:  # a second trainer in one process (tests, the pre-flight) may change precision
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(
        mixed_precision=MIXED_PRECISION[dtype],
        gradient_accumulation_steps=config.training.gradient_accumulation_steps,
        cpu=device.type == "cpu",
    )
    if accelerator.device.type == "cpu":
        apply_cpu_threads(config.performance, accelerator.num_processes)
    set_seed(config.training.seed)
    return accelerator
