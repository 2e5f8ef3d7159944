"""The run directory's life cycle: stop files, the final checkpoint, the LoRA's precision, CPU threads,
and the performance switches that cannot run here."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from flux2_lora import runs
from flux2_lora.config.io import load_config
from flux2_lora.training.hardware import cpu_threads
from flux2_lora.training.session import LAUNCHED_AT_ENV, StopFlag
from flux2_lora.training.trainer import Trainer, run_training
from tests.conftest import MakeConfig
from tests.helpers import assert_finished


def test_a_stale_stop_file_is_removed_but_a_fresh_one_stops_the_run(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config("training.max_steps=3")
    out = Path(config.output.dir)
    out.mkdir(parents=True)
    stale = out / runs.STOP_FILE
    stale.write_text("")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # left by an earlier run
    monkeypatch.setenv(LAUNCHED_AT_ENV, str(time.time() - 60))
    assert_finished(run_training(config), config)

    # Stop pressed after the launch but before the trainer was up: it must stop at the first step.
    again = make_config("training.max_steps=3", out=out.parent / "again")
    Path(again.output.dir).mkdir(parents=True)
    monkeypatch.setenv(LAUNCHED_AT_ENV, str(time.time() - 60))
    (Path(again.output.dir) / runs.STOP_FILE).write_text("")
    outcome = run_training(again)
    assert (outcome.state, outcome.step, outcome.lora) == ("stopped", 1, None)
    assert outcome.checkpoint is not None and outcome.checkpoint.name == "checkpoint-1"
    status = runs.read_status(again.output.dir)
    assert status.state == "stopped" and status.step == 1
    assert not (
        Path(again.output.dir) / runs.STOP_FILE
    ).exists()  # acted on, so not left to stop the next run
    assert runs.latest_checkpoint(again.output.dir) is not None


def test_stop_flag_keeps_a_file_newer_than_the_launch(tmp_path: Path) -> None:
    flag = StopFlag(tmp_path)
    (tmp_path / runs.STOP_FILE).write_text("")
    flag.clear_stale(launched_at=time.time() - 10)
    assert flag.requested()
    flag.acknowledge()
    assert not (tmp_path / runs.STOP_FILE).exists()


def test_checkpoint_every_zero_still_leaves_a_resumable_checkpoint(make_config: MakeConfig) -> None:
    config = make_config("output.checkpoint_every=0", "training.max_steps=3")
    assert_finished(run_training(config), config)
    last = runs.latest_checkpoint(config.output.dir)
    assert last is not None and last.name == "checkpoint-3"


def test_a_failed_final_write_names_the_resumable_checkpoint(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    import flux2_lora.training.export as export

    monkeypatch.setattr(export, "save_diffusers_lora", disk_full)
    config = make_config("output.checkpoint_every=0", "training.max_steps=2")
    with pytest.raises(OSError, match=r"No space left on device.*safe in .*checkpoint-2"):
        run_training(config)
    status = runs.read_status(config.output.dir)
    assert status.state == "failed" and "checkpoint-2" in status.message
    assert (runs.latest_checkpoint(config.output.dir) / "adapter.safetensors").is_file()


def test_save_dtype_auto_follows_the_training_precision(make_config: MakeConfig, tmp_path: Path) -> None:
    for dtype, expected in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        config = make_config(f"model.dtype={dtype}", "training.max_steps=1", out=tmp_path / dtype)
        assert_finished(run_training(config), config)
        with safe_open(str(Path(config.output.dir) / runs.LORA_FILE), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {expected}  # noqa: SIM118 (safe_open is no dict)


def test_cpu_threads_are_chosen_and_logged(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(0, 1) == (cores, f"{cores} usable cores / 1 process(es)")
    assert cpu_threads(0, 2)[0] == max(1, cores // 2)
    assert cpu_threads(3, 2) == (3, "performance.cpu_threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads(0, 1) == (1, "OMP_NUM_THREADS")
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="flux2_lora"):
            Trainer(make_config("performance.cpu_threads=1"))
        assert torch.get_num_threads() == 1
        assert "CPU threads: 1 per process (performance.cpu_threads)" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_float8_with_quantization_is_refused() -> None:
    from flux2_lora.config.io import ConfigError

    with pytest.raises(ConfigError, match=r"performance\.float8"):
        load_config(overrides=["performance.float8=true", "memory.quantization=nf4"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("performance.attention_backend=flash", r"performance\.attention_backend: 'flash' needs a CUDA GPU"),
        ("performance.float8=true", r"performance\.float8: needs a CUDA GPU with FP8 units"),
    ],
)
def test_gpu_only_kernels_refuse_on_cpu_with_the_field(
    make_config: MakeConfig, setting: str, message: str
) -> None:
    from flux2_lora.training.model import ModelLoadError

    with pytest.raises(ModelLoadError, match=message):
        Trainer(make_config(setting)).setup()


def test_math_attention_and_compile_switch_on_cpu(
    make_config: MakeConfig, caplog: pytest.LogCaptureFixture
) -> None:
    t = Trainer(make_config("performance.attention_backend=math", "performance.compile=true"))
    with caplog.at_level(logging.WARNING, logger="flux2_lora"):
        t.setup()
    assert float(t.train_step(1)) > 0
    assert "performance.compile: skipped on CPU" in caplog.text


def test_resume_skips_a_checkpoint_of_another_rank(make_config: MakeConfig) -> None:
    from flux2_lora.training.checkpoint import CheckpointError

    first = make_config("lora.rank=4", "lora.alpha=4", "training.max_steps=2", "output.checkpoint_every=1")
    assert_finished(run_training(first), first)
    out = Path(first.output.dir)
    other = make_config("lora.rank=8", "lora.alpha=8", "training.max_steps=4", out=out)
    with pytest.raises(CheckpointError, match=r"no readable checkpoint.*(shape|rank)"):
        run_training(other, "latest")
    folder = runs.latest_checkpoint(out)
    with pytest.raises(CheckpointError, match=rf"cannot resume from {folder}"):
        run_training(other, str(folder))
    same = make_config("lora.rank=4", "lora.alpha=4", "training.max_steps=4", out=out)
    assert_finished(run_training(same, "latest"), same)
