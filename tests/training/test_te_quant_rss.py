"""memory.text_encoder_quantization nf4: the text encoder is never materialised in full precision (issue
21), by the process's true peak RSS (the kernel's high-water mark, VmHWM), not a sampled figure.

The demo's text encoder (the variant table's Qwen3, 28 layers), scaled in width until its weights are
~300 MB, is saved in bf16 as a pipeline folder and loaded in a fresh process by the trainer's own loader
(training/model.load_text_encoder_quantized). What the peak may hold:

- the safetensors file's pages, which the quantizer reads through its memory map: resident and counted
  by RSS (shared, reclaimable page cache; at most the bf16 weights' size W);
- the quantized encoder itself (what the load returns, ~0.25 W);
- the loader's working set (layers in flight, bitsandbytes' and the allocator's buffers): the margin,
  half of W (measured with transformers 5.25 and bitsandbytes 0.50: 0.24-0.26 W; total 1.48-1.51 W).

A full-precision copy would add W (bf16) or 2W (fp32) of anonymous memory on top (≥ 2.25 W): the fp32
load, which converts every weight, is measured too (3.0 W) and must break the same bound, so the check
can tell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flux2_lora.assess import environment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not environment().bnb_cpu,
        reason="needs bitsandbytes with CPU kernels (>= 0.46, assess.BNB_CPU_SINCE)",
    ),
]

# The demo encoder ×24 in width (32 → 768, MLP 64 → 1536, heads of 128), its depth and vocabulary kept.
WIDER = {
    "hidden_size": 768,
    "intermediate_size": 1536,
    "num_attention_heads": 6,
    "num_key_value_heads": 3,
    "head_dim": 128,
}

_PROBE = r"""
import json, sys
from pathlib import Path
import torch
folder, mode, wider = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
if mode == "build":
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from flux2_lora.variants import VARIANTS
    cfg = Qwen3Config(**{**VARIANTS["demo"].text_encoder.transformers_config(), **wider}, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder / "text_encoder")
    index = {"_class_name": "Flux2KleinPipeline", "text_encoder": ["transformers", "Qwen3ForCausalLM"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    raise SystemExit(0)
from transformers import Qwen3ForCausalLM
from flux2_lora.training.model import load_text_encoder_quantized
import bitsandbytes  # imported before the baseline: its kernels are not the encoder
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark restarts from what is resident now
base = rss("VmRSS")
if mode == "nf4":
    model = load_text_encoder_quantized(str(folder), "klein-4b", torch.bfloat16, "nf4", torch.device("cpu"))
else:  # a full-precision load, every weight converted to fp32 (the copy nf4 must never make)
    model = Qwen3ForCausalLM.from_pretrained(folder / "text_encoder", dtype=torch.float32)
peak = rss("VmHWM")
layer = model.model.layers[0].mlp.up_proj
storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()]}
print(json.dumps({"growth": peak - base, "model_bytes": sum(storages.values()), "layer": type(layer).__name__}))
"""


def _probe(folder: Path, mode: str) -> dict[str, Any]:
    # Large allocations get their own mappings, returned on free: glibc's heap would otherwise keep freed
    # per-layer buffers resident, and the peak would measure fragmentation rather than what is alive.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(folder), mode, json.dumps(WIDER)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]) if mode != "build" else {}


def test_nf4_text_encoder_peak_rss_stays_below_its_bf16_size_plus_a_margin(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _probe(folder, "build")
    weights = (folder / "text_encoder" / "model.safetensors").stat().st_size  # W: the bf16 weights
    assert weights > 250e6  # big enough that a full-precision copy cannot hide in the margin
    bound = weights * 1.5
    nf4, fp32 = _probe(folder, "nf4"), _probe(folder, "fp32")
    assert nf4["layer"] == "Linear4bit" and int(nf4["model_bytes"]) < 0.3 * weights  # quantized it is
    assert int(nf4["growth"]) < bound + int(nf4["model_bytes"]), (nf4, weights)
    # The probe sees a full-precision materialisation: the fp32 load breaks the same bound.
    assert int(fp32["growth"]) > bound + int(nf4["model_bytes"]), (fp32, weights)
