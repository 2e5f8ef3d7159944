"""One FSDP rank of N, traced on meta tensors: torch's real ``fully_shard`` under a fake process group.

The fake process group (torch.testing's ``FakeStore`` + the "fake" backend) lets one process act as rank 0
of N: collectives return without communicating, so every buffer FSDP2 allocates for them (the flat
all-gather buffer, the unsharded parameters, the reduce-scatter input and output) is really allocated,
here as meta tensors, and counted by the storage tracker. FSDP frees and re-allocates unsharded
parameters by resizing their storages in place, so the tracker also follows ``UntypedStorage.resize_``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from flux2_lora.config import TrainConfig

META = torch.device("meta")


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """This process as rank 0 of ``world_size`` (no communication), for the duration of the block."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("an FSDP trace cannot run inside a distributed run (a process group exists)")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def meta_fsdp() -> Iterator[None]:
    """Let FSDP run on meta parameters: it refuses them before its first forward (a real run must
    materialise them); a trace never needs their values."""
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

    original = FSDPParamGroup._validate_no_meta_params
    FSDPParamGroup._validate_no_meta_params = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        FSDPParamGroup._validate_no_meta_params = original  # type: ignore[method-assign]


def shard_on_meta(model: torch.nn.Module, config: TrainConfig, dtype: torch.dtype) -> None:
    """``fully_shard`` as the trainer applies it (:func:`~.distributed.shard_transformer`) to a meta
    model, on a CPU mesh whose buffers are made on meta."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from flux2_lora.training.distributed import shard_transformer
    from flux2_lora.training.trace import StorageTracker

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    tracker = StorageTracker()
    with tracker, tracker.meta_factories():
        shard_transformer(model, config, torch.device("cpu"), dtype, mesh)


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor a rank holds: a DTensor's local shard, else the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t._local_tensor if isinstance(t, DTensor) else t
