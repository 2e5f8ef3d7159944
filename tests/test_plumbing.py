"""The shared process and lock plumbing: one flock wrapper, one parent-death setup, one trainer command
line, one stop protocol, the run states as an Enum that keeps status.json's strings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flux2_lora import process_tree, runs
from flux2_lora.locks import FileLock, is_held


def test_run_states_are_the_strings_status_json_holds(tmp_path: Path) -> None:
    assert runs.RunState.FINISHED == "finished" and f"{runs.RunState.FAILED}" == "failed"
    assert str(runs.RunState.STOPPED) == "stopped"
    status = runs.RunStatus(state=runs.RunState.FINISHED, step=2)
    runs.write_json_atomic(tmp_path / runs.STATUS_FILE, status.to_dict())
    assert json.loads((tmp_path / runs.STATUS_FILE).read_text())["state"] == "finished"
    read = runs.read_status(tmp_path)
    assert read is not None and read.state == runs.RunState.FINISHED and read.is_final
    assert runs.RunStatus().state == "starting"


def test_a_file_lock_is_refused_while_held_and_free_after(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    first, second = FileLock(path), FileLock(path)
    assert first.acquire() and first.held and is_held(path)
    assert not second.acquire(blocking=False) and not second.held
    assert path.read_text() == f"{os.uname().nodename}:{os.getpid()}"
    first.release()
    assert not is_held(path)
    with second:
        assert second.held
    assert not is_held(tmp_path / "missing.lock")


def test_the_run_lock_is_a_file_lock_that_names_its_pid(tmp_path: Path) -> None:
    run = tmp_path / "new" / "run"  # made when taken
    with runs.RunLock(run) as lock:
        assert isinstance(lock, FileLock) and runs.is_locked(run)
        assert (run / runs.LOCK_FILE).read_text() == str(os.getpid())
        with pytest.raises(runs.RunBusyError, match=rf"\(pid {os.getpid()}\); stop it first"):
            runs.RunLock(run).acquire()
        with pytest.raises(runs.RunBusyError):  # the same object taken twice is busy too
            lock.acquire()
    assert not runs.is_locked(run)


def test_one_trainer_command_line() -> None:
    assert process_tree.trainer_command(Path("/r/config.yaml")) == [
        sys.executable, "-m", "flux2_lora.cli", "train", "--config", "/r/config.yaml",
    ]  # fmt: skip
    cmd = process_tree.trainer_command(
        "c.yaml", resume="latest", python=["accelerate", "--x"], extra=["--debug"]
    )
    assert cmd == [
        "accelerate", "--x", "-m", "flux2_lora.cli", "train", "--config", "c.yaml", "--resume", "latest", "--debug",
    ]  # fmt: skip


def test_the_sweep_trainer_runs_through_the_parent_death_shim(tmp_path: Path) -> None:
    from flux2_lora.experiments.sweep import default_trainer

    cmd = default_trainer(tmp_path / "config.yaml")
    assert cmd[:5] == [sys.executable, "-m", "flux2_lora.experiments.child", str(os.getpid()), "--"]
    assert cmd[5:] == process_tree.trainer_command(tmp_path / "config.yaml")


def test_the_stop_protocol_round_trip(tmp_path: Path) -> None:
    assert not runs.stop_requested(tmp_path) and runs.stop_requested_at(tmp_path) is None
    runs.write_stop_request(tmp_path)
    assert runs.stop_requested(tmp_path) and (tmp_path / runs.STOP_FILE).is_file()
    assert runs.stop_requested_at(tmp_path) is not None
    runs.clear_stop_request(tmp_path)
    runs.clear_stop_request(tmp_path)  # clearing twice is fine
    assert not runs.stop_requested(tmp_path)


def test_the_trainer_reads_the_stop_the_protocol_writes(tmp_path: Path) -> None:
    from flux2_lora.experiments import store
    from flux2_lora.training.session import StopFlag

    assert store.STOP_FILE == runs.STOP_FILE  # sweeps and runs: one name
    flag = StopFlag(tmp_path)
    assert not flag.requested()
    runs.write_stop_request(tmp_path)
    assert flag.requested()
    flag.acknowledge()
    assert not runs.stop_requested(tmp_path)


def test_start_process_writes_its_output_and_keeps_its_session(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    code = "import os, sys; print(os.getsid(0) == os.getpid(), sys.stdin.read() == '')"
    proc = process_tree.start_process([sys.executable, "-c", code], output=out, own_session=True)
    assert proc.wait(60) == 0
    assert out.read_text().split() == ["True", "True"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.timeout(120)  # it waits on child processes: never longer than this
def test_a_child_started_to_die_with_its_parent_dies_with_it(tmp_path: Path) -> None:
    """A middle process starts a sleeper with die_with_parent, prints its pid and is killed: the kernel
    kills the sleeper too (nothing else would: it is in a session of its own)."""
    code = textwrap.dedent("""
        import sys, time
        from flux2_lora.process_tree import start_process
        p = start_process([sys.executable, "-c", "import time; time.sleep(120)"], own_session=True,
                          die_with_parent=True)
        print(p.pid, flush=True)
        time.sleep(120)
    """)
    middle = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert middle.stdout is not None
    sleeper = int(middle.stdout.readline())
    middle.kill()
    middle.wait()
    import psutil

    try:
        gone, _ = psutil.wait_procs([psutil.Process(sleeper)], timeout=60)
    except psutil.NoSuchProcess:
        gone = [sleeper]  # already reaped
    assert gone, "the child outlived its parent"
