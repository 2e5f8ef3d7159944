"""The configuration: the typed schema (:mod:`.schema`), YAML and ``--set`` composition (:mod:`.io`),
the shipped presets (:mod:`.presets`) and the settings of one generated image (:mod:`.generation`).
No torch.
"""

from __future__ import annotations

from flux2_lora.config.generation import GenerationSettings
from flux2_lora.config.schema import (
    DTYPE_TO_MIXED,
    SECTIONS,
    DatasetSection,
    DistributedSection,
    LoggingSection,
    LoraSection,
    MemorySection,
    ModelSection,
    OutputSection,
    PerformanceSection,
    Section,
    TrainConfig,
    TrainingSection,
    ValidationSection,
    mixed_precision,
)

__all__ = [
    "DTYPE_TO_MIXED",
    "SECTIONS",
    "DatasetSection",
    "DistributedSection",
    "GenerationSettings",
    "LoggingSection",
    "LoraSection",
    "MemorySection",
    "ModelSection",
    "OutputSection",
    "PerformanceSection",
    "Section",
    "TrainConfig",
    "TrainingSection",
    "ValidationSection",
    "mixed_precision",
]
