"""The ComfyUI copy of a LoRA, LoKr and LoHa, read by ComfyUI's own loader code.

ComfyUI is GPL-3.0 and not on the package mirror, and its code is not committed here: point
FLUX2_COMFYUI_SRC at a ComfyUI source tree (a folder holding ``comfy/lora.py``, ``comfy/utils.py`` and
``comfy/weight_adapter/``; e.g. ``git archive HEAD comfy LICENSE | tar -x -C DIR`` of a ComfyUI clone).
Its ``lora.py`` and ``weight_adapter`` run unchanged; what ComfyUI would import besides is stubbed below
(ours): ``model_management.cast_to_device``, ``model_base``'s class tree (``Flux2`` a ``Flux``, as in
ComfyUI), and ``utils`` holding only ComfyUI's own key-map functions, read out of its ``utils.py`` (the
rest of that module needs einops, PIL and its CLI).

The test builds the key map ComfyUI builds for a FLUX.2 model (``model_lora_keys_unet`` on a model whose
state dict has BFL's names, checked against diffusers' BFL → diffusers converter), loads the exported
file with ``load_lora`` (0 keys left unloaded), patches every base weight with ``calculate_weight`` and
compares each delta, converted back to diffusers' layout, with PEFT's ``get_delta_weight``.
"""

from __future__ import annotations

import ast
import importlib
import logging
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from flux2_lora.config import LoraSection, ModelSection
from flux2_lora.training.export import _lokr_delta, _lycoris_swapped, save_comfyui_lora
from flux2_lora.training.model import inject_lora, load_transformer, lora_target_names, resolve_model_path

_SRC = os.environ.get("FLUX2_COMFYUI_SRC", "")
needs_comfy = pytest.mark.skipif(
    not (_SRC and (Path(_SRC) / "comfy" / "lora.py").is_file()),
    reason="FLUX2_COMFYUI_SRC does not point at a ComfyUI source tree (its code is not vendored here)",
)
_KEY_MAP_FUNCTIONS = ("unet_to_diffusers", "swap_scale_shift", "flux_to_diffusers")


def _comfy_modules(src: Path) -> dict[str, types.ModuleType]:
    """ComfyUI's lora.py and weight_adapter as they are, over our stubs of what they import."""
    comfy = types.ModuleType("comfy")
    comfy.__path__ = [str(src / "comfy")]
    mm = types.ModuleType("comfy.model_management")

    def cast_to_device(
        t: torch.Tensor, device: Any, dtype: Any, non_blocking: bool = False, copy: bool = False
    ) -> torch.Tensor:
        return t.to(device=device, dtype=dtype, copy=copy)

    mm.cast_to_device = cast_to_device  # type: ignore[attr-defined]
    base = types.ModuleType("comfy.model_base")

    class Flux:  # every class lora.py asks isinstance about; only Flux2 (a Flux, as in ComfyUI) is ours
        pass

    class Flux2(Flux):
        pass

    base.Flux, base.Flux2 = Flux, Flux2  # type: ignore[attr-defined]

    def other_model(name: str) -> type:
        if not name[:1].isupper():
            raise AttributeError(name)
        return type(name, (), {})

    base.__getattr__ = other_model  # type: ignore[method-assign]
    utils = types.ModuleType("comfy.utils")
    tree = ast.parse((src / "comfy" / "utils.py").read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in _KEY_MAP_FUNCTIONS]
    used = {x.id for f in funcs for x in ast.walk(f) if isinstance(x, ast.Name)}
    tables = [  # the module-level maps those functions read
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and all(isinstance(t, ast.Name) and t.id in used for t in n.targets)
    ]
    keep: list[ast.stmt] = [*tables, *funcs]
    utils.__dict__["torch"] = torch
    exec(
        compile(ast.Module(body=keep, type_ignores=[]), str(src / "comfy" / "utils.py"), "exec"),
        utils.__dict__,
    )
    mods = {
        "comfy": comfy,
        "comfy.model_management": mm,
        "comfy.memory_management": types.ModuleType("comfy.memory_management"),
        "comfy.model_base": base,
        "comfy.utils": utils,
    }
    for name, m in mods.items():
        if name != "comfy":
            setattr(comfy, name.split(".")[1], m)
    return mods


@pytest.fixture
def comfy(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    for name in [n for n in sys.modules if n == "comfy" or n.startswith("comfy.")]:
        monkeypatch.delitem(sys.modules, name)
    for name, m in _comfy_modules(Path(_SRC)).items():
        monkeypatch.setitem(sys.modules, name, m)
    lora = importlib.import_module("comfy.lora")
    yield lora
    for name in [n for n in sys.modules if n == "comfy" or n.startswith("comfy.")]:
        sys.modules.pop(name, None)


_TARGETS = [
    "all-linear",
    "x_embedder",
    "context_embedder",
    "double_stream_modulation_img.linear",
    "single_stream_modulation.linear",
    "time_guidance_embed.timestep_embedder.linear_1",
    "norm_out.linear",
    "proj_out",
]


def _adapted(kind: str) -> tuple[Any, LoraSection, dict[str, torch.Tensor]]:
    from peft.utils import get_peft_model_state_dict

    path, variant, arch = resolve_model_path(ModelSection())
    tr = load_transformer(path, torch.float32, "none", torch.device("cpu"))
    torch.manual_seed(0)
    for p in tr.parameters():  # base weights that differ per layer, so a misplaced delta shows
        p.data.normal_(0, 0.1)
    lora = LoraSection(type=kind, rank=4, alpha=6, target_modules=_TARGETS)  # type: ignore[arg-type]
    inject_lora(tr, lora, arch)
    for p in tr.parameters():
        if p.requires_grad:  # LoKr's W1, LoHa's second B and LoRA's B start at zero
            p.data.normal_(0, 0.5)
    return tr, lora, get_peft_model_state_dict(tr)


def _bfl_state(tr: Any) -> dict[str, torch.Tensor]:
    """The base model's Linear weights under BFL's names (q, k, v fused), as ComfyUI holds a FLUX.2
    model; diffusers' own BFL → diffusers converter must turn it back into the diffusers weights."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    from flux2_lora.training import export as ex

    base = {
        n.removesuffix(".base_layer.weight").removesuffix(".weight"): m
        for n, m in tr.state_dict().items()
        if n.endswith("weight") and m.ndim == 2 and "lora_" not in n and "lokr_" not in n and "hada_" not in n
    }
    out: dict[str, torch.Tensor] = {}
    for name, w in base.items():
        bfl = ex._bfl_name(name)
        if bfl is None:
            continue
        out[bfl + ".weight"] = ex._swap_halves(w) if name == ex._SWAPPED else w
    for i in range(tr.config.num_layers):
        for fused, members in ex._DOUBLE_QKV.items():
            qkv = [base[f"transformer_blocks.{i}.{m}"] for m in members]
            out[f"{ex.COMFY_PREFIX}double_blocks.{i}.{fused}.weight"] = torch.cat(qkv)
    back = convert_flux2_transformer_checkpoint_to_diffusers(
        {k.removeprefix(ex.COMFY_PREFIX): v.clone() for k, v in out.items()}
    )
    assert set(back) == {n + ".weight" for n in base}
    for n, w in base.items():
        torch.testing.assert_close(back[n + ".weight"], w, rtol=0, atol=0)
    return out


class _Model:
    """What model_lora_keys_unet reads off a ComfyUI FLUX.2 model: its state dict and unet_config."""

    def __init__(self, cls: type, sd: dict[str, torch.Tensor], tr: Any) -> None:
        self.__class__ = type("Flux2Model", (cls,), {"state_dict": lambda _self: sd})
        cfg = tr.config
        self.model_config = types.SimpleNamespace(
            unet_config={
                "image_model": "flux2",
                "depth": cfg.num_layers,
                "depth_single_blocks": cfg.num_single_layers,
                "hidden_size": cfg.num_attention_heads * cfg.attention_head_dim,
            }
        )


@needs_comfy
@pytest.mark.parametrize("kind", ["lora", "lokr", "loha"])
def test_comfyui_loader_reads_every_key_with_peft_deltas(
    kind: str, comfy: types.ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    tr, lora, state = _adapted(kind)
    file = save_comfyui_lora(tmp_path, state, lora.alpha / lora.rank, torch.float32)
    bfl = _bfl_state(tr)
    model = _Model(sys.modules["comfy.model_base"].Flux2, bfl, tr)
    key_map = comfy.model_lora_keys_unet(model, {})
    with caplog.at_level(logging.WARNING):
        patches = comfy.load_lora(load_file(str(file)), key_map)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage()], "ComfyUI left keys unloaded"
    if kind != "lora":
        assert any(isinstance(k, tuple) for k in patches)  # q/k/v reach qkv as row slices

    per_key: dict[str, list[tuple]] = {}
    for target, adapter in patches.items():
        key, offset = (target, None) if isinstance(target, str) else target
        per_key.setdefault(key, []).append((1.0, adapter, 1.0, offset, None))
    deltas_bfl = {}
    for key, w in bfl.items():
        patched = comfy.calculate_weight(per_key.get(key, []), w.clone(), key)
        deltas_bfl[key.removeprefix("diffusion_model.")] = patched - w
    deltas = convert_flux2_transformer_checkpoint_to_diffusers(deltas_bfl)

    checked = 0
    for name, module in tr.named_modules():
        if not hasattr(module, "get_delta_weight") or "default" not in getattr(module, "scaling", {}):
            continue
        torch.testing.assert_close(deltas.pop(name + ".weight"), module.get_delta_weight("default"))
        checked += 1
    assert checked == len(lora_target_names(lora, resolve_model_path(ModelSection())[2]))
    assert all(d.abs().max() == 0 for d in deltas.values())  # layers without an adapter stay as they are


def test_lokr_swap_falls_back_to_the_full_delta_when_w1_rows_are_odd() -> None:
    torch.manual_seed(0)
    odd = {"lokr_w1": torch.randn(3, 2), "lokr_w2_a": torch.randn(4, 2), "lokr_w2_b": torch.randn(2, 5)}
    even = {"lokr_w1": torch.randn(2, 2), "lokr_w2": torch.randn(6, 5)}
    loha = {
        k: torch.randn(12, 2) if k.endswith("_a") else torch.randn(2, 10)
        for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    }
    for p in (odd, even):
        want = torch.cat(_lokr_delta(p).chunk(2)[::-1])
        got = _lycoris_swapped(p)
        assert ("diff" in got) == (p is odd)
        torch.testing.assert_close(got["diff"] if "diff" in got else _lokr_delta(got), want)
    got = _lycoris_swapped(loha)
    m = (loha["hada_w1_a"] @ loha["hada_w1_b"]) * (loha["hada_w2_a"] @ loha["hada_w2_b"])
    g = (got["hada_w1_a"] @ got["hada_w1_b"]) * (got["hada_w2_a"] @ got["hada_w2_b"])
    torch.testing.assert_close(g, torch.cat(m.chunk(2)[::-1]))
