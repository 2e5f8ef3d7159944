"""The whole CLI flow on the embedded demo: train, sample, log, checkpoint, resume, stop, multi-process."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flux2_lora import runs
from flux2_lora.config.io import load_config
from flux2_lora.training.trainer import run_training
from tests.helpers import assert_finished, cli, held_trainer, last_step, sets, start_cli, wait_for

SHORT = (
    "validation.enabled=false",
    "logging.tensorboard=false",
    "logging.log_every=1",
    "training.warmup_steps=1",
)


@pytest.mark.slow
def test_quickstart_trains_and_writes_everything(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    cli("train", "--preset", "quickstart", *sets(f"output.dir={out}"), check=True)
    status = runs.read_status(out)
    assert status.state == "finished" and status.step == 200
    assert (out / runs.LORA_FILE).is_file() and (out / runs.CONFIG_FILE).is_file()
    samples = runs.read_jsonl(out / runs.SAMPLES_INDEX)
    # Every 50 steps, each of the preset's prompts × validation.num_samples images.
    val = load_config(presets=["quickstart"])[0].validation
    per_step = len(val.prompts) * val.num_samples
    assert [s["step"] for s in samples] == [step for step in (50, 100, 150, 200) for _ in range(per_step)]
    assert all((out / s["file"]).is_file() for s in samples)
    assert list((out / runs.TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    metrics = runs.read_jsonl(out / runs.METRICS_FILE)
    assert len(metrics) == 20 and {"step", "loss", "lr", "sec_per_step", "eta_s", "rss_gib"} <= set(
        metrics[0]
    )
    losses = [m["loss"] for m in metrics]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first * 0.95, f"loss did not fall: {first:.4f} → {last:.4f}"
    assert "finished 200 steps" in (out / runs.LOG_FILE).read_text()
    # The run records its measured peaks next to the estimate, and `runs` lists both.
    assert (
        status.extra["measured"]["host_peak_rss_gib"] > 0.2
        and status.extra["estimate"]["host_peak_gib"] > 0.2
    )
    listing = cli("runs", str(out.parent), check=True).stdout
    assert "HOST EST/MEAS" in listing and "finished" in listing


@pytest.mark.slow
def test_final_lora_loads_in_diffusers_and_changes_the_output(tmp_path: Path) -> None:
    from flux2_lora.config import ModelSection
    from flux2_lora.training.model import pipeline_class, resolve_model_path

    out = tmp_path / "run"
    cli(
        "train",
        "--preset",
        "quickstart",
        *sets(f"output.dir={out}", "training.max_steps=20", *SHORT),
        check=True,
    )
    path, variant, _ = resolve_model_path(ModelSection())
    pipe = pipeline_class(variant).from_pretrained(path)

    def generate() -> torch.Tensor:
        return pipe(
            prompt="a red circle on stripes, sks style",
            height=64,
            width=64,
            num_inference_steps=4,
            guidance_scale=1.0,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images

    base = generate()
    pipe.load_lora_weights(str(out / runs.LORA_FILE))  # diffusers' own loader
    assert (generate() - base).abs().max() > 1e-3


@pytest.mark.slow
def test_checkpoints_keep_the_newest_k(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cli(
        "train",
        "--preset",
        "quickstart",
        *sets(
            f"output.dir={out}",
            "training.max_steps=6",
            "output.checkpoint_every=2",
            "output.max_checkpoints=2",
            *SHORT,
        ),
        check=True,
    )
    assert [p.name for p in runs.list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]


RESUME = (
    "training.max_steps=8",
    "output.checkpoint_every=2",
    "lora.dropout=0.1",
    "dataset.random_flip=true",
    "training.gradient_accumulation_steps=2",
    *SHORT,
)


@pytest.mark.slow
def test_kill_9_then_resume_latest_gives_the_same_lora(tmp_path: Path) -> None:
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    config, _ = load_config(presets=["quickstart"], overrides=[f"output.dir={ref}", *RESUME])
    assert_finished(run_training(config), config)

    # Held after step 5, past checkpoint-4: killed there, never racing the end of the run.
    with held_trainer(killed, "step@5", *RESUME) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p.name for p in runs.list_checkpoints(killed)] == ["checkpoint-2", "checkpoint-4"]
    assert runs.read_status(killed).state == "failed"

    cli(
        "train",
        "--preset",
        "quickstart",
        *sets(f"output.dir={killed}", *RESUME),
        "--resume",
        "latest",
        check=True,
    )
    a, b = load_file(str(ref / runs.LORA_FILE)), load_file(str(killed / runs.LORA_FILE))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_stops_cleanly_then_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = sets(f"output.dir={out}", "training.max_steps=60", "output.checkpoint_every=0", *SHORT)
    proc = start_cli("train", "--preset", "quickstart", *args)
    try:
        assert wait_for(lambda: last_step(out) >= 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    status = runs.read_status(out)
    assert status.state == "stopped", status
    ckpt = runs.latest_checkpoint(out)
    assert ckpt is not None and int(ckpt.name.split("-")[1]) == status.step < 60
    cli("train", "--preset", "quickstart", *args, "--resume", "latest", check=True)
    assert runs.read_status(out).state == "finished"


def test_second_run_into_a_busy_directory_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with runs.RunLock(out):
        proc = cli("train", "--preset", "quickstart", *sets(f"output.dir={out}", *SHORT))
    assert proc.returncode == 3
    assert "is in use by a running trainer" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_two_cpu_processes_through_accelerate_write_one_lora(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = cli(
        "train",
        "--preset",
        "quickstart",
        "--num-processes",
        "2",
        *sets(
            f"output.dir={out}",
            "training.max_steps=6",
            "output.checkpoint_every=3",
            "validation.every_n_steps=3",
            "training.warmup_steps=1",
        ),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert runs.read_status(out).state == "finished"
    assert sorted(p.name for p in out.glob("*.safetensors")) == [runs.LORA_FILE]
    log = (out / runs.LOG_FILE).read_text()
    assert "2 processes" in log
    assert json.loads((out / runs.STATUS_FILE).read_text())["extra"]["num_processes"] == 2


@pytest.mark.slow
def test_a_fresh_run_into_a_used_directory_keeps_the_earlier_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = sets(f"output.dir={out}", "training.max_steps=3", "output.checkpoint_every=3", *SHORT)
    cli("train", "--preset", "quickstart", *args, check=True)
    first_metrics = (out / runs.METRICS_FILE).read_text()
    cli("train", "--preset", "quickstart", *args, check=True)
    previous = list((out / runs.PREVIOUS_DIR).iterdir())
    assert len(previous) == 1
    assert (previous[0] / runs.METRICS_FILE).read_text() == first_metrics
    assert (previous[0] / runs.LORA_FILE).is_file() and (previous[0] / runs.CHECKPOINTS_DIR).is_dir()
    assert [m["step"] for m in runs.read_jsonl(out / runs.METRICS_FILE)] == [1, 2, 3]  # not appended
    assert runs.read_status(out).state == "finished" and "moved to" in (out / runs.LOG_FILE).read_text()
