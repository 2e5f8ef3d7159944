"""``flux2-lora estimate``: GPU memory of a configuration, verdicts per GPU class, and fixes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flux2_lora.cli.common import add_config_args, add_debug_arg, config_from_args, fail
from flux2_lora.cli.quiet import quiet_libraries
from flux2_lora.cli.schema_flags import add_section_flags, section_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "estimate",
        help="estimate GPU memory; fits / tight / does not fit per GPU class; what to change",
        description="GPU memory of a training run from its config, phase by phase (caching, training, "
        "sampling), without loading anything.",
    )
    add_config_args(p)
    p.add_argument(
        "--gpu", help="GPU class for the verdict and fixes (24, 48, 'H100', or GiB); default: the local GPU"
    )
    # --strategy, --num-processes, --num-machines: the distributed section's fields (figures are per GPU).
    add_section_flags(p, "distributed", ["strategy", "num_processes", "num_machines"])
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument(
        "--trace",
        action="store_true",
        help="also run the trainer's training step (and the encoders) on meta tensors at full size: "
        "the traced tensor peak, without allocating memory (seconds on CPU; needs torch)",
    )
    add_debug_arg(p)
    p.add_argument(
        "--auto-fit",
        action="store_true",
        help="the best-quality config that fits one --gpu (the GPUs the run has; as YAML) and --host-ram",
    )
    p.add_argument(
        "--host-ram",
        type=float,
        metavar="GIB",
        help="host RAM the fixes and --auto-fit must fit (default: this machine's for its own GPU, else 64)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flux2_lora.assess import assess, dataset_facts
    from flux2_lora.cli.common import print_findings, print_invalid_json
    from flux2_lora.config.io import diff_from_defaults, to_yaml
    from flux2_lora.memory.gpus import parse_gpu

    args.overrides = [*args.overrides, *section_overrides(args)]
    config = config_from_args(args, quiet=args.json)
    if config is None:
        return print_invalid_json(args) if args.json else 2
    if args.gpu:
        try:
            parse_gpu(args.gpu)  # "-5", "0", "nan", "inf" and unknown names are refused, not guessed
        except ValueError as e:
            return fail(f"--gpu: {e}", 2)
    if args.host_ram is not None and not (0 < args.host_ram <= 1 << 20):
        return fail(f"--host-ram: {args.host_ram:g} is not a size in GiB (a number above 0)", 2)
    a = assess(config, gpu=args.gpu, dataset=dataset_facts(config))
    if a.report is None:  # the config or the model cannot be sized: say why, by field
        if args.json:
            print(json.dumps(a.to_dict(), indent=1, default=str))
        else:
            print_findings(a)
            if not a.errors:  # the errors above already say why: no second line for the same failure
                print(f"error: {a.message}", file=sys.stderr)
        return 2
    report = {**a.report, "ok": a.ok, "errors": [e.to_dict() for e in a.errors]}
    report["warnings"] = [w.to_dict() for w in a.warnings]
    report["blockers"] = a.blockers
    if args.trace:
        quiet_libraries(args.debug)  # before torch, diffusers and torchao are imported: they talk at import
        from flux2_lora.training.trace import trace_report

        report["trace"] = trace_report(config)
    if args.auto_fit:
        report["auto_fit"] = _auto_fit(config, report, args.host_ram, diff_from_defaults)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print_findings(a)
        _print(report, auto=args.auto_fit, to_yaml=to_yaml)
    return 0


def _auto_fit(
    config: Any, report: dict[str, Any], host_ram: float | None, diff: Any
) -> dict[str, Any] | None:
    """--auto-fit's config (its changes from the defaults) with what the estimate says of it."""
    from flux2_lora.memory import auto_fit, estimate
    from flux2_lora.memory.gpus import verdict
    from flux2_lora.memory.host import gpu_host_peak
    from flux2_lora.memory.timing import step_time

    gib = report["gpu"]["gib"]
    host = host_ram if host_ram is not None else report.get("host_gib")
    fitted = auto_fit(config, gib, host_gib=host)
    if fitted is None:
        return None
    est = estimate(fitted)
    need = gpu_host_peak(fitted, est)
    after, before = step_time(fitted, gib).step_s, step_time(config, gib).step_s
    return {
        "config": diff(fitted),
        "total_gib": est.total_gib,
        "verdict": verdict(est.total_gib, gib),
        "num_gpus": fitted.distributed.world_size,
        "host_gib": need,
        "host_budget_gib": host,
        "host_fits": host is None or need <= host,
        "step_s": after,
        "time_factor": after / before,
        "swap": est.swap,
    }


def _print(report: dict[str, Any], *, auto: bool, to_yaml: Any) -> None:
    print(
        f"{report.get('model') or report['variant']}: {report['image_tokens']} image + "
        f"{report['text_tokens']} text tokens, "
        f"{report['trainable_params']:,} trainable parameters"
    )
    n = report.get("num_gpus", 1)
    if n > 1:
        how = "FSDP: sharded" if report.get("strategy") == "fsdp" else "DDP: a whole copy each"
        print(f"per GPU, on each of {n} GPUs ({how})")
    print(f"peak while {report['peak_phase']} (GiB{', per GPU' if n > 1 else ''}):")
    for k, v in report["components"].items():
        print(f"  {k:13} {v:7.2f}")
    print(
        "phases (tensor memory): " + ", ".join(f"{k} {v:.2f}" for k, v in report["phases"].items()) + " GiB"
    )
    print(
        f"tensor peak {report['allocated_peak_gib']:.2f} GiB; with CUDA context and allocator reserve "
        f"(what nvidia-smi shows) {report['total_gib']:.2f} GiB"
    )
    for note in report.get("notes", []):
        print(f"note: {note}")
    for name, t in report.get("trace", {}).items():
        err = f"{t['error']:+.1%}" if t["error"] is not None else "n/a"
        print(
            f"traced {name.replace('_', ' ')}: {t['traced_gib']:.2f} GiB (estimate {t['estimated_gib']:.2f}, {err})"
        )
    for g in report["gpus"]:
        print(f"  {g['verdict']:13} {g.get('label', g['name'])}")
    gpu = report["gpu"]
    print(f"on {gpu.get('label', gpu['name'])}: {gpu['verdict'].replace('_', ' ')}")
    for r in report["recommendations"]:
        sets = " ".join(f"--set {k}={v}" for k, v in r["overrides"].items())
        fits = {"fits": "fits", "tight": "fits, tight"}.get(r.get("verdict_after", ""), "still too large")
        saves, time = r["saves_gib"], (r.get("time_factor", 1.0) - 1) * 100
        host = f", host RAM {r['host_gib_after']:.0f} GiB" if "host_gib_after" in r else ""
        print(
            f"  fix: {r['title']} → {r['total_gib_after']:.1f} GiB (−{saves:.1f} GiB, about {time:+.0f}% time"
            f"{host}), {fits} ({sets})"
        )
    if auto:
        fitted = report["auto_fit"]
        if not fitted:
            print("auto-fit: nothing fits one such GPU")
            return
        need = "" if fitted["host_fits"] else f" (more than the {fitted['host_budget_gib']:.0f} GiB assumed)"
        print(
            f"auto-fit: {fitted['total_gib']:.1f} GiB on one GPU ({fitted['verdict'].replace('_', ' ')}), host RAM "
            f"{fitted['host_gib']:.1f} GiB{need}, about {fitted['step_s']:.1f} s/step "
            f"({(fitted['time_factor'] - 1) * 100:+.0f}% time); changes from the defaults:\n"
            + to_yaml(fitted["config"])
        )
