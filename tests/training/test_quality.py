"""Lint, format and type checks run with the tests, so CI enforces them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.prefix) / "bin" / "ruff").exists(),
    reason="ruff is not installed (dev extra)",
)
def test_ruff_lint_and_format():  # type: ignore[no-untyped-def]
    ruff = str(Path(sys.prefix) / "bin" / "ruff") if (Path(sys.prefix) / "bin" / "ruff").exists() else "ruff"
    lint = _run(ruff, "check", "src", "tests", "benchmarks")
    assert lint.returncode == 0, lint.stdout[-3000:]
    fmt = _run(ruff, "format", "--check", "src", "tests", "benchmarks")
    assert fmt.returncode == 0, fmt.stdout[-3000:]


def test_mypy_on_pure_modules():  # type: ignore[no-untyped-def]
    pytest.importorskip("mypy")
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout[-3000:]
