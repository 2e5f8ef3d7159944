"""Edit LoRAs in the memory estimate: the sequence is the target's tokens plus the largest sample's
reference tokens, the same count the trainer's pre-flight times."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import load_config
from flux2_lora.memory.estimate import estimate, resolve_shapes


def _config(*overrides: str) -> TrainConfig:
    config, issues = load_config(presets=["quickstart-edit"], overrides=list(overrides))
    assert config is not None, issues
    return config


def test_the_edit_demo_counts_its_largest_samples_references() -> None:
    config = _config()
    # 64² target: 16 tokens; the two-reference pairs at the preset's 64² cap: 16 + 16 tokens.
    assert (estimate(config).image_tokens, resolve_shapes(config).reference_tokens) == (48, 32)


def test_a_reference_folder_grows_the_sequence_and_the_activations(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "refs").mkdir(parents=True)
    Image.new("RGB", (256, 256)).save(data / "a.png")
    Image.new("RGB", (256, 256)).save(data / "b.png")
    Image.new("RGB", (512, 256)).save(data / "refs" / "a_0.png")
    Image.new("RGB", (256, 256)).save(data / "refs" / "a_1.png")
    Image.new("RGB", (256, 256)).save(data / "refs" / "b.png")
    common = (f"dataset.path={data}", "dataset.resolution=256", "dataset.reference_max_pixels=0")
    plain_config, edit_config = _config(*common), _config(*common, "dataset.reference_path=refs")
    plain, edit = estimate(plain_config), estimate(edit_config)
    assert resolve_shapes(plain_config).reference_tokens == 0 and plain.image_tokens == 256
    refs = resolve_shapes(edit_config).reference_tokens
    assert refs == 32 * 16 + 16 * 16  # a's two references: the largest sample
    assert edit.image_tokens == 256 + refs
    assert edit.phases["training"] > plain.phases["training"]


def test_the_preflight_times_the_sample_the_estimate_sizes(tmp_path: Path) -> None:
    from flux2_lora.training.trainer import Trainer

    config = _config(f"output.dir={tmp_path}/run", "validation.enabled=false", "logging.tensorboard=false")
    t = Trainer(config)
    t.setup()
    largest = max(it.tokens(64) for it in t.items)
    assert largest == estimate(config).image_tokens
