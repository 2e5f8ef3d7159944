"""The distributed section: bounds, cross-checks by field, and the train flags derived from it."""

from __future__ import annotations

import argparse

import pytest

from flux2_lora.config.io import ConfigError, load_config


def _issues(*overrides: str) -> dict[str, str]:
    try:
        _, warnings = load_config(overrides=list(overrides))
    except ConfigError as e:
        return {i.path: i.message for i in e.issues}
    return {f"warning:{w.path}": w.message for w in warnings}


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (
            [
                "distributed.num_machines=2",
                "distributed.machine_rank=2",
                "distributed.main_process_ip=10.0.0.1",
            ],
            "distributed.machine_rank",
            "numbered 0 to 1",
        ),
        (["distributed.num_machines=2"], "distributed.main_process_ip", "address of machine 0"),
        (["distributed.main_process_ip=bad host;rm"], "distributed.main_process_ip", "host name or an IP"),
        (["distributed.fsdp_cpu_offload=true"], "distributed.fsdp_cpu_offload", "strategy fsdp"),
        (
            ["distributed.strategy=fsdp", "distributed.fsdp_cpu_offload=true", "model.device=cpu"],
            "distributed.fsdp_cpu_offload",
            "nothing to offload",
        ),
        (
            ["distributed.strategy=fsdp", "distributed.num_processes=2", "memory.quantization=nf4"],
            "memory.quantization",
            "cannot be sharded",
        ),
        (
            ["distributed.strategy=fsdp", "distributed.num_processes=2", "training.optimizer=adamw8bit"],
            "training.optimizer",
            "8-bit",
        ),
        (["distributed.strategy=fsdp", "performance.compile=true"], "performance.compile", "compiling"),
        (["distributed.num_processes=0"], "distributed.num_processes", "≥ 1"),
        (["distributed.main_process_port=70000"], "distributed.main_process_port", "≤ 65535"),
    ],
)
def test_bad_combinations_are_field_errors(overrides: tuple[str, ...], field: str, words: str) -> None:
    issues = _issues(*overrides)
    assert field in issues and words in issues[field], issues


def test_fsdp_on_one_process_is_a_warning_and_the_defaults_are_one_process() -> None:
    from flux2_lora.config.warnings import common_mistakes

    config, _ = load_config(overrides=["distributed.strategy=fsdp"])
    assert any(
        "shards nothing" in w.message for w in common_mistakes(config) if w.field == "distributed.strategy"
    )
    config, warnings = load_config(overrides=["distributed.num_processes=4", "distributed.num_machines=2",
                                              "distributed.main_process_ip=node0.cluster"])  # fmt: skip
    assert config.distributed.world_size == 8 and not config.distributed.sharded and not warnings
    assert not common_mistakes(config)
    assert load_config()[0].distributed.world_size == 1


def test_train_flags_come_from_the_schema() -> None:
    from flux2_lora.cli.schema_flags import add_section_flags, section_overrides
    from flux2_lora.config import DistributedSection

    p = argparse.ArgumentParser()
    add_section_flags(p, "distributed")
    text = p.format_help()
    for key, info in DistributedSection.model_fields.items():
        assert "--" + key.replace("_", "-") in text
        assert (info.description or "").split()[0] in text
    args = p.parse_args(
        ["--num-machines", "2", "--machine-rank", "1", "--fsdp-cpu-offload", "--strategy", "fsdp"]
    )
    assert sorted(section_overrides(args)) == [
        "distributed.fsdp_cpu_offload=true",
        "distributed.machine_rank=1",
        "distributed.num_machines=2",
        "distributed.strategy=fsdp",
    ]
    with pytest.raises(SystemExit):
        p.parse_args(["--strategy", "zero3"])


def test_train_with_a_bad_flag_names_the_field() -> None:
    from tests.helpers import cli

    proc = cli("train", "--preset", "quickstart", "--num-processes", "two")
    assert proc.returncode == 2 and "--num-processes: invalid int value: 'two'" in proc.stderr
    proc = cli("train", "--preset", "quickstart", "--num-processes", "0")
    assert proc.returncode == 2 and "distributed.num_processes: must be ≥ 1 (got 0)" in proc.stderr
    assert "Traceback" not in proc.stderr
