"""Third-party chatter (optional-kernel notices, dtype hints, progress bars) goes to the run's log, not the
console: torchao's "Failed to load _C_mxfp8", bitsandbytes' "kernels-community … publisher trust",
diffusers' "kept in float32: []" say nothing a user can act on. With ``--debug`` (or FLUX2_LORA_DEBUG) they
are left on the console as the libraries print them.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import deque

# Loggers whose records are diverted (children included: "torch" covers torch.utils._pytree).
LIBRARY_LOGGERS = (
    "bitsandbytes",
    "torchao",
    "kernels",
    "torch",
    "accelerate",
    "diffusers",
    "transformers",
    "huggingface_hub",
    "peft",
    "py.warnings",  # Python warnings, through logging.captureWarnings
)
DEBUG_ENV = "FLUX2_LORA_DEBUG"
_EARLY_LIMIT = 200  # records kept until a run log exists (imports talk before the trainer opens train.log)


class ToRunLog(logging.Handler):
    """Writes library records into the flux2_lora logger's file handlers (train.log); records from before
    there is one are kept, a bounded few, and written first when it appears."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.early: deque[logging.LogRecord] = deque(maxlen=_EARLY_LIMIT)

    def emit(self, record: logging.LogRecord) -> None:
        files = [h for h in logging.getLogger("flux2_lora").handlers if isinstance(h, logging.FileHandler)]
        if not files:
            self.early.append(record)
            return
        pending = [*self.early, record]
        self.early.clear()
        for item in pending:
            item.msg = f"[{item.name}] {item.getMessage()}"
            item.args = ()
            for handler in files:
                handler.handle(item)


_handler = ToRunLog()


def debug_requested() -> bool:
    return bool(os.environ.get(DEBUG_ENV))


def quiet_libraries(debug: bool | None = None) -> None:
    """Divert the libraries' log records and warnings to train.log; with ``debug`` leave them on the
    console. Call it before the libraries are imported: torchao speaks at import."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if debug_requested() if debug is None else debug:
        return
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _handler not in logger.handlers:
            logger.addHandler(_handler)
        logger.propagate = False  # nor the root logger's (or Python's last-resort) console output
    try:
        from diffusers.utils import logging as dlog

        dlog.disable_default_handler()  # diffusers' own console handler on its "diffusers" logger
        dlog.disable_progress_bar()
        from transformers.utils import logging as tlog

        tlog.disable_default_handler()
        tlog.disable_progress_bar()
    except ImportError:
        pass
    for name in LIBRARY_LOGGERS:
        # Their own handlers may have been re-added by the imports above; keep only ours.
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if h is _handler] or [_handler]
