"""The libraries' notices to the run's log for the commands that load them (estimate, generate): apart from
cli/common, which the torch-free commands import and which must not reach flux2_lora.training."""

from __future__ import annotations


def quiet_libraries(debug: bool = False) -> None:
    """The libraries' notices go to the run's log, not the console (``--debug`` leaves them on it)."""
    import os

    from flux2_lora.training.quiet import DEBUG_ENV
    from flux2_lora.training.quiet import quiet_libraries as divert

    if debug:
        os.environ[DEBUG_ENV] = "1"
    divert(debug or None)
