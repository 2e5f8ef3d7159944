"""Changes that make a configuration fit a GPU, each computed by re-estimating (pure)."""

from __future__ import annotations

from typing import Any

from ..config import TrainConfig
from ..config_io import apply_overrides, to_dict, validate_dict
from .estimate import estimate
from .gpus import verdict


# Moves in order of what they cost in quality or speed (free first); each is (title, overrides).
def _moves(c: TrainConfig) -> list[tuple[str, dict[str, Any]]]:
    m, t, d, lo = c.memory, c.training, c.dataset, c.lora
    moves: list[tuple[str, dict[str, Any]]] = []
    if not m.cache_text_embeddings:
        moves.append(
            ("cache text embeddings (free the text encoder)", {"memory.cache_text_embeddings": True})
        )
    if not m.cache_latents:
        moves.append(("cache latents (free the VAE)", {"memory.cache_latents": True}))
    if not m.cpu_offload:
        moves.append(
            (
                "text encoder on the CPU while caching (cpu_offload; slower start)",
                {"memory.cpu_offload": True},
            )
        )
    if not m.gradient_checkpointing:
        moves.append(("gradient checkpointing (~30% slower)", {"memory.gradient_checkpointing": True}))
    if t.batch_size > 1:
        moves.append(
            (
                f"batch 1 × {t.batch_size * t.gradient_accumulation_steps} accumulation (same effective batch)",
                {
                    "training.batch_size": 1,
                    "training.gradient_accumulation_steps": t.batch_size * t.gradient_accumulation_steps,
                },
            )
        )
    if t.optimizer in ("adamw", "adam", "prodigy"):
        moves.append(("Adafactor optimizer (factored state)", {"training.optimizer": "adafactor"}))
    if m.quantization == "none":
        moves.append(("int8 weights (torchao)", {"memory.quantization": "int8"}))
    if m.quantization != "nf4":
        moves.append(("NF4 weights (QLoRA, bitsandbytes)", {"memory.quantization": "nf4"}))
    if lo.rank > 16:
        moves.append((f"LoRA rank {lo.rank // 2}", {"lora.rank": lo.rank // 2, "lora.alpha": lo.alpha / 2}))
    for res in (1024, 768, 512):
        if d.resolution > res:
            moves.append((f"resolution {res}", {"dataset.resolution": res}))
    return moves


def _apply(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig | None:
    data, issues = apply_overrides(to_dict(config), [f"{k}={v}" for k, v in overrides.items()])
    if issues:
        return None
    new, problems = validate_dict(data)
    return new if new is not None and not [p for p in problems if p.level == "error"] else None


def recommendations(
    config: TrainConfig, gpu_gib: float, *, num_processes: int = 1, limit: int = 4
) -> list[dict]:
    """Up to ``limit`` change sets that each make the run fit (greedy from each first move)."""
    base = estimate(config, num_processes=num_processes).total_gib
    if verdict(base, gpu_gib) == "fits":
        return []
    moves = _moves(config)
    out: list[dict] = []
    seen: set[tuple] = set()
    for first in range(len(moves)):
        chosen: dict[str, Any] = {}
        titles: dict[str, str] = {}  # a later move on the same field (nf4 after int8) replaces the earlier
        current = config
        for title, ov in [moves[first], *moves[:first], *moves[first + 1 :]]:
            trial = _apply(current, {**ov})
            if trial is None:
                continue
            chosen.update(ov)
            for field_name in ov:
                titles.pop(field_name, None)
            titles[next(iter(ov))] = title
            current = trial
            total = estimate(current, num_processes=num_processes).total_gib
            if verdict(total, gpu_gib) == "fits":
                signature = tuple(sorted(chosen.items(), key=str))
                if signature not in seen:
                    seen.add(signature)
                    out.append(
                        {
                            "title": " + ".join(dict.fromkeys(titles.values())),
                            "overrides": dict(chosen),
                            "saves_gib": base - total,
                            "total_gib_after": total,
                            "fits_after": True,
                        }
                    )
                break
        if len(out) >= limit:
            break
    return sorted(out, key=lambda r: (len(r["overrides"]), -r["saves_gib"]))


def auto_fit(config: TrainConfig, gpu_gib: float, *, num_processes: int = 1) -> TrainConfig | None:
    """The least-degraded configuration that fits: moves applied in order of their cost until it fits."""
    current = config
    if verdict(estimate(current, num_processes=num_processes).total_gib, gpu_gib) == "fits":
        return current
    for _, ov in _moves(config):
        trial = _apply(current, ov)
        if trial is None:
            continue
        current = trial
        if verdict(estimate(current, num_processes=num_processes).total_gib, gpu_gib) == "fits":
            return current
    return None
