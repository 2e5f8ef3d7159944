"""Named API endpoints (gradio_client): every method of :data:`~flux2_lora.webui.actions.API`, registered
from its own signature, plus the three that move files (upload, LoRA download, sample download)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr

from flux2_lora.webui.actions import API, Actions
from flux2_lora.webui.requests import RequestError


def _clear_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A refused argument of an endpoint that returns a list reaches the client as its message (gr.Error),
    not as a server traceback."""

    @functools.wraps(fn)
    def endpoint(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RequestError as e:
            raise gr.Error(str(e)) from None

    return endpoint


def register_api(actions: Actions) -> None:
    """Call inside the Blocks context."""
    for name in API:
        gr.api(_clear_errors(getattr(actions, name)), api_name=name)

    # Files need file components: the client uploads into / downloads from them. Served files come from
    # the runs folder only (AppPaths.served_file).
    up_in, up_out = gr.File(visible=False), gr.JSON(visible=False)
    up_btn = gr.Button(visible=False)
    up_btn.click(actions.upload_dataset, up_in, up_out, api_name="upload_dataset")
    dl_in, dl_out = gr.Textbox(visible=False), gr.File(visible=False)
    dl_in.submit(_clear_errors(actions.lora_file), dl_in, dl_out, api_name="download_lora")
    f_in, f_out = gr.Textbox(visible=False), gr.File(visible=False)
    f_in.submit(_served(actions), f_in, f_out, api_name="download_file")


def _served(actions: Actions) -> Any:
    def download_file(path: str) -> str | None:
        f = actions.paths.served_file(path)
        return str(f) if f else None

    return download_file
