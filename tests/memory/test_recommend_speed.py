"""The recommendations' shortcuts (benchmarks/estimate_speed.py) change nothing: the YAML-free reading of
plain override values reads what YAML reads, the search's floors and memos give the recommendations and
auto-fit that estimating every candidate in full gives, and host RAM judged before the estimate is what
the estimate gives."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from flux2_lora.config import io
from flux2_lora.config.io import load_config, load_yaml_text, parse_override, plain_scalar
from flux2_lora.memory import GPUS, auto_fit, estimate, recommendations
from flux2_lora.memory import recommend as rec
from flux2_lora.memory.estimate import caching_total_gib, host_facts
from flux2_lora.memory.host import gpu_host_peak

TEXTS = [
    *("0", "-0", "1", "54", "-3", "007", "+1", "1_000", "0x1f", "1:30", "12345678901234567890123"),
    *("0.0", "-0.0", "16.0", "0.0001", "1e-05", "1.5e-05", ".5", "5.", "1.0.0", "00.5", "1__0.5"),
    *("True", "true", "TRUE", "tRue", "False", "false", "FALSE", "yes", "no", "on", "off", "y"),
    *(" 54", "54 ", "  16.5  ", "54\n", "\t54", "54 # comment", "'54'", '"true"', "١٢", "５"),
    *("nf4", "none", "null", "~", "", "[1]", "{a: 1}", "inf", ".inf", ".nan", "2024-01-01"),
]


def _random_texts() -> list[str]:
    rnd = random.Random(19)
    out = []
    for _ in range(500):
        out += [str(rnd.randint(-(10**12), 10**12)), repr(rnd.uniform(-1e3, 1e3))]
        out.append(repr(rnd.random() * 10 ** rnd.randint(-8, 8)))  # some print with an exponent
    return out


def test_plain_scalars_read_as_yaml_reads_them() -> None:
    handled = 0
    for text in [*TEXTS, *_random_texts()]:
        plain, value = plain_scalar(text)
        if not plain:
            continue
        handled += 1
        expected, problems = load_yaml_text(text)
        assert not problems, text
        assert type(value) is type(expected) and value == expected, (text, value, expected)
        if isinstance(value, float):
            assert math.copysign(1, value) == math.copysign(1, expected), text  # -0.0 stays negative
    # What the recommendations write (str() of their values) takes the shortcut.
    for text in ("54", "-3", "16.0", "0.0001", "True", "false"):
        assert plain_scalar(text)[0], text
    for text in ("007", "+1", "1_000", "1e-05", "yes", "54\n", "12345678901234567890123"):
        assert not plain_scalar(text)[0], text  # YAML decides
    assert handled > 1000


@pytest.mark.parametrize(
    "key",
    [
        "lora.rank",
        "lora.alpha",
        "training.learning_rate",
        "memory.cpu_offload",
        "memory.blocks_to_swap",
        "dataset.caption_extension",  # str
        "dataset.resolution",
        "validation.prompts",  # list of str
        "memory.quantization",  # Literal of str
        "distributed.num_processes",
    ],
)
def test_parse_override_gives_what_yaml_gives(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"{key}={t}" for t in [*TEXTS, *_random_texts()[:60]]]
    fast = [parse_override(t) for t in texts]
    monkeypatch.setattr(io, "plain_scalar", lambda text: (False, None))
    slow = [parse_override(t) for t in texts]
    for text, a, b in zip(texts, fast, slow, strict=True):
        assert a == b, text
        parsed_fast, parsed_slow = a[0], b[0]
        if parsed_fast is not None and parsed_slow is not None:
            assert type(parsed_fast[2]) is type(parsed_slow[2]), text


CASES = [
    (["dev"], []),
    (["dev"], ["distributed.strategy=fsdp", "distributed.num_processes=2"]),
    (["dev"], ["lora.type=lokr"]),
    (["dev"], ["memory.cache_text_embeddings=false", "memory.cache_latents=false", "training.batch_size=2"]),
    (["klein-9b"], ["dataset.resolution=1024"]),
    (["klein-9b"], ["dataset.resolution=1536", "training.optimizer=prodigy"]),
    (["klein-4b"], ["model.dtype=float32", "lora.use_dora=true", "lora.rank=128", "lora.alpha=64"]),
]


def _all(presets: list[str], overrides: list[str]) -> list[Any]:
    config, _ = load_config(presets=presets, overrides=overrides)
    out: list[Any] = []
    for gpu in (GPUS[0], GPUS[1], GPUS[3]):
        for host in (None, 16.0, 64.0):
            out.append(recommendations(config, gpu.gib, host_gib=host))
        fitted = auto_fit(config, gpu.gib, host_gib=32.0)
        out.append(None if fitted is None else fitted.model_dump())
    return out


@pytest.mark.parametrize("presets,overrides", CASES)
def test_search_shortcuts_change_no_recommendation(
    presets: list[str], overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    quick = _all(presets, overrides)
    assert any(quick), "no case here needs a recommendation: the comparison would say nothing"
    # No caching floor: every candidate estimated in full (and no floor memo to share); host RAM worked
    # out for each candidate.
    monkeypatch.setattr(rec, "caching_total_gib", lambda config, num_processes=None: 0.0)
    monkeypatch.setattr(rec, "_HOST_IGNORES", frozenset())
    assert _all(presets, overrides) == quick


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["memory.blocks_to_swap=20", "memory.cpu_offload=true"],
        ["memory.blocks_to_swap=20", "memory.quantization=fp8"],
        ["distributed.strategy=fsdp", "distributed.num_processes=4"],
        ["training.ema_decay=0.999", "training.ema_device=cpu", "lora.rank=64"],
        ["lora.type=lokr", "training.optimizer=adafactor"],
    ],
)
def test_host_facts_are_what_the_estimate_says(overrides: list[str]) -> None:
    config, _ = load_config(presets=["dev"], overrides=overrides)
    # The search judges unvalidated candidates too: block swap under FSDP (not counted there).
    swapped = config.model_copy(update={"memory": config.memory.model_copy(update={"blocks_to_swap": 30})})
    for c in (config, swapped):
        for n in (None, 1, 4):
            facts, est = host_facts(c, n), estimate(c, num_processes=n)
            assert facts.swap == est.swap and facts.trainable_params == est.trainable_params
            assert gpu_host_peak(c, facts) == gpu_host_peak(c, est)


BASES = [
    ["dev"],
    ["dev", "low-vram"],
    ["klein-9b"],
]
BASE_OVERRIDES = [
    [],
    ["memory.blocks_to_swap=20", "memory.cpu_offload=true", "memory.cache_text_embeddings=false"],
    ["distributed.num_processes=4", "training.ema_decay=0.999"],  # DDP: each process its own copy
    ["training.ema_decay=0.999", "training.ema_device=cpu", "memory.cache_latents=false"],
]
# Other values of fields the moves set (recommend.moves).
CHANGES: dict[str, list[Any]] = {
    "memory.gradient_checkpointing": [True, False],
    "memory.vae_slicing": [True, False],
    "memory.vae_tiling": [True, False],
    "memory.blocks_to_swap": [0, 30],
    "validation.enabled": [True, False],
    "training.batch_size": [1, 4],
    "training.gradient_accumulation_steps": [1, 8],
    "training.optimizer": ["adamw8bit", "adafactor", "prodigy"],
    "training.learning_rate": [1e-4, 1.0],
    "lora.rank": [16, 128],
    "lora.alpha": [3.0, 64.0],
}


def _changed(config: Any, key: str, value: Any) -> Any:
    section, field = key.split(".")
    part = getattr(config, section).model_copy(update={field: value})
    return config.model_copy(update={section: part})  # unvalidated, as the search builds them


@pytest.mark.parametrize("presets", BASES)
@pytest.mark.parametrize("overrides", BASE_OVERRIDES)
def test_what_the_floor_and_host_ram_do_not_read_changes_neither(
    presets: list[str], overrides: list[str]
) -> None:
    config, _ = load_config(presets=presets, overrides=overrides)
    floor, host = caching_total_gib(config), gpu_host_peak(config, host_facts(config))
    for key, values in CHANGES.items():
        for value in values:
            other = _changed(config, key, value)
            if not rec._read_by_floor(key):
                assert caching_total_gib(other) == floor, key
            if key in rec._HOST_IGNORES:
                assert gpu_host_peak(other, host_facts(other)) == host, key
    assert set(rec._HOST_IGNORES) <= set(CHANGES)  # each field the host memo ignores is tried above
