"""How a training run ended, as its caller (the CLI, a test) sees it; and the failure of a diverged loss.

A run that finishes or stops returns a :class:`RunOutcome`; a run that fails raises (the session records
the reason in status.json first). No torch here: the CLI maps outcomes to exit codes without loading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class RunOutcome:
    """``state``: finished (every step trained, the LoRA written) or stopped (a resumable checkpoint of
    ``step`` written). ``lora`` and ``checkpoint`` are known on the main process only."""

    state: Literal["finished", "stopped"]
    step: int
    total_steps: int
    lora: Path | None = None
    checkpoint: Path | None = None
    message: str = ""
    already_finished: bool = False  # `--resume latest` on a finished run: nothing was done

    @property
    def finished(self) -> bool:
        return self.state == "finished"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training further only spreads it, so the run stops there."""

    def __init__(self, step: int, loss: float, last_good: Path | None, what: str = "loss"):
        self.step, self.loss, self.last_good = step, loss, last_good
        value = "NaN" if math.isnan(loss) else ("+Infinity" if loss > 0 else "-Infinity")
        keep = (
            f"the last good checkpoint is {last_good.name}"
            if last_good is not None
            else "no checkpoint was written before it"
        )
        super().__init__(
            f"{what} diverged ({value}) at step {step}; {keep}: lower training.learning_rate "
            "(or raise training.warmup_steps, or set training.max_grad_norm), then resume or start over"
        )


def first_non_finite(losses: list[float], last_step: int) -> tuple[int, float] | None:
    """(step, loss) of the first non-finite loss in ``losses``, the losses of the steps ending at
    ``last_step``; None when all are finite."""
    first = last_step - len(losses) + 1
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            return first + i, loss
    return None
