"""Block swap: the frozen weights of the last N transformer blocks live in (pinned) host memory and are
copied to the GPU one block ahead of use (``memory.blocks_to_swap``).

The design follows musubi-tuner's block swap (not diffusers' group offloading, whose prefetch does not
follow gradient checkpointing's replay order):

- The swapped blocks are the LAST N in execution order (the double-stream blocks run first, then the
  single-stream ones; so single blocks are swapped first). Their frozen tensors (base weights, biases,
  fp8 scales, NF4's packed bytes) are packed into one host buffer per block. LoRA / DoRA weights, their
  gradients and the optimizer state stay on the GPU.
- The GPU holds two slots, each the size of the largest swapped block: the block computing and the one
  being copied in on a side CUDA stream. A block's tensors are views into its slot while it is resident
  and views into its host buffer otherwise (so a stray use on the GPU fails loudly as a device mismatch).
- A forward pre-hook on each swapped block makes it resident before it runs and starts the copy of the
  block that runs next: forward order in forward, reverse order in backward. Gradient checkpointing's
  recomputation calls the block again inside backward, so one copy serves the recomputation and the
  block's backward (hence: swap needs gradient checkpointing). A copy is skipped when the block is still
  in a slot (the last block between its forward and its backward, the first one between steps).
- Events order the two streams: the compute stream waits until a slot's copy has landed; the copy stream
  waits until the slot's previous block has finished computing before overwriting it.

On the CPU the same code runs with a "device" that is the CPU: the slots are ordinary tensors, the copies
are synchronous and the events no-ops, so the tests exercise the same packing, copy and release logic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from flux2_lora.variants import TransformerArch, blocks_to_swap_error

log = logging.getLogger("flux2_lora")

_ALIGN = 256  # bytes: every tensor's view starts aligned (vectorised kernels, any dtype's view)


class BlockSwapError(RuntimeError):
    """A model that block swap cannot stream; the message names the config field."""


def _frozen_tensors(block: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors of ``block`` that swap streams: every frozen parameter and buffer outside the adapter."""
    out: list[torch.Tensor] = []
    seen: set[int] = set()
    for name, module in block.named_modules():
        if "lora_" in name:  # PEFT's adapter modules (lora_A/B, DoRA's lora_magnitude_vector) stay put
            continue
        tensors: list[tuple[str, torch.Tensor | None]] = [
            *module._parameters.items(),
            *module._buffers.items(),
        ]
        for tname, t in tensors:
            if t is None or id(t) in seen or t.requires_grad or "lora_" in tname:
                continue
            _check_streamable(t, f"{name}.{tname}" if name else tname)
            seen.add(id(t))
            out.append(t)
    return out


def _check_streamable(t: torch.Tensor, where: str) -> None:
    cls = type(t)
    if cls in (torch.Tensor, torch.nn.Parameter, torch.nn.Buffer) or cls.__name__ == "Params4bit":
        return  # plain storage (bf16, fp8 + scales) or bitsandbytes' packed NF4 bytes
    raise BlockSwapError(
        f"memory.blocks_to_swap: cannot stream {where}: its weight is a {cls.__module__}.{cls.__name__} "
        "(torchao int8 tensors keep their data in sub-tensors); use memory.quantization none, fp8 or nf4"
    )


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass
class _Layout:
    """Where each frozen tensor of one block lies in its packed buffer (host and slot share it)."""

    tensors: list[torch.Tensor]
    offsets: list[int]
    nbytes: int

    @classmethod
    def of(cls, tensors: list[torch.Tensor]) -> _Layout:
        offsets, pos = [], 0
        for t in tensors:
            offsets.append(pos)
            pos += _aligned(t.numel() * t.element_size())
        return cls(tensors, offsets, pos)

    def bind(self, buffer: torch.Tensor) -> None:
        """Point every tensor at its bytes in ``buffer`` (a host buffer or a GPU slot)."""
        for t, off in zip(self.tensors, self.offsets, strict=True):
            n = t.numel() * t.element_size()
            t.data = buffer[off : off + n].view(t.dtype).view(t.shape)

    def pack(self, buffer: torch.Tensor) -> None:
        """Copy every tensor's current value into ``buffer`` and bind it there (frees the original)."""
        for t, off in zip(self.tensors, self.offsets, strict=True):
            n = t.numel() * t.element_size()
            buffer[off : off + n].view(t.dtype).view(t.shape).copy_(t.data)
        self.bind(buffer)


class _HostSync:
    """The CPU stand-in for streams and events: copies run at once, there is nothing to wait for."""

    def copy(self, slot: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)

    def wait_loaded(self, slot: int) -> None:
        pass

    def mark_free(self, slot: int) -> None:
        pass


class _CudaSync:
    """A side stream for the host→GPU copies; per slot, an event for 'copy landed' and one for 'free'."""

    def __init__(self, device: torch.device, slots: int):
        self.stream = torch.cuda.Stream(device)
        self.loaded = [torch.cuda.Event() for _ in range(slots)]
        self.free = [torch.cuda.Event() for _ in range(slots)]
        for e in self.free:  # recorded once so the first wait on each slot returns at once
            e.record(torch.cuda.current_stream(device))

    def copy(self, slot: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(self.free[slot])  # the slot's previous block has finished computing
            dst.copy_(src, non_blocking=True)
            self.loaded[slot].record(self.stream)

    def wait_loaded(self, slot: int) -> None:
        torch.cuda.current_stream().wait_event(self.loaded[slot])

    def mark_free(self, slot: int) -> None:
        self.free[slot].record(torch.cuda.current_stream())


def _in_backward() -> bool:
    """Whether autograd's engine is running (gradient checkpointing's recomputation calls blocks there)."""
    return bool(torch._C._current_graph_task_id() != -1)


@dataclass
class SwapStats:
    """What the swap did, for tests and the log: copies per block and how often a use had to wait for a
    copy it had not prefetched."""

    copies: list[int] = field(default_factory=list)
    unprefetched: int = 0

    @property
    def total_copies(self) -> int:
        return sum(self.copies)


class BlockSwap:
    """Streams the frozen tensors of ``blocks`` (in execution order) through two slots on ``device``."""

    SLOTS = 2

    def __init__(self, blocks: Sequence[torch.nn.Module], device: torch.device, *, pin: bool | None = None):
        if len(blocks) < 1:
            raise ValueError("BlockSwap needs at least one block")
        self.device = device
        pin = device.type == "cuda" if pin is None else pin
        self.layouts = [_Layout.of(_frozen_tensors(b)) for b in blocks]
        # One packed host buffer per block; pinned so the copies can run asynchronously.
        self.host: list[torch.Tensor] = []
        for layout in self.layouts:
            buf = torch.empty(layout.nbytes, dtype=torch.uint8, pin_memory=pin)
            layout.pack(buf)
            self.host.append(buf)
        self.slot_bytes = max(layout.nbytes for layout in self.layouts)
        self.slots = [
            torch.empty(self.slot_bytes, dtype=torch.uint8, device=device) for _ in range(self.SLOTS)
        ]
        self.sync: _HostSync | _CudaSync = (
            _CudaSync(device, self.SLOTS) if device.type == "cuda" else _HostSync()
        )
        self.in_slot: list[int | None] = [None] * self.SLOTS  # the block each slot holds
        self.current: int | None = None  # the block computing (its slot must not be overwritten)
        self.stats = SwapStats(copies=[0] * len(blocks))
        self._hooks = [b.register_forward_pre_hook(self._pre_hook(i)) for i, b in enumerate(blocks)]

    # ------------------------------------------------------------------ sizes (what the estimate counts)
    @property
    def host_bytes(self) -> int:
        return sum(h.numel() for h in self.host)

    @property
    def device_bytes(self) -> int:
        return self.SLOTS * self.slot_bytes

    # ------------------------------------------------------------------ the schedule
    def _next_use(self, i: int) -> int | None:
        """The block used after block ``i``: forward order in forward (wrapping around between inference
        calls: sampling calls the transformer again), reverse order in backward."""
        n = len(self.layouts)
        if _in_backward():
            return i - 1 if i > 0 else None
        if i + 1 < n:
            return i + 1
        if torch.is_grad_enabled():  # the backward comes next; block i itself stays resident for it
            return i - 1 if i > 0 else None
        return 0 if n > 1 else None

    def _slot_of(self, block: int) -> int | None:
        for s, b in enumerate(self.in_slot):
            if b == block:
                return s
        return None

    def _load(self, block: int, avoid: int | None) -> int:
        """Start the copy of ``block`` into a slot that does not hold ``avoid``; returns the slot."""
        free = [s for s in range(self.SLOTS) if self.in_slot[s] is None]
        slot = free[0] if free else next(s for s in range(self.SLOTS) if self.in_slot[s] != avoid)
        old = self.in_slot[slot]
        if old is not None:
            self.layouts[old].bind(self.host[old])  # the evicted block reads from host memory again
        n = self.layouts[block].nbytes
        self.sync.copy(slot, self.slots[slot][:n], self.host[block])
        self.layouts[block].bind(self.slots[slot])
        self.in_slot[slot] = block
        self.stats.copies[block] += 1
        return slot

    def use(self, block: int) -> None:
        """Make ``block`` resident before it computes, and start copying the one after it."""
        if self.current is not None and self.current != block:
            # The previous block's kernels are all enqueued (forward: its call returned; backward: the
            # engine runs the blocks' gradients one block after another), so its slot may be reused once
            # they have run.
            prev_slot = self._slot_of(self.current)
            if prev_slot is not None:
                self.sync.mark_free(prev_slot)
        self.current = None
        slot = self._slot_of(block)
        if slot is None:
            self.stats.unprefetched += 1
            slot = self._load(block, avoid=None)
        self.sync.wait_loaded(slot)
        self.current = block
        nxt = self._next_use(block)
        if nxt is not None and nxt != block and self._slot_of(nxt) is None:
            self._load(nxt, avoid=block)

    def _pre_hook(self, block: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            self.use(block)

        return hook

    def resident_blocks(self) -> list[int]:
        """The blocks whose frozen tensors are views into a device slot right now."""
        return [b for b in self.in_slot if b is not None]

    def remove(self) -> None:
        """Stop swapping: every block reads from host memory (the caller moves them if it wants)."""
        for h in self._hooks:
            h.remove()
        for b, layout in enumerate(self.layouts):
            layout.bind(self.host[b])
        self.in_slot = [None] * self.SLOTS
        self.current = None


def swapped_blocks(transformer: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    """The last ``count`` blocks in execution order: double-stream blocks run first, then single-stream
    ones, so the single-stream blocks are swapped first."""
    double = cast("torch.nn.ModuleList", transformer.transformer_blocks)
    single = cast("torch.nn.ModuleList", transformer.single_transformer_blocks)
    order = [*double, *single]
    if not 0 < count <= len(order) - 2:
        raise BlockSwapError(
            f"memory.blocks_to_swap: {count} is more than this transformer allows ({len(order)} blocks: at "
            f"most {len(order) - 2})"
        )
    return order[len(order) - count :]


def install_block_swap(
    transformer: torch.nn.Module, count: int, device: torch.device, *, pin: bool | None = None
) -> BlockSwap:
    """Swap the last ``count`` blocks of ``transformer`` and move everything else to ``device``.

    Call after the adapter is added (its weights must stay on the device) and instead of
    ``transformer.to(device)``; the model must then not be moved as a whole (accelerate's device
    placement off)."""
    swap = BlockSwap(swapped_blocks(transformer, count), device, pin=pin)
    managed = {id(t) for layout in swap.layouts for t in layout.tensors}
    with torch.no_grad():
        for module in transformer.modules():
            for tensors in (module._parameters, module._buffers):
                for t in tensors.values():
                    if t is not None and id(t) not in managed and t.device != device:
                        t.data = t.data.to(device)
    log.info(
        "block swap: %d blocks streamed from %s host memory (%.2f GiB), %d GPU slots of %.2f GiB",
        count,
        "pinned" if swap.host and swap.host[0].is_pinned() else "pageable",
        swap.host_bytes / 2**30,
        BlockSwap.SLOTS,
        swap.slot_bytes / 2**30,
    )
    return swap


def setup_block_swap(
    transformer: torch.nn.Module, count: int, arch: TransformerArch, label: str, accelerator: Any
) -> BlockSwap:
    """The trainer's entry: the config rule checked the count for a named variant; a model resolved from
    its own config (variant auto) is checked here, in the same words. Refusals are ModelLoadErrors."""
    from flux2_lora.training.model import ModelLoadError

    why = blocks_to_swap_error(count, arch, label)
    if why is None and accelerator.num_processes > 1:
        why = "streams blocks for one process; with several GPUs use distributed.strategy fsdp"
    if why is not None:
        raise ModelLoadError(f"memory.blocks_to_swap: {why}")
    try:
        return install_block_swap(transformer, count, accelerator.device)
    except BlockSwapError as e:
        raise ModelLoadError(str(e)) from None
