"""``flux2-lora sweep`` and ``sweep status`` refuse bad input with one clean message (no training here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cli

pytest.importorskip("optuna")

SPEC = "base: {presets: [quickstart]}\nparameters:\n  lora.rank: {values: [4, 8]}\nmethod: grid\n"


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    f = tmp_path / "spec.yaml"
    f.write_text(SPEC)
    return f


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--dir: give the sweep's folder"),
        (("--dir", "{d}", "--gpus", "0,x"), "--gpus: '0,x' must be distinct GPU numbers"),
        (("--dir", "{d}", "--gpu", "nonsense-card"), "--gpu: unknown GPU 'nonsense-card'"),
        (("--dir", "{d}", "--trials", "0"), "--trials must be at least 1"),
        (("--dir", "{d}", "--storage", "nosuchdb://x"), "--storage: cannot open nosuchdb://x"),
    ],
)
def test_bad_options_are_named(spec: Path, tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    proc = cli("sweep", str(spec), *(a.replace("{d}", str(tmp_path / "d")) for a in args))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_bad_spec_lists_every_problem(tmp_path: Path) -> None:
    f = tmp_path / "spec.yaml"
    f.write_text(
        "parameters:\n  lora.rnak: {values: [4]}\n  dataset.resolution: {values: [100]}\nmethd: grid\n"
    )
    proc = cli("sweep", str(f), "--dir", str(tmp_path / "d"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()  # real lines, not one line with literal "\\n"s in it
    assert lines[0] == f"invalid sweep spec {f}:" and "\\n" not in proc.stderr
    for text in ("methd: unknown key (did you mean 'method'?)", "parameters.lora.rnak: unknown config field"):
        assert any(line.startswith(f"  {text}") for line in lines), lines
    assert not (tmp_path / "d").exists()  # nothing written for a spec that cannot run


def test_the_root_or_the_home_folder_is_refused_as_the_sweeps_folder(spec: Path, tmp_path: Path) -> None:
    """As a run's output.dir is (the same rule): one line, exit 2, nothing written."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    for folder, what in (("/", "is the filesystem root (/)"), ("~", f"is your home folder itself ({home})")):
        # For "/", a spec that does not exist: were the check gone, the run would stop there, not in /.
        target = spec if folder == "~" else tmp_path / "no-spec.yaml"
        proc = subprocess.run(
            [sys.executable, "-m", "flux2_lora.cli", "sweep", str(target), "--dir", folder],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.splitlines() == [
            f"error: --dir: {what}; give the sweep a folder of its own, e.g. "
            + ("runs/my-sweep" if folder == "/" else "~/runs/my-sweep")
        ], proc.stderr
    assert list(home.iterdir()) == []
    assert not Path("/study.db").exists() and not Path("/trial-0000").exists()


def test_status_of_a_folder_without_a_sweep(tmp_path: Path) -> None:
    proc = cli("sweep", "status", str(tmp_path))
    assert proc.returncode == 2 and "no sweep here" in proc.stderr
    proc = cli("sweep", "status")
    assert proc.returncode == 2 and "usage: flux2-lora sweep status DIR" in proc.stderr


def test_another_spec_in_the_same_folder_is_refused(spec: Path, tmp_path: Path) -> None:
    d = tmp_path / "d"
    ok = cli("sweep", str(spec), "--dir", str(d), "--trials", "1", "--gpu", "0.001")  # pruned: too small
    assert ok.returncode == 0, ok.stderr
    other = tmp_path / "other.yaml"
    other.write_text(SPEC.replace("[4, 8]", "[16]"))
    proc = cli("sweep", str(other), "--dir", str(d))
    assert proc.returncode == 2 and "made from another spec" in proc.stderr
    assert (d / "sweep.yaml").read_text() == SPEC  # the folder's copy of its spec is kept
