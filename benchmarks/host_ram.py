"""Host-RAM estimate vs measured peak RSS of real CPU training runs (demo and larger demo-architecture models).

    python benchmarks/host_ram.py

Builds two larger models from the demo's architecture (wider and deeper transformer), trains a few
steps of each on the CPU, and prints estimate, measured peak RSS (status.json) and the error (target 10%).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from flux2_lora.config.io import load_config
from flux2_lora.memory.host import host_estimate

WIDE = {"num_attention_heads": 8, "attention_head_dim": 64, "axes_dims_rope": (16, 16, 16, 16)}
CASES = [
    ("demo quickstart", None, []),
    (
        "mid (2+4 blocks, d=512), res 128",
        {"num_layers": 2, "num_single_layers": 4, **WIDE},
        ["dataset.resolution=128"],
    ),
    (
        "large (4+8 blocks, d=512), res 128",
        {"num_layers": 4, "num_single_layers": 8, **WIDE},
        ["dataset.resolution=128"],
    ),
    (
        "large, res 128, no checkpointing",
        {"num_layers": 4, "num_single_layers": 8, **WIDE},
        ["dataset.resolution=128", "memory.gradient_checkpointing=false"],
    ),
    ("large, res 256", {"num_layers": 4, "num_single_layers": 8, **WIDE}, ["dataset.resolution=256"]),
]


def main() -> int:
    from flux2_lora.training.demo_model import ensure_demo_model

    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="flux2-host-") as tmp:
        for name, overrides, sets in CASES:
            model = "demo"
            if overrides:
                model = str(ensure_demo_model(Path(tmp) / name.split()[0], **overrides))
            out = Path(tmp) / "run"
            args = [
                f"model.path={model}",
                f"output.dir={out}",
                "training.max_steps=4",
                "training.warmup_steps=0",
                "validation.enabled=false",
                *sets,
            ]
            config, _ = load_config(presets=["quickstart"], overrides=args)
            est = host_estimate(config, on_gpu=False)["peak_gib"]
            cmd = [sys.executable, "-m", "flux2_lora.cli", "train", "--preset", "quickstart"]
            for a in args:
                cmd += ["--set", a]
            subprocess.run(cmd, capture_output=True, check=True)
            measured = json.loads((out / "status.json").read_text())["extra"]["measured"]["host_peak_rss_gib"]
            err = (est - measured) / measured
            worst = max(worst, abs(err))
            print(f"{name:38} estimate {est:5.2f} GiB  measured peak RSS {measured:5.2f} GiB  {err:+.1%}")
            subprocess.run(["rm", "-rf", str(out)], check=True)
    print(f"worst |error| {worst:.1%} (target 10%)")
    return 0 if worst <= 0.10 else 2


if __name__ == "__main__":
    sys.exit(main())
