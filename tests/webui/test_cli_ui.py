"""``flux2-lora ui`` exposure rules: local by default, a login (or a loudly named opt-out) beyond it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flux2_lora.cli.ui import is_local
from tests.helpers import cli
from tests.webui.conftest import free_port

APP = Path(__file__).resolve().parents[2] / "app.py"


@pytest.mark.parametrize(
    "args",
    [("--host", "0.0.0.0"), ("--host", "192.168.1.10"), ("--host", "::"), ("--share",)],
)
def test_exposed_without_auth_is_refused(args: tuple[str, ...], tmp_path: Path) -> None:
    proc = cli("ui", *args, "--runs-dir", str(tmp_path / "runs"), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--auth USER:PASS" in proc.stderr and "--insecure-no-auth" in proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was created


def test_bad_flags_are_clear_errors(tmp_path: Path) -> None:
    bad_auth = cli("ui", "--auth", "nopassword", "--runs-dir", str(tmp_path), timeout=120)
    assert bad_auth.returncode != 0 and "USER:PASS" in bad_auth.stderr
    bad_size = cli("ui", "--max-upload-size", "huge", "--runs-dir", str(tmp_path), timeout=120)
    assert bad_size.returncode == 2 and "--max-upload-size" in bad_size.stderr


def test_loopback_addresses() -> None:
    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1") and is_local("127.0.0.2")
    assert not is_local("0.0.0.0") and not is_local("10.0.0.1") and not is_local("example.com")


@pytest.mark.timeout(120)  # it waits on a child process: never longer than this
@pytest.mark.parametrize(
    ("extra", "mode"),
    [
        (("--auth", "me:secret"), "login required (user me)"),
        (("--insecure-no-auth",), "NO LOGIN"),
    ],
)
def test_exposed_ui_prints_its_url_and_auth_mode(extra: tuple[str, ...], mode: str, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(APP),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--runs-dir",
            str(tmp_path),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:  # synchronise on the UI's own output, not on time
            lines.append(line)
            if line.startswith("auth:"):
                break
        text = "".join(lines)
        assert f":{port}" in text and "web UI:" in text, text
        assert mode in text, text
    finally:
        proc.terminate()
        proc.wait(30)
