"""Changes that make a configuration fit a GPU, each computed by re-estimating (pure).

Moves are ordered by what they cost: first those that change nothing in the trained LoRA (caching,
checkpointing, accumulation instead of batch), then slower ones (CPU offload), then those that touch quality in
increasing measure (8-bit optimizer state, int8, NF4, another optimizer, no DoRA, lower rank,
lower resolution). Sharding with FSDP costs nothing in quality: over the GPUs the run already has it is a
cheap move; more GPUs than that (hardware to have, and a larger effective batch) come after 8-bit optimizer
state, before quantization, and :func:`auto_fit` never adds GPUs. A recommendation is a minimal set of moves: dropping any one of them no longer fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import parse_override, to_dict, validate_dict
from flux2_lora.memory.estimate import estimate
from flux2_lora.memory.gpus import verdict


@dataclass(frozen=True)
class Move:
    title: str
    overrides: tuple[tuple[str, Any], ...]  # ("section.key", value), applied in order
    cost: float  # 0: same LoRA; 1: slower; 2+: quality, in increasing measure

    @property
    def family(self) -> tuple[str, ...]:
        """The fields it sets: moves of one family are alternatives (int8 or NF4, rank 32 or 16)."""
        return tuple(k for k, _ in self.overrides)


def _move(title: str, cost: float, **overrides: Any) -> Move:
    return Move(title, tuple((k.replace("__", "."), v) for k, v in overrides.items()), cost)


def _dominates(a: list[Move], b: list[Move]) -> bool:
    """``a`` asks for no more than ``b``: each of its moves has a counterpart in ``b`` that sets the same
    fields at least as costly (b may have more moves)."""
    return all(any(y.family == x.family and y.cost >= x.cost for y in b) for x in a)


def moves(c: TrainConfig) -> list[Move]:
    """Every change that lowers the memory of ``c``, cheapest first."""
    m, t, d, lo = c.memory, c.training, c.dataset, c.lora
    out: list[Move] = []
    if not m.cache_text_embeddings:
        out.append(
            _move("cache text embeddings (frees the text encoder)", 0, memory__cache_text_embeddings=True)
        )
    if not m.cache_latents:
        out.append(_move("cache latents (frees the VAE)", 0, memory__cache_latents=True))
    if not m.gradient_checkpointing:
        out.append(
            _move("gradient checkpointing (~30% slower steps)", 0, memory__gradient_checkpointing=True)
        )
    if t.batch_size > 1:
        steps = t.batch_size * t.gradient_accumulation_steps
        out.append(
            _move(
                f"batch 1 × {steps} accumulation steps (same effective batch)",
                0,
                training__batch_size=1,
                training__gradient_accumulation_steps=steps,
            )
        )
    if not m.vae_slicing and m.cache_latents:
        out.append(_move("VAE slicing (encode one image at a time)", 0, memory__vae_slicing=True))
    if not m.vae_tiling and d.resolution > 1024:
        out.append(_move("VAE tiling (encode and decode in tiles)", 0, memory__vae_tiling=True))
    if c.model.dtype == "float32":
        out.append(_move("bfloat16 weights (the usual training precision)", 1, model__dtype="bfloat16"))
    if not m.cpu_offload:
        out.append(
            _move("text encoder on the CPU (cpu_offload; slow caption encoding)", 1, memory__cpu_offload=True)
        )
    dp = c.distributed
    if m.quantization == "none" and not c.performance.float8 and not c.performance.compile:
        for n in (2, 4, 8):
            if n > dp.num_processes or (n == dp.num_processes and dp.strategy != "fsdp"):
                more = n > dp.num_processes
                cost = (1.5 if dp.num_processes > 1 else 2.5) if more else 0.5
                batch = f"; effective batch × {n * dp.num_machines}" if more else ""
                out.append(
                    _move(
                        f"{n} GPUs{' per machine' if dp.num_machines > 1 else ''} with FSDP (the model sharded "
                        f"{n * dp.num_machines} ways{batch})",
                        cost + n / 100,
                        distributed__strategy="fsdp",
                        distributed__num_processes=n,
                    )
                )
    if c.validation.enabled:
        out.append(_move("no validation samples during training", 2, validation__enabled=False))
    sharded = dp.strategy == "fsdp" and dp.world_size > 1
    if t.optimizer in ("adamw", "adam") and not sharded:
        out.append(_move("8-bit AdamW state (bitsandbytes)", 2, training__optimizer="adamw8bit"))
    if m.quantization == "none" and not sharded:
        out.append(_move("int8 weights (torchao)", 3, memory__quantization="int8"))
    if m.quantization != "nf4" and not sharded:
        out.append(_move("NF4 weights (QLoRA, bitsandbytes)", 4, memory__quantization="nf4"))
    if t.optimizer not in ("adafactor", "sgd"):
        lr = {"training.learning_rate": 1e-4} if t.optimizer == "prodigy" else {}
        out.append(
            Move(
                "Adafactor optimizer (factored state)", (("training.optimizer", "adafactor"), *lr.items()), 5
            )
        )
    if lo.use_dora:
        out.append(_move("plain LoRA instead of DoRA", 6, lora__use_dora=False))
    rank, step = lo.rank, 0
    while rank > 16:
        # alpha follows the rank so that alpha/rank, the update scale, stays the same.
        rank //= 2
        step += 1
        out.append(
            _move(f"LoRA rank {rank}", 7 + step / 10, lora__rank=rank, lora__alpha=lo.alpha * rank / lo.rank)
        )
    for step, res in enumerate(r for r in (1024, 768, 512) if d.resolution > r):
        out.append(_move(f"resolution {res}", 8 + step / 10, dataset__resolution=res))
    return out


def _validated(
    config: TrainConfig,
    overrides: dict[str, Any],
    data: dict[str, Any] | None = None,
    parsed_texts: dict[str, Any] | None = None,
) -> TrainConfig | None:
    """The overrides applied as ``--set`` would apply them, or None if they are invalid. ``data``
    (``to_dict(config)``) and ``parsed_texts`` (parse_override's answers by text) may be shared between
    calls: only the sections the overrides set are copied (apply_overrides' deep copy of the whole
    config costs more than the check), and each override is parsed once."""
    out = dict(to_dict(config) if data is None else data)
    parsed_texts = {} if parsed_texts is None else parsed_texts
    for key, value in overrides.items():
        text = f"{key}={value}"
        if text not in parsed_texts:
            parsed_texts[text] = parse_override(text)
        parsed, issue = parsed_texts[text]
        if issue is not None or parsed is None:
            return None
        section, field, parsed_value = parsed
        out[section] = {**out.get(section, {}), field: parsed_value}
    new, problems = validate_dict(out)
    return new if new is not None and not [p for p in problems if p.level == "error"] else None


class _Totals:
    """The estimated total of the config with a set of moves applied. The greedy searches try the same
    sets many times over (in other orders): each resulting config is estimated once."""

    def __init__(self, config: TrainConfig, num_processes: int | None) -> None:
        self.config, self.num_processes = config, num_processes
        self._seen: dict[frozenset[tuple[str, Any]], float] = {}
        self._sections: dict[tuple[str, frozenset[tuple[str, Any]]], Any] = {}

    def _with(self, overrides: dict[str, Any]) -> TrainConfig:
        """The config with the overrides applied, unvalidated (for re-estimating: the recommendations
        that come out are validated). Candidates share the sections they change alike."""
        updates: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            section, field = key.split(".")
            updates.setdefault(section, {})[field] = value
        copies = {}
        for section, fields in updates.items():
            shared = (section, frozenset(fields.items()))
            if shared not in self._sections:
                self._sections[shared] = getattr(self.config, section).model_copy(update=fields)
            copies[section] = self._sections[shared]
        return self.config.model_copy(update=copies)

    def __call__(self, chosen: list[Move]) -> float:
        overrides = _overrides(chosen)  # the last move setting a field wins
        key = frozenset(overrides.items())
        if key not in self._seen:
            # A move that sets the process count wins over the count the caller measured or assumed.
            n = None if any(k.startswith("distributed.") for k in overrides) else self.num_processes
            self._seen[key] = estimate(self._with(overrides), num_processes=n).total_gib
        return self._seen[key]


def _minimal(totals: _Totals, chosen: list[Move], gpu_gib: float) -> list[Move]:
    """Drop moves that are not needed, the most costly first."""
    kept = list(chosen)
    for mv in sorted(chosen, key=lambda m: -m.cost):
        trial = [m for m in kept if m is not mv]
        if verdict(totals(trial), gpu_gib) == "fits":
            kept = trial
    return kept


def _sets_fsdp(mv: Move) -> bool:
    return dict(mv.overrides).get("distributed.strategy") == "fsdp"


def _unshardable(mv: Move) -> bool:
    """Quantized weights and bitsandbytes' 8-bit state, which FSDP cannot shard (config/distributed.py)."""
    o = dict(mv.overrides)
    return o.get("memory.quantization", "none") != "none" or o.get("training.optimizer") == "adamw8bit"


def _conflict(a: Move, b: Move) -> bool:
    return (_sets_fsdp(a) and _unshardable(b)) or (_sets_fsdp(b) and _unshardable(a))


def _greedy(totals: _Totals, order: list[Move], gpu_gib: float) -> tuple[list[Move], bool]:
    chosen: list[Move] = []
    for mv in order:
        if any(_conflict(mv, other) for other in chosen):
            continue
        chosen.append(mv)
        if verdict(totals(chosen), gpu_gib) == "fits":
            return _minimal(totals, chosen, gpu_gib), True
    return chosen, False


def _overrides(chosen: list[Move]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mv in chosen:
        out.update(mv.overrides)
    return out


def recommendations(
    config: TrainConfig, gpu_gib: float, *, num_processes: int | None = None, limit: int = 4
) -> list[dict[str, Any]]:
    """Up to ``limit`` minimal change sets that each make the run fit, the least costly first.

    Empty when it already fits; one entry with ``fits_after`` False when nothing fits."""
    base = estimate(config, num_processes=num_processes).total_gib
    if verdict(base, gpu_gib) == "fits":
        return []
    all_moves = moves(config)
    totals = _Totals(config, num_processes)
    found: list[list[Move]] = []
    for first in range(len(all_moves)):
        # Greedy from each move in turn gives different families of fixes (offload vs quantize vs …).
        order = [all_moves[first], *all_moves[:first], *all_moves[first + 1 :]]
        chosen, fits = _greedy(totals, order, gpu_gib)
        if fits and not any(_dominates(f, chosen) for f in found):
            found = [f for f in found if not _dominates(chosen, f)]
            found.append(chosen)
    out: list[dict[str, Any]] = []
    if not found:
        chosen, _ = _greedy(totals, all_moves, gpu_gib)
        found = [chosen]
    found.sort(key=lambda f: (max(m.cost for m in f), sum(m.cost for m in f), len(f)))
    data = to_dict(config)
    parsed_texts: dict[str, Any] = {}
    for chosen in found[:limit]:
        chosen = sorted(chosen, key=lambda m: m.cost)
        overrides = _overrides(chosen)
        if _validated(config, overrides, data, parsed_texts) is None:
            continue
        total = totals(chosen)
        # The label is what the re-estimate says: a best effort may still land within the GPU (tight).
        after = verdict(total, gpu_gib)
        out.append(
            {
                "title": " + ".join(m.title for m in chosen),
                "overrides": overrides,
                "moves": [{"title": m.title, "overrides": dict(m.overrides)} for m in chosen],
                "saves_gib": base - total,
                "total_gib_after": total,
                "fits_after": after != "does_not_fit",
                "verdict_after": after,
            }
        )
    return out


def auto_fit(config: TrainConfig, gpu_gib: float, *, num_processes: int | None = None) -> TrainConfig | None:
    """The best-quality configuration that fits: the cheapest moves first, then unneeded ones dropped.

    None when even every move together does not fit."""
    if verdict(estimate(config, num_processes=num_processes).total_gib, gpu_gib) == "fits":
        return config
    have = config.distributed.num_processes
    usable = [m for m in moves(config) if dict(m.overrides).get("distributed.num_processes", have) <= have]
    chosen, fits = _greedy(_Totals(config, num_processes), usable, gpu_gib)
    return _validated(config, _overrides(chosen)) if fits else None
