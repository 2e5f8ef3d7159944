"""Pre-flight from the UI: progress while it runs, measured against estimated when done, and its process
reaped by the UI (no zombie), without anyone polling it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux2_lora.webui import monitor, render
from flux2_lora.webui.actions import Actions
from flux2_lora.webui.paths import AppPaths
from tests.helpers import wait_for
from tests.webui.conftest import tiny_run_config


def _zombie_or_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.mark.slow
def test_preflight_progress_result_and_reaping(tmp_path: Path) -> None:
    acts = Actions(AppPaths.create(tmp_path / "runs", [tmp_path]))
    r = acts.preflight(tiny_run_config("pf", steps=50))
    assert r["ok"], r
    run = r["run_dir"]
    job = monitor.job(Path(run), "preflight")
    assert job is not None
    snap = acts.run_status(run)
    assert snap["preflight"]["running"] and "Pre-flight running" in render.status_html(snap)
    assert acts.preflight_result(run)["state"] == "running"
    # Nobody polls the process from here on: the UI's own reaper must collect it.
    assert wait_for((Path(run) / "preflight.json").is_file, timeout=300, interval=0.2)
    assert wait_for(lambda: not _zombie_or_alive(job.proc.pid), timeout=60, interval=0.1)
    res = acts.preflight_result(run)
    assert res["state"] == "done" and res["result"]["measured"]["host_peak_rss_gib"] > 0
    assert res["result"]["estimate"]
    html = render.preflight_html(acts.run_status(run)["preflight"])
    assert 'data-state="done"' in html and "measured" in html
