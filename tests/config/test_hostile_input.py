"""Hostile or careless config input: refused fast, by field, with short messages, never expanded."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux2_lora.config.io import (
    MAX_YAML_BYTES,
    ConfigError,
    load_config,
    load_yaml_text,
    read_yaml,
    validate_dict,
)

# The classic "billion laughs": 376 bytes, 9 levels of 9 aliases, 9^9 strings once expanded.
BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{n}: &{n} [{','.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
)


def _errors(text: str) -> list[str]:
    return [str(i) for i in load_yaml_text(text)[1]]


def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path: Path) -> None:
    assert len(BOMB) < 400
    data, issues = load_yaml_text(BOMB)
    assert data is None and "expands to more than" in issues[0].message
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB + "\nlora: {target_modules: *i}\n")
    with pytest.raises(ConfigError, match="expands to more than") as e:
        load_config(file=f)
    assert len(str(e.value)) < 500
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(overrides=["lora.target_modules=" + BOMB.replace("\n", ", ").join("{}")])


def test_small_aliases_still_work() -> None:
    data, issues = load_yaml_text("base: &b {rank: 8}\nlora:\n  <<: *b\n  alpha: 8\n")
    assert not issues and data["lora"] == {"rank": 8, "alpha": 8}


def test_recursive_alias_and_deep_nesting_are_refused() -> None:
    assert "refers to the value that contains it" in _errors("a: &a [1, *a]")[0]
    assert "nested" in _errors("a: " + "[" * 50 + "]" * 50)[0]
    assert "nested too deeply" in _errors("[" * 5000 + "]" * 5000)[0]


def test_oversized_yaml_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("validation:\n  prompts:\n" + "  - a long prompt\n" * (MAX_YAML_BYTES // 10))
    data, issues = read_yaml(big)
    assert data is None and "larger than a config holds" in issues[0].message
    assert "more than a config holds" in _errors("x: " + "a" * MAX_YAML_BYTES)[0]
    with pytest.raises(ConfigError, match="limit"):
        load_config(overrides=["dataset.default_caption=" + "a" * 100_000])


def test_special_files_are_not_read_as_configs(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "pipe.yaml")  # reading it would block for ever
    for path in (tmp_path / "pipe.yaml", tmp_path):
        data, issues = read_yaml(path)
        assert data is None and "not a regular file" in issues[0].message


def test_duplicate_keys_are_errors() -> None:
    assert "duplicate key 'rank'" in _errors("lora:\n  rank: 8\n  rank: 16\n")[0]
    assert "line 3" in _errors("lora:\n  rank: 8\n  rank: 16\n")[0]
    assert "duplicate key 'lora'" in _errors("lora: {}\nlora: {}\n")[0]
    with pytest.raises(ConfigError, match="duplicate key"):
        load_config(overrides=["lora.target_modules={a: 1, a: 2}"])


@pytest.mark.parametrize(
    ("section", "key", "kind"),
    [
        ("lora", "rank", "whole number"),
        ("lora", "alpha", "number"),
        ("training", "max_steps", "whole number"),
    ],
)
def test_a_bool_for_a_number_is_an_error(section: str, key: str, kind: str) -> None:
    _, issues = validate_dict({section: {key: True}})
    assert [str(i) for i in issues] == [f"{section}.{key}: must be a {kind} (got true)"]
    with pytest.raises(ConfigError, match=f"{section}.{key}: must be"):
        load_config(overrides=[f"{section}.{key}=true"])
    config, _ = validate_dict({"validation": {"enabled": True}, "lora": {"rank": 8.0}})
    assert config is not None and config.lora.rank == 8  # a float from a UI number widget still reads


def test_a_broken_list_override_is_an_error_not_a_string() -> None:
    with pytest.raises(ConfigError, match=r"validation.prompts: '\[a, b' is not a valid value"):
        load_config(overrides=["validation.prompts=[a, b"])
    with pytest.raises(ConfigError, match="lora.rank"):
        load_config(overrides=["lora.rank=[16"])
    # Free text that only looks like YAML stays text.
    config, _ = load_config(
        overrides=["validation.prompts=a [trigger] photo", "dataset.default_caption=[trigger] photo: x"]
    )
    assert config.validation.prompts == ["a [trigger] photo"]
    assert config.dataset.default_caption == "[trigger] photo: x"


def test_error_messages_quote_at_most_a_few_hundred_characters() -> None:
    huge = "x" * 50_000
    _, issues = validate_dict(
        {
            "lora": {"rank": huge, huge: 1},
            "training": {"optimizer": huge, "learning_rate": [1] * 1000},
            huge: {},
        }
    )
    assert len(issues) == 5
    for issue in issues:
        assert len(str(issue)) < 1300, str(issue)[:300]
    assert "50000 characters" in next(i.message for i in issues if i.path == "lora.rank")


# --------------------------------------------------------------------------- where a run writes
@pytest.mark.parametrize("inside", ["", "run", "a/b/run"])
def test_output_dir_inside_the_dataset_is_refused(tmp_path: Path, inside: str) -> None:
    ds = tmp_path / "photos"
    ds.mkdir()
    _, issues = validate_dict({"dataset": {"path": str(ds)}, "output": {"dir": str(ds / inside)}})
    assert [i.path for i in issues] == ["output.dir"]
    assert "training images" in issues[0].message
    assert ("is the dataset folder" if not inside else f"is inside dataset.path ({ds})") in issues[0].message
    config, issues = validate_dict({"dataset": {"path": str(ds)}, "output": {"dir": str(tmp_path / "r")}})
    assert config is not None and not [i for i in issues if i.level == "error"]


def test_output_dir_inside_the_dataset_through_a_symlink_is_refused(tmp_path: Path) -> None:
    ds = tmp_path / "photos"
    ds.mkdir()
    (tmp_path / "alias").symlink_to(ds, target_is_directory=True)
    _, issues = validate_dict(
        {"dataset": {"path": str(ds)}, "output": {"dir": str(tmp_path / "alias" / "r")}}
    )
    assert [i.path for i in issues] == ["output.dir"]


@pytest.mark.parametrize("path", ["/", "/.", "~", "~/"])
def test_output_dir_that_is_a_root_or_home_is_refused(path: str) -> None:
    _, issues = validate_dict({"output": {"dir": path}})
    assert [i.path for i in issues] == ["output.dir"]
    assert "filesystem root" in issues[0].message or "home folder itself" in issues[0].message
    assert validate_dict({"output": {"dir": "~/runs/me"}})[0] is not None
