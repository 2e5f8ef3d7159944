"""The sweep spec (a closed pydantic model) and the plan it resolves to: the base config, the parameters by
dotted config path, and each trial's config validated by the one training schema (no torch, no Optuna).

A spec, e.g.::

    base: {presets: [klein-4b, character], set: {dataset.path: ./photos}}
    parameters:
      lora.rank: {values: [16, 32]}
      training.learning_rate: {low: 2.0e-5, high: 2.0e-4, log: true}
    method: tpe          # grid | random | tpe
    trials: 12
    objective: eval_loss

Every problem is reported at once, by its place in the spec (``parameters.lora.rnak: unknown config
field (did you mean 'lora.rank'?)``); nothing here raises a traceback at a user for bad input.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flux2_lora.config import SECTIONS, TrainConfig
from flux2_lora.config.io import ConfigIssue, _friendly, compose, deep_merge, read_yaml, validate_dict

MAX_PARAMETERS = 16
MAX_VALUES = 256
MAX_GRID = 10_000
MAX_TRIALS = 10_000
# Fields a sweep must not vary: each trial's run directory is chosen by the sweep.
FIXED_BY_SWEEP = ("output.dir",)
Scalar = bool | int | float | str


class SpecError(Exception):
    """A spec that cannot be run; ``issues`` has every problem, by its place in the spec."""

    def __init__(self, issues: list[ConfigIssue], source: str = "") -> None:
        self.issues = [i for i in issues if i.level == "error"]
        head = f"invalid sweep spec{f' {source}' if source else ''}:"
        super().__init__("\n".join([head, *(f"  {i}" for i in self.issues)]))


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Base(_Closed):
    """What every trial starts from: presets in order, then a YAML config file, then ``set`` values."""

    presets: list[str] = Field(default=[], max_length=16)
    config: str | None = Field(default=None, min_length=1, max_length=4096)
    set: dict[str, Any] = Field(default={}, max_length=256)


class Parameter(_Closed):
    """``values`` (a categorical choice; what a grid walks) or a ``low``/``high`` range (random, TPE)."""

    values: list[Scalar] | None = Field(default=None, min_length=1, max_length=MAX_VALUES)
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0)


class Pruning(_Closed):
    """Stop a trial early when its eval loss is worse than the median of earlier trials at that step."""

    enabled: bool = False
    startup_trials: int = Field(default=2, ge=0, le=1000)
    warmup_steps: int = Field(default=0, ge=0, le=1_000_000)


class SweepSpec(_Closed):
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    base: Base = Field(default_factory=Base)
    parameters: dict[str, Parameter] = Field(min_length=1, max_length=MAX_PARAMETERS)
    method: Literal["grid", "random", "tpe"] = "tpe"
    trials: int | None = Field(default=None, ge=1, le=MAX_TRIALS)
    objective: Literal["eval_loss", "train_loss"] = "eval_loss"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    pruning: Pruning = Field(default_factory=Pruning)
    max_failures: int = Field(default=3, ge=1, le=1000)


# ---------------------------------------------------------------------------------------------- fields


def _field_info(path: str) -> tuple[Any, str | None]:
    """The schema field at a dotted path, or (None, why not with a close match)."""
    section, _, key = path.partition(".")
    if section not in SECTIONS or not key or "." in key:
        known = [f"{s}.{k}" for s, cls in SECTIONS.items() for k in cls.model_fields]
        close = difflib.get_close_matches(path[:100], known, n=1)
        return None, "unknown config field" + (f" (did you mean '{close[0]}'?)" if close else "")
    info = SECTIONS[section].model_fields.get(key)
    if info is None:
        close = difflib.get_close_matches(key[:100], list(SECTIONS[section].model_fields), n=1)
        return None, "unknown config field" + (f" (did you mean '{section}.{close[0]}'?)" if close else "")
    return info, None


def field_kind(path: str) -> str:
    """int, float, bool, str, choice (a Literal) or list; '' for an unknown path."""
    info, _ = _field_info(path)
    if info is None:
        return ""
    ann = info.annotation
    if ann is bool:
        return "bool"
    if ann is int:
        return "int"
    if ann is float:
        return "float"
    if get_origin(ann) is Literal:
        return "choice"
    if get_origin(ann) is list:
        return "list"
    return "str"


def sweepable_fields() -> list[dict[str, Any]]:
    """Every config field a sweep may vary, with its kind and default (what the UI's dropdown offers)."""
    defaults = TrainConfig().model_dump(mode="json")
    out = []
    for section, cls in SECTIONS.items():
        for key, info in cls.model_fields.items():
            path = f"{section}.{key}"
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            ui = extra.get("ui")
            if path in FIXED_BY_SWEEP or (isinstance(ui, dict) and ui.get("disabled")):
                continue
            kind = field_kind(path)
            choices = list(get_args(info.annotation)) if kind == "choice" else []
            out.append(
                {
                    "path": path,
                    "kind": kind,
                    "default": defaults[section][key],
                    "choices": choices,
                    "help": info.description or "",
                }
            )
    return out


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """``data[section][key] = value``; a text value for a list field becomes a one-item list (as --set)."""
    section, _, key = path.partition(".")
    sec = data.get(section)
    if not isinstance(sec, dict):
        sec = data[section] = {}
    if field_kind(path) == "list" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    sec[key] = value


# ---------------------------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """A validated spec: the composed base config and, per parameter, its kind and search range."""

    spec: SweepSpec
    base: dict[str, Any]
    kinds: dict[str, str]
    warnings: list[ConfigIssue] = field(default_factory=list)

    @property
    def grid(self) -> dict[str, list[Scalar]]:
        return {p: list(v.values or []) for p, v in self.spec.parameters.items()}

    @property
    def grid_size(self) -> int | None:
        if any(v.values is None for v in self.spec.parameters.values()):
            return None
        return math.prod(len(v.values or []) for v in self.spec.parameters.values())

    def trial_budget(self, override: int | None = None) -> int:
        """How many trials the sweep runs: --trials, else the spec's, else the whole grid."""
        n = override or self.spec.trials or self.grid_size or 0
        return n

    def config_for(self, params: Mapping[str, Any], run_dir: Path | None = None) -> dict[str, Any]:
        data = copy.deepcopy(self.base)
        for path, value in params.items():
            set_path(data, path, value)
        if run_dir is not None:
            set_path(data, "output.dir", str(run_dir))
        return data

    def trial_config(
        self, params: Mapping[str, Any], run_dir: Path
    ) -> tuple[TrainConfig | None, list[ConfigIssue]]:
        """The trial's config, validated by the training schema (None with the issues when invalid)."""
        return validate_dict(self.config_for(params, run_dir))

    def corners(self, limit: int = 256) -> list[dict[str, Any]]:
        """Parameter combinations that bound memory: every value of a categorical, both ends of a range
        (memory grows monotonically with rank, resolution, batch, …); the extremes only past ``limit``."""
        options: dict[str, list[Any]] = {}
        for path, p in self.spec.parameters.items():
            if p.values is not None:
                options[path] = list(p.values)
            else:
                lo, hi = self._range(path, p)
                options[path] = [lo, hi]
        if math.prod(len(v) for v in options.values()) > limit:
            options = {k: _extremes(v) for k, v in options.items()}
        combos = itertools.islice(itertools.product(*options.values()), limit)
        return [dict(zip(options, c)) for c in combos]

    def _range(self, path: str, p: Parameter) -> tuple[Any, Any]:
        lo, hi = float(p.low or 0), float(p.high or 0)
        if self.kinds[path] == "int":
            return int(lo), int(hi)
        return lo, hi

    def fingerprint(self) -> str:
        """What makes two runs of the command the same study: base, parameters, method, objective."""
        s = self.spec
        return json.dumps(
            {
                "base": self.base,
                "parameters": {k: v.model_dump() for k, v in sorted(s.parameters.items())},
                "method": s.method,
                "objective": s.objective,
            },
            sort_keys=True,
            default=str,
        )


def _extremes(values: list[Any]) -> list[Any]:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) == len(values) and values:
        return sorted({min(nums), max(nums)})
    return values


def _validation_issues(e: ValidationError) -> list[ConfigIssue]:
    out = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        known: list[str] = []
        if err.get("type") == "extra_forbidden":
            known = _known_keys(err["loc"][:-1])
        out.append(ConfigIssue(loc, _friendly(err, known)))
    return out


def _known_keys(parent: tuple[Any, ...]) -> list[str]:
    """The keys allowed at a place in the spec (for 'did you mean …')."""
    model: type[BaseModel] = SweepSpec
    parts = [str(p) for p in parent]
    while parts:
        part = parts.pop(0)
        if model is SweepSpec and part == "parameters":
            parts = parts[1:]  # the parameter's config path
            model = Parameter
            continue
        info = model.model_fields.get(part)
        ann = info.annotation if info else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def parse_spec(data: Any, source: str = "") -> SweepSpec:
    """The spec mapping as a :class:`SweepSpec`; SpecError naming each unknown key or bad value."""
    if not isinstance(data, Mapping):
        raise SpecError(
            [ConfigIssue("", "the spec must be a mapping (base:, parameters:, method:, …)")], source
        )
    try:
        return SweepSpec.model_validate(dict(data))
    except ValidationError as e:
        issues = _validation_issues(e)
    # Unknown config paths too, so one pass reports everything.
    params = data.get("parameters")
    if isinstance(params, Mapping):
        for path in params:
            info, why = _field_info(str(path))
            if info is None:
                issues.append(ConfigIssue(f"parameters.{path}", why or "unknown config field"))
    raise SpecError(issues, source)


def load_spec(path: str | Path) -> SweepSpec:
    data, issues = read_yaml(path)
    if issues:
        raise SpecError(issues, str(path))
    return parse_spec(data, str(path))


def _absolute_paths(data: dict[str, Any]) -> None:
    """A local dataset or model path as an absolute path, so the trial's config.yaml works from any folder
    (``--resume``, ``compare``) exactly as it did for the sweep."""
    for section in ("dataset", "model"):
        sec = data.get(section)
        if not isinstance(sec, dict) or not isinstance(sec.get("path"), str):
            continue
        p = sec["path"].strip()
        if p.lower() == "demo" or not p:
            continue
        local = Path(p).expanduser()
        try:
            if local.exists():
                sec["path"] = str(local.resolve())
        except OSError:
            continue


def flat_set(values: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``{dataset.path: x}`` and ``{dataset: {path: x}}`` both as ``("dataset.path", x)``."""
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        key = str(key)
        if key in SECTIONS and isinstance(value, Mapping):
            out += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            out.append((key, value))
    return out


def build_plan(spec: SweepSpec, spec_dir: Path | None = None, source: str = "") -> Plan:
    """Compose the base, check every parameter against the schema (each value, both ends of each range,
    validated as a full config); SpecError listing every problem."""
    issues: list[ConfigIssue] = []
    config_file: Path | None = None
    if spec.base.config:
        config_file = Path(spec.base.config).expanduser()
        if not config_file.is_absolute() and spec_dir is not None:
            config_file = spec_dir / config_file
    data, problems = compose(spec.base.presets, config_file, ())
    issues += [ConfigIssue(f"base: {i.path}" if i.path else "base", i.message, i.level) for i in problems]
    for path, value in flat_set(spec.base.set):
        info, why = _field_info(path)
        if info is None:
            issues.append(ConfigIssue(f"base.set.{path}", why or "unknown config field"))
        else:
            set_path(data, path, copy.deepcopy(value))
    _absolute_paths(data)
    kinds: dict[str, str] = {}
    for path, p in spec.parameters.items():
        where = f"parameters.{path}"
        info, why = _field_info(path)
        if info is None:
            issues.append(ConfigIssue(where, why or "unknown config field"))
        elif path in FIXED_BY_SWEEP:
            issues.append(
                ConfigIssue(where, "is chosen by the sweep (each trial gets its own run directory)")
            )
        else:
            problems = _parameter_issues(where, field_kind(path), p, spec.method)
            issues += problems
            if not problems:
                kinds[path] = field_kind(path)
                if p.values is not None and kinds[path] in ("int", "float"):
                    p.values = [_as_number(v, kinds[path]) for v in p.values]
    base, base_issues = validate_dict(deep_merge(data, {}))
    if base is None:
        issues += [ConfigIssue(f"base: {i.path}", i.message, i.level) for i in base_issues]
    plan = Plan(spec, data, kinds, [i for i in base_issues if i.level == "warning"])
    if base is not None:
        issues += _value_issues(plan)  # only the parameters whose shape is right
    issues += _count_issues(plan)
    if any(i.level == "error" for i in issues):
        raise SpecError(issues, source)
    return plan


def _as_number(v: Scalar, kind: str) -> Scalar:
    """YAML 1.1 reads 2e-5 (no dot) as text; a number field's value is a number (Optuna keeps its type)."""
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v  # the schema names it
        return int(f) if kind == "int" and f.is_integer() else f
    return v


def _parameter_issues(where: str, kind: str, p: Parameter, method: str) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    has_range = p.low is not None or p.high is not None
    if p.values is not None and (has_range or p.log or p.step is not None):
        return [ConfigIssue(where, "give either values or a low/high range, not both")]
    if p.values is None and not has_range:
        return [ConfigIssue(where, "needs values: [...] or low: and high:")]
    if p.values is not None:
        if kind == "list" and any(not isinstance(v, str) for v in p.values):
            out.append(
                ConfigIssue(
                    where, "a list field is swept one text item per value (e.g. [default, all-linear])"
                )
            )
        if len({json.dumps(v) for v in p.values}) != len(p.values):
            out.append(ConfigIssue(f"{where}.values", "has the same value twice"))
        return out
    if kind not in ("int", "float"):
        return [ConfigIssue(where, f"is a {kind} field: give values: [...], a range needs a number field")]
    if p.low is None or p.high is None:
        return [ConfigIssue(where, "a range needs both low and high")]
    if method == "grid":
        out.append(ConfigIssue(where, "grid search walks values: give values: [...] instead of a range"))
    if not p.low < p.high:
        out.append(ConfigIssue(where, f"low ({p.low:g}) must be below high ({p.high:g})"))
    if p.log and p.low <= 0:
        out.append(ConfigIssue(f"{where}.low", "must be > 0 for a log-scale range"))
    if p.log and p.step is not None:
        out.append(ConfigIssue(f"{where}.step", "a log-scale range has no step"))
    if kind == "int":
        for name in ("low", "high", "step"):
            v = getattr(p, name)
            if v is not None and not float(v).is_integer():
                out.append(
                    ConfigIssue(f"{where}.{name}", f"must be a whole number for an integer field (got {v:g})")
                )
    return out


def _value_issues(plan: Plan) -> list[ConfigIssue]:
    """Each value, and each end of each range, validated as a whole trial config."""
    out: list[ConfigIssue] = []
    for path, p in plan.spec.parameters.items():
        if path not in plan.kinds:
            continue
        where = f"parameters.{path}"
        if p.values is not None:
            probes = [(f"{where}.values[{i}]", v) for i, v in enumerate(p.values)]
        else:
            lo, hi = plan._range(path, p)
            probes = [(f"{where}.low", lo), (f"{where}.high", hi)]
        for label, value in probes:
            _, issues = validate_dict(plan.config_for({path: value}))
            for i in issues:
                if i.level == "error":
                    out.append(ConfigIssue(label, f"{value!r}: {i}"))
    return out


def _count_issues(plan: Plan) -> list[ConfigIssue]:
    s = plan.spec
    size = plan.grid_size
    if s.method == "grid":
        if size is not None and size > MAX_GRID:
            return [ConfigIssue("parameters", f"the grid has {size} points (limit {MAX_GRID})")]
        if s.trials is not None and size is not None and s.trials > size:
            return [ConfigIssue("trials", f"{s.trials} is more than the grid's {size} points")]
        return []
    if s.trials is None:
        return [ConfigIssue("trials", f"is required for method {s.method} (how many trials to run)")]
    return []
