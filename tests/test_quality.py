"""Lint, format, type and import-contract checks run with the tests, so CI enforces them (as `make lint`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str | None:
    """The venv's copy of a dev tool first (the one `make lint` runs), else one on PATH."""
    local = Path(sys.prefix) / "bin" / name
    return str(local) if local.exists() else shutil.which(name)


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    # This checkout's sources, not whatever copy of the package the venv has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def test_ruff_lint_and_format() -> None:
    ruff = _tool("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (dev extra)")
    lint = _run(ruff, "check", "src", "tests", "benchmarks")
    assert lint.returncode == 0, lint.stdout[-3000:]
    fmt = _run(ruff, "format", "--check", "src", "tests", "benchmarks")
    assert fmt.returncode == 0, fmt.stdout[-3000:]


def test_mypy_on_the_whole_package() -> None:
    pytest.importorskip("mypy")
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout[-3000:]


def test_import_contracts() -> None:
    """Only flux2_lora.training (and the CLI commands that start it) imports torch and its family."""
    lint_imports = _tool("lint-imports")
    if lint_imports is None:
        pytest.skip("import-linter is not installed (dev extra)")
    result = _run(lint_imports, "--no-cache")
    assert result.returncode == 0, result.stdout[-3000:]
