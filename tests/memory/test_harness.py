"""The GPU harness (benchmarks/vram): its config table covers the issue's matrix, and its dry mode runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "vram" / "run.py"


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vram_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configs_cover_variants_sizes_ranks_and_optimizers() -> None:
    configs = [_harness().config_for(v, o) for v, o in _harness().CONFIGS]
    assert len(configs) >= 12
    assert {v for v, _ in _harness().CONFIGS} == {"klein-4b", "klein-9b", "dev"}
    assert {c.dataset.resolution for c in configs} >= {512, 1024, 1536}
    assert min(c.lora.rank for c in configs) == 8 and max(c.lora.rank for c in configs) == 128
    assert {c.memory.gradient_checkpointing for c in configs} == {True, False}
    assert {c.training.batch_size for c in configs} >= {1, 2, 4}
    assert len({c.training.optimizer for c in configs}) >= 3
    # [dev] only where it fits an 80 GB card: NF4, or bf16 at batch 1 with checkpointing.
    from flux2_lora.memory import estimate

    dev = [estimate(c) for c in configs if estimate(c).variant == "dev"]
    assert len(dev) >= 3 and all(e.phases["training"] < 72 for e in dev)


@pytest.mark.slow
def test_dry_mode_traces_full_size_and_runs_the_code_path_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "dry.json"
    cmd = [sys.executable, str(RUN), "--dry", "--only", "0", "--only", "9", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    rows = json.loads(out.read_text())
    assert [r["index"] for r in rows] == [0, 9]
    for row in rows:
        assert {"device", "config", "measured", "estimated", "error"} <= set(row)
        assert abs(row["error"]["allocated"]) < 0.03  # the estimate vs the full-size trace
        assert row["measured"]["demo_cpu"]["allocated_gib"] > 0  # the real CPU run at demo size
        assert row["estimated"]["training_total_gib"] > row["estimated"]["training_allocated_gib"]
