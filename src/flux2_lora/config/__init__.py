"""The configuration: the typed schema (:mod:`.schema`), YAML and ``--set`` composition (:mod:`.io`) and
the shipped presets (:mod:`.presets`). No torch.
"""

from __future__ import annotations

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
)

__all__ = [
    "DTYPE_TO_MIXED",
    "SECTIONS",
    "DatasetSection",
    "DistributedSection",
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
]
