"""memory.cache_to_disk: latents and text embeddings in <run>/.cache as safetensors (+ a JSON manifest),
keyed by content and settings; a resumed run reads them back without encoding anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from flux2_lora.training import batches, disk_cache
from flux2_lora.training.trainer import Trainer
from tests.conftest import MakeConfig


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many images the VAE and captions the text encoder encode."""
    count = {"images": 0, "captions": 0}
    encode_images, encode = batches.encode_images, batches.PromptSource.encode

    def images(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
        count["images"] += pixels.shape[0]
        return encode_images(vae, pixels)

    def captions(self: Any, prompts: list[str]) -> torch.Tensor:
        count["captions"] += len(prompts)
        return encode(self, prompts)

    monkeypatch.setattr(disk_cache, "encode_images", images)
    monkeypatch.setattr(batches, "encode_images", images)
    monkeypatch.setattr(batches.PromptSource, "encode", captions)
    return count


def test_a_resumed_run_reads_the_cache_without_encoding(
    make_config: MakeConfig, calls: dict[str, int]
) -> None:
    cfg = make_config("memory.cache_to_disk=true", "dataset.random_flip=true")
    first = Trainer(cfg)
    first.setup()
    assert first.latents is not None and first.prompts is not None
    images = len(first.items) * 2  # both flips
    assert calls["images"] == images and calls["captions"] >= 1
    first.train_step(1)
    first.save_checkpoint(1)
    root = Path(cfg.output.dir) / ".cache"
    files = sorted(root.rglob("*.safetensors"))
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert len(files) == len(manifest["entries"]) == images + calls["captions"]
    assert {e["kind"] for e in manifest["entries"].values()} == {"latent", "text"}
    before = dict(calls)

    resumed = Trainer(cfg)
    assert resumed.setup(resume="latest") == 1
    assert calls == before  # nothing encoded again
    assert resumed.latents is not None
    for key in first.latents.cache:
        assert torch.equal(resumed.latents.cache[key], first.latents.cache[key])
    # The latents the disk gives are those an in-RAM cache holds.
    ram = Trainer(make_config("dataset.random_flip=true", out=Path(cfg.output.dir).parent / "ram"))
    ram.setup()
    assert ram.latents is not None
    for key, value in ram.latents.cache.items():
        assert torch.equal(resumed.latents.cache[key], value)
    ram.train_step(1)
    torch.testing.assert_close(resumed.train_step(2), ram.train_step(2))  # the same training


def test_changed_settings_or_a_broken_file_encode_again(
    make_config: MakeConfig, calls: dict[str, int]
) -> None:
    cfg = make_config("memory.cache_to_disk=true")
    Trainer(cfg).setup()
    first = calls["images"]
    root = Path(cfg.output.dir) / ".cache"
    files = sorted(root.rglob("*.safetensors"))
    for f in files:  # every file is safetensors (no pickle): an 8-byte header length, then JSON
        assert f.read_bytes()[8:9] == b"{"
    entries = json.loads((root / "manifest.json").read_text(encoding="utf-8"))["entries"]
    latent = next(f for f in files if entries[f.stem]["kind"] == "latent")
    latent.write_bytes(b"not a tensor file")
    Trainer(cfg).setup()
    assert calls["images"] == first + 1  # only the broken one
    out = Path(cfg.output.dir)
    Trainer(make_config("memory.cache_to_disk=true", "dataset.center_crop=false", out=out)).setup()
    assert calls["images"] == first * 2 + 1  # another crop: other keys


def test_cache_to_disk_with_nothing_cached_is_refused(make_config: MakeConfig) -> None:
    from flux2_lora.config.io import ConfigError

    with pytest.raises(ConfigError, match="memory.cache_to_disk"):
        make_config(
            "memory.cache_to_disk=true", "memory.cache_latents=false", "memory.cache_text_embeddings=false"
        )
