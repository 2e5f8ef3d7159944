"""LoKr and LoHa (lora.type) on the demo: they train, resume exactly, and what reads their files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from flux2_lora import runs
from flux2_lora.training import trainer as trainer_module
from flux2_lora.training.trainer import Trainer, run_training
from tests.conftest import MakeConfig
from tests.helpers import assert_finished

PREFIX = {"lokr": ".lokr_", "loha": ".hada_"}


def kind_args(kind: str) -> tuple[str, ...]:
    return (f"lora.type={kind}", "lora.dropout=0")


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_a_few_steps_change_every_adapter_tensor_with_a_finite_loss(
    make_config: MakeConfig, kind: str
) -> None:
    t = Trainer(make_config(*kind_args(kind)))
    t.setup()
    before = {k: v.clone() for k, v in t.adapter_state().items()}
    assert before and all(PREFIX[kind] in k for k in before)
    assert not any("lora_A" in k for k in before)
    losses = [float(t.train_step(step)) for step in (1, 2, 3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    after = t.adapter_state()
    assert all(not torch.equal(after[k], before[k]) for k in before)
    assert all(p.dtype == torch.float32 for p in t.lora_params)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_stop_and_resume_gives_the_same_file_bit_for_bit(
    make_config: MakeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    args = (*kind_args(kind), "training.max_steps=5", "training.gradient_accumulation_steps=2")
    ref = make_config(*args, out=tmp_path / "ref")
    assert_finished(run_training(ref), ref)
    cfg = make_config(*args, out=tmp_path / "stopped")
    steps: list[str] = []

    def stop_at_2(name: str, run_dir: Path) -> None:  # the Stop button, pressed during step 2
        steps.append(name)
        if steps.count("step") == 2:
            runs.write_stop_request(run_dir)

    monkeypatch.setattr(trainer_module, "hold_point", stop_at_2)
    assert run_training(cfg).state == "stopped"
    assert_finished(run_training(cfg, resume="latest"), cfg)
    a = load_file(str(tmp_path / "ref" / runs.LORA_FILE))
    b = load_file(str(tmp_path / "stopped" / runs.LORA_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_diffusers_loads_the_lokr_file_to_the_same_outputs(make_config: MakeConfig) -> None:
    """The file is diffusers' (save_lora_weights: transformer.<module>.lokr_w1 …, PEFT's LoKrConfig in
    its metadata); diffusers' own load_lora_adapter rebuilds the same adapter and the same outputs."""
    from diffusers import Flux2Transformer2DModel

    cfg = make_config(*kind_args("lokr"), "lora.alpha=5")  # alpha ≠ rank: the scale must come back
    assert_finished(run_training(cfg), cfg)
    file = Path(cfg.output.dir) / runs.LORA_FILE
    with safe_open(str(file), "pt") as f:
        assert '"transformer.peft_type": "LOKR"' in (f.metadata() or {})["lora_adapter_metadata"]
    trained = Trainer(cfg)
    trained.setup("latest")  # the final step's checkpoint: the trained adapter
    loaded = Flux2Transformer2DModel.from_pretrained(trained.model_path, subfolder="transformer")
    loaded.load_lora_adapter(str(file), prefix="transformer")
    batch = trained.micro_batch(1, 0)
    inputs = {
        "hidden_states": batch["latents"],
        "encoder_hidden_states": batch["prompt_embeds"],
        "timestep": batch["sigmas"],
        "img_ids": batch["latent_ids"],
        "txt_ids": batch["text_ids"],
        "return_dict": False,
    }
    trained.transformer.eval()
    with torch.no_grad():
        want = trained.transformer(**inputs)[0]
        got = loaded.eval()(**inputs)[0]
        plain = Flux2Transformer2DModel.from_pretrained(trained.model_path, subfolder="transformer")(
            **inputs
        )[0]
    assert (want - plain).abs().max() > 1e-4  # the adapter does something
    assert torch.allclose(got, want, atol=1e-5)


def test_diffusers_cannot_load_a_loha_file_as_the_warning_says(make_config: MakeConfig) -> None:
    from diffusers import Flux2Transformer2DModel

    from flux2_lora.config.warnings import common_mistakes

    cfg = make_config(*kind_args("loha"))
    assert any(w.field == "lora.type" and "cannot load a LoHa" in w.message for w in common_mistakes(cfg))
    assert_finished(run_training(cfg), cfg)
    t = Trainer(cfg)
    t.model_path = trainer_module.resolve_model_path(cfg.model)[0]
    model = Flux2Transformer2DModel.from_pretrained(t.model_path, subfolder="transformer")
    with pytest.raises(IndexError):  # when diffusers learns LoHa, drop the warning
        model.load_lora_adapter(str(Path(cfg.output.dir) / runs.LORA_FILE), prefix="transformer")
