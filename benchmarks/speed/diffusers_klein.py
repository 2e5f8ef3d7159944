"""Run diffusers' train_dreambooth_lora_flux2_klein.py unmodified and measure steps/s + peak GPU memory.

The script is not part of this repository (fetch it from diffusers' examples/dreambooth/ and pass its path).

Usage:
  python benchmarks/speed/diffusers_klein.py --script PATH [--warmup K] [--json-out FILE] -- <script arguments...>

The measuring is step_probe.py's (one optimizer-step hook, Accelerator.prepare wrapped so the CUDA peak
covers the training phase; see its docstring). The last line printed is one JSON object:
  {"steps_per_s":..., "step_seconds":[...], "max_allocated_gib":..., "max_reserved_gib":..., ...}
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_probe import main

if __name__ == "__main__":
    sys.exit(main(default_script_help="diffusers' examples/dreambooth/train_dreambooth_lora_flux2_klein.py"))
