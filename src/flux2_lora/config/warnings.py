"""Common mistakes: settings that are valid but usually wrong, each with its fix (pure, no torch).

One list for the web UI (beside the estimate, with one-click fixes) and ``flux2-lora validate``. What a
check needs beyond the config is passed in, and a check whose input is unknown stays silent:

- ``num_images`` / ``upscaled``: from a dataset scan (usable images; (file, width, height) of images
  that may be smaller than the training resolution: those that are get the warning);
- ``verdict``: the memory estimate's verdict on the GPU the user chose;
- ``gpu_name``: that GPU's name, to tell whether it has bfloat16.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from flux2_lora.config.schema import TrainConfig
from flux2_lora.variants import is_demo

MAX_ADAMW_LR = 2e-4
MAX_OTHER_LR = 1e-2  # SGD and Adafactor take larger steps than Adam-like optimizers
MIN_PRODIGY_LR = 0.1
MIN_IMAGES = 10
ADAM_LIKE = ("adamw", "adam", "adamw8bit")
RESOLUTIONS = (512, 768, 1024, 1536, 2048)
# Cards without bfloat16 (before Ampere); every GPU class the estimate lists has it.
_NO_BF16 = re.compile(r"\b(v100|t4|p100|p40|p4|k80|m60|gtx|rtx 20\d\d|titan v|titan rtx|quadro rtx)\b", re.I)
_BF16 = re.compile(
    r"\b(a100|a10g?|a30|a40|a6000|l4|l40s?|h100|h200|b200|gh200|rtx 30\d\d|rtx 40\d\d|rtx 50\d\d|"
    r"rtx a\d000|rtx 6000 ada|\d+ gb|\d+ gib)\b",
    re.I,
)


@dataclass(frozen=True)
class ConfigWarning:
    field: str  # dotted config path, "" for the dataset as a whole
    message: str  # what is likely wrong
    fix: str  # what to do, in words
    overrides: dict[str, Any] = dataclass_field(
        default_factory=dict
    )  # the fix as field values (one click), if any

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message, "fix": self.fix, "overrides": self.overrides}

    def __str__(self) -> str:
        head = f"{self.field}: {self.message}" if self.field else self.message
        return f"{head} — fix: {self.fix}"


def has_bf16(gpu_name: str | None) -> bool | None:
    """Whether a GPU (by name or class) computes in bfloat16: None when the name does not say."""
    if not gpu_name:
        return None
    if _NO_BF16.search(gpu_name):
        return False
    if _BF16.search(gpu_name):
        return True
    return None


def _is_dev(config: TrainConfig) -> bool:
    if config.model.variant != "auto":
        return config.model.variant == "dev"
    from flux2_lora.variants import variant_from_name

    return variant_from_name(config.model.path) == "dev"


def _resolution_fix(config: TrainConfig, upscaled: Sequence[tuple[str, int, int]]) -> int | None:
    """The largest usual resolution (else multiple of 16) that none of the upscaled images is below."""
    short = min(min(w, h) for _, w, h in upscaled)
    usual = [r for r in RESOLUTIONS if r <= short]
    best = usual[-1] if usual else short - short % 16
    return best if 16 <= best < config.dataset.resolution else None


def common_mistakes(
    config: TrainConfig,
    *,
    num_images: int | None = None,
    upscaled: Sequence[tuple[str, int, int]] | None = None,
    verdict: str | None = None,
    gpu_name: str | None = None,
) -> list[ConfigWarning]:
    """Every common mistake in ``config``, in field order."""
    out: list[ConfigWarning] = []
    t, demo = config.training, is_demo(config.model.path)
    # The demo's random-weight toy model needs a large step on purpose; the advice is for real models.
    if not demo and t.optimizer in ADAM_LIKE and t.learning_rate > MAX_ADAMW_LR:
        out.append(
            ConfigWarning(
                "training.learning_rate",
                f"{t.learning_rate:g} is above {MAX_ADAMW_LR:g}, high for {t.optimizer}: a LoRA usually "
                "overcooks (burnt colours, copies of the training images)",
                "use 5e-5 to 2e-4 (1e-4 is a safe start)",
                {"training.learning_rate": 1e-4},
            )
        )
    if not demo and t.optimizer not in (*ADAM_LIKE, "prodigy") and t.learning_rate > MAX_OTHER_LR:
        out.append(
            ConfigWarning(
                "training.learning_rate",
                f"{t.learning_rate:g} is very high for a LoRA with {t.optimizer}",
                f"use at most {MAX_OTHER_LR:g}",
                {"training.learning_rate": MAX_OTHER_LR},
            )
        )
    if t.optimizer == "prodigy" and t.learning_rate < MIN_PRODIGY_LR:
        out.append(
            ConfigWarning(
                "training.learning_rate",
                f"{t.learning_rate:g} is low for Prodigy, which adapts the step size itself",
                "use 1.0",
                {"training.learning_rate": 1.0},
            )
        )
    if num_images is not None and 0 < num_images < MIN_IMAGES:
        out.append(
            ConfigWarning(
                "dataset.path",
                f"only {num_images} usable image{'s' * (num_images != 1)}: fewer than {MIN_IMAGES} usually "
                "overfits to those exact pictures",
                f"add images ({MIN_IMAGES}–50 varied ones is usual)",
            )
        )
    upscaled = [u for u in upscaled or () if min(u[1], u[2]) < config.dataset.resolution]
    if upscaled:
        target = _resolution_fix(config, upscaled)
        names = ", ".join(f for f, _, _ in upscaled[:3]) + (" …" if len(upscaled) > 3 else "")
        out.append(
            ConfigWarning(
                "dataset.resolution",
                f"{len(upscaled)} image{'s are' if len(upscaled) != 1 else ' is'} smaller than "
                f"{config.dataset.resolution} px and will be upscaled (blurry training data): {names}",
                f"lower the resolution to {target}" if target else "use larger images",
                {"dataset.resolution": target} if target else {},
            )
        )
    if config.model.dtype == "float16" and has_bf16(gpu_name) is not False:
        on = (
            f"on {gpu_name}, which has bfloat16"
            if has_bf16(gpu_name)
            else "(prefer bfloat16 where the GPU has it)"
        )
        out.append(
            ConfigWarning(
                "model.dtype",
                f"float16 {on}: same memory, but float16's narrow range can overflow in FLUX.2's activations",
                "use bfloat16",
                {"model.dtype": "bfloat16"},
            )
        )
    if t.batch_size > 1 and _is_dev(config):
        steps = t.batch_size * t.gradient_accumulation_steps
        out.append(
            ConfigWarning(
                "training.batch_size",
                f"batch {t.batch_size} on FLUX.2 [dev] multiplies its activations (tens of GiB each)",
                f"use batch 1 with {steps} gradient accumulation steps (same effective batch)",
                {"training.batch_size": 1, "training.gradient_accumulation_steps": steps},
            )
        )
    if config.lora.type == "loha":
        out.append(
            ConfigWarning(
                "lora.type",
                "diffusers (0.42.1) cannot load a LoHa file (its load_lora_weights fails on hada_ keys), so "
                "neither can flux2-lora generate nor the Test LoRA tab; only PEFT reads it (LoHaConfig from "
                "the file's metadata)",
                "use lokr (diffusers loads it) or lora, unless you load the file with PEFT yourself",
                {"lora.type": "lokr"},
            )
        )
    ema = _ema_warning(config)
    if ema is not None:
        out.append(ema)
    if verdict == "does_not_fit" and not config.memory.gradient_checkpointing:
        out.append(
            ConfigWarning(
                "memory.gradient_checkpointing",
                "off, and the estimate says this run does not fit the GPU",
                "turn gradient checkpointing on (far less activation memory, ~30% slower steps)",
                {"memory.gradient_checkpointing": True},
            )
        )
    from flux2_lora.config.distributed import distributed_issues

    out += [ConfigWarning(f, m, "", {}) for f, m, level in distributed_issues(config) if level == "warning"]
    return out


EMA_MAX_START_SHARE = 0.1  # more of the untrained start left in the final EMA than this is a mistake


def _ema_warning(config: TrainConfig) -> ConfigWarning | None:
    """An EMA too slow for the run: its final weights are still largely the untrained start (the LoRA's
    B matrices start at zero, so the EMA starts as a LoRA that does nothing)."""
    t = config.training
    updates = t.max_steps // t.ema_update_every
    if t.ema_decay == 0:
        return None
    if updates == 0:
        return ConfigWarning(
            "training.ema_update_every",
            f"{t.ema_update_every} is more than training.max_steps ({t.max_steps}): the EMA is never updated "
            "and pytorch_lora_weights_ema.safetensors is the untrained start",
            "update it every step",
            {"training.ema_update_every": 1},
        )
    share = t.ema_decay**updates
    if share <= EMA_MAX_START_SHARE:
        return None
    fix = math.floor(0.01 ** (1 / updates) * 1000) / 1000
    return ConfigWarning(
        "training.ema_decay",
        f"{t.ema_decay:g} over {updates} EMA update{'s' * (updates != 1)}: {share:.0%} of the final EMA "
        "weights is still the untrained start, so pytorch_lora_weights_ema.safetensors will be weak",
        f"use ema_decay {fix:g} (1% of the start left), or train longer",
        {"training.ema_decay": fix},
    )


def upscaled_from_report(report: Any, resolution: int) -> list[tuple[str, int, int]]:
    """(file, width, height) of the scanned images smaller than ``resolution`` (a DatasetReport)."""
    root = report.root
    out = []
    for item in report.items:
        if min(item.width, item.height) < resolution:
            try:
                name = item.path.relative_to(root).as_posix()
            except ValueError:
                name = item.path.name
            out.append((name, item.width, item.height))
    return out
