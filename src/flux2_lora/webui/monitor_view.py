"""The monitor's periodic refresh: run snapshot → status text, plots, gallery, log (skips when unchanged)."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from flux2_lora.webui import actions
from flux2_lora.webui.widgets import status_markdown

N_OUTPUTS = 9


def _estimate_gib(extra: dict[str, Any]) -> float | None:
    est = extra.get("estimate")
    if isinstance(est, (int, float)):
        return float(est)
    if isinstance(est, dict):
        for k in ("total_gib", "allocated_peak_gib", "peak_gib"):
            if isinstance(est.get(k), (int, float)):
                return float(est[k])
    return None


def memory_frame(metrics: list[dict[str, Any]], extra: dict[str, Any]) -> pd.DataFrame:
    rows = []
    est = _estimate_gib(extra or {})
    for m in metrics:
        if m.get("gpu_mem_gib") is not None:
            rows.append({"step": m["step"], "GiB": m["gpu_mem_gib"], "series": "GPU measured"})
        if m.get("rss_gib") is not None:
            rows.append({"step": m["step"], "GiB": m["rss_gib"], "series": "host RSS"})
        if est is not None:
            rows.append({"step": m["step"], "GiB": est, "series": "GPU estimate"})
    return pd.DataFrame(rows, columns=["step", "GiB", "series"])


def preflight_markdown(pf: dict[str, Any] | None) -> str:
    if not pf:
        return ""
    parts = [f"**Pre-flight:** {pf.get('seconds_per_step', 0) or 0:.2f} s/step"]
    if pf.get("eta_s") is not None:
        parts.append(f"full run ≈ {pf['eta_s'] / 60:.1f} min")
    return " · ".join(parts)


def tick_outputs(run_dir: str, last_sig: Any, runs_dir: str) -> list[Any]:
    if not run_dir:
        return [gr.skip()] * N_OUTPUTS
    snap = actions.run_status(run_dir, runs_dir)
    metrics = snap.get("metrics", [])
    sig = [
        snap.get("state"),
        snap.get("step"),
        len(metrics),
        len(snap.get("samples", [])),
        snap.get("log", "")[-200:],
        snap.get("lora"),
        bool(snap.get("preflight")),
    ]
    if sig == last_sig:
        return [gr.skip()] * N_OUTPUTS
    mdf = pd.DataFrame(
        metrics, columns=["step", "loss", "lr", "sec_per_step", "eta_s", "gpu_mem_gib", "rss_gib"]
    )
    gallery = [(s["file"], f"step {s['step']}: {s['prompt']}") for s in snap.get("samples", [])]
    return [
        status_markdown(snap),
        mdf[["step", "loss"]].dropna(),
        mdf[["step", "lr"]].dropna(),
        memory_frame(metrics, snap.get("extra") or {}),
        gallery,
        snap.get("log", ""),
        snap.get("lora"),
        preflight_markdown(snap.get("preflight")),
        sig,
    ]
