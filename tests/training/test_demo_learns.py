"""The demo visibly learns: the embedded model knows its world (coloured shapes on a plain background),
is cached by the code that builds it, and the quickstart LoRA moves a pixel statistic of its samples the
intended way (warm stripes behind the shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flux2_lora.data.demo import code_key, demo_model_dir, demo_model_key
from flux2_lora.training.before_after import GRID_FILE, STATS_FILE, background_warmth

from ..conftest import tiny_config


def test_the_cache_folder_is_named_by_the_code_that_builds_it() -> None:
    key = demo_model_key()
    assert len(key) == 12 and demo_model_dir().name.endswith(key)
    assert code_key("data/demo.py", extra="a") != code_key("data/demo.py", extra="b")
    assert code_key("data/demo.py") != code_key("data/demo.py", "training/demo_pretrain.py")


def test_background_warmth_tells_plain_from_stripes() -> None:
    from PIL import Image

    from flux2_lora.data.demo import STRIPE_COLORS, stripes
    from flux2_lora.training.demo_pretrain import WORLD_BACKGROUND

    assert background_warmth(Image.new("RGB", (64, 64), WORLD_BACKGROUND)) < 0
    assert background_warmth(stripes(64, *STRIPE_COLORS, period=16)) > 60


@pytest.mark.slow
def test_the_demo_model_is_taught_once_and_holds_safetensors_only() -> None:
    from flux2_lora.training.demo_model import ensure_demo_model

    folder = ensure_demo_model()
    assert folder == demo_model_dir()
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert folder.name in (folder / "DEMO_VERSION").read_text()
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert ensure_demo_model() == folder and (folder / "model_index.json").stat().st_mtime_ns == stamp
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.") and p.is_dir()]


@pytest.mark.slow
def test_the_quickstart_lora_teaches_warm_stripes(tmp_path: Path) -> None:
    """The whole quickstart (200 steps): scale 0 draws the base world, scale 1 the stripes."""
    from flux2_lora.training.trainer import run_training

    from ..helpers import assert_finished

    config = tiny_config(
        tmp_path / "run",
        "training.max_steps=200",
        "training.warmup_steps=10",
        "validation.enabled=true",
        "validation.every_n_steps=1000",
        "logging.log_every=10",
    )
    assert_finished(run_training(config), config)
    run = tmp_path / "run"
    assert (run / GRID_FILE).is_file()
    stats = json.loads((run / STATS_FILE).read_text())
    before, after = stats["background_warmth"]["scale_0"], stats["background_warmth"]["scale_1"]
    assert len(before) == len(after) == 6  # 3 prompts × 2 seeds
    assert max(before) < 30, before  # the base model: a plain, cool background
    # The stripes show where the background does (a large shape covers most of a border).
    assert sum(a - b > 25 for a, b in zip(after, before, strict=True)) >= 3, (before, after)
    assert stats["mean_background_warmth"]["scale_1"] > stats["mean_background_warmth"]["scale_0"] + 20
    # The base model follows the prompt: with the same seed, "red" is drawn redder than "blue".
    redness = stats["shape_redness"]["scale_0"]
    red, blue = redness[0:2], redness[2:4]
    assert all(r > b + 30 for r, b in zip(red, blue, strict=True)), (red, blue)
