"""The EMA of the adapter (training.ema_decay): its value, its file, checkpoints and resume, samples."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from flux2_lora import runs
from flux2_lora.training import checkpoint as ckpt
from flux2_lora.training import trainer as trainer_module
from flux2_lora.training.trainer import Trainer, run_training
from tests.conftest import MakeConfig
from tests.helpers import assert_finished

EMA = ("training.ema_decay=0.6", "training.ema_update_every=2")


def _peft_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors by the PEFT keys checkpoints use (the file prefixes them 'transformer.')."""
    return {k.removeprefix("transformer."): v for k, v in state.items()}


def test_the_ema_file_equals_a_reference_ema_of_the_saved_step_weights(make_config: MakeConfig) -> None:
    cfg = make_config(*EMA, "training.max_steps=5", "output.checkpoint_every=1", "output.max_checkpoints=10")
    start = Trainer(cfg)
    start.setup()
    reference = {k: v.clone() for k, v in start.adapter_state().items()}  # the untrained adapter (B = 0)
    assert_finished(run_training(cfg), cfg)
    out = Path(cfg.output.dir)
    for step in (2, 4):  # ema_update_every=2: steps 1, 3 and 5 leave it alone
        weights = load_file(str(out / runs.CHECKPOINTS_DIR / f"checkpoint-{step}" / ckpt.ADAPTER_FILE))
        reference = {k: 0.6 * reference[k] + 0.4 * weights[k] for k in reference}
    ema = _peft_keys(load_file(str(out / runs.EMA_LORA_FILE)))
    lora = _peft_keys(load_file(str(out / runs.LORA_FILE)))
    assert ema.keys() == reference.keys() == lora.keys()  # the same key names as the LoRA
    assert max((ema[k] - reference[k]).abs().max().item() for k in ema) < 1e-6
    assert max((ema[k] - lora[k]).abs().max().item() for k in ema) > 1e-4  # an average, not the LoRA
    # In every checkpoint too: checkpoint-4 holds the EMA of steps 2 and 4.
    saved = load_file(str(out / runs.CHECKPOINTS_DIR / "checkpoint-4" / ckpt.EMA_FILE))
    assert all(torch.equal(saved[k], ema[k]) for k in ema)


def test_ema_off_writes_no_ema_file_nor_checkpoint_copy(make_config: MakeConfig) -> None:
    cfg = make_config("output.checkpoint_every=2")
    assert_finished(run_training(cfg), cfg)
    out = Path(cfg.output.dir)
    assert (out / runs.LORA_FILE).is_file() and not (out / runs.EMA_LORA_FILE).exists()
    assert not (out / runs.CHECKPOINTS_DIR / "checkpoint-4" / ckpt.EMA_FILE).exists()


def test_stop_and_resume_gives_the_same_ema_file_bit_for_bit(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = (*EMA, "training.max_steps=6", "lora.dropout=0.1", "training.gradient_accumulation_steps=2")
    ref = make_config(*args, out=tmp_path / "ref")
    assert_finished(run_training(ref), ref)

    cfg = make_config(*args, out=tmp_path / "stopped")
    steps = []

    def stop_at_3(name: str, run_dir: Path) -> None:  # the Stop button, pressed during step 3
        steps.append(name)
        if steps.count("step") == 3:
            runs.write_stop_request(run_dir)

    monkeypatch.setattr(trainer_module, "hold_point", stop_at_3)
    outcome = run_training(cfg)  # step 3 lies between two EMA updates
    assert (outcome.state, outcome.step) == ("stopped", 3)
    assert_finished(run_training(cfg, resume="latest"), cfg)

    # Bit for bit: every tensor's bytes and the metadata. Not the file's bytes: safetensors writes its
    # header's metadata from a Rust HashMap, in an order that changes from one write to the next.
    a, b = (_tensors_and_metadata(tmp_path / run / runs.EMA_LORA_FILE) for run in ("ref", "stopped"))
    assert a == b
    # The EMA came from the checkpoint: restarted from the resumed weights it would differ.
    restarted = Trainer(make_config(*args, out=tmp_path / "stopped"))
    restarted.setup("latest")
    assert restarted.ema is not None
    assert not torch.equal(restarted.ema.shadow[0], restarted.ema.params[0].detach())


def test_a_checkpoint_without_an_ema_restarts_it_from_the_resumed_weights(
    make_config: MakeConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = make_config("output.checkpoint_every=2", out=tmp_path / "r")
    assert_finished(run_training(plain), plain)
    monkeypatch.setattr(logging.getLogger("flux2_lora"), "propagate", True)  # a run's logging turns it off
    t = Trainer(make_config(*EMA, "training.max_steps=6", out=tmp_path / "r"))
    with caplog.at_level("WARNING", logger="flux2_lora"):
        assert t.setup("latest") == 4
    assert "has no EMA" in caplog.text
    assert t.ema is not None
    assert all(torch.equal(s, p.detach()) for s, p in zip(t.ema.shadow, t.ema.params, strict=True))


def test_a_checkpoint_whose_ema_does_not_fit_the_adapter_is_refused_by_name(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    cfg = make_config(*EMA, "output.checkpoint_every=2", out=tmp_path / "r")
    assert_finished(run_training(cfg), cfg)
    folder = tmp_path / "r" / runs.CHECKPOINTS_DIR / "checkpoint-4"
    ema = load_file(str(folder / ckpt.EMA_FILE))
    key = next(iter(ema))
    ema[key] = torch.zeros(3, 3)
    save_file(ema, str(folder / ckpt.EMA_FILE))
    t = Trainer(cfg)
    with pytest.raises(ckpt.CheckpointError, match=r"ema\.safetensors: .*has shape \(3, 3\)"):
        t.setup(str(folder))


def test_samples_come_from_the_ema_weights_and_training_continues_from_the_live_ones(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = Trainer(
        make_config("training.ema_decay=0.9", "validation.enabled=true", "validation.sample_ema=true")
    )
    t.setup()
    for step in (1, 2):
        t.train_step(step)
    assert t.ema is not None and t.sampler is not None
    live = [p.detach().clone() for p in t.lora_params]
    seen: list[list[torch.Tensor]] = []

    def record(*args: Any, **kwargs: Any) -> list[Any]:
        seen.append([p.detach().clone() for p in t.ema.params])  # type: ignore[union-attr]
        return []

    monkeypatch.setattr(t.sampler, "sample", record)
    t.draw_samples(2, record=False)
    assert all(torch.equal(a, b) for a, b in zip(seen[0], t.ema.shadow, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(seen[0], live, strict=True))
    assert all(torch.equal(a, p) for a, p in zip(live, t.lora_params, strict=True))  # exactly restored
    # Without sample_ema the samples see the live weights.
    t.config.validation.sample_ema = False
    t.draw_samples(2, record=False)
    assert all(torch.equal(a, b) for a, b in zip(seen[1], live, strict=True))


@pytest.mark.gpu
@pytest.mark.parametrize(("where", "device"), [("gpu", "cuda"), ("cpu", "cpu")])
def test_ema_device_places_the_ema(make_config: MakeConfig, where: str, device: str) -> None:
    t = Trainer(make_config("model.device=cuda", "training.ema_decay=0.9", f"training.ema_device={where}"))
    t.setup()
    t.train_step(1)
    assert t.ema is not None
    assert {s.device.type for s in t.ema.shadow} == {device}
    assert {p.device.type for p in t.ema.params} == {"cuda"}
    assert any(
        not torch.equal(s.cpu(), p.detach().cpu()) for s, p in zip(t.ema.shadow, t.ema.params, strict=True)
    )


def _tensors_and_metadata(file: Path) -> tuple[dict[str, tuple[str, tuple[int, ...], bytes]], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        tensors = {
            k: (str(t.dtype), tuple(t.shape), t.contiguous().view(torch.uint8).numpy().tobytes())
            for k in f.keys()  # noqa: SIM118 (safe_open is not iterable)
            for t in [f.get_tensor(k)]
        }
        return tensors, dict(f.metadata() or {})
