"""YAML read as data, within bounds (no torch).

PyYAML's safe loader builds plain values only, but on its own it takes a 376-byte alias bomb (9 levels
of 9 aliases, 10^9 values once expanded) or a deeply nested document, and lets a duplicate key silently
replace the first. Here the document's node graph is measured before anything is constructed: too
large, too deep, self-referencing or expanding past a small limit is refused in milliseconds.
"""

from __future__ import annotations

from typing import Any

import yaml

# A config is a few kilobytes; these bounds keep parsing well under a second.
MAX_YAML_BYTES = 64 * 1024
MAX_YAML_NODES = 20_000  # values after aliases are expanded
MAX_YAML_DEPTH = 20


class YamlRefused(ValueError):
    """Text that is not YAML, or YAML outside the bounds; the message says which and where."""


class _Refused(Exception):
    pass


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (the last one would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *base' merges, and keys after it override on purpose
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain value", key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds with every alias expanded, computed without expanding."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise _Refused(f"nested more than {MAX_YAML_DEPTH} levels deep")
        key = id(node)
        if key in memo:
            return memo[key]
        if key in active:
            raise _Refused("an alias refers to the value that contains it")
        active.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_YAML_NODES:
                raise _Refused(f"expands to more than {MAX_YAML_NODES} values (through aliases?)")
        active.discard(key)
        memo[key] = total
        return total

    return size(root, 0)


def parse_yaml(text: str) -> Any:
    """The document's value (None for an empty one), or :class:`YamlRefused`."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_YAML_BYTES:
        raise YamlRefused(f"{size} bytes is more than a config holds (limit {MAX_YAML_BYTES})")
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except _Refused as e:
        raise YamlRefused(f"refused: the YAML {e}") from None
    except RecursionError:
        raise YamlRefused("refused: the YAML is nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise YamlRefused(f"not valid YAML{where}: {problem}") from None
    finally:
        loader.dispose()
