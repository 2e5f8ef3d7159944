"""Captions encoded once over several processes (DDP or FSDP with memory.cache_text_embeddings).

Rank 0 alone loads the text encoder (Mistral-24B for [dev], 48 GB in bf16) and encodes every caption; the
other processes never load it and get the embeddings from rank 0. With memory.cache_to_disk they read rank
0's files when every process sees them (one machine, or a shared run folder); otherwise rank 0
broadcasts the tensors, one at a time, and they stay in the receiving processes' RAM.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch

from flux2_lora.training import distributed as dist_util
from flux2_lora.training.batches import PromptSource
from flux2_lora.training.disk_cache import DiskPromptSource, DiskTensors

log = logging.getLogger("flux2_lora")
DIGEST_CAPTIONS = 16  # the embeddings summed up in each rank's record (a cheap check that ranks agree)


def share_prompt_cache(
    prompts: PromptSource, captions: list[str], is_main: bool, device: torch.device
) -> None:
    """Fill ``prompts``' cache with ``captions`` on every process; only rank 0 encodes. A collective."""
    if is_main:
        prompts.fill_cache(captions)
    unique = list(dict.fromkeys(captions))
    if isinstance(prompts, DiskPromptSource) and _files_seen_everywhere(prompts, unique, is_main, device):
        return
    mine = {p: prompts.cache[p] for p in unique} if is_main else None
    received = dist_util.broadcast_tensors(mine, device)
    if not is_main:
        for p, e in received.items():
            prompts.cache[p] = e.pin_memory() if prompts.pin else e
        if isinstance(prompts, DiskPromptSource):
            log.warning(
                "memory.cache_to_disk: this process does not see rank 0's cache files (%s); its prompt "
                "embeddings are held in RAM",
                prompts.disk.root,
            )


def _files_seen_everywhere(
    prompts: DiskPromptSource, unique: list[str], is_main: bool, device: torch.device
) -> bool:
    """Every process sees rank 0's embedding files: the others then read them from disk as rank 0 does."""
    import torch.distributed as dist

    keys = {p: prompts.disk.key("text", p, prompts.settings) for p in unique}
    seen = is_main or all(prompts.disk.has(k) for k in keys.values())
    flag = torch.tensor(float(seen), device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if not bool(flag.item()):
        return False
    if not is_main:
        cache: Any = prompts.cache
        if not isinstance(cache, DiskTensors):
            cache = DiskTensors(prompts.disk, {})
            prompts.cache = cache
        cache.keys_on_disk.update(keys)
    return True


def cache_digest(prompts: PromptSource, captions: list[str]) -> str:
    """SHA-256 of the first :data:`DIGEST_CAPTIONS` distinct captions' cached embeddings (with the count):
    the same on every process when they agree."""
    unique = list(dict.fromkeys(captions))
    h = hashlib.sha256(str(len(unique)).encode())
    for p in unique[:DIGEST_CAPTIONS]:
        h.update(p.encode())
        h.update(prompts.cache[p].float().contiguous().numpy().tobytes())
    return h.hexdigest()
