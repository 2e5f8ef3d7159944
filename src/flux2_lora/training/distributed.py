"""Several processes: FSDP2 sharding of the transformer, full-state checkpoints, rank agreement, rank memory.

accelerate's launcher starts the processes and its ``Accelerator`` joins them into a process group (NCCL
on GPUs, gloo on CPU). accelerate offers FSDP only on GPUs, so FSDP is applied here with torch's own
``fully_shard`` (FSDP2), the same way on GPUs and on CPU: each transformer block is one unit (all-gathered
for its forward and again for its backward), then the root takes the embedders and the output layers.
Frozen base weights and the fp32 LoRA are sharded alike; the LoRA's gradients and optimizer state are
therefore sharded too.

Checkpoints are written in one format whatever the process count: the full adapter (gathered on rank 0)
and the optimizer state keyed by parameter name, so a run saved by N processes resumes on M. Rank 0 reads
a checkpoint and broadcasts it, so machines other than machine 0 need no copy of the run directory.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from flux2_lora.config import TrainConfig

log = logging.getLogger("flux2_lora")
RANKS_DIR = "ranks"  # runs.RANKS_DIR: ranks/rank-<i>.json, one per process, written by rank 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def uses_fsdp(config: TrainConfig, num_processes: int) -> bool:
    """FSDP shards only over more than one process; with one it trains as a single process."""
    return config.distributed.strategy == "fsdp" and num_processes > 1


def fsdp_units(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP gathers one at a time: every double- and single-stream block."""
    double, single = (
        transformer.get_submodule(n) for n in ("transformer_blocks", "single_transformer_blocks")
    )
    return [*double.children(), *single.children()]


def shard_transformer(
    transformer: torch.nn.Module,
    config: TrainConfig,
    device: torch.device,
    dtype: torch.dtype,
    mesh: Any = None,
) -> None:
    """FSDP2 over all processes: one unit per block, then the root. The transformer may sit on the CPU:
    each unit is moved to ``device`` and sharded in turn, so a GPU never holds more than one whole block.

    Mixed precision: units are gathered in ``dtype`` (the fp32 LoRA shards are cast for compute, as
    autocast would), gradients are reduced in fp32 into the fp32 LoRA shards."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    d = config.distributed
    mesh = mesh or init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(
        param_dtype=None if dtype == torch.float32 else dtype, reduce_dtype=torch.float32
    )
    offload: OffloadPolicy = OffloadPolicy()
    if d.fsdp_cpu_offload:
        if device.type == "cuda":
            offload = CPUOffloadPolicy(pin_memory=True)
        else:
            log.warning("distributed.fsdp_cpu_offload: training on the CPU already; nothing to offload")
    for unit in fsdp_units(transformer):
        fully_shard(
            unit,
            mesh=mesh,
            reshard_after_forward=d.fsdp_reshard_after_forward,
            mp_policy=mp,
            offload_policy=offload,
        )
    fully_shard(
        transformer,
        mesh=mesh,
        reshard_after_forward=d.fsdp_reshard_after_forward,
        mp_policy=mp,
        offload_policy=offload,
    )
    log.info(
        "FSDP: %d blocks sharded over %d processes (%s compute, reshard after forward: %s, CPU offload: %s)",
        len(fsdp_units(transformer)),
        dist.get_world_size(),
        str(dtype).removeprefix("torch."),
        d.fsdp_reshard_after_forward,
        isinstance(offload, CPUOffloadPolicy),
    )


def shard_from_rank0(
    transformer: torch.nn.Module, config: TrainConfig, device: torch.device, dtype: torch.dtype
) -> None:
    """Shard a transformer that only rank 0 holds: the other processes built theirs on the meta device
    (:func:`~.model.transformer_on_meta`, with the same adapter added). Rank 0 keeps its full tensors
    (one copy in RAM) while every process shards; the others allocate their shards, then rank 0
    broadcasts each tensor (frozen weights and its initial adapter) and every process keeps its slice.
    A collective: every process calls it."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    main = dist.get_rank() == 0
    full = dict(transformer.state_dict()) if main else {}  # references, not copies: freed at the end
    shard_transformer(transformer, config, device, dtype)
    if not main:
        # FSDP's CPU offload keeps the shards in host RAM; otherwise they live on this process's device.
        where = torch.device("cpu") if config.distributed.fsdp_cpu_offload else device
        transformer.to_empty(device=where)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    set_model_state_dict(transformer, full, options=options)
    full.clear()
    log.info("FSDP: rank 0 read the transformer's weights and broadcast every process its shards")


# ------------------------------------------------------------------------------ adapter and optimizer state
def _peft_names(model: torch.nn.Module) -> dict[str, str]:
    """PEFT's adapter key (as in the LoRA file and checkpoints) → the parameter's name in the model.

    Found by identity: PEFT renames the keys of the state dict it is given but keeps its tensors."""
    from peft.utils import get_peft_model_state_dict

    placeholders = {n: torch.empty(0) for n, p in model.named_parameters() if p.requires_grad}
    by_id = {id(t): n for n, t in placeholders.items()}
    renamed = get_peft_model_state_dict(model, state_dict=placeholders)
    return {k: by_id[id(v)] for k, v in renamed.items() if id(v) in by_id}


def adapter_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The adapter's full tensor shapes by PEFT key, without gathering (a sharded tensor knows its
    global shape)."""
    params = dict(model.named_parameters())
    return {k: tuple(params[n].shape) for k, n in _peft_names(model).items()}


def full_adapter_state(model: torch.nn.Module, num_processes: int) -> dict[str, torch.Tensor]:
    """The whole adapter by PEFT key on the CPU. With several processes a collective: every process must
    call it; rank 0 gets the tensors, the others an empty dict."""
    if num_processes == 1 or not _is_sharded(model):
        from peft.utils import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(model))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    full = get_model_state_dict(model, options=options)
    if not full:
        return {}
    return {k: full[n] for k, n in _peft_names(model).items() if isinstance(full[n], torch.Tensor)}  # type: ignore[misc]


def _is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _raw_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer
    return optimizer


def optimizer_state(model: torch.nn.Module, optimizer: Any, num_processes: int) -> dict[str, Any]:
    """Optimizer state keyed by parameter name (``{"state": {name: …}, "param_groups": [{"params":
    [name, …], …}]}``), whole, in every mode. With several processes a collective; rank 0 gets it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=num_processes > 1)
    return dict(get_optimizer_state_dict(model, _raw_optimizer(optimizer), options=options))


def by_name(state: dict[str, Any], model: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """A checkpoint's optimizer state keyed by parameter name. Checkpoints written before names were
    stored key it by position (torch's ``optimizer.state_dict()``): positions follow the optimizer's
    parameter order, which is the model's trainable parameters in order, so they map one to one."""
    groups = state.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ValueError("optimizer state has no parameter groups")
    ids = [p for g in groups for p in g.get("params", [])]
    if all(isinstance(p, str) for p in ids):
        return state
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in ids):
        raise ValueError("optimizer state mixes parameter names and positions")
    names = {id(p): n for n, p in model.named_parameters()}
    live = [names[id(p)] for g in _raw_optimizer(optimizer).param_groups for p in g["params"]]
    if sorted(ids) != list(range(len(live))):
        raise ValueError(
            f"optimizer state holds {len(ids)} parameters, this run's optimizer {len(live)}: saved for another "
            "adapter"
        )
    inner = state.get("state", {})
    if not isinstance(inner, dict):
        raise ValueError("optimizer state's 'state' is not a mapping")
    return {
        "state": {live[int(k)]: v for k, v in inner.items()},
        "param_groups": [{**g, "params": [live[i] for i in g["params"]]} for g in groups],
    }


def load_states(
    model: torch.nn.Module,
    optimizer: Any,
    adapter: dict[str, torch.Tensor] | None,
    optim_state: dict[str, Any] | None,
    num_processes: int,
) -> None:
    """Load a whole adapter (PEFT keys, checked against the model by the caller) and optimizer state (by
    name, see :func:`by_name`) into the live, possibly sharded, model. With several processes a
    collective: rank 0 passes the states, the others None; rank 0's are broadcast and sharded."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    many = num_processes > 1
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=many, strict=False)
    names = _peft_names(model)
    model_sd: dict[str, Any] = {names[k]: v for k, v in (adapter or {}).items() if k in names}
    set_model_state_dict(model, model_sd, options=options)
    with_optimizer = bool(broadcast_object(optim_state is not None)) if many else optim_state is not None
    if with_optimizer:
        set_optimizer_state_dict(model, _raw_optimizer(optimizer), optim_state or {}, options=options)


def broadcast_tensors(
    tensors: dict[str, torch.Tensor] | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """Rank 0's ``tensors`` on every process, on the CPU; rank 0 passes them, the others None. Sent one
    at a time through ``device`` (NCCL moves only GPU tensors), so no process holds more than one extra."""
    import torch.distributed as dist

    main = dist.get_rank() == 0
    specs = broadcast_object(
        [(k, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in (tensors or {}).items()]
        if main
        else None
    )
    out: dict[str, torch.Tensor] = {}
    for key, shape, dtype in specs:
        if main:
            assert tensors is not None
            buf = tensors[key].to(device)
        else:
            buf = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        dist.broadcast(buf, src=0)
        out[key] = tensors[key] if main and tensors is not None else buf.cpu()
    return out


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every process (plain values only: checkpoint paths, steps, scheduler state)."""
    import torch.distributed as dist

    if world_size() == 1:
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------ each rank's memory
# What this process loaded during setup (the transformer's bytes it read, whether it loaded the text
# encoder, a digest of its prompt embeddings): written into its ranks/ record, so the monitor and the
# tests see that under FSDP only rank 0 reads the weights and only one process encodes the captions.
_RANK_FACTS: dict[str, Any] = {}


def note_rank(key: str, value: Any) -> None:
    _RANK_FACTS[key] = value


def rank_memory(step: int) -> dict[str, Any]:
    """This process's memory now: peak GPU allocated / reserved (None on CPU) and host RSS."""
    import psutil

    gpu = reserved = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu = torch.cuda.max_memory_allocated() / 2**30
        reserved = torch.cuda.max_memory_reserved() / 2**30
    import resource

    return {
        "rank": int(os.environ.get("RANK", "0")),
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "host": socket.gethostname()[:100],
        "pid": os.getpid(),
        "step": step,
        "time": time.time(),
        "gpu_allocated_peak_gib": gpu,
        "gpu_reserved_peak_gib": reserved,
        "rss_gib": psutil.Process().memory_info().rss / 2**30,
        "rss_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        **_RANK_FACTS,
    }


def record_ranks(run_dir: Path, step: int, is_main: bool) -> None:
    """Every process's memory, gathered to rank 0, which writes ``ranks/rank-<i>.json`` (another
    machine may not see the run directory). A collective with several processes."""
    import torch.distributed as dist

    from flux2_lora.runs import write_json_atomic

    mine = rank_memory(step)
    if world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
    else:
        gathered = [mine]
    if not is_main:
        return
    folder = run_dir / RANKS_DIR
    folder.mkdir(exist_ok=True)
    for record in gathered:
        write_json_atomic(folder / f"rank-{int(record['rank'])}.json", record)
