"""The training queue (issue 24): jobs on disk beside the runs, a worker that runs them one after the other
(one per GPU), that outlives a crash (jobs left running are queued again to resume), cancels, refuses a
config the assessment calls an error, and names what it cannot read. The worker's trainer is a small
stand-in here; the last test queues two real demo runs through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flux2_lora import runs
from flux2_lora.config.io import save_config, to_yaml
from flux2_lora.job_queue import JobState, Queue, fits_by_memory, gpu_inventory, run_worker
from flux2_lora.locks import FileLock
from tests.conftest import MakeConfig

# Writes the run as a trainer would end it (finished, or failed with exit 1 when the config's seed is 13),
# and appends "start"/"end" lines to the shared log, so the test sees the order in which jobs ran.
FAKE = """
import json, sys, time
from pathlib import Path
import yaml
from flux2_lora import runs
cfg = yaml.safe_load(Path(sys.argv[1]).read_text())
run = Path(cfg["output"]["dir"]); log = Path(sys.argv[2])
with log.open("a") as f: f.write(f"start {run.name} {sys.argv[3]} {__import__('os').environ.get('CUDA_VISIBLE_DEVICES', '-')}\\n")
failing = cfg["training"]["seed"] == 13
state = "failed" if failing else "finished"
runs.write_json_atomic(run / runs.STATUS_FILE, {"state": state, "step": 2, "total_steps": 2, "error": "boom" if failing else None})
with log.open("a") as f: f.write(f"end {run.name}\\n")
sys.exit(1 if failing else 0)
"""


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE)
    return script, tmp_path / "ran.log"


def _queue(tmp_path: Path) -> Queue:
    return Queue(tmp_path / "runs")


def _add(q: Queue, make_config: MakeConfig, name: str, *overrides: str) -> str:
    config = make_config(*overrides, out=q.root / name)
    return q.add(to_yaml(config), config.output.dir).id


def _work(q: Queue, fake: tuple[Path, Path], **kw: object) -> int:
    script, log = fake
    return run_worker(
        q,
        trainer=lambda cfg, resume: [sys.executable, str(script), str(cfg), str(log), str(resume)],
        poll_s=0.01,
        log=lambda line: None,
        **kw,  # type: ignore[arg-type]
    )


def test_jobs_run_one_after_the_other_and_a_failure_does_not_stop_the_queue(
    tmp_path: Path, make_config: MakeConfig, fake: tuple[Path, Path]
) -> None:
    q = _queue(tmp_path)
    a = _add(q, make_config, "a")
    b = _add(q, make_config, "b", "training.seed=13")
    c = _add(q, make_config, "c")
    assert _work(q, fake) == 0
    lines = fake[1].read_text().split("\n")
    assert [line.split(" ")[:2] for line in lines if line] == [
        ["start", "a"],
        ["end", "a"],
        ["start", "b"],
        ["end", "b"],
        ["start", "c"],
        ["end", "c"],
    ]
    states = {j.id: (j.state, j.message) for j in q.jobs()}
    assert states[a][0] == states[c][0] == JobState.DONE
    assert states[b] == (JobState.FAILED, "exit 1: boom")


def test_one_job_per_gpu_each_seeing_only_its_own(
    tmp_path: Path, make_config: MakeConfig, fake: tuple[Path, Path]
) -> None:
    q = _queue(tmp_path)
    for name in "ab":
        _add(q, make_config, name)
    assert _work(q, fake, gpus=["0", "1"]) == 0
    starts = [line.split(" ") for line in fake[1].read_text().split("\n") if line.startswith("start")]
    assert sorted(s[3] for s in starts) == ["0", "1"]
    assert {j.gpu for j in q.jobs()} == {"0", "1"}


def test_a_job_no_gpu_holds_fails_with_the_reason_and_the_others_run(
    tmp_path: Path, make_config: MakeConfig, fake: tuple[Path, Path]
) -> None:
    q = _queue(tmp_path)
    big = _add(q, make_config, "big", "lora.rank=64")
    small = _add(q, make_config, "small")

    def fits(cfg: Path, gpu: str) -> bool:
        return "rank: 64" not in cfg.read_text()

    assert _work(q, fake, gpus=["0"], fits=fits) == 0
    jobs = {j.id: j for j in q.jobs()}
    assert jobs[big].state == JobState.FAILED and "does not fit any GPU" in jobs[big].message
    assert jobs[small].state == JobState.DONE


def test_jobs_go_only_to_a_gpu_the_memory_model_says_they_fit(
    tmp_path: Path, make_config: MakeConfig, fake: tuple[Path, Path]
) -> None:
    """The placement rule every worker uses (the CLI's --gpus, the UI's runner): GPU 0 is too small for
    the demo run's estimate, so both jobs wait for GPU 1 instead of starting on the free GPU 0."""
    q = _queue(tmp_path)
    for name in "ab":
        _add(q, make_config, name)
    assert _work(q, fake, gpus=["0", "1"], fits=fits_by_memory({"0": 0.001, "1": 80.0})) == 0
    lines = [line.split(" ") for line in fake[1].read_text().split("\n") if line]
    assert [(w[0], w[1]) for w in lines] == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
    assert [w[3] for w in lines if w[0] == "start"] == ["1", "1"]
    assert all(j.gpu == "1" and j.state == JobState.DONE for j in q.jobs())


def test_the_gpu_inventory_is_read_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.memory.test_gpus import fake_smi

    fake_smi(tmp_path / "bin", "0, 81559\n1, 24564\n2, [N/A]")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    assert gpu_inventory() == {"0": 81559 / 1024, "1": 24564 / 1024, "2": 0.0}
    fake_smi(tmp_path / "bin", "", status=9)  # nvidia-smi failing: no GPU
    assert gpu_inventory() == {}


def test_cancel_a_queued_job_and_ask_a_running_one_to_stop(tmp_path: Path, make_config: MakeConfig) -> None:
    q = _queue(tmp_path)
    queued, running = _add(q, make_config, "q"), _add(q, make_config, "r")
    assert q.cancel(queued).state == JobState.CANCELLED
    q.update(running, lambda j: setattr(j, "state", JobState.RUNNING))
    Path(q.get(running).run_dir).mkdir(parents=True)  # the worker made it when it started the job
    job = q.cancel(running)
    assert job.cancel_requested and (Path(job.run_dir) / runs.STOP_FILE).exists()


def test_jobs_left_running_by_a_dead_worker_are_queued_again_to_resume(
    tmp_path: Path, make_config: MakeConfig
) -> None:
    q = _queue(tmp_path)
    done, checkpointed, fresh = (_add(q, make_config, n) for n in ("done", "ckpt", "fresh"))
    for job_id in (done, checkpointed, fresh):
        q.update(job_id, lambda j: setattr(j, "state", JobState.RUNNING))
        Path(q.get(job_id).run_dir).mkdir(parents=True)
    runs.write_json_atomic(Path(q.get(done).run_dir) / runs.STATUS_FILE, {"state": "finished", "step": 2})
    ckpt = Path(q.get(checkpointed).run_dir) / runs.CHECKPOINTS_DIR / f"{runs.CHECKPOINT_PREFIX}1"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text("{}")
    # While a worker holds the queue, its running jobs are its own: nothing changes.
    holder = FileLock(q.dir / ".worker.lock")
    holder.acquire()
    assert q.reconcile() == []
    holder.release()
    assert sorted(q.reconcile()) == sorted([done, checkpointed, fresh])
    jobs = {j.id: j for j in q.jobs()}
    assert jobs[done].state == JobState.DONE
    assert (jobs[checkpointed].state, jobs[checkpointed].resume) == (JobState.QUEUED, "latest")
    assert (jobs[fresh].state, jobs[fresh].resume) == (JobState.QUEUED, None)


def test_a_second_worker_is_refused(tmp_path: Path, make_config: MakeConfig, fake: tuple[Path, Path]) -> None:
    q = _queue(tmp_path)
    _add(q, make_config, "a")
    holder = FileLock(q.dir / ".worker.lock")
    holder.acquire()
    try:
        assert _work(q, fake) == 1
        assert not fake[1].exists()  # nothing ran
    finally:
        holder.release()


def test_unreadable_job_files_are_named_and_skipped(tmp_path: Path, make_config: MakeConfig) -> None:
    q = _queue(tmp_path)
    good = _add(q, make_config, "a")
    (q.dir / "20260101-000000-0001.json").write_text("{not json")
    (q.dir / "evil.json").write_text(json.dumps({"id": "evil", "run_dir": "/"}))
    (q.dir / "20260101-000000-0002.json").write_text(
        json.dumps({"id": "20260101-000000-0002", "state": "rm -rf"})
    )
    assert [j.id for j in q.jobs()] == [good]
    assert len(q.problems) == 3 and any("evil.json" in p for p in q.problems)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flux2_lora.cli", "queue", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        env=env,
    )


def test_queue_add_refuses_what_train_refuses_and_a_taken_output(
    tmp_path: Path, make_config: MakeConfig
) -> None:
    runs_dir = tmp_path / "runs"
    bad = _cli(
        "add",
        "--preset",
        "quickstart",
        "--set",
        "training.optimizer=adamw8bit",
        "--runs-dir",
        str(runs_dir),
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "adamw8bit" in bad.stderr and "Traceback" not in bad.stderr
    assert not (runs_dir / "queue").exists() or not list((runs_dir / "queue").glob("*.json"))
    cfg = tmp_path / "a.yaml"
    save_config(make_config(out=runs_dir / "a"), cfg)
    assert _cli("add", str(cfg), "--runs-dir", str(runs_dir), cwd=tmp_path).returncode == 0
    again = _cli("add", str(cfg), "--runs-dir", str(runs_dir), cwd=tmp_path)
    assert again.returncode == 2 and "already the output of job" in again.stderr
    listed = json.loads(_cli("list", "--json", "--runs-dir", str(runs_dir), cwd=tmp_path).stdout)
    assert [j["state"] for j in listed["jobs"]] == ["queued"] and listed["worker"] is False


@pytest.mark.slow
def test_two_demo_runs_queued_from_the_cli_run_one_after_the_other(
    tmp_path: Path, make_config: MakeConfig
) -> None:
    runs_dir = tmp_path / "runs"
    for name in ("first", "second"):
        cfg = tmp_path / f"{name}.yaml"
        save_config(make_config("training.max_steps=2", out=runs_dir / name), cfg)
        assert _cli("add", str(cfg), "--runs-dir", str(runs_dir), cwd=tmp_path).returncode == 0
    worker = _cli("run", "--runs-dir", str(runs_dir), cwd=tmp_path)
    assert worker.returncode == 0, worker.stderr
    first, second = (runs.read_status(runs_dir / n) for n in ("first", "second"))
    assert first is not None and second is not None
    assert first.state == second.state == "finished"
    assert (runs_dir / "first" / runs.LORA_FILE).is_file() and (
        runs_dir / "second" / runs.LORA_FILE
    ).is_file()
    assert first.updated_at is not None and second.started_at is not None
    assert second.started_at >= first.updated_at  # one after the other
    assert [
        j["state"]
        for j in json.loads(_cli("list", "--json", "--runs-dir", str(runs_dir), cwd=tmp_path).stdout)["jobs"]
    ] == ["done", "done"]
