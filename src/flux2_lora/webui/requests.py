"""The types of a request's arguments, checked before an action runs (no Gradio, no torch).

A client of the named API can send anything JSON holds: a list where a config mapping goes, a string for
a number, ``"nan"`` as a GPU, a NUL byte in a prompt. Each :class:`~flux2_lora.webui.actions.Actions`
endpoint is wrapped by :func:`checked`, which compares every argument with the method's own type hints
and answers a wrong one with an error naming the argument (the endpoint's usual ``{ok: False, ...}``
result, or :class:`RequestError` for an endpoint that returns a list), never a server traceback.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from flux2_lora.config.generation import text_problem

F = TypeVar("F", bound=Callable[..., Any])
PROMPT_ARGS = ("prompt",)  # text that becomes a prompt: control characters are refused there
# Config fields whose text becomes (part of) a prompt: the validation prompts, the caption and trigger.
PROMPT_FIELDS = ("validation.prompts", "dataset.default_caption", "dataset.trigger_word")


class RequestError(ValueError):
    """A request argument of the wrong type or value; the message names the argument."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def prompt_errors(config: Any) -> list[dict[str, str]]:
    """{field, message} for each prompt text of a config mapping with a NUL or control character."""
    out = []
    for dotted in PROMPT_FIELDS:
        section, _, key = dotted.partition(".")
        sec = config.get(section) if isinstance(config, dict) else None
        value = sec.get(key) if isinstance(sec, dict) else None
        items = value if isinstance(value, list) else [value]
        for i, text in enumerate(items):
            problem = text_problem(text, prompt=True) if isinstance(text, str) else None
            if problem:
                where = f"{dotted}[{i}]" if isinstance(value, list) else dotted
                out.append({"field": where, "message": problem})
    return out


_KINDS: dict[type, str] = {dict: "a mapping", list: "a list", str: "text", type(None): "null"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def type_problem(name: str, value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint`` (str, int, float, bool, dict[...], list[...], X | None)."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = [type_problem(name, value, h) for h in options if h is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if hint is Any:
        return None
    if hint is str:
        if not isinstance(value, str):
            return f"must be text, got {_kind(value)}"
        return text_problem(value, prompt=name in PROMPT_ARGS)
    if hint is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {_kind(value)}"
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {_kind(value)}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if hint is int and not float(value).is_integer():
            return f"must be a whole number, got {value}"
        return None
    if hint is dict or origin is dict:
        return None if isinstance(value, dict) else f"must be a mapping, got {_kind(value)}"
    if hint is list or origin is list:
        if not isinstance(value, list):
            return f"must be a list, got {_kind(value)}"
        (item,) = get_args(hint) or (Any,)
        for i, v in enumerate(value):
            problem = type_problem(name, v, item)
            if problem:
                return f"item {i} {problem}"
        return None
    return None


def gpu_problem(value: str) -> str | None:
    """Why a gpu argument is refused ('' is the local GPU): an unknown name or a size that is not a
    positive finite number (memory.gpus decides, as for the CLI's --gpu)."""
    from flux2_lora.memory.gpus import parse_gpu

    if not value.strip():
        return None
    try:
        parse_gpu(value)
    except ValueError as e:
        return str(e)
    return None


def refusal(hint: Any, field: str, message: str) -> Any:
    """The endpoint's own error result: a mapping holding both shapes the UI reads ({errors: [...]} and
    {field, message}); RequestError for an endpoint whose result is not a mapping."""
    if hint is dict or get_origin(hint) is dict:
        text = f"{field}: {message}"
        return {
            "ok": False,
            "field": field,
            "message": text,
            "errors": [{"field": field, "message": message}],
            "available": False,  # an estimate's panel: nothing to show, nothing to start
            "can_start": False,
            "start_reason": text,
        }
    raise RequestError(field, message)


def checked(method: F) -> F:
    """``method`` (an Actions endpoint) with its arguments checked against its type hints first."""
    sig = inspect.signature(method)
    hints = get_type_hints(method)
    returns = hints.get("return", Any)

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as e:
            return refusal(returns, "arguments", str(e))
        for name, value in list(bound.arguments.items())[1:]:  # [0] is self
            problem = type_problem(name, value, hints.get(name, Any))
            if problem is None and name == "gpu" and isinstance(value, str):
                problem = gpu_problem(value)
            if problem:
                return refusal(returns, name, problem)
        for name, value in bound.arguments.items():
            if isinstance(value, float) and hints.get(name) is int:
                bound.arguments[name] = int(value)  # 6.0 from a JSON client is the whole number 6
        return method(*bound.args, **bound.kwargs)

    return typing.cast(F, wrapper)
