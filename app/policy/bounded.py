"""Untrusted documents parsed within bounds: a policy (YAML or JSON), an admin upload.

A YAML file of a few kilobytes can stand for gigabytes: anchors and aliases nest
("billion laughs"), and PyYAML shares the aliased objects, so the blow-up only happens
later, when the document is validated or serialised. ``load_yaml`` therefore measures the
document *as it would be expanded* while it is composed, from the node graph (each shared
node measured once), and refuses it before anything is built:

- ``yaml_alias_limit``: more than ``MAX_ALIAS_NODES`` nodes reached through aliases, or an
  alias inside the node it names (a cycle);
- ``too_deep``: nesting deeper than ``MAX_DEPTH`` (checked as each node opens, so a deep
  document never reaches the recursive composer's limit);
- ``document_too_large``: more than ``MAX_DOCUMENT_BYTES`` once expanded, as JSON.

``check_shape`` walks a parsed document without recursion and refuses, naming the path,
what JSON (and so the policy store) cannot hold: nesting beyond the bound, strings with
lone surrogates (``"\\ud800"`` in YAML), keys that are not strings, numbers that are not
finite or integers beyond 64 bits, and YAML-only types (timestamps, binary, sets).

Scanning and parsing are libyaml's (C); only composing runs in Python, where the bounds
are counted.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from app.errors import AppError, InvalidInput, MalformedBody

MAX_DEPTH = 64
MAX_ALIAS_NODES = 10_000
MAX_DOCUMENT_BYTES = 1024 * 1024
_INT64 = 2**63
_STR_TAG = "tag:yaml.org,2002:str"

# libyaml's scanner and parser when PyYAML has them (its wheels do), else PyYAML's own.
try:
    from yaml import CSafeLoader as _SafeBase
except ImportError:  # pragma: no cover - a PyYAML built without libyaml
    from yaml import SafeLoader as _SafeBase  # type: ignore[assignment]


def refused(code: str, message: str, field: str = "body") -> InvalidInput:
    return InvalidInput(message, code=code, field=field)


class _BoundedLoader(Composer, _SafeBase):
    """PyYAML's safe loader with Python's composer (first in the MRO, over libyaml's)
    counting depth and aliased nodes as it builds the node graph."""

    def __init__(self, stream: str | bytes, max_depth: int, max_bytes: int) -> None:
        _SafeBase.__init__(self, stream)
        Composer.__init__(self)
        self.max_depth = max_depth
        self.max_bytes = max_bytes
        self.depth = 0
        self.open_anchors: list[str | None] = []
        self.alias_nodes = 0
        self.sizes: dict[int, tuple[int, int]] = {}  # id(node) → (nodes, JSON bytes)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            anchor = getattr(self.peek_event(), "anchor", None)
            if anchor in self.open_anchors:
                raise refused("yaml_alias_limit", f"the alias *{anchor} is inside its own anchor")
            node = self.anchors.get(anchor)
            if node is not None:
                self.alias_nodes += self.measure(node)[0]
                if self.alias_nodes > MAX_ALIAS_NODES:
                    raise refused(
                        "yaml_alias_limit",
                        f"aliases expand to more than {MAX_ALIAS_NODES} nodes",
                    )
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > self.max_depth:
            raise refused("too_deep", f"the document nests deeper than {self.max_depth} levels")
        self.open_anchors.append(getattr(self.peek_event(), "anchor", None))
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1
            self.open_anchors.pop()

    def get_single_node(self) -> Node | None:
        node: Node | None = super().get_single_node()
        if node is not None and self.measure(node)[1] > self.max_bytes:
            raise refused(
                "document_too_large",
                f"the document is over {self.max_bytes} bytes once its aliases are expanded",
            )
        return node

    def measure(self, root: Node) -> tuple[int, int]:
        """(nodes, approximate JSON bytes) of ``root`` expanded; each shared node once."""
        sizes = self.sizes
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            if id(node) in sizes:
                continue
            children = _children(node)
            if not children_done:
                stack.append((node, True))
                stack.extend((c, False) for c in children if id(c) not in sizes)
                continue
            nodes, size = 1, _own_bytes(node)
            for child in children:
                n, b = sizes[id(child)]
                nodes += n
                size += b
            sizes[id(node)] = (nodes, size)
        return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _own_bytes(node: Node) -> int:
    if isinstance(node, ScalarNode):
        return len(node.value) + (2 if node.tag == _STR_TAG else 0)
    if isinstance(node, MappingNode):
        return 2 + 2 * len(node.value)
    return 2 + len(node.value)


def _malformed(exc: Exception) -> MalformedBody:
    detail = " ".join(str(exc).split())[:300]
    return MalformedBody(
        f"the body is not valid YAML: {detail}", code="malformed_yaml", field="body"
    )


def load_yaml(
    text: str | bytes, *, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_DOCUMENT_BYTES
) -> Any:
    """A YAML document as plain data, within the bounds (422 ``yaml_alias_limit``,
    ``too_deep``, ``document_too_large``; 400 ``malformed_yaml`` when it is not YAML)."""
    try:
        loader = _BoundedLoader(text, max_depth, max_bytes)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except AppError:
        raise
    except RecursionError:  # defensive: the depth bound stops composing long before
        raise refused("too_deep", "the document nests too deeply") from None
    except yaml.YAMLError as exc:
        if "maximum nesting depth" not in str(exc):
            raise _malformed(exc) from None
        # libyaml's scanner runs ahead of the composer and has a bound of its own (1,000
        # flow levels): the same refusal as ours.
        raise refused("too_deep", f"the document nests deeper than {max_depth} levels") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # The constructor's own int()/date() calls raise ValueError (a 5,000-digit number,
        # 2026-02-30): as malformed as a syntax error.
        raise _malformed(exc) from None
    check_shape(data, max_depth=max_depth, max_bytes=max_bytes)
    return data


def load_json(
    body: str | bytes, *, max_depth: int = MAX_DEPTH, max_bytes: int | None = None
) -> Any:
    """A JSON document within the bounds (orjson itself stops at 1,024 levels)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}", field="body") from None
    check_shape(data, max_depth=max_depth, max_bytes=max_bytes)
    return data


def _where(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out or "body"


def _check_text(value: str, path: tuple[str | int, ...]) -> None:
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise refused(
            "invalid_string",
            f"{_where(path)}: a string with a lone surrogate (e.g. \\ud800) is not text",
            _where(path),
        ) from None


def check_shape(data: Any, *, max_depth: int = MAX_DEPTH, max_bytes: int | None = None) -> None:
    """Refuse what JSON cannot carry faithfully, each error naming its path; iterative."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(data, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict | list) and depth > max_depth:
            raise refused("too_deep", f"the document nests deeper than {max_depth} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise refused(
                        "invalid_key", f"{_where(path)}: key {key!r} is not a string", _where(path)
                    )
                _check_text(key, (*path, key))
                stack.append((item, depth + 1, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, (*path, i)) for i, item in enumerate(value))
        elif isinstance(value, str):
            _check_text(value, path)
        elif value is None or isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if not -_INT64 <= value < _INT64:
                raise refused(
                    "number_out_of_range", f"{_where(path)}: integer out of range", _where(path)
                )
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise refused(
                    "number_out_of_range", f"{_where(path)}: not a finite number", _where(path)
                )
        else:
            raise refused(
                "invalid_value",
                f"{_where(path)}: a YAML {type(value).__name__} is not a JSON value; quote it",
                _where(path),
            )
    if max_bytes is not None and len(orjson.dumps(data)) > max_bytes:
        raise refused("document_too_large", f"the document is over {max_bytes} bytes as JSON")
