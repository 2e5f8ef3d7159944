"""A local model folder's own configs are input: crafted ones end in one clear error naming the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flux2_lora.config.io import validate_dict
from flux2_lora.local_model import ModelConfigError
from flux2_lora.variants import (
    VARIANTS,
    choose_text_encoder_layers,
    local_component_params,
    resolve_model,
    text_encoder_layers,
)
from tests.helpers import cli, sets

BASE = {**VARIANTS["klein-4b"].transformer.diffusers_config(), "_class_name": "Flux2Transformer2DModel"}


def _folder(
    tmp_path: Path, transformer: Any = None, text_encoder: Any = None, raw: bytes | None = None
) -> Path:
    folder = tmp_path / "model"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    body = raw if raw is not None else json.dumps(transformer if transformer is not None else BASE).encode()
    (folder / "transformer" / "config.json").write_bytes(body)
    if text_encoder is not None:
        (folder / "text_encoder").mkdir()
        (folder / "text_encoder" / "config.json").write_text(json.dumps(text_encoder))
    return folder


CRAFTED = [
    ({"num_layers": "8"}, "num_layers must be a whole number (got '8')"),
    ({"num_layers": 1e9}, "num_layers must be between 0 and 256 (got 1000000000)"),
    ({"num_single_layers": 10**18}, "num_single_layers must be between 0 and 256"),
    ({"num_layers": True}, "num_layers must be a whole number (got True)"),
    ({"attention_head_dim": -128}, "attention_head_dim must be between 2 and 1024 (got -128)"),
    ({"joint_attention_dim": 0}, "joint_attention_dim must be between 1 and 65536"),
    ({"num_attention_heads": 512, "attention_head_dim": 1024}, "num_attention_heads × attention_head_dim"),
    ({"axes_dims_rope": [32, 32, 32]}, "axes_dims_rope must be 4 even whole numbers"),
    ({"axes_dims_rope": "32,32,32,32"}, "axes_dims_rope must be 4 even whole numbers"),
    ({"axes_dims_rope": [32, 32, 32, 31]}, "axes_dims_rope must be 4 even whole numbers"),
    ({"axes_dims_rope": [32, 32, 32, 30]}, "must add up to attention_head_dim (128)"),
    ({"mlp_ratio": -3}, "mlp_ratio must be a number above 0"),
    ({"rope_theta": [1]}, "rope_theta must be a number above 0"),
    ({"guidance_embeds": "yes"}, "guidance_embeds must be true or false"),
    ({"num_layers": 0, "num_single_layers": 0}, "num_layers + num_single_layers must be at least 1"),
    ({"_class_name": "FluxTransformer2DModel"}, "not a FLUX.2 transformer"),
]


@pytest.mark.parametrize(("change", "message"), CRAFTED)
def test_a_crafted_transformer_config_is_refused_by_key(tmp_path: Path, change: dict, message: str) -> None:
    folder = _folder(tmp_path, {**BASE, **change})
    with pytest.raises(ModelConfigError) as e:
        resolve_model(str(folder))
    text = str(e.value)
    assert text.startswith("model.path: ") and str(folder / "transformer" / "config.json") in text
    assert message in text
    _, issues = validate_dict({"model": {"path": str(folder)}})  # `validate` and the web UI's form
    assert [i.path for i in issues if i.level == "error"] == ["model.path"]
    assert message in issues[0].message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b"{not json", "not readable JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "not readable JSON"),
        (b'{"num_layers": 8}', "not a FLUX.2 transformer config (no num_single_layers)"),
        (b" " * (2 << 20), "far more than a config.json holds"),
    ],
)
def test_an_unreadable_transformer_config_is_refused(tmp_path: Path, raw: bytes, message: str) -> None:
    folder = _folder(tmp_path, raw=raw)
    with pytest.raises(ModelConfigError, match="model.path: ") as e:
        resolve_model(str(folder))
    assert message in str(e.value)


def test_estimate_and_trainer_resolution_give_the_error_not_a_traceback(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {**BASE, "num_layers": 10**9})
    proc = cli("estimate", *sets(f"model.path={folder}"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.path" in proc.stderr and "num_layers must be between 0 and 256" in proc.stderr
    from flux2_lora.config import ModelSection
    from flux2_lora.training.model import ModelLoadError, resolve_model_path

    with pytest.raises(ModelLoadError, match="num_layers must be between 0 and 256"):
        resolve_model_path(ModelSection(path=str(folder)))


def test_a_crafted_text_encoder_config_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, text_encoder={"num_hidden_layers": 10**9, "hidden_size": 2560})
    with pytest.raises(ModelConfigError, match="text_encoder.config.json: num_hidden_layers must be between"):
        text_encoder_layers(str(folder), "klein-4b")
    _, issues = validate_dict({"model": {"path": str(folder)}})
    assert [i.path for i in issues] == ["model.path"] and "num_hidden_layers" in issues[0].message
    folder = _folder(tmp_path / "b", text_encoder={"text_config": "x"})
    with pytest.raises(ModelConfigError, match="text_config must be an object"):
        text_encoder_layers(str(folder), "klein-4b")


def test_a_lying_safetensors_header_is_not_read(tmp_path: Path) -> None:
    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "a.safetensors").write_bytes((2**63).to_bytes(8, "little") + b"{}")  # claims an 8 EiB header
    assert local_component_params(tmp_path, "vae") is None
    (vae / "a.safetensors").write_bytes((20).to_bytes(8, "little") + b'{"w": {"shape": "x"}}')
    assert local_component_params(tmp_path, "vae") is None


# --------------------------------------------------------------------------- text-encoder layers
@pytest.mark.parametrize(
    ("default", "depth", "count", "expected"),
    [
        ((10, 20, 30), 40, 3, (10, 20, 30)),  # [dev]
        ((9, 18, 27), 36, 3, (9, 18, 27)),  # [klein]
        ((9, 18, 27), 2, 1, (1,)),  # diffusers' tiny klein test encoder: 2 layers, one stacked
        ((10, 20, 30), 1, 1, (1,)),  # diffusers' tiny FLUX.2 test encoder: 1 layer
        ((9, 18, 27), 12, 3, (3, 6, 9)),
        ((9, 18, 27), 28, None, (9, 18, 27)),  # the demo
    ],
)
def test_automatic_layers_fit_the_encoder(
    default: tuple[int, ...], depth: int, count: int | None, expected: tuple[int, ...]
) -> None:
    assert choose_text_encoder_layers(default, depth, count) == expected


def test_explicit_layers_are_checked_against_the_folder(tmp_path: Path) -> None:
    small = {**BASE, "joint_attention_dim": 32, "num_layers": 1, "num_single_layers": 1}
    folder = _folder(tmp_path, small, text_encoder={"num_hidden_layers": 2, "hidden_size": 16})
    assert text_encoder_layers(str(folder), "klein-9b") == (1, 2)
    assert text_encoder_layers(str(folder), "klein-9b", [0, 2]) == (0, 2)
    for bad, message in (
        ([9, 18], "9, 18 not in the text encoder, which has 2 layers"),
        ([1], "1 layer(s) given"),
    ):
        _, issues = validate_dict({"model": {"path": str(folder), "text_encoder_layers": bad}})
        assert [i.path for i in issues] == ["model.text_encoder_layers"] and message in issues[0].message
    _, issues = validate_dict({"model": {"text_encoder_layers": [9, 18, 40]}})  # the demo's 28 layers
    assert [i.path for i in issues] == ["model.text_encoder_layers"] and "40 not in" in issues[0].message
    odd = _folder(tmp_path / "odd", small, text_encoder={"num_hidden_layers": 2, "hidden_size": 24})
    with pytest.raises(ModelConfigError, match="not a multiple of the text encoder's hidden_size"):
        text_encoder_layers(str(odd), "klein-9b")


def test_an_unknown_shape_is_a_custom_model_not_klein_9b(tmp_path: Path) -> None:
    from flux2_lora.config.io import load_config
    from flux2_lora.memory import estimate_report

    folder = _folder(tmp_path, {**BASE, "num_single_layers": 3, "guidance_embeds": False})
    resolved = resolve_model(str(folder))
    assert resolved.custom and resolved.variant == "klein-9b"  # the pipeline family it runs with
    assert resolved.title.startswith("custom FLUX.2 model (5 + 3 blocks") and "9B" not in resolved.title
    config, _ = load_config(overrides=[f"model.path={folder}"])
    report = estimate_report(config)
    assert report["variant"] == "custom" and report["model"] == resolved.title
    known = resolve_model(str(_folder(tmp_path / "k", BASE)))
    assert not known.custom and known.title == "FLUX.2 [klein] 4B"
