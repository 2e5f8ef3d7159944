"""The UI process must stay light: importing the app pulls in no torch/diffusers/transformers/peft."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_app_imports_no_torch() -> None:
    pytest.importorskip("gradio")
    code = (
        "import sys, flux2_lora.webui.app, flux2_lora.cli.ui\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft', 'accelerate', 'safetensors') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
