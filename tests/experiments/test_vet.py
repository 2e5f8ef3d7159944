"""A sweep's trials are vetted by the one assessment: what it calls an error is refused in its words
before any trainer starts; one that does not fit gets the assessment's cheapest fix."""

from __future__ import annotations

from flux2_lora.assess import Environment
from flux2_lora.config.io import load_config
from flux2_lora.experiments.vet import Target, vet
from flux2_lora.memory.gpus import parse_gpu

NO_CUDA = Environment(cuda=False, packages=frozenset({"bitsandbytes", "torchao"}))


def test_a_trial_the_assessment_calls_an_error_is_refused_in_its_words() -> None:
    config, _ = load_config(presets=["quickstart"], overrides=["training.optimizer=adamw8bit"])
    v = vet(config, Target(None, NO_CUDA))
    assert not v.fits and v.verdict == "unknown"
    assert "adamw8bit runs only on CUDA GPUs" in v.reason
    fine, _ = load_config(presets=["quickstart"])
    assert vet(fine, Target(None, NO_CUDA)).fits


def test_a_trial_that_does_not_fit_names_the_assessments_fix() -> None:
    config, _ = load_config(presets=["dev"])
    v = vet(config, Target(parse_gpu("48"), Environment(cuda=True, packages=frozenset())))
    assert not v.fits and v.verdict == "does_not_fit" and "48 GB" in v.reason
    assert "it would fit with" in v.reason
