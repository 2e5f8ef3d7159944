"""Shared fixtures: an isolated demo cache per test session, and a tiny-run config factory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import load_config


@pytest.fixture(scope="session", autouse=True)
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model and dataset are built once per session, outside the user's cache."""
    home = Path(os.environ.get("FLUX2_LORA_TEST_HOME") or tmp_path_factory.mktemp("flux2-home"))
    os.environ["FLUX2_LORA_HOME"] = str(home)
    return home


def tiny_config(out: Path, *overrides: str) -> TrainConfig:
    """Quickstart shrunk to seconds: few steps, no validation unless asked."""
    base = [
        f"output.dir={out}",
        "training.max_steps=4",
        "training.warmup_steps=0",
        "validation.enabled=false",
        "output.checkpoint_every=0",
        "logging.tensorboard=false",
        "logging.log_every=1",
    ]
    config, _ = load_config(presets=["quickstart"], overrides=[*base, *overrides])
    return config


MakeConfig = Callable[..., TrainConfig]  # make_config(*overrides, out=None)


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    def make(*overrides: str, out: Path | None = None) -> TrainConfig:
        return tiny_config(out or tmp_path / "run", *overrides)

    return make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests run only where CUDA is present (the device machine); elsewhere they skip with the reason."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
