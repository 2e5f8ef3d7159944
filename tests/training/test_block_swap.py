"""Block swap on the CPU: the same packing, copy, bind and release logic as on a GPU (the "device" is the
CPU, events are no-ops), checked on a 6-block transformer against the same model unswapped."""

from __future__ import annotations

import copy
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from flux2_lora import runs
from flux2_lora.config import LoraSection
from flux2_lora.training.block_swap import BlockSwap, BlockSwapError, install_block_swap, swapped_blocks
from flux2_lora.training.model import inject_lora
from flux2_lora.variants import VARIANTS, TransformerArch
from tests.helpers import NEEDS_BNB, cli, held_trainer, sets

ARCH = TransformerArch(**{**VARIANTS["demo"].transformer.__dict__, "num_layers": 2, "num_single_layers": 4})
CPU = torch.device("cpu")


def _model(dora: bool = False) -> Any:
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(**ARCH.diffusers_config())
    transformer.requires_grad_(False)
    torch.manual_seed(1)
    inject_lora(transformer, LoraSection(rank=4, alpha=4, use_dora=dora), ARCH)
    transformer.enable_gradient_checkpointing()
    return transformer


def _inputs(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    tokens, text = 16, 8
    ids = torch.zeros(tokens, 4)
    ids[:, 1] = torch.arange(tokens) // 4
    ids[:, 2] = torch.arange(tokens) % 4
    return {
        "hidden_states": torch.randn(1, tokens, ARCH.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(1, text, ARCH.joint_attention_dim, generator=g),
        "timestep": torch.tensor([0.5]),
        "img_ids": ids,
        "txt_ids": torch.zeros(text, 4),
        "return_dict": False,
    }


def _step(model: Any, seed: int) -> dict[str, torch.Tensor]:
    """One forward + backward; the LoRA gradients by name."""
    return _step_on(model, _inputs(seed))


def _in_slot(t: torch.Tensor, swap: BlockSwap) -> bool:
    start = t.untyped_storage().data_ptr()
    return any(start == s.untyped_storage().data_ptr() for s in swap.slots)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_swapped_gradients_equal_unswapped_and_at_most_two_blocks_are_resident(dora: bool) -> None:
    plain = _model(dora)
    swapped = copy.deepcopy(plain)
    n = 4
    swap = install_block_swap(swapped, n, CPU)
    blocks = swapped_blocks(swapped, n)
    seen: list[tuple[int, int, bool]] = []  # (block, resident count, its tensors in a slot)

    def watch(i: int) -> Any:
        def hook(module: torch.nn.Module, args: Any) -> None:  # runs after the swap's own pre-hook
            resident = sum(all(_in_slot(t, swap) for t in lay.tensors) for lay in swap.layouts)
            seen.append((i, resident, all(_in_slot(t, swap) for t in swap.layouts[i].tensors)))

        return hook

    for i, b in enumerate(blocks):
        b.register_forward_pre_hook(watch(i))
    for step in range(3):
        before = swap.stats.total_copies
        expected = _step(plain, step)
        got = _step(swapped, step)
        assert expected.keys() == got.keys() and len(got) > 0
        for name in expected:  # the same kernels on the same values: bitwise on the CPU
            assert torch.equal(expected[name], got[name]), name
        # forward: every block once; backward: the checkpointed recomputation of each, in reverse
        assert [i for i, _, _ in seen] == [0, 1, 2, 3, 3, 2, 1, 0]
        assert all(in_slot for _, _, in_slot in seen)  # each block computed from its slot copy
        assert max(r for _, r, _ in seen) <= 2
        # The first step copies every block in forward and all but the two still resident in backward;
        # later steps also find the first two blocks resident from the previous backward.
        assert swap.stats.total_copies - before == (2 * n - 2 if step == 0 else 2 * n - 4)
        seen.clear()
    assert swap.device_bytes == 2 * max(lay.nbytes for lay in swap.layouts)
    # Only the frozen base weights are streamed: the adapter stays where the model is.
    managed = {id(t) for lay in swap.layouts for t in lay.tensors}
    assert not any(id(p) in managed for p in swapped.parameters() if p.requires_grad)


def test_inference_wraps_around_and_stays_correct() -> None:
    plain = _model()
    swapped = copy.deepcopy(plain)
    swap = install_block_swap(swapped, 4, CPU)
    with torch.no_grad():
        for seed in range(2):
            assert torch.equal(plain(**_inputs(seed))[0], swapped(**_inputs(seed))[0])
    # the second call found its first block prefetched at the end of the first
    assert swap.stats.unprefetched == 1


def test_released_blocks_read_host_memory_and_only_two_slots_exist() -> None:
    swapped = _model()
    swap = install_block_swap(swapped, 4, CPU)
    with torch.no_grad():
        swapped(**_inputs(0))
    host = {h.untyped_storage().data_ptr() for h in swap.host}
    for i, lay in enumerate(swap.layouts):
        storages = {t.untyped_storage().data_ptr() for t in lay.tensors}
        assert storages <= host or i in swap.resident_blocks()
    assert len(swap.resident_blocks()) <= 2


def test_maximum_is_blocks_minus_two_and_int8_is_refused() -> None:
    model = _model()
    with pytest.raises(BlockSwapError, match="at most 4"):
        swapped_blocks(model, 5)
    # single-stream blocks are swapped first (they run last)
    assert swapped_blocks(model, 4) == list(model.single_transformer_blocks)
    assert swapped_blocks(model, 5 - 1)[0] is model.single_transformer_blocks[0]

    class Foreign(torch.Tensor):
        pass

    block = model.single_transformer_blocks[3]
    block.register_parameter(
        "foreign", torch.nn.Parameter(torch.zeros(2, 2).as_subclass(Foreign), requires_grad=False)
    )
    with pytest.raises(BlockSwapError, match=r"memory.blocks_to_swap: cannot stream .*Foreign"):
        BlockSwap([block], CPU)


RUN = (
    "training.max_steps=6",
    "training.warmup_steps=0",
    "output.checkpoint_every=2",
    "validation.enabled=false",
    "logging.tensorboard=false",
    "logging.log_every=1",
)


def _lora(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / runs.LORA_FILE)


@pytest.mark.slow
def test_demo_run_with_swap_equals_unswapped_also_after_sigkill_and_resume(tmp_path: Path) -> None:
    """The trainer's own path (setup, accelerate without device placement, checkpoints, resume) with 2 of
    the demo's 4 blocks swapped; on the CPU the LoRA is bitwise the unswapped one."""
    plain, swapped = tmp_path / "plain", tmp_path / "swapped"
    cli("train", "--preset", "quickstart", *sets(f"output.dir={plain}", *RUN), check=True)
    with held_trainer(swapped, "step@3", *RUN, "memory.blocks_to_swap=2") as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert runs.latest_checkpoint(swapped) is not None
    assert runs.latest_checkpoint(swapped).name == "checkpoint-2"  # type: ignore[union-attr]
    resume = sets(f"output.dir={swapped}", *RUN, "memory.blocks_to_swap=2")
    cli("train", "--preset", "quickstart", *resume, "--resume", "latest", check=True)
    assert "block swap: 2 blocks streamed" in (swapped / runs.LOG_FILE).read_text()
    a, b = _lora(plain), _lora(swapped)
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.gpu
def test_cuda_swap_streams_on_a_side_stream_and_matches_unswapped() -> None:
    """The real path: pinned host buffers, the side stream and its events; gradients as unswapped, and
    the swapped blocks' weights are not on the GPU beyond the two slots."""
    cuda = torch.device("cuda")
    plain = _model().to(cuda)
    swapped = _model()
    base = torch.cuda.memory_allocated()
    swap = install_block_swap(swapped, 4, cuda)
    assert all(h.is_pinned() for h in swap.host)
    frozen = sum(lay.nbytes for lay in swap.layouts)
    placed = torch.cuda.memory_allocated() - base
    total = sum(t.numel() * t.element_size() for t in [*swapped.parameters(), *swapped.buffers()])
    # on the GPU: everything but the swapped blocks' frozen tensors, plus two slots
    assert placed <= total - frozen + swap.device_bytes + 2**20

    def on(batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(cuda) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    for step in range(3):
        before = swap.stats.total_copies
        with torch.autocast("cuda", dtype=torch.bfloat16):
            expected = _step_on(plain, on(_inputs(step)))
            got = _step_on(swapped, on(_inputs(step)))
        for name in expected:
            torch.testing.assert_close(got[name], expected[name])  # fp32 tolerance
        assert swap.stats.total_copies - before == (6 if step == 0 else 4)
    assert swap.stats.unprefetched == 1  # only the very first use waited for a copy it had not started


def _step_on(model: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = model(**batch)[0]
    out.float().pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


@NEEDS_BNB
def test_nf4_layers_stream_their_packed_bytes() -> None:
    """bitsandbytes' Params4bit: the packed bytes are streamed, its quant state stays where it is."""
    import bitsandbytes as bnb

    from flux2_lora.training.model import nf4_linear

    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 32)
    layer = nf4_linear(64, 32, True, torch.float32)
    layer.weight = bnb.nn.Params4bit(
        dense.weight.data.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True
    )
    layer.bias = torch.nn.Parameter(dense.bias.data, requires_grad=False)
    layer = layer.to("cpu")  # quantizes
    x = torch.randn(2, 64)
    expected = layer(x)
    block = torch.nn.Sequential(layer)
    swap = BlockSwap([block], CPU)
    assert [type(t).__name__ for t in swap.layouts[0].tensors] == ["Params4bit", "Parameter"]
    assert torch.equal(block(x), expected) and swap.stats.copies == [1]
    assert _in_slot(layer.weight, swap)
