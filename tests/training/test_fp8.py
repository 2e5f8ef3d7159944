"""fp8 base weights (memory.quantization fp8): e4m3 with per-row scales, computed in the model's dtype."""

from __future__ import annotations

import copy
import signal
from pathlib import Path

import pytest
import torch

from flux2_lora.config import LoraSection
from flux2_lora.training.block_swap import install_block_swap
from flux2_lora.training.fp8 import FP8, Fp8Linear, dequantize_rows, quantize_fp8, quantize_rows
from flux2_lora.training.model import inject_lora
from tests.helpers import cli, held_trainer, sets
from tests.training.test_block_swap import ARCH, RUN, _inputs, _lora, _step


def test_dequantised_weights_match_bf16_within_e4m3_precision() -> None:
    torch.manual_seed(0)
    w = (torch.randn(64, 96) * torch.logspace(-3, 0, 64)[:, None]).to(torch.bfloat16)  # rows of all sizes
    q, scale = quantize_rows(w)
    assert q.dtype == FP8 and scale.shape == (64,)
    back = dequantize_rows(q, scale, torch.float32)
    ref = w.float()
    # e4m3 keeps 3 mantissa bits: half a step is 2⁻⁴ of the value; below 2⁻⁶ (subnormals) the step is
    # fixed at 2⁻⁹ of the row's scale.
    bound = ref.abs() * 2**-4 + scale[:, None] * 2**-10
    assert bool(((back - ref).abs() <= bound).all())
    torch.testing.assert_close(
        back.abs().amax(dim=1), ref.abs().amax(dim=1), rtol=1e-6, atol=0
    )  # row max kept
    assert q.element_size() == 1


def test_fp8_linear_gradients_are_those_of_its_dequantised_weight() -> None:
    torch.manual_seed(0)
    dense = torch.nn.Linear(32, 16)
    layer = Fp8Linear(dense, torch.float32)
    x = torch.randn(4, 32, requires_grad=True)
    y = layer(x)
    y.pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    y2 = torch.nn.functional.linear(x2, layer.weight, dense.bias)
    y2.pow(2).sum().backward()
    assert torch.allclose(y, y2) and torch.allclose(x.grad, x2.grad)  # type: ignore[arg-type]
    assert not any(p.requires_grad for p in layer.parameters())


def _fp8_model(dora: bool) -> torch.nn.Module:
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    model = Flux2Transformer2DModel(**ARCH.diffusers_config())
    model.requires_grad_(False)
    assert quantize_fp8(model, torch.float32) > 0
    torch.manual_seed(1)
    inject_lora(model, LoraSection(rank=4, alpha=4, use_dora=dora), ARCH)
    model.enable_gradient_checkpointing()
    return model


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_fp8_weights_train_through_peft_and_stream_with_block_swap(dora: bool) -> None:
    model = _fp8_model(dora)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, Fp8Linear)]
    assert any(n.endswith(".base_layer") for n in wrapped)  # PEFT wrapped fp8 layers with its LoRA layer
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in lora.items()}
    swapped = copy.deepcopy(model)
    install_block_swap(swapped, 4, torch.device("cpu"))
    opt = torch.optim.SGD(list(lora.values()), lr=0.1)
    for step in range(3):
        out = model(**_inputs(step))[0]
        loss = out.float().pow(2).mean()
        assert torch.isfinite(loss)
        if step == 0:  # the fp8 blocks stream like bf16 ones: the same gradients
            loss.backward(retain_graph=False)
            grads = {n: p.grad.clone() for n, p in lora.items()}
            got = _step(swapped, 0)
            assert all(torch.equal(grads[n], got[n]) for n in grads)
        else:
            loss.backward()
        opt.step()
        opt.zero_grad()
    moved = [n for n in lora if not torch.equal(lora[n], before[n])]
    assert any("lora_B" in n for n in moved)


@pytest.mark.slow
def test_fp8_demo_run_resumes_after_sigkill_to_the_same_lora(tmp_path: Path) -> None:
    """fp8 through the trainer (loading, PEFT, checkpoints, resume), with the demo's blocks swapped on the
    resumed run: the LoRA equals an uninterrupted fp8 run's bitwise (CPU)."""
    plain, resumed = tmp_path / "plain", tmp_path / "resumed"
    fp8 = ("memory.quantization=fp8",)
    cli("train", "--preset", "quickstart", *sets(f"output.dir={plain}", *RUN, *fp8), check=True)
    with held_trainer(resumed, "step@3", *RUN, *fp8, "memory.blocks_to_swap=2") as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    argv = sets(f"output.dir={resumed}", *RUN, *fp8, "memory.blocks_to_swap=2")
    cli("train", "--preset", "quickstart", *argv, "--resume", "latest", check=True)
    a, b = _lora(plain), _lora(resumed)
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(bool(v.abs().sum() > 0) for k, v in a.items() if "lora_B" in k or "lora_up" in k)
