"""Strict, bounded YAML for spec files: plain scalars, lists and mappings only, checked before objects are built.

A spec is read as bytes and decoded as UTF-8 (a BOM is fine); the document size, nesting depth, alias count and
alias-expanded size are bounded while PyYAML composes the node graph, so a deep or alias-bomb document costs
microseconds and a fixed amount of memory. Duplicate keys, non-string keys and tags other than the plain YAML
scalars (``!!binary``, ``!!set``, ``!!python/...``) are refused. Every error is one short line
(:class:`YamlError`); :func:`short` caps how much of the input an error message quotes.
"""

from __future__ import annotations

import math
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

MAX_BYTES = 1 << 20
"""Largest spec file accepted (1 MiB): specs are a few KiB."""
MAX_DEPTH = 32
"""Deepest nesting of lists and mappings accepted."""
MAX_ALIASES = 100
"""Most ``*alias`` references in one document."""
MAX_NODES = 200_000
"""Most nodes in the document once aliases are expanded (what ``json.dumps`` of it would walk)."""


class YamlError(ValueError):
    """The document is not a plain, bounded YAML document; ``str(err)`` is one line."""


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (an error line quotes at most a short excerpt of the input)."""
    text = repr(value) if not isinstance(value, str) else repr(value[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = 60) -> str:
    """``text`` (a key, a path) cut to ``limit`` characters, unquoted, one line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(node: yaml.Node | None) -> str:
    return f"line {node.start_mark.line + 1}: " if node is not None and node.start_mark else ""


class _Loader(yaml.SafeLoader):
    """SafeLoader that counts depth, aliases and expanded size while composing, and refuses duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlError(
                    f"line {self.peek_event().start_mark.line + 1}: more than {MAX_ALIASES} aliases"
                )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlError(f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                    raise YamlError(
                        f"{_where(key_node)}keys must be plain strings, got {short(key_node.value)}"
                    )
                if key_node.value in seen:
                    raise YamlError(f"{_where(key_node)}duplicate key {short(key_node.value)}")
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _check_size(root: yaml.Node) -> None:
    """Count the nodes of the alias-expanded document (memoised per node, so an alias bomb is cheap to size)."""
    memo: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in memo:
            return memo[id(node)]
        memo[id(node)] = MAX_NODES + 1  # a cycle counts as too large
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(v) for v in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        else:
            n = 1
        memo[id(node)] = n = min(n, MAX_NODES + 1)
        return n

    if size(root) > MAX_NODES:
        raise YamlError(f"the document expands to more than {MAX_NODES} values (aliases?)")


def _refuse_tag(loader: SafeConstructor, node: yaml.Node) -> Any:
    raise YamlError(
        f"{_where(node)}tag {short(node.tag, 40)} is not allowed: use plain scalars, lists, mappings"
    )


def _timestamp_as_text(loader: SafeConstructor, node: yaml.Node) -> str:
    return str(node.value)  # an unquoted date stays the text it was written as


for _tag in ("binary", "set", "omap", "pairs"):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)
_Loader.add_constructor(None, _refuse_tag)


def decode(data: bytes) -> str:
    """UTF-8 (BOM allowed) -> text; a bad byte is named by offset and line."""
    if len(data) > MAX_BYTES:
        raise YamlError(f"file is {len(data)} bytes; a spec may be at most {MAX_BYTES} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise YamlError(
            f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}) is invalid"
        ) from None


def load(text: str) -> Any:
    """Parse one plain YAML document; raises :class:`YamlError` with one line."""
    if len(text) > MAX_BYTES:
        raise YamlError(f"document is {len(text)} characters; at most {MAX_BYTES} are accepted")
    if "\x00" in text:
        raise YamlError("the text holds a NUL character (a binary file?)")
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except YamlError:
        raise
    except (yaml.YAMLError, ConstructorError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise YamlError(f"malformed YAML: {where}{' '.join(str(problem).split())[:150]}") from None
    except (RecursionError, MemoryError, ValueError, OverflowError) as e:
        raise YamlError(f"malformed YAML: {type(e).__name__}: {short(str(e), 100)}") from None
    finally:
        loader.dispose()


def first_non_finite(value: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN/inf float anywhere in a parsed document, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "<value>"
    if isinstance(value, dict):
        for k, v in value.items():
            found = first_non_finite(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = first_non_finite(v, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None
