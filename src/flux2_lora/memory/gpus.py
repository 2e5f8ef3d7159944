"""GPU classes users train on, with the memory CUDA reports as usable, and the local GPU (via nvidia-smi)."""

from __future__ import annotations

import functools
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["fits", "tight", "does_not_fit"]
TIGHT_HEADROOM = 0.10  # within 10% of the card: may OOM on fragmentation or a longer caption batch
MAX_GIB = 4096.0  # a size beyond any card (or several) is a typo, not a GPU
GPU_FORMS = "give a class like 24, 48, 80 or H100, or a size in GiB (a number above 0)"


@dataclass(frozen=True)
class Gpu:
    name: str
    gib: float
    # Speed facts for the time model (memory/timing.py); 0: unknown, taken from the class of its memory.
    bf16_tflops: float = 0.0  # dense BF16 tensor-core TFLOPS (FP32 accumulate), the vendor's datasheet
    host_gbs: float = 0.0  # pinned host→GPU copy bandwidth, GB/s (1e9 bytes)


# Host→GPU bandwidth: PCIe 4.0 ×16 is 16 GT/s × 16 lanes × 128/130 ≈ 31.5 GB/s per direction, PCIe 5.0
# ×16 twice that (PCI-SIG line rates); pinned cudaMemcpy reaches about 80% of it in CUDA's bandwidthTest
# (≈ 25 and 50 GB/s). Not measured here. TFLOPS: NVIDIA's datasheets, dense (no sparsity), BF16 with
# FP32 accumulate, of the card the class's time figures assume (named first where a class has several:
# the RTX 4090 for 24 GB, the H100 SXM for 80 GB); A10/3090 are slower, so swap transfers hide better there.
PCIE4_GBS = 25.0
PCIE5_GBS = 50.0

GPUS: list[Gpu] = [
    Gpu("24 GB (RTX 3090/4090, A10)", 23.99, bf16_tflops=165.2, host_gbs=PCIE4_GBS),
    Gpu("32 GB (RTX 5090)", 31.84, bf16_tflops=209.5, host_gbs=PCIE5_GBS),
    Gpu("40 GB (A100 40GB)", 39.50, bf16_tflops=312.0, host_gbs=PCIE4_GBS),
    Gpu("48 GB (RTX 6000 Ada, L40S, A6000)", 47.99, bf16_tflops=362.0, host_gbs=PCIE4_GBS),
    Gpu("80 GB (A100/H100 80GB)", 79.65, bf16_tflops=989.0, host_gbs=PCIE5_GBS),
    Gpu("94 GB (H100 NVL)", 93.58, bf16_tflops=835.0, host_gbs=PCIE5_GBS),
    Gpu("141 GB (H200)", 139.80, bf16_tflops=989.0, host_gbs=PCIE5_GBS),
    Gpu("180 GB (B200)", 178.36, bf16_tflops=2250.0, host_gbs=PCIE5_GBS),
]


def speed_of(gib: float | Gpu) -> Gpu:
    """The GPU with speed facts for a card or a memory size: its own where known, else the smallest class
    with at least that memory (the largest class beyond them all)."""
    if isinstance(gib, Gpu):
        if gib.bf16_tflops and gib.host_gbs:
            return gib
        gib = gib.gib
    for g in GPUS:
        if g.gib >= gib - 0.5:
            return g
    return GPUS[-1]


def gpu_label(name: str, count: int) -> str:
    """ "24 GB (RTX 3090/4090, A10)" or, for a run over several, "4 × 24 GB (RTX 3090/4090, A10)"."""
    return f"{count} × {name}" if count > 1 else name


def verdict(total_gib: float, gpu_gib: float) -> Verdict:
    if total_gib <= gpu_gib * (1 - TIGHT_HEADROOM):
        return "fits"
    if total_gib <= gpu_gib:
        return "tight"
    return "does_not_fit"


def nvidia_smi(query: str, timeout: float = 5) -> list[list[str]]:
    """The rows nvidia-smi gives for ``--query-<query>`` (e.g. ``gpu=name,memory.total``), each split into
    its stripped fields; [] where nvidia-smi is missing, fails or times out. Reads the GPU without
    importing torch or creating a CUDA context."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-{query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[p.strip() for p in line.split(",")] for line in out.splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def local_gpu() -> Gpu | None:
    """The first local NVIDIA GPU (via :func:`nvidia_smi`); asked once per process because every estimate
    refresh in the UI needs it."""
    rows = nvidia_smi("gpu=name,memory.total")
    if not rows or len(rows[0]) < 2:
        return None
    *name, mib = rows[0]  # the memory is the last field; a name may itself hold a comma
    try:
        return Gpu(f"local: {', '.join(name)}", float(mib) / 1024)
    except ValueError:  # "[N/A]" on some virtual GPUs
        return None


def find_gpu(name: str | None) -> Gpu | None:
    """The GPU ``name`` means (a class, a model number, a name part, or a size in GiB); the local GPU for
    none; None where it names nothing (an unknown name, or a size that is not a positive finite number)."""
    if not name:
        return local_gpu()
    try:
        return parse_gpu(name)
    except ValueError:
        return None


def parse_gpu(name: str) -> Gpu:
    """The GPU a non-empty ``name`` means; ValueError saying why not ("banana", "-5", "0", "nan", "inf")."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{name!r} is not a GPU; {GPU_FORMS}")
    key = name.lower().strip()
    cards = [*GPUS, *([lg] if (lg := local_gpu()) else [])]

    # "40" must mean the 40 GB class, not the RTX 4090 in the 24 GB class' name: prefixes first.
    # A number matches a whole model number ("4090"), never part of one ("1" is not the A10): else GiB.
    def contains(g: Gpu) -> bool:
        if key.replace(".", "", 1).isdigit():
            return key in re.split(r"[^a-z0-9.]+", g.name.lower())
        return key in g.name.lower()

    for match in (lambda g: g.name.lower().startswith(key + " "), contains):
        for g in cards:
            if match(g):
                return g
    try:
        gib = float(key)
    except ValueError:
        raise ValueError(f"unknown GPU {name!r}; {GPU_FORMS}") from None
    if not math.isfinite(gib) or not 0 < gib <= MAX_GIB:
        raise ValueError(f"{name!r} is not a GPU size: {GPU_FORMS}, at most {MAX_GIB:g}")
    return Gpu(f"{gib:g} GiB", gib)
