"""The run directory contract: atomic status, a lock that dies with its owner, reconciliation."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flux2_lora import runs


def _hold_lock_in_child(run_dir: Path, seconds: float = 60) -> subprocess.Popen[str]:
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


@pytest.mark.timeout(120)  # it waits on a child process: never longer than this
def test_second_lock_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    proc = _hold_lock_in_child(tmp_path)
    try:
        assert runs.is_locked(tmp_path)
        with pytest.raises(runs.RunBusyError, match="output.dir: .* is in use by a running trainer"):
            runs.RunLock(tmp_path).acquire()
        assert runs.read_status(tmp_path).state == "training"  # live owner: status is trusted
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(120)  # it waits on a child process: never longer than this
def test_killed_owner_reads_as_failed_and_frees_the_directory(tmp_path: Path) -> None:
    proc = _hold_lock_in_child(tmp_path)
    proc.kill()  # SIGKILL: the trainer never gets to write "failed"
    proc.wait()
    status = runs.read_status(tmp_path)
    assert status.state == "failed"
    assert "step 3/10" in status.message
    with runs.RunLock(tmp_path):  # no stale lock file blocks a new run
        pass


def test_final_state_is_kept_without_a_lock(tmp_path: Path) -> None:
    runs.write_json_atomic(tmp_path / runs.STATUS_FILE, runs.RunStatus(state="finished", step=5).to_dict())
    assert runs.read_status(tmp_path).state == "finished"


def test_jsonl_reader_skips_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    runs.append_jsonl(path, {"step": 1})
    with path.open("a") as f:
        f.write('{"step": 2')  # being written
    assert runs.read_jsonl(path) == [{"step": 1}]


def test_checkpoints_without_meta_are_incomplete(tmp_path: Path) -> None:
    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / runs.CHECKPOINTS_DIR / f"checkpoint-{step}"
        d.mkdir(parents=True)
        if complete:
            (d / "meta.json").write_text(json.dumps({"step": step}))
    assert [p.name for p in runs.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    assert runs.latest_checkpoint(tmp_path).name == "checkpoint-4"


@pytest.mark.timeout(120)  # it waits on a child process: never longer than this
def test_request_stop_writes_the_stop_file(tmp_path: Path) -> None:
    proc = _hold_lock_in_child(tmp_path)
    try:
        runs.write_json_atomic(
            tmp_path / runs.STATUS_FILE,
            runs.RunStatus(state="training", pid=proc.pid, total_steps=10).to_dict(),
        )
        assert runs.request_stop(tmp_path)
        assert (tmp_path / runs.STOP_FILE).is_file()
        proc.wait(timeout=60)  # the child has no handler: SIGTERM ends it
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x00\xffgarbage", "unreadable"),
        (b"[1, 2, 3]", "holds a JSON list"),
        (b'"finished"', "holds a JSON str"),
        (b'{"state": 5}', "field 'state' has a wrong type (int)"),
        (b'{"state": "training", "step": "three"}', "field 'step' has a wrong type (str)"),
        (b'{"state": "finished", "step": true}', "field 'step' has a wrong type (bool)"),
        (b'{"state": "finished", "extra": [1]}', "field 'extra' has a wrong type (list)"),
        (b"[" * 100_000 + b"]" * 100_000, "unreadable"),
    ],
)
def test_a_malformed_status_is_listed_as_unreadable_beside_the_others(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    good = tmp_path / "a-good"
    good.mkdir()
    runs.write_json_atomic(
        good / runs.STATUS_FILE,
        runs.RunStatus(state="finished", step=4, total_steps=4, extra={"estimate": [1]}).to_dict(),
    )
    bad = tmp_path / "b-bad"
    bad.mkdir()
    (bad / runs.STATUS_FILE).write_bytes(content)
    (bad / runs.LOG_FILE).write_text(
        "line one\n\x1b[31mred\x1b[0m and a \udcff byte\n", errors="surrogateescape"
    )
    summaries = [runs.summarize(r) for r in runs.iter_runs(tmp_path)]
    assert [s.path.name for s in summaries] == ["a-good", "b-bad"]
    status = summaries[1].status
    assert status.state == "unreadable" and status.is_final and reason in status.message
    assert "status.json is unreadable" in status.message
    from tests.helpers import cli

    proc = cli("runs", str(tmp_path))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("a-good") and "finished" in ln for ln in lines)
    assert any(ln.startswith("b-bad") and "unreadable" in ln for ln in lines)
    assert "\\x1b[31mred" in proc.stdout and "\x1b" not in proc.stdout
    listed = json.loads(cli("runs", str(tmp_path), "--json").stdout)
    assert [r["status"]["state"] for r in listed] == ["finished", "unreadable"]


def test_a_sweeps_trials_are_listed_by_their_path_below_the_root(tmp_path: Path) -> None:
    """Runs one and two levels down (a sweep's trials); never a run's own folders, nor deeper."""
    for rel in ("style", "sweep/trial-000", "sweep/trial-001", "a/b/too-deep", "style/previous/old"):
        (tmp_path / rel).mkdir(parents=True)
        runs.write_json_atomic(tmp_path / rel / runs.STATUS_FILE, runs.RunStatus(state="finished").to_dict())
    found = [runs.run_name(r, tmp_path) for r in runs.iter_runs(tmp_path)]
    assert found == ["style", "sweep/trial-000", "sweep/trial-001"]


@pytest.mark.parametrize(
    "left",
    [
        (runs.STATUS_FILE,),
        (runs.LORA_FILE,),
        (runs.COMFYUI_LORA_FILE,),
        (f"{runs.CHECKPOINTS_DIR}/checkpoint-3/meta.json", runs.METRICS_FILE),
    ],
    ids=["status", "lora", "comfyui-lora", "checkpoints-without-status"],
)
def test_archive_previous_moves_any_earlier_output_aside(tmp_path: Path, left: tuple[str, ...]) -> None:
    for name in left:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"old {name}")
    dest = runs.archive_previous(tmp_path)
    assert dest is not None and dest.parent == tmp_path / runs.PREVIOUS_DIR
    for name in left:
        assert (dest / name).read_text() == f"old {name}" and not (tmp_path / name).exists()


def test_archive_previous_leaves_a_folder_without_outputs(tmp_path: Path) -> None:
    (tmp_path / runs.CHECKPOINTS_DIR).mkdir()  # empty: nothing of a run to keep
    (tmp_path / runs.LOG_FILE).write_text("a failed start\n")
    assert runs.archive_previous(tmp_path) is None
    assert (tmp_path / runs.LOG_FILE).is_file() and not (tmp_path / runs.PREVIOUS_DIR).exists()


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    runs.append_jsonl(tmp_path / "m.jsonl", {"step": 3, "loss": float("nan"), "lr": [float("inf"), 1.0]})
    runs.write_json_atomic(tmp_path / "s.json", {"extra": {"final_eval_loss": float("-inf")}})
    assert (tmp_path / "m.jsonl").read_text() == '{"step": 3, "loss": null, "lr": [null, 1.0]}\n'
    assert json.loads((tmp_path / "s.json").read_text()) == {"extra": {"final_eval_loss": None}}
