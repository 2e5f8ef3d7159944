"""Rules of the ``distributed`` section that involve other fields (pure; :func:`io.cross_check` calls it).

FSDP (PyTorch FSDP2, applied by the trainer) shards plain bf16/fp16/fp32 weights. Combinations it cannot
run are errors here, named by field, rather than a crash minutes into loading:

- quantized weights (bitsandbytes NF4, torchao int8) are not tensors FSDP can shard;
- FP8 base layers (torchao float8) need FSDP-specific all-gather support that is not wired up;
- regional ``torch.compile`` of blocks that FSDP hooks is untested here, so it is refused, not guessed;
- bitsandbytes' 8-bit AdamW keeps per-tensor state that does not understand sharded tensors.

FSDP with one process trains like a single process (nothing to shard): a warning, so that a config
written for 2 GPUs still resumes on one (what a checkpoint allows).
"""

from __future__ import annotations

from typing import Literal

from flux2_lora.config.schema import TrainConfig

Issue = tuple[str, str, Literal["error", "warning"]]  # (field, message, level)


def distributed_issues(c: TrainConfig) -> list[Issue]:
    d = c.distributed
    out: list[Issue] = []
    if d.machine_rank >= d.num_machines:
        out.append(
            (
                "distributed.machine_rank",
                f"{d.machine_rank} is not below distributed.num_machines ({d.num_machines}); machines are "
                f"numbered 0 to {d.num_machines - 1}",
                "error",
            )
        )
    if d.num_machines > 1 and not d.main_process_ip:
        out.append(
            (
                "distributed.main_process_ip",
                f"{d.num_machines} machines need the address of machine 0 (a host name or IP the others "
                "can reach)",
                "error",
            )
        )
    if d.fsdp_cpu_offload and d.strategy != "fsdp":
        out.append(
            (
                "distributed.fsdp_cpu_offload",
                "offloads FSDP's shards: it needs distributed.strategy fsdp",
                "error",
            )
        )
    if d.fsdp_cpu_offload and c.model.device == "cpu":
        out.append(
            (
                "distributed.fsdp_cpu_offload",
                "the run is on the CPU already (model.device cpu): there is nothing to offload",
                "error",
            )
        )
    if d.strategy != "fsdp":
        return out
    if d.world_size == 1:
        out.append(
            (
                "distributed.strategy",
                "fsdp with one process shards nothing: it trains as a single process (set "
                "distributed.num_processes to the GPU count to shard)",
                "warning",
            )
        )
    refused = {
        "memory.quantization": (
            c.memory.quantization != "none",
            f"{c.memory.quantization} weights cannot be sharded by FSDP; use distributed.strategy ddp "
            "with quantization, or fsdp with bf16 weights (sharding saves more than quantizing)",
        ),
        "performance.float8": (
            c.performance.float8,
            "FP8 base layers are not supported with distributed.strategy fsdp; turn one of them off",
        ),
        "performance.compile": (
            c.performance.compile,
            "compiling FSDP-sharded blocks is not supported here; turn off performance.compile or use "
            "distributed.strategy ddp",
        ),
        "training.optimizer": (
            c.training.optimizer == "adamw8bit",
            "bitsandbytes' 8-bit AdamW cannot hold FSDP-sharded state; use adamw (its state is sharded "
            "over the GPUs anyway)",
        ),
    }
    out += [(field, message, "error") for field, (bad, message) in refused.items() if bad]
    return out
