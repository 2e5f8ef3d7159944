"""The Gradio app: tabs for what a user does (Train, Runs, Test LoRA), and the named API.

Each tab lives in :mod:`flux2_lora.webui.tabs` as a ``create_<tab>(shared)`` function; the buttons and the
API endpoints call the same :class:`~flux2_lora.webui.actions.Actions`, bound once to the app's folders.
The UI process never imports torch: training, pre-flight and generation run as subprocesses.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import gradio as gr

from flux2_lora.webui.actions import Actions
from flux2_lora.webui.api import register_api
from flux2_lora.webui.paths import DEFAULT_MAX_UPLOAD_BYTES, AppPaths
from flux2_lora.webui.tabs import GOTO_TAB_JS, PRIVATE, Shared
from flux2_lora.webui.tabs.compare import create_compare_tab
from flux2_lora.webui.tabs.queue import create_queue_tab
from flux2_lora.webui.tabs.runs import create_runs_tab
from flux2_lora.webui.tabs.sweep import create_sweep_tab
from flux2_lora.webui.tabs.test_lora import create_test_tab
from flux2_lora.webui.tabs.train import create_train_tab
from flux2_lora.webui.widgets import CSS, PAGE_JS

# Fonts installed on the machine: the page works offline (Gradio's default fetches web fonts).
THEME = gr.themes.Default(
    font=[gr.themes.Font(f) for f in ("Liberation Sans", "DejaVu Sans", "Arial", "sans-serif")],
    font_mono=[gr.themes.Font(f) for f in ("DejaVu Sans Mono", "Liberation Mono", "monospace")],
)

# (id, title, builder): later tabs (Compare, Sweep) are one more entry here.
TABS = (
    ("train", "Train", create_train_tab),
    ("runs", "Runs", create_runs_tab),
    ("queue", "Queue", create_queue_tab),
    ("compare", "Compare", create_compare_tab),
    ("test", "Test LoRA", create_test_tab),
    ("sweep", "Sweep", create_sweep_tab),
)


# Gradio keeps a record of every queued event (up to 10,000) and by default rebuilds a pandas summary of
# the whole record after each event. The page's 1 s timers queue events all the time, so that work grew
# with the page's age and its open tabs until every handler waited on it (issue 22: the estimate took
# 1-2.5 s in a page that had monitored runs). A short record, summarised rarely, costs nothing.
ANALYTICS_ENV = {"GRADIO_ANALYTICS_MAX_EVENTS": "200", "GRADIO_ANALYTICS_CACHE_FREQUENCY": "100"}


def build_app(paths: AppPaths | str = "runs") -> gr.Blocks:
    for k, v in ANALYTICS_ENV.items():
        os.environ.setdefault(k, v)  # read when the app's queue is made (at launch)
    if not isinstance(paths, AppPaths):
        paths = AppPaths.create(paths)
    actions = Actions(paths)
    with gr.Blocks(title="FLUX.2 LoRA trainer") as demo:
        gr.Markdown("# FLUX.2 LoRA trainer", elem_id="title")
        run_dir, runs_changed = gr.State(""), gr.State(0)  # not inside Tabs: Gradio 6 mislabels tabs then
        goto_tab = gr.Textbox(visible=False, elem_id="goto-tab")
        goto_tab.change(None, goto_tab, None, js=GOTO_TAB_JS, **PRIVATE)
        with gr.Tabs(selected="train", elem_id="tabs"):
            shared = Shared(actions, demo, run_dir, runs_changed, goto_tab)
            tabs = []
            for tab_id, title, create in TABS:
                with gr.Tab(title, id=tab_id, elem_id=f"tab-{tab_id}") as tab:
                    create(shared, tab)
                tabs.append((tab_id, tab))
        _timers_follow_tabs(shared, tabs)
        register_api(actions)
    return demo


def _timers_follow_tabs(shared: Shared, tabs: list[tuple[str, gr.Tab]]) -> None:
    """Each tab's timers tick while it is shown and stop when another tab is (the page starts on Train,
    whose timers the others' do not include)."""
    timers = [(owner, t) for owner, ts in shared.timers.items() for t in ts]
    if not timers:
        return
    for tab_id, tab in tabs:
        tab.select(
            lambda shown=tab_id: [gr.Timer(active=owner == shown) for owner, _ in timers],
            None,
            [t for _, t in timers],
            show_progress="hidden",
            queue=False,
            **PRIVATE,
        )


def launch(
    runs_dir: str = "runs",
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    auth: tuple[str, str] | None = None,
    data_dirs: Iterable[str] | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    allowed_hosts: Iterable[str] = (),
    **kwargs: Any,
) -> tuple[gr.Blocks, str]:
    """Build and start the UI. ValueError (nothing created) for a runs folder that cannot hold runs;
    OSError where the server cannot start (the port taken)."""
    from starlette.middleware import Middleware

    from flux2_lora.webui.security import Guard, HostRules

    paths = AppPaths.create(runs_dir, data_dirs, max_upload_bytes)
    demo = build_app(paths)
    # Host check, login throttling and download-only served files (webui/security.py), inside Gradio's
    # own CORS and compression middleware.
    hosts = HostRules(host, set(allowed_hosts))
    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), Middleware(Guard, hosts=hosts)]
    # Files are served only from the runs folder (runs, samples, LoRAs, generated images, uploads).
    _, url, share_url = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        css=CSS,
        js=PAGE_JS,
        theme=THEME,
        allowed_paths=[str(paths.runs)],
        max_file_size=paths.max_upload_bytes,
        app_kwargs=app_kwargs,
        **kwargs,
    )
    if share_url:
        hosts.allow(share_url)
    return demo, url
