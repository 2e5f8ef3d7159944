"""Backend events the page calls itself, bypassing Gradio's frontend dispatch (issue 22, point 4).

Each event Gradio's frontend dispatches makes it read every input and every trigger of that event, reset
the validation state of every input and update the loading status of every output any event of the page
has ever had: a walk of the page's ~540-node tree for each, which grew with the page's age to most of a
change's latency. The Train tab's form events (the estimate, presets, fixes, templates) instead run in the
page: it keeps a copy of the form's values (``window.flux2EstimateValues``, filled at page load, one field
per change) and POSTs them to a backend event as Gradio's own client does (``/gradio_api/run/<api name>``,
the page's session, so its States are read and kept, login and host checks as for any event). The backend
events hang on one hidden button that is never clicked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from flux2_lora.webui.tabs import PRIVATE

# window.flux2Post(api, data): the backend event's outputs, or an Error with the server's message.
POST_JS = """
  if (!window.flux2Post) window.flux2Post = async (api, data) => {
    const root = (window.gradio_config && window.gradio_config.root) || window.location.origin;
    const r = await fetch(root.replace(/\\/$/, '') + '/gradio_api/run/' + api, {
      method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({data, event_data: null, session_hash: window.__gradio_session_hash__}),
    });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body.data;
  };
"""


def estimate_js(api_name: str, n_outputs: int, states: list[int], errors: int) -> str:
    """The full estimate event (page load, GPU, dataset check, start anyway): copy every input's value
    into the page and define window.flux2Estimate(changes), which applies [[input index, value], ...] and
    returns the backend event's outputs. A call that a newer one overtakes, before it sends or before its
    reply, returns undefined for every output (which leaves them as they are); States stay the server's."""
    return f"""
async (...values) => {{
{POST_JS}
  if (!window.flux2Estimate) window.flux2Estimate = async (changes) => {{
    const all = window.flux2EstimateValues;
    for (const [i, v] of changes) all[i] = v;
    const seq = (window.flux2EstimateSeq = (window.flux2EstimateSeq || 0) + 1);
    const keep = Array({n_outputs}).fill(undefined);
    // A preset or a fix changes many fields at once, each its own event: only the burst's last sends.
    await new Promise((r) => setTimeout(r, 0));
    if (seq !== window.flux2EstimateSeq) return keep;
    let data;
    try {{
      data = await window.flux2Post('{api_name}', all);
    }} catch (e) {{
      if (seq !== window.flux2EstimateSeq) return keep;
      keep[{errors}] = '✘ The estimate failed: ' + String(e.message || e).replace(/[<>&]/g, '');
      return keep;
    }}
    if (seq !== window.flux2EstimateSeq) return keep;
    for (const i of {json.dumps(states)}) data[i] = undefined;
    return data;
  }};
  window.flux2EstimateValues = values.slice();
  return await window.flux2Estimate([]);
}}
"""


def field_estimate_js(index: int, n_outputs: int) -> str:
    """One field's change: its new value into the page's copy of the inputs, then the estimate. Before
    the full event has run once (at page load) there is no copy yet, and that event reads every field."""
    return (
        f"(v) => window.flux2Estimate ? window.flux2Estimate([[{index}, v]]) "
        f": Array({n_outputs}).fill(undefined)"
    )


def form_call_js(api_name: str, n_form: int, n_outputs: int, states: list[int], message: int | None) -> str:
    """An event whose backend reads the whole form and writes it (a preset, a fix, a template): its own
    inputs (after the form's) come from the page; the reply's form values equal to the page's copy are
    left out, so only the fields that change are updated (and only they estimate again)."""
    shown = (
        f"keep[{message}] = '✘ ' + String(e.message || e).replace(/[<>&]/g, '');"
        if message is not None
        else ""
    )
    return f"""
async (...extra) => {{
{POST_JS}
  const keep = Array({n_outputs}).fill(undefined);
  const form = window.flux2EstimateValues;
  if (!form) return keep;
  let data;
  try {{
    data = await window.flux2Post('{api_name}', [...form.slice(0, {n_form}), ...extra]);
  }} catch (e) {{
    {shown}
    return keep;
  }}
  for (let i = 0; i < {n_form}; i++) if (JSON.stringify(data[i]) === JSON.stringify(form[i])) data[i] = undefined;
  for (const i of {json.dumps(states)}) data[i] = undefined;
  return data;
}}
"""


class PageCalls:
    """Wires backend events the page calls itself; they all hang on one hidden button."""

    def __init__(self) -> None:
        self.button = gr.Button(visible=False, elem_id="page-call-backend")

    def backend(
        self, fn: Callable[[dict[Any, Any]], Any], inputs: Sequence[Any], outputs: Sequence[Any], name: str
    ) -> str:
        """Register ``fn`` (given its inputs as a dict, as Gradio does for a set) as a direct backend
        event named ``page_<name>`` (no endpoint of the API has that prefix); returns its api name."""
        ordered, api = list(inputs), f"page_{name}"

        def call(*values: Any) -> Any:  # Gradio has checked the count of values
            return fn(dict(zip(ordered, values, strict=True)))

        dep = self.button.click(
            call,
            ordered,
            list(outputs),
            queue=False,
            api_name=api,
            **PRIVATE,
        )
        if dep["api_name"] != api:  # Gradio renamed it: another event has the name (the page would call that)
            raise ValueError(f"an event is already named {api!r}")
        return api

    def form_event(
        self,
        trigger: Any,
        fn: Callable[[dict[Any, Any]], Any],
        form_components: Sequence[Any],
        extra: Sequence[Any],
        outputs: Sequence[Any],
        name: str,
        message: Any = None,
    ) -> Any:
        """``trigger`` (an event listener such as ``button.click``) runs ``fn`` on the form (from the page's
        copy) and ``extra`` (read by the page as usual), writing ``outputs`` (the form's components first,
        in their order); a failure shows in ``message`` when given."""
        outs = list(outputs)
        if outs[: len(form_components)] != list(form_components):
            raise ValueError("the outputs must start with the form's components, in their order")
        api = self.backend(fn, [*form_components, *extra], outs, name)
        states = [i for i, o in enumerate(outs) if isinstance(o, gr.State)]
        js = form_call_js(
            api, len(form_components), len(outs), states, outs.index(message) if message else None
        )
        return trigger(None, list(extra), outs, js=js, **PRIVATE)
