"""``flux2-lora validate``: check a config without loading anything: every error by field (the config, the
model, the dataset folder, this machine), the common mistakes with their fixes."""

from __future__ import annotations

import argparse
import json

from flux2_lora.cli.common import add_config_args, config_from_args, print_findings, print_invalid_json
from flux2_lora.config.io import to_yaml


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a config: every error by field, common mistakes, no training")
    add_config_args(p)
    p.add_argument("--print", action="store_true", help="print the resolved config")
    p.add_argument(
        "--json", action="store_true", help="print the assessment (errors, warnings, estimate) as JSON"
    )
    p.add_argument(
        "--gpu",
        help="GPU class the run is meant for (24, 48, 'H100', or GiB), for the memory and precision "
        "warnings; default: the local GPU",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flux2_lora.assess import assess, dataset_facts

    config = config_from_args(args, quiet=args.json)
    if config is None:
        return print_invalid_json(args) if args.json else 2
    a = assess(config, gpu=args.gpu, dataset=dataset_facts(config))
    if args.json:
        print(json.dumps(a.to_dict(), indent=1, default=str))
        return 0 if a.ok else 2
    print_findings(a)
    if not a.ok:
        return 2
    if args.print:
        print(to_yaml(config), end="")
    else:
        print("config is valid" + (f" ({'; '.join(a.blockers)})" if a.blockers else ""))
    return 0
