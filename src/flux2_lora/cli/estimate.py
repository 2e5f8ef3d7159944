"""``flux2-lora estimate``: GPU memory of a configuration, verdicts per GPU class, and fixes."""

from __future__ import annotations

import argparse
import json

from .common import add_config_args, config_from_args, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("estimate", help="estimate GPU memory; fits / tight / does not fit; what to change")
    add_config_args(p)
    p.add_argument(
        "--gpu", help="GPU class (e.g. 24, 48, 'H100', or GiB) for the verdict; default: the local GPU"
    )
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--trace", action="store_true", help="also run the training step on meta tensors at full size"
    )
    p.add_argument("--auto-fit", action="store_true", help="print the best-quality config that fits --gpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config_io import diff_from_defaults, to_yaml
    from ..memory import auto_fit, estimate_report, find_gpu

    config = config_from_args(args)
    if config is None:
        return 2
    if args.gpu and find_gpu(args.gpu) is None:
        return fail(f"--gpu: unknown GPU {args.gpu!r}; give a class like 24, 48, 80 or a size in GiB")
    report = estimate_report(config, gpu=args.gpu, num_processes=args.num_processes)
    if args.trace:
        from ..memory.trace import trace_training_step

        report["trace"] = trace_training_step(config)
    if args.auto_fit:
        fitted = auto_fit(config, report["gpu"]["gib"], num_processes=args.num_processes)
        report["auto_fit"] = diff_from_defaults(fitted) if fitted else None
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    print(
        f"{report['variant']}: {report['image_tokens']} image + {report['text_tokens']} text tokens, "
        f"{report['trainable_params']:,} trainable parameters"
    )
    for k, v in report["components"].items():
        print(f"  {k:13} {v:7.2f} GiB")
    print("  phases: " + ", ".join(f"{k} {v:.2f}" for k, v in report["phases"].items()) + " GiB")
    print(
        f"  tensor peak {report['allocated_peak_gib']:.2f} GiB; with CUDA context and allocator reserve "
        f"{report['total_gib']:.2f} GiB"
    )
    if "trace" in report:
        print(f"  traced tensor peak {report['trace']['peak_gib']:.2f} GiB")
    for g in report["gpus"]:
        print(f"  {g['verdict']:13} {g['name']}")
    for r in report["recommendations"]:
        sets = " ".join(f"--set {k}={v}" for k, v in r["overrides"].items())
        print(f"  fix for {report['gpu']['name']}: {r['title']} → {r['total_gib_after']:.1f} GiB ({sets})")
    if args.auto_fit:
        fitted = report["auto_fit"]
        print("auto-fit:\n" + (to_yaml(fitted) if fitted else "  nothing fits this GPU"))
    return 0
