"""``flux2-lora ui`` refuses what it cannot serve (issue 18, point 4): the filesystem root or the home
folder as --runs-dir (the rule of a run's output.dir), a file as --runs-dir, a port out of range or in
use; each with one clear line and exit code 2, no traceback, nothing created."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from flux2_lora.webui.paths import AppPaths
from tests.helpers import cli


def _refused(proc: object, *words: str) -> None:
    err = proc.stderr  # type: ignore[attr-defined]
    assert proc.returncode == 2, err  # type: ignore[attr-defined]
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err


def test_root_and_home_are_refused_as_runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    _refused(cli("ui", "--runs-dir", "/", timeout=120), "--runs-dir", "filesystem root")
    _refused(cli("ui", "--runs-dir", str(home), timeout=120), "--runs-dir", "home folder")
    _refused(cli("ui", "--runs-dir", "~", timeout=120), "--runs-dir", "home folder")
    assert list(home.iterdir()) == []  # no uploads/, templates/, generated/
    for root in ("/", str(home)):  # the same rule for a caller of the app itself
        with pytest.raises(ValueError, match="filesystem root|home folder"):
            AppPaths.create(root)
    assert list(home.iterdir()) == []


def test_a_file_as_runs_dir_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    for runs in (f, f / "runs"):
        _refused(cli("ui", "--runs-dir", str(runs), timeout=120), "--runs-dir", "is a file")
    assert f.read_text() == "mine"


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_out_of_range_is_refused(port: str, tmp_path: Path) -> None:
    _refused(cli("ui", f"--port={port}", "--runs-dir", str(tmp_path / "runs"), timeout=120), "--port")
    assert not (tmp_path / "runs").exists()


def test_a_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = cli("ui", "--port", str(port), "--runs-dir", str(tmp_path / "runs"), timeout=120)
    _refused(proc, f"--port: {port} is in use")
    assert not (tmp_path / "runs").exists()
    assert os.environ.get("HOME")  # the test changed nothing of the environment
