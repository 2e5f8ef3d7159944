"""Reading, composing, validating and writing training configs (no torch).

Errors are collected all at once and reported by dotted path (``lora.rank: must be ≥ 1``); nothing
here raises a traceback at a user for bad input.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from flux2_lora.config import DTYPE_TO_MIXED, SECTIONS, TrainConfig
from flux2_lora.config.rules import config_rules
from flux2_lora.config.safe_yaml import MAX_YAML_BYTES, YamlRefused, parse_yaml
from flux2_lora.variants import is_demo

Level = Literal["error", "warning"]
M = TypeVar("M", bound=BaseModel)


MAX_PATH_CHARS = 200  # what an error shows of a key path or value: enough to recognise it
MAX_MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str
    level: Level = "error"

    def __post_init__(self) -> None:
        # A hostile key or value must not turn one error into megabytes of text.
        object.__setattr__(self, "path", _clip(self.path, MAX_PATH_CHARS))
        object.__setattr__(self, "message", _clip(self.message, MAX_MESSAGE_CHARS))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """Raised by :func:`load_config` with every problem found, for one clean message."""

    def __init__(self, issues: Sequence[ConfigIssue], source: str = "") -> None:
        self.issues = [i for i in issues if i.level == "error"]
        self.source = source
        head = f"invalid configuration{f' in {source}' if source else ''}:"
        super().__init__("\n".join([head, *(f"  {i}" for i in self.issues)]))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 20]}… ({len(text)} characters)"


def _quote(v: Any, limit: int = MAX_PATH_CHARS) -> str:
    """``repr(v)``, cut to ``limit`` characters (a value can be a huge string or list)."""
    if isinstance(v, (str, bytes)) and len(v) > limit:
        return _clip(repr(v[:limit]), limit) + f" ({len(v)} characters)"
    if isinstance(v, (list, tuple, dict)) and len(v) > 20:
        return f"a {type(v).__name__} of {len(v)} items"
    return _clip(repr(v), limit)


def _fmt_number(v: Any) -> str:
    if isinstance(v, float) and (abs(v) >= 1e5 or (v != 0 and abs(v) < 1e-3)):
        return f"{v:g}"
    return str(v)


def _friendly(err: Mapping[str, Any], known: Iterable[str]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])[:100]
        close = difflib.get_close_matches(key, list(known), n=1)
        return "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")
    bounds = {
        "greater_than_equal": ("≥", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("≤", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        sym, key = bounds[kind]
        got = err.get("input")
        shown = _fmt_number(got) if isinstance(got, (int, float)) else _quote(got)
        return f"must be {sym} {_fmt_number(ctx.get(key))} (got {shown})"
    if kind == "literal_error":
        return (
            f"must be one of: {ctx.get('expected', '').replace(chr(39), '')} (got {_quote(err.get('input'))})"
        )
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number (got {_quote(err.get('input'))})"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number (got {_quote(err.get('input'))})"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false (got {_quote(err.get('input'))})"
    if kind in ("string_type",):
        return f"must be text (got {_quote(err.get('input'))})"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"is too long (at most {ctx.get('max_length')} characters)"
    if kind in ("list_type",):
        return "must be a list"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"allows at most {ctx.get('max_length')} items"
    if kind == "missing":
        return "is required"
    if kind in ("model_type", "dict_type"):
        return "must be a mapping of keys to values"
    msg = str(err.get("msg", "invalid"))
    return _clip(msg.removeprefix("Value error, "), MAX_MESSAGE_CHARS)


def _section_fields(section: str) -> list[str]:
    return list(SECTIONS[section].model_fields)


def _dotted(loc: Sequence[Any]) -> str:
    """A pydantic location as a field path: ``dataset.extra[0].path`` (a list index in brackets)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_section(model: type[M], data: Any, name: str = "") -> tuple[M | None, list[ConfigIssue]]:
    """One section of the config, or a small model built the same way (``GenerationSettings``), from a
    mapping (None: all defaults); every problem as an issue by dotted path (``name.key``, or ``key``)."""
    try:
        return model.model_validate({} if data is None else data), []
    except ValidationError as e:
        known = list(model.model_fields)
        prefix = (name,) if name else ()
        return None, [
            ConfigIssue(_dotted((*prefix, *err["loc"])), _friendly(err, known)) for err in e.errors()
        ]


# Fields of earlier versions that configs on disk (runs, templates, YAML files) may still hold.
LEGACY_KEYS = (
    "training.mixed_precision",
    "dataset.extra_paths",
    "dataset.extra_weights",
    "dataset.regularization_path",
    "dataset.regularization_weight",
)


def _without_legacy_keys(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[ConfigIssue]]:
    """``data`` with the dataset's replaced keys converted to dataset.extra entries (a warning each),
    then :func:`_without_mixed_precision`."""
    from flux2_lora.data.entries import legacy_entries

    dataset = data.get("dataset")
    if not isinstance(dataset, Mapping):
        return _without_mixed_precision(data)
    converted, found = legacy_entries(dict(dataset))
    out, issues = _without_mixed_precision({**data, "dataset": converted})
    return out, [*(ConfigIssue(f, m, level) for f, m, level in found), *issues]  # type: ignore[arg-type]


def _without_mixed_precision(data: Mapping[str, Any]) -> tuple[dict[str, Any], list[ConfigIssue]]:
    """``data`` without training.mixed_precision, which now follows model.dtype: a value that agrees
    with it (or 'auto') is dropped with a warning, one that contradicts it is an error."""
    training = data.get("training")
    if not isinstance(training, Mapping) or "mixed_precision" not in training:
        return dict(data), []
    out = {**data, "training": {k: v for k, v in training.items() if k != "mixed_precision"}}
    mp = training["mixed_precision"]
    model = data.get("model")
    dtype = model.get("dtype", "auto") if isinstance(model, Mapping) else "auto"
    implied = DTYPE_TO_MIXED.get(dtype) if isinstance(dtype, str) else None
    removed = "is no longer a setting: mixed precision follows model.dtype"
    if mp == "auto" or (implied is not None and mp == implied):
        return out, [ConfigIssue("training.mixed_precision", f"{removed}; remove this line", "warning")]
    if dtype == "auto" and mp in DTYPE_TO_MIXED.values():  # the device decides, as it always did
        wanted = next(d for d, m in DTYPE_TO_MIXED.items() if m == mp)
        return out, [
            ConfigIssue(
                "training.mixed_precision",
                f"{removed} (here 'auto', which decides by device); remove this line, or set model.dtype: "
                f"{wanted} for {mp!r}",
                "warning",
            )
        ]
    if implied is None and dtype != "auto":
        return out, []  # model.dtype's own error says what is wrong
    if mp in DTYPE_TO_MIXED.values():
        message = f"{_quote(mp)} contradicts model.dtype {dtype!r}, which implies {implied!r}"
    else:
        message = f"{_quote(mp)} is not one of auto, bf16, fp16, no"
    return out, [ConfigIssue("training.mixed_precision", f"{message}; {removed}: remove this line")]


def validate_dict(data: Any) -> tuple[TrainConfig | None, list[ConfigIssue]]:
    """Validate a (possibly partial) config mapping; return the config and every issue found."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        return None, [
            ConfigIssue("", "the configuration must be a mapping of sections (model:, dataset:, …)")
        ]
    data, issues = _without_legacy_keys(data)
    parsed: dict[str, Any] = {}
    for key, value in data.items():
        if key not in SECTIONS:
            close = difflib.get_close_matches(str(key)[:100], list(SECTIONS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (sections: {', '.join(SECTIONS)})"
            issues.append(ConfigIssue(str(key), "unknown section" + hint))
            continue
        section, problems = validate_section(SECTIONS[key], value, key)
        issues.extend(problems)
        if section is not None:
            parsed[key] = section
    if any(i.level == "error" for i in issues):
        return None, issues
    # Built unvalidated first so that every cross-field problem is listed at once (TrainConfig's own
    # validator raises on the first set of them); then validated for real.
    issues.extend(cross_check(TrainConfig.model_construct(**parsed)))
    if any(i.level == "error" for i in issues):
        return None, issues
    return TrainConfig(**parsed), issues


def cross_check(c: TrainConfig) -> list[ConfigIssue]:
    """Rules that involve more than one field: the schema's own (:func:`config_rules`, also run by
    TrainConfig's validator), then those that read the file system (model folder, output inside the
    dataset). The warnings are :mod:`flux2_lora.config.warnings`' (one table, one threshold per fact)."""
    out = [ConfigIssue(path, message) for path, message in config_rules(c)]
    out.extend(_output_outside_dataset(c))
    out.extend(_model_issues(c))
    return out


def _model_issues(c: TrainConfig) -> list[ConfigIssue]:
    """A local model folder's own configs (a few kilobytes, bounded) and model.text_encoder_layers."""
    from flux2_lora.local_model import ModelConfigError
    from flux2_lora.variants import resolve_model, text_encoder_layers

    m = c.model
    path = m.path.strip()
    local = not is_demo(path) and Path(path).expanduser().is_dir()
    if not local and not m.text_encoder_layers:
        return []  # a hub id is checked when it is loaded
    try:
        resolved = resolve_model(path, m.variant)
    except ModelConfigError as e:  # a folder's config.json that cannot describe a FLUX.2 model
        field, _, message = str(e).partition(": ")
        return [ConfigIssue(field, message)]
    except ValueError:  # which model it is gets decided when it is loaded, with that step's message
        return []
    try:
        text_encoder_layers(path, resolved.variant, m.text_encoder_layers)
    except ValueError as e:
        field, _, message = str(e).partition(": ")
        return [ConfigIssue(field, message)]
    return []


def _output_outside_dataset(c: TrainConfig) -> list[ConfigIssue]:
    """A run inside one of its own dataset folders (dataset.path, a dataset.extra entry) would train on its
    samples the next time it starts."""
    from flux2_lora.data.demo_edit import is_demo_edit

    for field, given in [("dataset.path", c.dataset.path)] + [
        (f"dataset.extra[{n}].path", e.path) for n, e in enumerate(c.dataset.extra)
    ]:
        ds = given.strip()
        if is_demo(ds) or is_demo_edit(ds):
            continue
        try:
            data = Path(ds).expanduser().resolve()
            out = Path(c.output.dir.strip()).expanduser().resolve()
        except (OSError, RuntimeError):
            continue
        if data.is_file():  # a .zip: it is unpacked elsewhere
            continue
        if out == data or data in out.parents:
            where = "is the dataset folder" if out == data else f"is inside {field} ({data})"
            return [
                ConfigIssue(
                    "output.dir",
                    f"{where}: the run's samples and checkpoints would become training images; "
                    "put the run directory outside the dataset folder",
                )
            ]
    return []


# --------------------------------------------------------------------------- YAML and composition


MAX_OVERRIDE_CHARS = 16 * 1024


def load_yaml_text(text: str, source: str = "") -> tuple[Any, list[ConfigIssue]]:
    """Parse YAML safely (see :mod:`flux2_lora.config.safe_yaml`); problems as one ConfigIssue."""
    try:
        return parse_yaml(text), []
    except YamlRefused as e:
        return None, [ConfigIssue("", f"{source}: {e}" if source else str(e))]


def read_yaml(path: str | Path) -> tuple[Any, list[ConfigIssue]]:
    p = Path(path)
    try:
        if not p.exists():
            return None, [ConfigIssue("", f"{p}: no such file")]
        if not p.is_file():  # a folder, a pipe or /dev/zero would never end
            return None, [ConfigIssue("", f"{p}: not a regular file")]
        with p.open("rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            return None, [
                ConfigIssue("", f"{p}: larger than a config holds (limit {MAX_YAML_BYTES} bytes); not read")
            ]
        text = raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        return None, [ConfigIssue("", f"{p}: cannot read ({e.__class__.__name__}: {e})")]
    data, issues = load_yaml_text(text, str(p))
    return (data if data is not None or issues else {}), issues


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# The schema's classes do not change: their fields' facts are looked up once (pydantic's model_fields
# and typing's introspection cost microseconds a time; the recommendations parse dozens of overrides).
@functools.lru_cache(maxsize=64)
def _field_names(section: str) -> frozenset[str]:
    return frozenset(SECTIONS[section].model_fields)


@functools.lru_cache(maxsize=512)
def _annotation(section: str, key: str) -> Any:
    """The field's annotation; None when the section has no such field."""
    info = SECTIONS[section].model_fields.get(key)
    return None if info is None else info.annotation


@functools.lru_cache(maxsize=512)
def _is_list_field(section: str, key: str) -> bool:
    annotation = _annotation(section, key)
    return annotation is not None and get_origin(annotation) is list


@functools.lru_cache(maxsize=512)
def _literal_choices(section: str, key: str) -> tuple[Any, ...]:
    annotation = _annotation(section, key)
    if annotation is None or get_origin(annotation) is not Literal:
        return ()
    return get_args(annotation)


# YAML 1.1 (PyYAML's safe loader) reads these texts as these values: a decimal int without '+', '_' or a
# leading zero, a decimal float with digits on both sides of its point and no exponent, true/false as
# PyYAML spells them. Parsing them without YAML gives the same value (tests/memory/test_recommend_speed.py
# compares the two) at a tenth of the cost: the recommendations validate dozens of overrides per report.
_PLAIN_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_PLAIN_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
_PLAIN_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


def plain_scalar(text: str) -> tuple[bool, Any]:
    """(True, the value YAML reads ``text`` as) for a plain int, float or bool; (False, None) for any
    other text (YAML decides)."""
    text = text.strip(" ")
    if len(text) > 20:  # int() refuses thousands of digits: YAML's own error, whatever it is, decides
        return False, None
    if text in _PLAIN_BOOL:
        return True, _PLAIN_BOOL[text]
    if _PLAIN_INT.fullmatch(text):
        return True, int(text)
    if _PLAIN_FLOAT.fullmatch(text):
        return True, float(text)
    return False, None


def _yaml_value(raw: str) -> tuple[Any, list[ConfigIssue]]:
    plain, value = plain_scalar(raw)
    return (value, []) if plain else load_yaml_text(raw)


def parse_override(text: str) -> tuple[tuple[str, str, Any] | None, ConfigIssue | None]:
    """``section.key=value`` → (section, key, value); the value is read as YAML (numbers, lists, …)."""
    if len(text) > MAX_OVERRIDE_CHARS:
        return None, ConfigIssue(
            text.split("=", 1)[0], f"the override is {len(text)} characters long (limit {MAX_OVERRIDE_CHARS})"
        )
    if "=" not in text:
        return None, ConfigIssue(text, "an override must look like section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        return None, ConfigIssue(dotted, "an override key must be section.key (e.g. lora.rank)")
    section, key = parts
    if section not in SECTIONS:
        close = difflib.get_close_matches(section, list(SECTIONS), n=1)
        return None, ConfigIssue(
            dotted, "unknown section" + (f" (did you mean '{close[0]}'?)" if close else "")
        )
    if f"{section}.{key}" in LEGACY_KEYS:
        if section == "dataset":  # a list or number of the replaced fields: validate_dict converts it
            legacy, problems = load_yaml_text(raw) if raw.strip() else ("", [])
            if key in ("extra_paths", "extra_weights") and isinstance(legacy, (str, int, float)):
                legacy = [legacy]
            return (section, key, raw.strip() if problems else legacy), None
        return (section, key, raw.strip()), None  # validate_dict says what became of it
    if key not in _field_names(section):
        close = difflib.get_close_matches(key, _section_fields(section), n=1)
        return None, ConfigIssue(dotted, "unknown key" + (f" (did you mean '{close[0]}'?)" if close else ""))
    value: Any
    if _literal_choices(section, key) and all(isinstance(c, str) for c in _literal_choices(section, key)):
        value = raw.strip()  # keep 'no' / 'none' as text, not YAML booleans/null
    else:
        annotation = _annotation(section, key)
        value, problems = _yaml_value(raw) if raw.strip() else ("", [])
        if problems:
            stripped = raw.strip()
            # Free text may look like broken YAML ("[trigger] photo"); a list or a number may not.
            free_text = annotation is str or (
                _is_list_field(section, key) and not stripped.startswith(("[", "{"))
            )
            if not free_text or "refused" in problems[0].message:
                return None, ConfigIssue(
                    dotted, f"{_quote(stripped)} is not a valid value: {problems[0].message}"
                )
            value = stripped
        if annotation is str and value is not None and not isinstance(value, str):
            value = raw.strip()
    if _is_list_field(section, key) and isinstance(value, (str, int, float)):
        value = [value]  # one item: 'validation.prompts=a cat', 'model.text_encoder_layers=1'
    return (section, key, value), None


def apply_overrides(
    data: Mapping[str, Any], overrides: Sequence[str]
) -> tuple[dict[str, Any], list[ConfigIssue]]:
    out = copy.deepcopy(dict(data))
    issues: list[ConfigIssue] = []
    for text in overrides:
        parsed, issue = parse_override(text)
        if issue:
            issues.append(issue)
            continue
        assert parsed is not None
        section, key, value = parsed
        sec = out.setdefault(section, {})
        if not isinstance(sec, dict):
            out[section] = sec = {}
        sec[key] = value
    return out, issues


def compose(
    presets: Sequence[str] = (),
    file: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> tuple[dict[str, Any], list[ConfigIssue]]:
    """defaults ← presets (in order) ← config file ← --set overrides, as a raw mapping."""
    from flux2_lora.config.presets import load_preset  # local: presets imports this module

    data: dict[str, Any] = {}
    issues: list[ConfigIssue] = []
    for name in presets:
        preset, problems = load_preset(name)
        issues.extend(problems)
        if preset:
            data = deep_merge(data, preset)
    if file is not None:
        loaded, problems = read_yaml(file)
        issues.extend(problems)
        if loaded is not None and not isinstance(loaded, Mapping):
            issues.append(ConfigIssue("", f"{file}: the top level must be a mapping of sections"))
        elif loaded:
            data = deep_merge(data, loaded)
    data, problems = apply_overrides(data, overrides)
    issues.extend(problems)
    return data, issues


def load_config(
    file: str | Path | None = None,
    presets: Sequence[str] = (),
    overrides: Sequence[str] = (),
) -> tuple[TrainConfig, list[ConfigIssue]]:
    """Compose and validate; raise :class:`ConfigError` listing every error. Returns warnings too."""
    data, issues = compose(presets, file, overrides)
    if any(i.level == "error" for i in issues):
        raise ConfigError(issues, str(file or ""))
    config, more = validate_dict(data)
    issues.extend(more)
    if config is None:
        raise ConfigError(issues, str(file or ""))
    return config, [i for i in issues if i.level == "warning"]


def with_updates(config: TrainConfig, updates: Mapping[str, Any]) -> TrainConfig:
    """``config`` with dotted-path updates (``{"lora.rank": 16}``), validated like any config:
    ``model_copy(update=…)`` skips validation, so a change could break a rule unseen."""
    data = config.model_dump()
    for path, value in updates.items():
        section, _, key = path.partition(".")
        data[section][key] = value
    return TrainConfig.model_validate(data)


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def to_yaml(config: TrainConfig | Mapping[str, Any]) -> str:
    data = to_dict(config) if isinstance(config, TrainConfig) else dict(config)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def save_config(config: TrainConfig, path: str | Path) -> None:
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(to_yaml(config), encoding="utf-8")
    tmp.replace(p)


def diff_from_defaults(config: TrainConfig) -> dict[str, Any]:
    """Only the values that differ from the defaults (what a preset or template needs to store)."""
    base = to_dict(TrainConfig())
    cur = to_dict(config)
    out: dict[str, Any] = {}
    for section, values in cur.items():
        changed = {k: v for k, v in values.items() if base[section].get(k) != v}
        if changed:
            out[section] = changed
    return out
