"""How the Train tab's estimate is wired (issue 22, point 4): each field's change is its own page-side
event with that field alone as input, and the estimate itself is one backend event the page calls
directly, so no change makes Gradio's frontend walk every input, trigger and past output."""

from __future__ import annotations

from typing import Any

import pytest

from flux2_lora.webui.schema import form_fields


@pytest.fixture(scope="module")
def app_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from flux2_lora.webui.app import build_app

    demo = build_app(str(tmp_path_factory.mktemp("runs")))
    return demo.get_config_file()


def _ids(config: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {c["id"]: c for c in config["components"]}


def test_each_field_change_estimates_with_that_field_alone(app_config: dict[str, Any]) -> None:
    comps = _ids(app_config)
    field_ids = {
        i for i, c in comps.items() if str(c.get("props", {}).get("elem_id", "")).startswith("field-")
    }
    per_field = [d for d in app_config["dependencies"] if "flux2Estimate([[" in str(d.get("js") or "")]
    assert len(per_field) == len(form_fields()) == len(field_ids)
    for d in per_field:
        assert not d["backend_fn"], "a per-field estimate event runs in the page only"
        assert len(d["inputs"]) == 1 and [tuple(t) for t in d["targets"]] == [(d["inputs"][0], "change")]
    assert {d["inputs"][0] for d in per_field} == field_ids


def test_the_estimate_backend_event_is_called_by_the_page_only(app_config: dict[str, Any]) -> None:
    comps = _ids(app_config)
    deps = app_config["dependencies"]
    backend = [d for d in deps if d.get("api_name") == "page_estimate"]
    assert len(backend) == 1 and backend[0]["backend_fn"] and not backend[0]["queue"]
    ((target, event),) = backend[0]["targets"]
    assert event == "click" and comps[target]["props"].get("visible") is False  # a button no one sees
    full = [d for d in deps if "flux2Post('page_estimate'" in str(d.get("js") or "")]
    assert len(full) == 1 and not full[0]["backend_fn"]
    assert full[0]["inputs"] == backend[0]["inputs"] and full[0]["outputs"] == backend[0]["outputs"]
    # No backend event is triggered by every field (what made each change cost a walk of everything).
    field_ids = {
        i for i, c in comps.items() if str(c.get("props", {}).get("elem_id", "")).startswith("field-")
    }
    for d in deps:
        if d["backend_fn"]:
            triggered_by = {t[0] for t in d["targets"]} & field_ids
            assert len(triggered_by) < len(field_ids) // 2, d.get("api_name")


def test_events_that_write_the_whole_form_run_in_the_page(app_config: dict[str, Any]) -> None:
    """Presets, fixes, recommendations and templates write every field: their backend events are called
    by the page (each output of a dispatched event is a walk of the tree on every later event)."""
    comps = _ids(app_config)
    field_ids = {
        i for i, c in comps.items() if str(c.get("props", {}).get("elem_id", "")).startswith("field-")
    }
    writers = [d for d in app_config["dependencies"] if field_ids <= set(d["outputs"])]
    backends = [d for d in writers if d["backend_fn"]]
    page_side = [d for d in writers if not d["backend_fn"]]
    names = {str(d["api_name"]) for d in backends}
    assert {"page_preset_dev", "page_fix_0", "page_recommendation_0", "page_load_template"} <= names
    assert all(n.startswith("page_") for n in names), sorted(n for n in names if not n.startswith("page_"))
    hidden = {t[0] for d in backends for t in d["targets"]}
    assert len(hidden) == 1 and comps[hidden.pop()]["props"].get("visible") is False
    called = {n for d in page_side for n in names if f"flux2Post('{n}'" in str(d.get("js") or "")}
    assert called == names  # each is called by a page-side event
