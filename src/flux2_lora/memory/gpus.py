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


GPUS: list[Gpu] = [
    Gpu("24 GB (RTX 3090/4090, A10)", 23.99),
    Gpu("32 GB (RTX 5090)", 31.84),
    Gpu("40 GB (A100 40GB)", 39.50),
    Gpu("48 GB (RTX 6000 Ada, L40S, A6000)", 47.99),
    Gpu("80 GB (A100/H100 80GB)", 79.65),
    Gpu("94 GB (H100 NVL)", 93.58),
    Gpu("141 GB (H200)", 139.80),
    Gpu("180 GB (B200)", 178.36),
]


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
