"""The UI's queue runner on a machine with several GPUs, through the UI's API (gradio_client): one job per
GPU, each seeing only its own (CUDA_VISIBLE_DEVICES), the next waiting for a GPU to free; with one GPU one
job at a time. No GPU is needed: the inventory (job_queue.gpu_inventory, nvidia-smi's) is injected, and
the trainer is a stand-in that holds its run's lock like a trainer, says which GPU it saw, and ends when
the test releases it (a file), so the test synchronises on files, never on time."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from flux2_lora import job_queue, runs
from tests.helpers import wait_for
from tests.webui.conftest import tiny_run_config

if TYPE_CHECKING:
    from gradio_client import Client

pytest.importorskip("gradio_client")

# The job file beside the config names the run; the stand-in ends on .release (finished) or on a stop
# request (the fixture's cancel at teardown), and gives up after 10 minutes so it never outlives a test.
FAKE = """
import json, os, sys, time
from pathlib import Path
from flux2_lora import runs
from flux2_lora.locks import FileLock
cfg = Path(sys.argv[1])
run = Path(json.loads(cfg.with_suffix(".json").read_text())["run_dir"])
run.mkdir(parents=True, exist_ok=True)
lock = FileLock(run / runs.LOCK_FILE); lock.acquire()
runs.write_json_atomic(run / runs.STATUS_FILE, {"state": "training", "step": 1, "total_steps": 2})
(run / "gpu.seen").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
end = time.monotonic() + 600
while not (run / ".release").exists() and not (run / runs.STOP_FILE).exists() and time.monotonic() < end:
    time.sleep(0.05)
state = "finished" if (run / ".release").exists() else "stopped"
runs.write_json_atomic(run / runs.STATUS_FILE, {"state": state, "step": 2, "total_steps": 2})
"""


@pytest.fixture
def gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, float]]:
    """The injected inventory (fill it in the test) and the stand-in trainer; every job is cancelled and
    the runner stopped afterwards."""
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE)
    sizes: dict[str, float] = {}
    monkeypatch.setattr(job_queue, "gpu_inventory", lambda: dict(sizes))
    monkeypatch.setattr(
        job_queue, "trainer_command", lambda cfg, resume=None: [sys.executable, str(script), str(cfg)]
    )
    yield sizes
    from flux2_lora.webui import ops

    ops.stop_runners(cancel=True)


def _jobs(client: Client) -> dict[str, dict[str, Any]]:
    return {j["id"]: j for j in client.predict(api_name="/queue_list")["jobs"]}


def _add(client: Client, name: str) -> dict[str, Any]:
    r = client.predict(tiny_run_config(name, steps=2), False, "", api_name="/queue_add")
    assert r["ok"], r
    return dict(r)


def _states(client: Client, added: list[dict[str, Any]]) -> list[str]:
    j = _jobs(client)
    return [j[a["job_id"]]["state"] for a in added]


def _seen(a: dict[str, Any]) -> Path:
    return Path(a["run_dir"]) / "gpu.seen"


def test_two_gpus_run_two_jobs_at_once_and_the_third_waits(client: Client, gpus: dict[str, float]) -> None:
    gpus.update({"0": 80.0, "1": 80.0})
    added = [_add(client, f"g2-{n}") for n in ("a", "b", "c")]
    two = lambda: _seen(added[0]).exists() and _seen(added[1]).exists()  # noqa: E731
    assert wait_for(lambda: two() and _states(client, added)[:2] == ["running", "running"], 120, 0.05)
    assert _states(client, added)[2] == "queued"
    jobs = _jobs(client)
    seen = {a["job_id"]: _seen(a).read_text() for a in added[:2]}
    assert sorted(seen.values()) == ["0", "1"], seen  # each trainer sees only its own GPU
    assert all(jobs[i]["gpu"] == g for i, g in seen.items()), jobs  # and the queue says which
    assert not Path(added[2]["run_dir"], runs.STATUS_FILE).exists()  # the third has not started

    (Path(added[0]["run_dir"]) / ".release").write_text("")
    assert wait_for(lambda: _seen(added[2]).exists() and _states(client, added)[2] == "running", 120, 0.05)
    assert _seen(added[2]).read_text() == seen[added[0]["job_id"]]  # the GPU that freed
    assert _states(client, added) == ["done", "running", "running"]
    for a in added[1:]:
        (Path(a["run_dir"]) / ".release").write_text("")
    assert wait_for(lambda: _states(client, added) == ["done", "done", "done"], 120, 0.05)


def test_one_gpu_runs_one_job_at_a_time(client: Client, gpus: dict[str, float]) -> None:
    gpus.update({"0": 80.0})
    added = [_add(client, f"g1-{n}") for n in ("a", "b")]
    assert wait_for(lambda: _seen(added[0]).exists() and _states(client, added)[0] == "running", 120, 0.05)
    assert _states(client, added)[1] == "queued"
    assert _jobs(client)[added[0]["job_id"]]["gpu"] is None  # the config's device, as Start runs it
    (Path(added[0]["run_dir"]) / ".release").write_text("")
    assert wait_for(lambda: _seen(added[1]).exists() and _states(client, added)[1] == "running", 120, 0.05)
    assert _states(client, added) == ["done", "running"]
    (Path(added[1]["run_dir"]) / ".release").write_text("")
    assert wait_for(lambda: _states(client, added) == ["done", "done"], 120, 0.05)
