"""A fresh machine: `make test` installs the browser first (the script CI runs), the browser tests refuse
to start with one line where it cannot be installed, and screenshots never land in the tracked tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)


def test_screenshots_go_to_an_ignored_folder_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLUX2_SCREENSHOTS", raising=False)
    import importlib

    import tests.webui.browser as browser

    shots = importlib.reload(browser).SHOTS
    assert shots.is_relative_to(REPO) and not shots.is_relative_to(REPO / "docs")
    probe = (shots / "train.png").relative_to(REPO).as_posix()
    assert _git("check-ignore", "-q", probe).returncode == 0, f"{probe} is not ignored"
    assert _git("ls-files", shots.relative_to(REPO).as_posix()).stdout == ""
    # `make screenshots` points the same tests at the README's folder.
    monkeypatch.setenv("FLUX2_SCREENSHOTS", str(REPO / "docs" / "screenshots"))
    assert importlib.reload(browser).SHOTS == REPO / "docs" / "screenshots"
    monkeypatch.delenv("FLUX2_SCREENSHOTS")
    importlib.reload(browser)


def _make_dry_run(target: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-n", "-C", str(REPO), target], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_make_test_installs_the_browser_before_the_tests() -> None:
    lines = _make_dry_run("test")
    install = next(i for i, line in enumerate(lines) if "scripts/install_browser.sh" in line)
    tests = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert install < tests
    # CI runs exactly the README's command (which installs the browser itself).
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci and "install_browser" not in ci.split("set -euo pipefail", 1)[1]
    shots = _make_dry_run("screenshots")
    assert any(f"FLUX2_SCREENSHOTS={REPO / 'docs' / 'screenshots'}" in line for line in shots)


def test_the_install_script_says_what_to_install_where_it_cannot(tmp_path: Path) -> None:
    """Not root and no apt-get: one line on stderr, exit 0 (the tests then refuse with their own line)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")
    (bin_dir / "id").chmod(0o755)
    proc = subprocess.run(
        ["/bin/sh", str(REPO / "scripts" / "install_browser.sh")],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert "Chromium is not installed" in line and "apt-get install chromium" in line


def test_browser_tests_without_chromium_fail_once_with_what_to_install(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    missing = tmp_path / "no" / "chromium"
    env = {**os.environ, "FLUX2_CHROMIUM": str(missing)}
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/webui/test_compare_tab.py"]
    proc = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out
    assert "Traceback" not in out and "no tests ran" in proc.stdout  # nothing ran, nothing errored per test
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"ERROR: the browser tests need Chromium, and {missing} is not there: install Chromium "
        "(sudo sh scripts/install_browser.sh, or apt-get install chromium), or leave these tests out with "
        "-m 'not browser'"
    ], out
    # The same tests without the browser ones still run.
    quick = subprocess.run(
        [*run, "-m", "not browser", "--collect-only"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert quick.returncode == 0, quick.stdout + quick.stderr
