"""The local GPU as nvidia-smi reports it: one reader for the UI, the CLI and the VRAM benchmark."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from flux2_lora.memory import gpus


def fake_smi(folder: Path, output: str, status: int = 0) -> None:
    """An nvidia-smi on PATH that prints ``output`` and exits with ``status``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {status}\n")
    script.chmod(0o755)


@pytest.fixture
def smi_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    gpus.local_gpu.cache_clear()
    yield tmp_path / "bin"
    gpus.local_gpu.cache_clear()


@pytest.mark.parametrize(
    ("output", "status", "expected"),
    [
        ("NVIDIA H200, 143771\nNVIDIA H200, 143771", 0, gpus.Gpu("local: NVIDIA H200", 143771 / 1024)),
        ("Acme, Inc. GPU, 8192", 0, gpus.Gpu("local: Acme, Inc. GPU", 8.0)),  # a comma in the name
        ("NVIDIA vGPU, [N/A]", 0, None),
        ("", 0, None),
        ("NVIDIA H200, 143771", 9, None),  # nvidia-smi failing (no driver loaded)
    ],
)
def test_local_gpu_from_nvidia_smi(
    smi_path: Path, output: str, status: int, expected: gpus.Gpu | None
) -> None:
    fake_smi(smi_path, output, status)
    assert gpus.local_gpu() == expected


def test_nvidia_smi_rows_are_split_fields(smi_path: Path) -> None:
    fake_smi(smi_path, "1234, 500\n\n5678, 700")
    assert gpus.nvidia_smi("compute-apps=pid,used_memory") == [["1234", "500"], ["5678", "700"]]


def test_no_nvidia_smi_means_no_local_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpus.shutil, "which", lambda name: None)
    gpus.local_gpu.cache_clear()
    try:
        assert gpus.nvidia_smi("gpu=name") == []
        assert gpus.local_gpu() is None
    finally:
        gpus.local_gpu.cache_clear()


@pytest.mark.parametrize(
    ("given", "gib"),
    [("1", 1.0), ("4090", 23.99), ("40", 39.5), ("H100", 79.65), ("A10", 23.99), ("22.5", 22.5)],
)
def test_a_gpu_is_found_by_whole_model_number_or_size(given: str, gib: float) -> None:
    from flux2_lora.memory.gpus import find_gpu

    found = find_gpu(given)
    assert found is not None and found.gib == gib  # "1" is a 1 GiB card, not the A10 holding a "1"


@pytest.mark.parametrize("text", ["-5", "0", "nan", "inf", "-inf", "1e999", "banana", "5000"])
def test_a_gpu_is_a_known_class_or_a_positive_finite_size(text: str) -> None:
    """Issue 18: "-5", "inf", "nan" were taken as sizes and "banana" became the 24 GB class."""
    assert gpus.find_gpu(text) is None
    with pytest.raises(ValueError, match="GPU"):
        gpus.parse_gpu(text)


def test_gpu_names_and_sizes_still_parse() -> None:
    assert gpus.parse_gpu("24").gib == 23.99 and gpus.parse_gpu("40").name.startswith("40 GB")
    assert gpus.parse_gpu("4090").name.startswith("24 GB") and gpus.parse_gpu("h100").gib == 79.65
    assert gpus.parse_gpu("12.5") == gpus.Gpu("12.5 GiB", 12.5)


@pytest.mark.parametrize("text", ["-5", "0", "nan", "inf", "banana"])
def test_cli_estimate_refuses_a_bad_gpu(text: str) -> None:
    from tests.helpers import cli

    proc = cli("estimate", "--preset", "quickstart", f"--gpu={text}", timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --gpu:"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
