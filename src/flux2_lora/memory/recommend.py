"""Changes that make a configuration fit a GPU, each computed by re-estimating (pure).

Moves are ordered by what they cost: first those that change nothing in the trained LoRA (caching,
checkpointing, accumulation instead of batch), then slower ones (block swap, CPU offload), then those that
touch quality in increasing measure (a quantized text encoder, 8-bit optimizer state, fp8, int8, NF4
weights, another optimizer, no DoRA, lower rank, lower resolution). Sharding with FSDP costs nothing in
quality: over the GPUs the run already has it is a cheap move; more GPUs than that (hardware to have, and a
larger effective batch) are offered only when no set of moves fits the GPUs the run has, and
:func:`auto_fit` never adds GPUs. A recommendation is a minimal set of moves: dropping any one of them no
longer fits; block swap swaps the fewest blocks that fit. With ``host_gib`` a set must also fit that much
host RAM (swapped blocks and a CPU text encoder live there). Each recommendation says its step time
relative to now (memory/timing.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from flux2_lora.config import SECTIONS, TrainConfig
from flux2_lora.config.io import cross_check, parse_override, to_dict, validate_dict, validate_section
from flux2_lora.memory.estimate import (
    CACHING_READS,
    Estimate,
    allocator_slack,
    caching_total_gib,
    estimate,
    host_facts,
    resolve_shapes,
    same_model_files,
)
from flux2_lora.memory.gpus import TIGHT_HEADROOM, verdict
from flux2_lora.memory.host import gpu_host_peak
from flux2_lora.memory.static import swap_table, swappable_blocks
from flux2_lora.memory.timing import step_time
from flux2_lora.units import GIB

SWAP = "memory.blocks_to_swap"
# Fields that moves set and memory/host.py's gpu_host_peak does not read (nor the estimate's swap and
# parameter count it takes): sets of moves that differ only in them share one host RAM figure. A field
# listed here that it comes to read shows in tests/memory/test_recommend_speed.py.
_HOST_IGNORES = frozenset(
    {
        "memory.gradient_checkpointing",
        "memory.vae_slicing",
        "memory.vae_tiling",
        "validation.enabled",
        "training.batch_size",
        "training.gradient_accumulation_steps",
        "training.optimizer",
        "training.learning_rate",
        "lora.alpha",
    }
)
_TEXT_ENCODER = {"memory.cpu_offload", "memory.text_encoder_quantization"}


@dataclass(frozen=True)
class Move:
    title: str
    overrides: tuple[tuple[str, Any], ...]  # ("section.key", value), applied in order
    cost: float  # 0: same LoRA; 1: slower; 2+: quality, in increasing measure

    @functools.cached_property  # the searches ask it tens of thousands of times
    def family(self) -> tuple[str, ...]:
        """The fields it sets: moves of one family are alternatives (int8 or NF4, rank 32 or 16; the text
        encoder on the CPU or quantized on the GPU)."""
        keys = tuple(k for k, _ in self.overrides)
        return ("text encoder",) if set(keys) & _TEXT_ENCODER else keys

    @functools.cached_property
    def fsdp(self) -> bool:
        return dict(self.overrides).get("distributed.strategy") == "fsdp"

    @functools.cached_property
    def unshardable(self) -> bool:
        """Quantized weights, bitsandbytes' 8-bit state and block swap, which FSDP cannot shard
        (config/distributed.py)."""
        o = dict(self.overrides)
        return (
            o.get("memory.quantization", "none") != "none"
            or o.get("training.optimizer") == "adamw8bit"
            or bool(o.get(SWAP))
        )


def _move(title: str, cost: float, **overrides: Any) -> Move:
    return Move(title, tuple((k.replace("__", "."), v) for k, v in overrides.items()), cost)


def _dominates(a: list[Move], b: list[Move]) -> bool:
    """``a`` asks for no more than ``b``: each of its moves has a counterpart in ``b`` that sets the same
    fields at least as costly, swapping at least as many blocks (b may have more moves)."""
    return all(
        any(y.family == x.family and y.cost >= x.cost and _swapped(y) >= _swapped(x) for y in b) for x in a
    )


def _swapped(mv: Move) -> int:
    """Blocks a swap move swaps (more is slower and needs more host RAM); 0 for other moves."""
    return int(dict(mv.overrides).get(SWAP, 0))


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
    dp = c.distributed
    sharded = dp.strategy == "fsdp" and dp.world_size > 1
    most = swappable_blocks(resolve_shapes(c).arch)
    # Only where block swap can run (config/rules.py): with checkpointing, one process, no int8, no compile.
    can_swap = (
        m.gradient_checkpointing
        and m.quantization != "int8"
        and not c.performance.compile
        and dp.world_size == 1
    )
    if m.blocks_to_swap < most and not sharded and can_swap:
        # The greedy search tries the most blocks; _fewest_swapped then keeps the fewest that fit.
        out.append(_swap_move(most, most))
    if not m.cpu_offload:
        out.append(
            _move("text encoder on the CPU (cpu_offload; slow caption encoding)", 1, memory__cpu_offload=True)
        )
    if not m.cpu_offload and m.text_encoder_quantization == "none":
        for cost, q in ((1.8, "int8"), (1.9, "nf4")):
            out.append(
                _move(
                    f"text encoder in {q} (bitsandbytes; embeddings close to bf16)",
                    cost,
                    memory__text_encoder_quantization=q,
                )
            )
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
    if t.optimizer in ("adamw", "adam") and not sharded:
        out.append(_move("8-bit AdamW state (bitsandbytes)", 2, training__optimizer="adamw8bit"))
    if m.quantization == "none" and not sharded and not c.performance.float8:
        out.append(_move("fp8 weights (float8 e4m3, per-row scales)", 2.8, memory__quantization="fp8"))
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


def _swap_move(blocks: int, most: int) -> Move:
    return _move(
        f"swap {blocks} of {most + 2} blocks to host RAM (block swap)", 0.9, memory__blocks_to_swap=blocks
    )


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
    changed = _changes(overrides, {} if parsed_texts is None else parsed_texts)
    if changed is None:
        return None
    out = dict(to_dict(config) if data is None else data)
    for section, fields in changed.items():
        out[section] = {**out.get(section, {}), **fields}
    new, problems = validate_dict(out)
    return new if new is not None and not [p for p in problems if p.level == "error"] else None


def _changes(overrides: dict[str, Any], parsed_texts: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The overrides as ``--set`` parses them, by section; None when one does not parse. Each text is
    parsed once (``parsed_texts`` is shared between calls)."""
    changed: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        text = f"{key}={value}"
        if text not in parsed_texts:
            parsed_texts[text] = parse_override(text)
        parsed, issue = parsed_texts[text]
        if issue is not None or parsed is None:
            return None
        section, field, parsed_value = parsed
        changed.setdefault(section, {})[field] = parsed_value
    return changed


def _valid(config: TrainConfig, overrides: dict[str, Any], parsed_texts: dict[str, Any]) -> bool:
    """Whether the overrides applied as ``--set`` would apply them give a valid config: what
    :func:`_validated` answers, checking only the sections they change (the others are ``config``'s own,
    valid already) and the cross-field rules; a quarter of the cost."""
    changed = _changes(overrides, parsed_texts)
    if changed is None:
        return False
    sections: dict[str, Any] = {}
    for name, fields in changed.items():
        if name not in SECTIONS:
            return False
        data = {**getattr(config, name).model_dump(), **fields}
        new, problems = validate_section(SECTIONS[name], data, name)
        if new is None or any(p.level == "error" for p in problems):
            return False
        sections[name] = new
    built = config.model_copy(update=sections)  # unvalidated: the changed sections are, just above
    return not [i for i in cross_check(built) if i.level == "error"]


class _Totals:
    """The estimated total (and host RAM) of the config with a set of moves applied. The greedy searches try
    the same sets many times over (in other orders): each resulting config is estimated once."""

    def __init__(
        self, config: TrainConfig, num_processes: int | None, gpu_gib: float, host_gib: float | None
    ) -> None:
        self.config, self.num_processes = config, num_processes
        self.gpu_gib, self.host_gib = gpu_gib, host_gib
        self._estimates: dict[frozenset[tuple[str, Any]], Estimate] = {}
        self._host: dict[frozenset[tuple[str, Any]], float] = {}
        self._sections: dict[tuple[str, frozenset[tuple[str, Any]]], Any] = {}
        self.fewest: dict[frozenset[tuple[str, Any]], int] = {}  # _fewest_swapped's answers
        # caching_total_gib's, by the overrides of what it reads (sets that differ elsewhere share it)
        self._floor: dict[frozenset[tuple[str, Any]], float] = {}
        # The config of each set, built once: the floor and the estimate of a set share it.
        self._configs: dict[frozenset[tuple[str, Any]], TrainConfig] = {}
        self._fits: dict[tuple[frozenset[tuple[str, Any]], float | None], bool] = {}

    def _config(self, key: frozenset[tuple[str, Any]], overrides: dict[str, Any]) -> TrainConfig:
        if key not in self._configs:
            self._configs[key] = self._with(overrides)
        return self._configs[key]

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

    def _estimated(self, key: frozenset[tuple[str, Any]], overrides: dict[str, Any]) -> Estimate:
        if key not in self._estimates:
            config = self._config(key, overrides)
            self._estimates[key] = estimate(config, num_processes=self._processes(overrides))
        return self._estimates[key]

    def _processes(self, overrides: dict[str, Any]) -> int | None:
        # A move that sets the process count wins over the count the caller measured or assumed.
        return None if any(k.startswith("distributed.") for k in overrides) else self.num_processes

    def __call__(self, chosen: list[Move]) -> float:
        return self.estimate_of(chosen).total_gib

    def estimate_of(self, chosen: list[Move]) -> Estimate:
        overrides = _overrides(chosen)  # the last move setting a field wins
        return self._estimated(frozenset(overrides.items()), overrides)

    def config_of(self, chosen: list[Move]) -> TrainConfig:
        overrides = _overrides(chosen)
        return self._config(frozenset(overrides.items()), overrides)

    def host(self, chosen: list[Move]) -> float:
        """The machine's host RAM peak of the run on GPUs."""
        overrides = _overrides(chosen)
        return self._host_of(frozenset(overrides.items()), overrides)

    def _host_of(self, key: frozenset[tuple[str, Any]], overrides: dict[str, Any]) -> float:
        shared = frozenset(item for item in key if item[0] not in _HOST_IGNORES)
        if shared not in self._host:
            # What it reads of the estimate, without the estimate (many candidates fail here first).
            config = self._config(key, overrides)
            self._host[shared] = gpu_host_peak(config, host_facts(config, self._processes(overrides)))
        return self._host[shared]

    def fits(self, chosen: list[Move]) -> bool:
        overrides = _overrides(chosen)
        key = frozenset(overrides.items())
        # The searches ask about the same sets many times over: each answer is worked out once per host
        # limit (_found lifts it for a second pass).
        asked = (key, self.host_gib)
        if asked not in self._fits:
            self._fits[asked] = self._fits_of(key, overrides)
        return self._fits[asked]

    def _fits_of(self, key: frozenset[tuple[str, Any]], overrides: dict[str, Any]) -> bool:
        if key not in self._estimates:
            # The caching phase alone (text encoder, VAE) decides many candidates at a fifth of the cost.
            # Its key holds the process count too: a distributed override sets it (_processes).
            floor = frozenset(item for item in key if _read_by_floor(item[0]))
            if floor not in self._floor:
                config = self._config(key, overrides)
                self._floor[floor] = caching_total_gib(config, num_processes=self._processes(overrides))
            if verdict(self._floor[floor], self.gpu_gib) != "fits":
                return False
        if self.host_gib is not None and self._host_of(key, overrides) > self.host_gib:
            return False
        return verdict(self._estimated(key, overrides).total_gib, self.gpu_gib) == "fits"


@functools.lru_cache(maxsize=256)
def _read_by_floor(key: str) -> bool:
    """Whether caching_total_gib reads the field ``section.name``."""
    return key in CACHING_READS or key.split(".", 1)[0] in CACHING_READS


def _minimal(totals: _Totals, chosen: list[Move]) -> list[Move]:
    """Drop moves that are not needed, the most costly first."""
    kept = list(chosen)
    for mv in sorted(chosen, key=lambda m: -m.cost):
        if _swapped(mv) > 3:
            continue  # _fewest_swapped found one block fewer too many: none at all fits even less
        trial = [m for m in kept if m is not mv]
        if totals.fits(trial):
            kept = trial
    return kept


def _fewest_swapped(totals: _Totals, chosen: list[Move]) -> list[Move]:
    """A set that swaps blocks, with the fewest swapped blocks that still fit (bisection: from 2 blocks
    on, each block more lowers the memory or keeps it)."""
    at = next((i for i, m in enumerate(chosen) if m.family == (SWAP,)), None)
    if at is None:
        return chosen
    most = int(chosen[at].overrides[0][1])

    def with_n(n: int) -> list[Move]:
        return [*chosen[:at], _swap_move(n, most), *chosen[at + 1 :]]

    # The greedy searches reach the same other moves from many starts: search once per set of them.
    key = frozenset(_overrides([m for m in chosen if m is not chosen[at]]).items())
    if key not in totals.fewest:
        n = _swap_guess(totals, with_n(most), most)
        # The guess is exact but for rounding: confirmed by re-estimating, moved up if need be.
        while n < most and not totals.fits(with_n(n)):
            n += 1
        totals.fewest[key] = n
    return with_n(totals.fewest[key])


def _swap_guess(totals: _Totals, chosen: list[Move], most: int) -> int:
    """The fewest swapped blocks that fit, read off the estimate with the most swapped (checked by
    re-estimating after): fewer swapped blocks add back the bytes they no longer save to the training and
    sampling phases alone, and the estimate's total is its tensor peak × (1 + slack) + a constant."""
    est, config = totals.estimate_of(chosen), totals.config_of(chosen)
    sh, q = resolve_shapes(config), config.memory.quantization
    slack = allocator_slack(config)
    constant = est.total_gib - est.allocated_peak_gib * (1 + slack)
    room = (totals.gpu_gib * (1 - TIGHT_HEADROOM) - constant) / (1 + slack)
    steps = max(v for k, v in est.phases.items() if k != "caching")
    table = swap_table(sh.arch, sh.weight_bytes, q)
    saved = table[most].saved
    for n in range(3, most):
        if steps + (saved - table[n].saved) / GIB <= room:
            return n
    return most


def _conflict(a: Move, b: Move) -> bool:
    return (a.fsdp and b.unshardable) or (b.fsdp and a.unshardable)


def _greedy(totals: _Totals, order: list[Move]) -> tuple[list[Move], bool]:
    chosen: list[Move] = []
    for mv in order:
        if any(_conflict(mv, other) for other in chosen):
            continue
        # A move of a family already chosen replaces it (int8 then NF4, rank 32 then 16): the same
        # overrides as keeping both, one move fewer for _minimal to try.
        trial = [*(m for m in chosen if m.family != mv.family), mv]
        chosen = trial
        if totals.fits(chosen):
            # The fewest swapped blocks first: then a costlier move that lets fewer blocks swap (fp8) stays.
            return _minimal(totals, _fewest_swapped(totals, chosen)), True
    return chosen, False


def _overrides(chosen: list[Move]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mv in chosen:
        out.update(mv.overrides)
    return out


def _adds_gpus(mv: Move, have: int) -> bool:
    return int(dict(mv.overrides).get("distributed.num_processes", have)) > have


def _search(totals: _Totals, all_moves: list[Move], limit: int) -> list[list[Move]]:
    """Minimal sets that fit, the least costly first; [] when none does."""
    found = _starts(totals, all_moves, limit)
    found.sort(key=lambda f: (max(m.cost for m in f), sum(m.cost for m in f), len(f)))
    return found


def _starts(totals: _Totals, all_moves: list[Move], limit: int) -> list[list[Move]]:
    found: list[list[Move]] = []
    for first in range(len(all_moves)):
        # A set keeping its first move costs at least that move: once ``limit`` sets cost less, a
        # costlier start cannot reach the answer (the rare set that drops its first move is one the
        # cheaper starts reach).
        if (
            len(found) >= limit
            and all_moves[first].cost > sorted(max(m.cost for m in f) for f in found)[limit - 1]
        ):
            continue
        # Greedy from each move in turn gives different families of fixes (offload vs quantize vs …).
        order = [all_moves[first], *all_moves[:first], *all_moves[first + 1 :]]
        chosen, fits = _greedy(totals, order)
        if fits and not any(_dominates(f, chosen) for f in found):
            found = [f for f in found if not _dominates(chosen, f)]
            found.append(chosen)
    return found


def _found(
    config: TrainConfig,
    gpu_gib: float,
    num_processes: int | None,
    host_gib: float | None,
    all_moves: list[Move],
    limit: int,
) -> tuple[_Totals, list[list[Move]]]:
    """The sets that fit the GPU and ``host_gib``; if none fits that host RAM, those that fit the GPU
    (their host RAM is stated). More GPUs than the run has only when no set fits the GPUs it has (so they
    are not searched at all when one does)."""
    totals = _Totals(config, num_processes, gpu_gib, host_gib)
    have = config.distributed.num_processes
    one = [m for m in all_moves if not _adds_gpus(m, have)]
    # The GPUs the run has before more of them, even if that needs more host RAM than assumed.
    for moves_ in (one, all_moves) if len(one) < len(all_moves) else (one,):
        totals.host_gib, totals.fewest = host_gib, {}
        found = _search(totals, moves_, limit)
        if not found and host_gib is not None:
            # The same estimates, judged without the host limit (fewer swapped blocks may now fit).
            totals.host_gib, totals.fewest = None, {}
            found = _search(totals, moves_, limit)
        if found:
            break
    return totals, found


def recommendations(config: TrainConfig, gpu_gib: float, **kwargs: Any) -> list[dict[str, Any]]:
    """Up to ``limit`` minimal change sets that each make the run fit, the least costly first, each with
    its GPU total, host RAM and step time relative to now on a GPU of ``gpu_gib``'s class (see
    :func:`_recommendations` for the arguments).

    Empty when it already fits; one entry with ``fits_after`` False when nothing fits."""
    with same_model_files():
        return _recommendations(config, gpu_gib, **kwargs)


def _recommendations(
    config: TrainConfig,
    gpu_gib: float,
    *,
    num_processes: int | None = None,
    limit: int = 4,
    host_gib: float | None = None,
) -> list[dict[str, Any]]:
    base = estimate(config, num_processes=num_processes).total_gib
    if verdict(base, gpu_gib) == "fits":
        return []
    all_moves = moves(config)
    totals, found = _found(config, gpu_gib, num_processes, host_gib, all_moves, limit)
    out: list[dict[str, Any]] = []
    if not found:
        chosen, _ = _greedy(totals, all_moves)
        found = [chosen]
    parsed_texts: dict[str, Any] = {}
    before = step_time(config, gpu_gib).step_s
    for chosen in found[:limit]:
        chosen = sorted(chosen, key=lambda m: m.cost)
        overrides = _overrides(chosen)
        if not _valid(config, overrides, parsed_texts):
            continue
        total = totals(chosen)
        # The label is what the re-estimate says: a best effort may still land within the GPU (tight).
        after = verdict(total, gpu_gib)
        host = totals.host(chosen)
        out.append(
            {
                "title": " + ".join(m.title for m in chosen),
                "overrides": overrides,
                "moves": [{"title": m.title, "overrides": dict(m.overrides)} for m in chosen],
                "saves_gib": base - total,
                "total_gib_after": total,
                "fits_after": after != "does_not_fit",
                "verdict_after": after,
                "host_gib_after": host,
                "host_fits": host_gib is None or host <= host_gib,
                # Step time after / before on this GPU class (memory/timing.py): 1.05 is "about +5% time".
                "time_factor": step_time(totals.config_of(chosen), gpu_gib).step_s / before,
            }
        )
    return out


def auto_fit(
    config: TrainConfig, gpu_gib: float, *, num_processes: int | None = None, host_gib: float | None = None
) -> TrainConfig | None:
    """The best-quality configuration that fits the GPUs the run has (and ``host_gib`` of host RAM, if
    any set does; else the set that fits the GPU with the least host RAM): the least costly minimal set.

    None when even every move together does not fit."""
    if verdict(estimate(config, num_processes=num_processes).total_gib, gpu_gib) == "fits":
        return config
    have = config.distributed.num_processes
    usable = [m for m in moves(config) if not _adds_gpus(m, have)]
    with same_model_files():
        totals, found = _found(config, gpu_gib, num_processes, host_gib, usable, len(usable))
    if not found:
        return None
    # Over the host budget (the search fell back to the GPU alone): the set that needs the least host RAM.
    fell_back = host_gib is not None and totals.host_gib is None
    best = min(found, key=totals.host) if fell_back else found[0]
    return _validated(config, _overrides(best))
