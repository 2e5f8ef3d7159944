"""Edit steps in the meta-tensor trace (issue 20): the trainer's packing (training/batches.pack_references
after the target's tokens, the prediction cut back to the target for the loss) traced for the dataset's
largest sample, against the estimate, which sizes the same sample's reference tokens (memory/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import load_config
from flux2_lora.memory import estimate
from flux2_lora.memory.estimate import resolve_shapes
from flux2_lora.variants import VARIANTS
from tests.memory.matrix import config, training_phase_on


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two targets: a with two references (1024×512 and 512², 2048 + 1024 tokens), b with one 768²."""
    data = tmp_path_factory.mktemp("edit") / "data"
    (data / "refs").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("RGB", (512, 512)).save(data / f"{name}.png")
    Image.new("RGB", (1024, 512)).save(data / "refs" / "a_0.png")
    Image.new("RGB", (512, 512)).save(data / "refs" / "a_1.png")
    Image.new("RGB", (768, 768)).save(data / "refs" / "b.png")
    return data


def _edit(data: Path, *extra: str, variant: str = "klein-4b") -> TrainConfig:
    return config(
        f"dataset.path={data}",
        "dataset.reference_path=refs",
        "dataset.resolution=512",
        *extra,
        variant=variant,
    )


def test_the_trace_packs_the_largest_samples_references(pairs: Path) -> None:
    from flux2_lora.training.trace_inputs import largest_sample_references

    c = _edit(pairs)
    # Two references of a 1024² cap: they keep their sizes; a's 2048 + 1024 tokens beat b's 2304.
    assert largest_sample_references(c) == ((1024, 512), (512, 512))
    assert resolve_shapes(c).reference_tokens == 3072
    assert largest_sample_references(config()) == ()


@pytest.mark.parametrize(
    "extra",
    [
        (),
        ("memory.gradient_checkpointing=false",),
        ("training.batch_size=2", "lora.target_modules=[all-linear]"),
        ("lora.use_dora=true", "training.optimizer=adafactor"),
    ],
)
def test_reduced_depth_edit_step_within_3_percent(pairs: Path, extra: tuple[str, ...]) -> None:
    from flux2_lora.training.trace import reduced, trace_training_step

    arch = reduced(VARIANTS["klein-4b"].transformer, 2, 3)
    c = _edit(pairs, *extra)
    traced = trace_training_step(c, arch)
    assert traced["reference_tokens"] == 3072  # the packed references, per sample
    est = training_phase_on(c, arch)
    assert abs(est - traced["peak_gib"]) / traced["peak_gib"] < 0.03
    # The references cost memory: the same step without them is smaller.
    plain = trace_training_step(c, arch, references=((64, 64),))
    assert plain["peak_gib"] < traced["peak_gib"]


def test_the_edit_demo_references_add_no_error_of_their_own() -> None:
    """The toy demo model is where the estimate's small uncounted terms (the step's inputs) show: about
    5% of its 8 MiB, with or without references. What the references add must not move that error."""
    from flux2_lora.training.trace import trace_training_step

    def error(preset: str) -> tuple[float, float]:
        c, issues = load_config(presets=[preset])
        assert c is not None, issues
        traced = trace_training_step(c)
        est = estimate(c, kernels="trace").phases["training"]
        return (est - traced["peak_gib"]) / traced["peak_gib"], traced["reference_tokens"]

    (edit, refs), (plain, none) = error("quickstart-edit"), error("quickstart")
    assert (refs, none) == (32, 0)  # 64² shape + 64² swatch at the preset's cap
    assert abs(edit - plain) < 0.005


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["klein-4b", "dev"])
def test_full_depth_edit_step_within_3_percent(pairs: Path, variant: str) -> None:
    from flux2_lora.training.trace import trace_training_step

    c = _edit(pairs, variant=variant)
    traced = trace_training_step(c)
    est = estimate(c, kernels="trace").phases["training"]
    assert abs(est - traced["peak_gib"]) / traced["peak_gib"] < 0.03
