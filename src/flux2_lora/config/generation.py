"""What one generated image takes: prompt, LoRA scale, steps, guidance, size, seed (pydantic, no torch).

One model for ``flux2-lora generate`` (its options are derived from it), the web UI's Test LoRA tab
(its widgets too) and the ``/generate`` API. Steps and guidance are the validation samples' own fields
(same default and bounds), so a LoRA is tested the way its run sampled unless asked otherwise.
"""

from __future__ import annotations

import copy
import unicodedata
from typing import Any

from pydantic import field_validator

from flux2_lora.config.schema import F, Section, TrainConfig, ValidationSection


def _like(section: type[Section], name: str, help: str) -> Any:
    """The field ``section.name`` (default and bounds) under another help text."""
    info = copy.copy(section.model_fields[name])
    info.description = help
    return info


def text_problem(value: str, *, prompt: bool = False) -> str | None:
    """Why a text argument is refused: a NUL byte anywhere; in a prompt any control character."""
    if "\x00" in value:
        return "contains a NUL byte"
    if prompt:
        bad = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) == "Cc"})
        if bad:
            return f"contains control characters ({', '.join(bad[:5])}); use plain text on one line"
    return None


class GenerationSettings(Section):
    """One image with a LoRA at a chosen strength."""

    prompt: str = F("", "What to draw; include the LoRA's trigger word.", max_length=4000, ui={"lines": 2})
    scale: float = F(
        1.0,
        "LoRA strength: 0 is the base model, 1 the LoRA as trained, above 1 exaggerates it, below 0 inverts it.",
        ge=-10,
        le=10,
        ui={"step": 0.1},
    )
    steps: int = _like(ValidationSection, "num_inference_steps", "Denoising steps.")
    guidance: float = _like(
        ValidationSection, "guidance_scale", "Guidance scale ([dev]: distilled guidance; [klein]: CFG)."
    )
    resolution: int = F(
        0,
        "Square side in pixels, a multiple of 16. 0: the run's own (Test LoRA) or the model's default.",
        ge=0,
        le=4096,
        ui={"step": 16},
    )
    seed: int = F(
        0, "Seed of the starting noise: the same settings and seed give the same image.", ge=0, le=2**32 - 1
    )

    @field_validator("prompt")
    @classmethod
    def _plain_text(cls, v: str) -> str:
        problem = text_problem(v, prompt=True)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("resolution")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError("must be a multiple of 16 (FLUX.2's token size), or 0 for the default")
        return v

    @classmethod
    def for_run(cls, config: TrainConfig) -> GenerationSettings:
        """How a run sampled: its first validation prompt (else its default caption), steps, guidance
        and training resolution."""
        val = config.validation
        return cls(
            prompt=(val.prompts or [config.dataset.default_caption or ""])[0],
            steps=val.num_inference_steps,
            guidance=val.guidance_scale,
            resolution=config.dataset.resolution,
        )
