"""Run state that is always true: SIGKILL at each phase, concurrent starts, forced stop, pre-flight."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from flux2_lora import runs
from tests.helpers import cli, held_trainer, sets, train_argv

# Each trains real runs in subprocesses: seconds each on 2 CPU cores.
pytestmark = pytest.mark.slow

ARGS = (
    "training.max_steps=8",
    "training.warmup_steps=0",
    "output.checkpoint_every=2",
    "validation.every_n_steps=4",
    "validation.num_inference_steps=2",
    "logging.tensorboard=false",
    "logging.log_every=1",
)


@pytest.mark.parametrize(
    ("point", "intact"), [("loading", None), ("step@3", 2), ("checkpoint-write@2", 2), ("sampling", 4)]
)
def test_sigkill_anywhere_reads_as_failed_and_resume_finishes(
    tmp_path: Path, point: str, intact: int | None
) -> None:
    out = tmp_path / "runs" / "r"
    with held_trainer(out, point, *ARGS) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    status = runs.read_status(out)  # one poll
    assert status.state == "failed" and "trainer died" in status.message
    listed = json.loads(cli("runs", str(tmp_path / "runs"), "--json", check=True).stdout)
    assert listed[0]["status"]["state"] == "failed"
    ckpts = [p.name for p in runs.list_checkpoints(out)]
    if intact is None:
        assert ckpts == []
    else:
        assert ckpts[-1] == f"checkpoint-{intact}"
        assert (runs.latest_checkpoint(out) / "adapter.safetensors").is_file()
    resume = ["--resume", "latest"] if ckpts else []
    cli("train", "--preset", "quickstart", *sets(f"output.dir={out}", *ARGS), *resume, check=True)
    assert runs.read_status(out).state == "finished" and (out / runs.LORA_FILE).is_file()


@pytest.mark.parametrize("step", [8, 5], ids=["last-step", "between-checkpoints"])
def test_sigterm_at_any_step_leaves_the_lora_or_a_checkpoint_of_that_step(tmp_path: Path, step: int) -> None:
    """A sweep's timeout or Ctrl-C (SIGTERM / SIGINT) while step N trains: N's checkpoint is written; at
    the last step the run finishes (checkpoint and LoRA) rather than stopping with nothing to resume."""
    out = tmp_path / "r"
    with held_trainer(out, f"step@{step}", *ARGS) as proc:
        proc.send_signal(signal.SIGTERM)
        (out / ".release-step").write_text("")
        assert proc.wait(timeout=300) == 0
    status = runs.read_status(out)
    assert [p.name for p in runs.list_checkpoints(out)][-1] == f"checkpoint-{step}"
    if step == 8:
        assert (status.state, status.step) == ("finished", 8) and (out / runs.LORA_FILE).is_file()
        assert status.final_lora == str(out / runs.LORA_FILE)
    else:
        assert (status.state, status.step) == ("stopped", step) and not (out / runs.LORA_FILE).exists()
        cli(
            "train",
            "--preset",
            "quickstart",
            *sets(f"output.dir={out}", *ARGS),
            "--resume",
            "latest",
            check=True,
        )
        assert runs.read_status(out).state == "finished" and (out / runs.LORA_FILE).is_file()
        assert f"at step {step}" in (out / runs.LOG_FILE).read_text()


def test_two_concurrent_starts_one_runs(tmp_path: Path) -> None:
    out = tmp_path / "r"
    cmd = train_argv(out, *ARGS)
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=300)  # reads stderr while waiting: a full pipe cannot stall it
            results.append((p.returncode, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 3], results
    loser = next(err for code, err in results if code == 3)
    assert "is in use by a running trainer" in loser and "Traceback" not in loser
    assert runs.read_status(out).state == "finished"


def test_stop_falls_back_to_force_and_ends_in_a_final_state(tmp_path: Path) -> None:
    out = tmp_path / "r"
    with held_trainer(out, "step@3", *ARGS) as proc:  # holding: it cannot act on the graceful stop
        assert runs.request_stop(out)
        assert proc.poll() is None
        assert runs.force_stop(out)
        proc.wait(timeout=30)
    status = runs.read_status(out)
    assert status.state == "stopped" and "force-stopped" in status.message
    assert not runs.is_locked(out)


def test_runs_lists_state_steps_and_failure_tail(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "r"
    with held_trainer(out, "step@3", *ARGS) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    text = cli("runs", str(tmp_path / "runs"), check=True).stdout
    assert "failed" in text and "3/8" in text and "trainer died" in text


def test_preflight_reports_measured_and_eta(tmp_path: Path) -> None:
    out = tmp_path / "pf"
    proc = cli("train", "--preset", "quickstart", *sets(f"output.dir={out}"), "--preflight", check=True)
    assert "seconds per step" in proc.stdout and "ETA for 200 steps" in proc.stdout
    assert "host peak RSS       measured" in proc.stdout
    data = json.loads((out / "preflight.json").read_text())
    assert data["seconds_per_step"] > 0 and data["eta_s"] > data["load_and_cache_s"]
    assert not (out / runs.STATUS_FILE).exists()  # nothing of a run was started
