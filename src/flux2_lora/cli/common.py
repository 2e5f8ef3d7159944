"""Argument and error handling shared by subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel

from flux2_lora.config import TrainConfig
from flux2_lora.config.io import ConfigError, load_config, validate_section

M = TypeVar("M", bound=BaseModel)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "config", nargs="?", help="YAML config file (optional: defaults, presets and --set suffice)"
    )
    p.add_argument("--config", dest="config_opt", metavar="FILE", help="same as the positional CONFIG")
    p.add_argument(
        "--preset", action="append", default=[], metavar="NAME", help="apply a preset (repeatable, in order)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one field, e.g. --set training.learning_rate=2e-4 (repeatable)",
    )


def field_flags(name: str, flags: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The options of a field: ``flags[name]`` where given, else ``--the-name``."""
    return list((flags or {}).get(name) or [f"--{name.replace('_', '-')}"])


def add_field_args(
    p: argparse.ArgumentParser,
    model: type[BaseModel],
    names: Sequence[str],
    *,
    flags: Mapping[str, Sequence[str]] | None = None,
    notes: Mapping[str, str] | None = None,
    helps: Mapping[str, str] | None = None,
    required: Collection[str] = (),
    dests: Mapping[str, str] | None = None,
) -> None:
    """One option per field of ``model`` (a config section or GenerationSettings): the schema's help,
    choices and default (``helps`` replaces a help text that speaks of training, ``notes`` adds to one).
    The option itself defaults to None ("not given"): :func:`fields_from_args`
    validates what was given with the schema, so bounds and messages are the config's own."""
    for name in names:
        info = model.model_fields[name]
        ann, default = info.annotation, info.get_default(call_default_factory=True)
        own = (helps or {}).get(name, info.description)
        text = " ".join(filter(None, [own, (notes or {}).get(name)]))
        if default not in (None, "", []) and ann is not bool:
            text += f" (default: {default})"
        kw: dict[str, Any] = {
            "dest": (dests or {}).get(name, name),
            "default": None,
            "help": text.replace("%", "%%"),
        }
        if ann is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif get_origin(ann) is Literal:
            kw["choices"] = get_args(ann)
        else:
            # Numbers arrive as numbers, so a bound's message shows the value as it was typed.
            kw["type"] = ann if ann in (int, float) else str
            kw["metavar"] = "N" if ann is int else "X" if ann is float else "TEXT"
        p.add_argument(*field_flags(name, flags), required=name in required, **kw)


def fields_from_args(
    args: argparse.Namespace,
    model: type[M],
    names: Sequence[str],
    *,
    flags: Mapping[str, Sequence[str]] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> M | None:
    """``model`` from the options given (``defaults``, then the schema's, for the rest); prints every
    problem by option name and returns None."""
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    parsed, issues = validate_section(model, {**(defaults or {}), **given})
    for issue in issues:
        flag = field_flags(issue.path.split(".")[0], flags)[0] if issue.path else ""
        print(f"error: {flag}: {issue.message}" if flag else f"error: {issue.message}", file=sys.stderr)
    return parsed


def config_from_args(args: argparse.Namespace, *, quiet: bool = False) -> TrainConfig | None:
    """The composed, validated config; prints every problem by field (unless ``quiet``: a --json caller
    prints them its own way) and returns None on errors."""
    file = args.config_opt or args.config
    try:
        config, warnings = load_config(file=file, presets=args.preset, overrides=args.overrides)
    except ConfigError as e:
        if not quiet:
            print(str(e), file=sys.stderr)
        return None
    for w in warnings:
        print(f"warning: {w.path}: {w.message}" if w.path else f"warning: {w.message}", file=sys.stderr)
    return config


def print_invalid_json(args: argparse.Namespace) -> int:
    """``--json`` for a config that does not validate: the assessment of the composed mapping (its errors
    by field, as for any config), or the composition's own errors (an unreadable file, a bad --set)."""
    import json

    from flux2_lora.assess import assess
    from flux2_lora.config.io import compose

    data, issues = compose(args.preset, args.config_opt or args.config, args.overrides)
    errors = [i for i in issues if i.level == "error"]
    if errors:
        out = {"ok": False, "errors": [{"field": i.path, "message": i.message} for i in errors]}
    else:
        out = assess(data).to_dict()
    print(json.dumps(out, indent=1, default=str))
    return 2


def print_findings(assessment: Any) -> None:
    """An assessment's errors and warnings, one per line (with the fix), on stderr: the same words as the
    UI shows beside the fields."""
    for e in assessment.errors:
        print(f"error: {e}", file=sys.stderr)
    for w in assessment.warnings:
        print(f"warning: {w}" + (f"\n  fix: {w.fix}" if w.fix else ""), file=sys.stderr)


def add_debug_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--debug",
        action="store_true",
        help="show the libraries' own messages (torch, diffusers, bitsandbytes…) and tracebacks here",
    )


def fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def show(path: object) -> str:
    """A path or name for the console, with newlines, control characters and undecodable bytes escaped."""
    from flux2_lora.display import escape

    return escape(str(path))
