"""Several processes on CPU (gloo) through accelerate's launcher: FSDP against DDP, resuming on another
process count, two "machines" on localhost, per-rank memory records, and the checkpoint formats."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from flux2_lora import runs
from flux2_lora.hooks import HOLD_ENV
from tests.helpers import assert_finished, cli, sets, train_argv, wait_for

SHORT = (
    "training.max_steps=6",
    "training.warmup_steps=1",
    "validation.enabled=false",
    "logging.tensorboard=false",
    "logging.log_every=1",
    "lora.dropout=0.1",
    "dataset.random_flip=true",
)


@pytest.fixture(autouse=True)
def demo_assets() -> None:
    """The demo model and dataset exist before the processes start (built once per session)."""
    from flux2_lora.data.demo import ensure_demo_dataset
    from flux2_lora.training.demo_model import ensure_demo_model

    ensure_demo_model()
    ensure_demo_dataset()


def _lora(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / runs.LORA_FILE))


def _train(out: Path, *flags: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return cli(
        "train", "--preset", "quickstart", *flags, *sets(f"output.dir={out}", *SHORT, *extra), timeout=600
    )


def test_fsdp_on_two_processes_matches_ddp(tmp_path: Path) -> None:
    """The same seed and data order: sharded training computes the same LoRA as data parallel."""
    accumulate = ("training.gradient_accumulation_steps=2", "output.checkpoint_every=0")
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    for out, strategy in ((fsdp, "fsdp"), (ddp, "ddp")):
        proc = _train(out, "--num-processes", "2", "--strategy", strategy, extra=accumulate)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _lora(fsdp), _lora(ddp)
    assert a.keys() == b.keys() and len(a) > 0
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-4
    log = (fsdp / runs.LOG_FILE).read_text()
    assert (
        "FSDP: 4 blocks sharded over 2 processes" in log and "FSDP" not in (ddp / runs.LOG_FILE).read_text()
    )
    # Every rank's memory, written by rank 0, for the monitor.
    ranks = runs.read_ranks(fsdp)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["rss_gib"] > 0 and r["step"] == 6 for r in ranks)
    # Under FSDP only rank 0 reads the transformer's weights: rank 1 builds it on the meta device and
    # receives its shards (so the same LoRA as DDP, where every rank loads it, proves the broadcast).
    f0, f1 = _rank_record(fsdp, 0), _rank_record(fsdp, 1)
    d0, d1 = _rank_record(ddp, 0), _rank_record(ddp, 1)
    assert f0["transformer_loaded_bytes"] > 0 and f1["transformer_loaded_bytes"] == 0
    assert d0["transformer_loaded_bytes"] == d1["transformer_loaded_bytes"] == f0["transformer_loaded_bytes"]
    # Both strategies encode the captions once: the text encoder on rank 0 only, the same embeddings on both.
    for r0, r1 in ((f0, f1), (d0, d1)):
        assert (r0["text_encoder_loaded"], r1["text_encoder_loaded"]) == (True, False)
        assert r0["prompt_digest"] == r1["prompt_digest"]


def _rank_record(out: Path, rank: int) -> dict[str, Any]:
    """A rank's whole record as the trainer wrote it (runs.read_ranks keeps only the monitor's fields)."""
    import json

    return dict(json.loads((out / runs.RANKS_DIR / f"rank-{rank}.json").read_text()))


def _start_held(out: Path, point: str, *flags: str) -> subprocess.Popen[bytes]:
    """The launcher in its own process group (its workers with it), held at ``point`` on every rank."""
    return subprocess.Popen(
        [*train_argv(out, *SHORT, "output.checkpoint_every=2"), *flags],
        env={**os.environ, HOLD_ENV: point},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _run_processes(out: Path) -> list[str]:
    """The live processes (launcher, workers) training into ``out``, by their command lines."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if str(out) in cmdline and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"{p.pid}: {cmdline}")
    return found


def test_fsdp_run_killed_after_a_checkpoint_resumes_on_one_process_and_back(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start_held(out, "step@3", "--num-processes", "2", "--strategy", "fsdp")
    try:
        assert wait_for((out / ".held-step").exists, timeout=300)
        assert len(_run_processes(out)) >= 3  # accelerate's launcher and two workers
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The workers live in sessions of their own, held: they go with the CLI all the same.
    assert wait_for(lambda: not _run_processes(out), timeout=60), _run_processes(out)
    assert [p.name for p in runs.list_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / runs.LORA_FILE).exists()
    (out / ".held-step").unlink()

    # The 2-process FSDP checkpoint on one process: adapter and optimizer state, by parameter name. Two
    # micro-batches on one process are the two processes' batches of a step (the same samples, noise and
    # dropout seeds), so the run must end where an uninterrupted 2-process run ends.
    one_process = ("training.gradient_accumulation_steps=2",)
    one = _train(out, "--num-processes", "1", "--strategy", "fsdp", "--resume", "latest", extra=one_process)
    assert one.returncode == 0, one.stderr[-3000:]
    log = (out / runs.LOG_FILE).read_text()
    assert "resumed from" in log and "at step 2" in log and "no optimizer state" not in log
    assert runs.read_status(out).state == "finished" and (out / runs.LORA_FILE).is_file()
    ref = tmp_path / "uninterrupted"
    whole = _train(ref, "--num-processes", "2", "--strategy", "fsdp", extra=("output.checkpoint_every=2",))
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = _lora(out), _lora(ref)
    assert a.keys() == b.keys() and len(a) > 0
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-4  # as FSDP vs DDP
    assert max(b[k].abs().max().item() for k in b if "lora_B" in k or "lora_up" in k) > 0  # it trained

    # And back: the 1-process checkpoint continues on two FSDP processes.
    two = _train(
        out,
        "--num-processes",
        "2",
        "--strategy",
        "fsdp",
        "--resume",
        "latest",
        extra=("training.max_steps=8",),
    )
    assert two.returncode == 0, two.stderr[-3000:]
    status = runs.read_status(out)
    assert status.state == "finished" and status.step == 8
    assert "at step 6" in (out / runs.LOG_FILE).read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_machines_on_localhost_write_one_lora(tmp_path: Path) -> None:
    """Two launches as machine 0 and 1 (one process each, gloo over 127.0.0.1): one run, one LoRA, written
    by machine 0; machine 1 neither takes the run lock nor writes its own run directory."""
    out = tmp_path / "run"
    port = str(_free_port())
    machine = (
        "--num-processes", "1", "--num-machines", "2", "--main-process-ip", "127.0.0.1",
        "--main-process-port", port,
    )  # fmt: skip
    base = [sys.executable, "-m", "flux2_lora.cli", "train", "--preset", "quickstart"]
    args = sets(f"output.dir={out}", *SHORT, "output.checkpoint_every=3")
    # A fresh cache: the launchers build the demo before their workers start (a worker, as a non-main
    # process, would save the text encoder without its weights).
    env = {**os.environ, "FLUX2_LORA_HOME": str(tmp_path / "home")}
    procs = [
        subprocess.Popen(
            [*base, *machine, "--machine-rank", str(rank), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    status = runs.read_status(out)
    assert status.state == "finished" and status.extra["num_processes"] == 2
    assert sorted(p.name for p in out.glob("*.safetensors")) == [runs.LORA_FILE]
    assert [p.name for p in runs.list_checkpoints(out)] == ["checkpoint-3", "checkpoint-6"]
    assert "2 processes" in (out / runs.LOG_FILE).read_text()
    assert [r["rank"] for r in runs.read_ranks(out)] == [0, 1]


def test_a_second_machine_touches_no_run_directory(tmp_path: Path) -> None:
    """Machine 1's launcher: no run directory, no lock; its command joins machine 0's rendezvous."""
    from flux2_lora.cli.train import launch_command
    from flux2_lora.config.io import load_config

    out = tmp_path / "run"
    config, _ = load_config(
        overrides=[
            f"output.dir={out}",
            "distributed.num_processes=4",
            "distributed.num_machines=2",
            "distributed.machine_rank=1",
            "distributed.main_process_ip=10.0.0.1",
        ]
    )
    cmd = launch_command(config, tmp_path / "launch.yaml", "auto")
    flags = {a: b for a, b in itertools.pairwise(cmd) if a.startswith("--")}
    assert flags["--num_processes"] == "8" and flags["--machine_rank"] == "1"
    assert flags["--main_process_ip"] == "10.0.0.1" and flags["--main_process_port"] == "29500"
    assert cmd[-2:] == ["--resume", "auto"]  # the main process decides what 'auto' means
    assert not out.exists()


def test_an_optimizer_state_keyed_by_position_still_resumes(tmp_path: Path, make_config: Any) -> None:
    """Checkpoints written before parameter names were stored key the optimizer state by position."""
    from flux2_lora.training.checkpoint import OPTIMIZER_FILE
    from flux2_lora.training.trainer import run_training

    ref_cfg = make_config("training.max_steps=4", "output.checkpoint_every=2", out=tmp_path / "ref")
    assert_finished(run_training(ref_cfg), ref_cfg)
    ckpt = runs.list_checkpoints(tmp_path / "ref")[0]
    named = torch.load(ckpt / OPTIMIZER_FILE, weights_only=True)
    assert all(isinstance(k, str) for k in named["state"])  # the format written now
    order = [n for g in named["param_groups"] for n in g["params"]]
    legacy = {
        "state": {order.index(k): v for k, v in named["state"].items()},
        "param_groups": [
            {**g, "params": [order.index(n) for n in g["params"]]} for g in named["param_groups"]
        ],
    }
    torch.save(legacy, ckpt / OPTIMIZER_FILE)
    for later in runs.list_checkpoints(tmp_path / "ref")[1:]:
        shutil.rmtree(later)
    (tmp_path / "ref" / runs.LORA_FILE).rename(tmp_path / "first.safetensors")
    assert_finished(run_training(ref_cfg, resume="latest"), ref_cfg)
    log = (tmp_path / "ref" / runs.LOG_FILE).read_text()
    assert "at step 2" in log and "no optimizer state" not in log
    a, b = load_file(str(tmp_path / "first.safetensors")), _lora(tmp_path / "ref")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
