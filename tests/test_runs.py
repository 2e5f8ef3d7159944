"""The run directory contract: atomic status, a lock that dies with its owner, reconciliation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from flux2_lora import runs


def _hold_lock_in_child(run_dir, seconds: float = 60) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    code = textwrap.dedent(f"""
        import time
        from flux2_lora.runs import RunLock, RunStatus, write_json_atomic
        from pathlib import Path
        lock = RunLock({str(run_dir)!r}); lock.acquire()
        write_json_atomic(Path({str(run_dir)!r}) / "status.json", RunStatus(state="training", step=3, total_steps=10).to_dict())
        print("locked", flush=True)
        time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_lock_is_refused_with_a_clear_message(tmp_path):  # type: ignore[no-untyped-def]
    proc = _hold_lock_in_child(tmp_path)
    try:
        assert runs.is_locked(tmp_path)
        with pytest.raises(runs.RunBusyError, match="output.dir: .* is in use by a running trainer"):
            runs.RunLock(tmp_path).acquire()
        assert runs.read_status(tmp_path).state == "training"  # live owner: status is trusted
    finally:
        proc.kill()
        proc.wait()


def test_killed_owner_reads_as_failed_and_frees_the_directory(tmp_path):  # type: ignore[no-untyped-def]
    proc = _hold_lock_in_child(tmp_path)
    proc.kill()  # SIGKILL: the trainer never gets to write "failed"
    proc.wait()
    status = runs.read_status(tmp_path)
    assert status.state == "failed"
    assert "step 3/10" in status.message
    with runs.RunLock(tmp_path):  # no stale lock file blocks a new run
        pass


def test_final_state_is_kept_without_a_lock(tmp_path):  # type: ignore[no-untyped-def]
    runs.write_json_atomic(tmp_path / runs.STATUS_FILE, runs.RunStatus(state="finished", step=5).to_dict())
    assert runs.read_status(tmp_path).state == "finished"


def test_jsonl_reader_skips_a_partial_last_line(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "m.jsonl"
    runs.append_jsonl(path, {"step": 1})
    with path.open("a") as f:
        f.write('{"step": 2')  # being written
    assert runs.read_jsonl(path) == [{"step": 1}]


def test_checkpoints_without_meta_are_incomplete(tmp_path):  # type: ignore[no-untyped-def]
    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / runs.CHECKPOINTS_DIR / f"checkpoint-{step}"
        d.mkdir(parents=True)
        if complete:
            (d / "meta.json").write_text(json.dumps({"step": step}))
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert runs.latest_checkpoint(tmp_path).name == "checkpoint-4"


def test_request_stop_writes_the_stop_file(tmp_path):  # type: ignore[no-untyped-def]
    proc = _hold_lock_in_child(tmp_path)
    try:
        runs.write_json_atomic(
            tmp_path / runs.STATUS_FILE,
            runs.RunStatus(state="training", pid=proc.pid, total_steps=10).to_dict(),
        )
        assert runs.request_stop(tmp_path)
        assert (tmp_path / runs.STOP_FILE).is_file()
        deadline = time.time() + 10
        while proc.poll() is None and time.time() < deadline:  # the child has no handler: SIGTERM ends it
            time.sleep(0.05)
        assert proc.poll() is not None
    finally:
        proc.kill()
        proc.wait()
