"""The estimate and the recommendations pinned to the values they had before the memory model was split
into phase functions and made faster (tests/memory/pinned.py): a change of behaviour fails here.

The table covers every shipped preset (alone and combined with the model presets), one and several GPUs
(DDP and FSDP), the trace matrix and the recommendation tests' variations, on the 24, 48 and 80 GB
classes. Floats are compared to 1e-12 relative: a refactor may reorder a sum, a behaviour change moves
figures by far more. To re-pin after an intended change of the model (and only then):

    PYTHONPATH=src python tests/memory/test_pinned.py > tests/memory/pinned.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

if __name__ == "__main__":  # run as a script to write the table
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import load_config, to_dict
from flux2_lora.memory import GPUS, auto_fit, estimate, estimate_report, recommendations
from flux2_lora.memory.host import ASSUMED_HOST_GIB, host_estimate
from tests.memory.matrix import MATRIX
from tests.memory.matrix import config as matrix_config

PRESETS = (
    "quickstart",
    "klein-4b",
    "klein-9b",
    "dev",
    "low-vram",
    "fast",
    "high-quality",
    "character",
    "concept",
    "style",
)
MODELS = ("dev", "klein-9b", "klein-4b")
# The recommendation tests' variations (tests/memory/test_recommend.py).
VARIATIONS: tuple[tuple[str, ...], ...] = (
    ("training.batch_size=2", "memory.gradient_checkpointing=false"),
    ("lora.rank=128", "lora.alpha=128", "lora.use_dora=true", "dataset.resolution=1536"),
    ("memory.cache_text_embeddings=false", "memory.cache_latents=false", "training.optimizer=prodigy"),
    (
        "model.dtype=float32",
        "dataset.resolution=2048",
        "training.learning_rate=1.0",
        "training.optimizer=prodigy",
    ),
)
SEVERAL = (
    ("distributed.num_processes=2",),
    ("distributed.strategy=fsdp", "distributed.num_processes=4"),
    (
        "distributed.strategy=fsdp",
        "distributed.num_processes=2",
        "distributed.fsdp_reshard_after_forward=false",
    ),
    ("distributed.strategy=fsdp", "distributed.num_processes=8", "distributed.fsdp_cpu_offload=true"),
)
# 24, 48 and 80 GB.
CARDS = (GPUS[0], GPUS[3], GPUS[4])

Case = tuple[tuple[str, ...], tuple[str, ...], str]  # presets, overrides, kernels


def estimate_cases() -> list[Case]:
    out: list[Case] = [((p,), (), "cuda") for p in PRESETS]
    out += [((m, p), (), "cuda") for m in MODELS for p in PRESETS if p not in (*MODELS, "quickstart")]
    out += [((m,), v, "cuda") for m in MODELS for v in VARIATIONS]
    out += [((m,), s, "cuda") for m in (*MODELS, "quickstart") for s in SEVERAL]
    out += [((m, "low-vram"), SEVERAL[0], "cuda") for m in MODELS]
    # The trace matrix on klein-4b (as tests/memory/matrix.py builds it), with both calibrations.
    out += [((), tuple(row), k) for row in MATRIX for k in ("cuda", "trace")]
    return out


def recommendation_cases() -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    out: list[tuple[tuple[str, ...], tuple[str, ...]]] = [((p,), ()) for p in PRESETS]
    out += [((m, "low-vram"), ()) for m in MODELS]
    out += [((m,), v) for m in MODELS for v in VARIATIONS]
    out += [((m,), SEVERAL[0]) for m in MODELS]
    return out


def _config(presets: tuple[str, ...], overrides: tuple[str, ...]) -> TrainConfig:
    if not presets:  # a matrix row, on klein-4b as the matrix builds it
        return matrix_config(*overrides)
    return load_config(presets=list(presets), overrides=list(overrides))[0]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list | tuple):
        out = {}
        for i, v in enumerate(value):
            out.update(_flat(v, f"{prefix}[{i}]"))
        if not value:
            out[prefix] = []
        return out
    return {prefix: value}


def estimate_fingerprint(case: Case) -> dict[str, Any]:
    presets, overrides, kernels = case
    return estimate(_config(presets, overrides), kernels=kernels).to_dict()


def recommendation_fingerprint(presets: tuple[str, ...], overrides: tuple[str, ...]) -> dict[str, Any]:
    c = _config(presets, overrides)
    base = _flat(to_dict(c))
    out: dict[str, Any] = {}
    for card in CARDS:
        # The report's fixes must fit the host RAM it assumes for a GPU class (memory/host.py).
        out[card.name] = recommendations(c, card.gib, host_gib=ASSUMED_HOST_GIB)
        fitted = auto_fit(c, card.gib)
        # auto_fit's answer as the fields it changed (None: nothing fits).
        out[f"auto_fit {card.name}"] = (
            None if fitted is None else {k: v for k, v in _flat(to_dict(fitted)).items() if base.get(k) != v}
        )
    report = estimate_report(c, gpu=CARDS[0].name)
    assert report["recommendations"] == out[CARDS[0].name]
    out["report"] = {
        "gpu": report["gpu"],
        "gpus": [g for g in report["gpus"] if not g["name"].startswith("local")],
    }
    # Host RAM for both kinds of run (the report's own depends on this machine's GPU).
    out["host"] = {str(g): host_estimate(c, on_gpu=g)["phases"] for g in (False, True)}
    return out


def _same(got_tree: Any, want_tree: Any) -> list[str]:
    """What differs between two trees of dicts, lists and scalars, by dotted path."""
    got, want = _flat(got_tree), _flat(want_tree)
    diffs = [f"{k}: missing" for k in want if k not in got]
    diffs += [f"{k}: unexpected {got[k]!r}" for k in got if k not in want]
    for k, w in want.items():
        if k not in got:
            continue
        g = got[k]
        if isinstance(w, float) and isinstance(g, float):
            if not math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-12):
                diffs.append(f"{k}: {g!r} != pinned {w!r}")
        elif g != w or type(g) is not type(w):
            diffs.append(f"{k}: {g!r} != pinned {w!r}")
    return diffs


def _pinned() -> Any:
    from tests.memory import pinned

    return pinned


@pytest.mark.parametrize(
    "case", estimate_cases(), ids=lambda c: "+".join(c[0]) + " " + " ".join(c[1]) + f" {c[2]}"
)
def test_estimate_is_pinned(case: Case) -> None:
    want = _pinned().ESTIMATES[case]
    assert _same(estimate_fingerprint(case), want) == []


@pytest.mark.parametrize("case", recommendation_cases(), ids=lambda c: "+".join(c[0]) + " " + " ".join(c[1]))
def test_recommendations_are_pinned(case: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    want = _pinned().RECOMMENDATIONS[case]
    assert _same(recommendation_fingerprint(*case), want) == []


def test_table_covers_every_case() -> None:
    p = _pinned()
    assert set(p.ESTIMATES) == set(estimate_cases())
    assert set(p.RECOMMENDATIONS) == set(recommendation_cases())
    # The table is not trivially empty: the large models need fixes on 24 GB.
    assert p.RECOMMENDATIONS[(("dev",), ())][CARDS[0].name][0]["title"]


def _write() -> None:
    print('"""Pinned estimates and recommendations (written by tests/memory/test_pinned.py; see there)."""')
    print()
    print("# fmt: off")
    print("ESTIMATES = {")
    for case in estimate_cases():
        print(f"    {case!r}: {estimate_fingerprint(case)!r},")
    print("}")
    print("RECOMMENDATIONS = {")
    for rcase in recommendation_cases():
        print(f"    {rcase!r}: {recommendation_fingerprint(*rcase)!r},")
    print("}")
    print("# fmt: on")


if __name__ == "__main__":
    _write()
