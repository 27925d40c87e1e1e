"""The small declarative condition language used by fit rules and routing rules.

A condition is data, never code::

    {field: account.employees, between: [200, 10000]}
    {field: lead.title, matches: "(?i)\\bVP\\b"}
    {field: lead.email_domain, in_list: free_mail}
    {any: [<condition>, ...]}   {all: [...]}   {not: <condition>}

``compile_condition`` turns one into a plain closure over a context
``{"lead": {...}, "account": {...}, "score": {...}, "event": {...}}``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

OPERATORS = ("eq", "in_", "between", "gte", "lte", "matches", "exists", "in_list")
FIELD_ROOTS = ("lead", "account", "score", "event")

Context = Mapping[str, Mapping[str, Any]]
Predicate = Callable[[Context], bool]
MAX_OPTIONS = 10_000


def _one_value(v: Any) -> Any:
    """What ``eq`` and ``in`` compare with is one value, never a list or a mapping (the
    options of ``in`` are a set; a lead's field is compared with ==)."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("not a finite number")
    if not isinstance(v, bool | int | float | str):
        raise ValueError("a single value (a string, a number, true or false)")
    return v


# Smart unions keep the type that was sent (a bool stays a bool, "5" a string).
Scalar = Annotated[bool | int | float | str, BeforeValidator(_one_value)]


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    field: str | None = None
    eq: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", max_length=MAX_OPTIONS)
    between: tuple[float, float] | None = None
    gte: float | None = None
    lte: float | None = None
    matches: str | None = Field(default=None, max_length=1000)
    exists: bool | None = None
    in_list: str | None = None
    all: list[Condition] | None = None
    any: list[Condition] | None = None
    not_: Condition | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _one_operator(self) -> Condition:
        combinators = [c for c in ("all", "any", "not_") if getattr(self, c) is not None]
        ops = [o for o in OPERATORS if getattr(self, o) is not None]
        if combinators:
            if len(combinators) > 1 or ops or self.field is not None:
                raise ValueError("a combinator (all/any/not) stands alone")
            return self
        if self.field is None:
            raise ValueError("a condition needs `field` and one operator, or all/any/not")
        root = self.field.split(".", 1)[0]
        if root not in FIELD_ROOTS or "." not in self.field:
            raise ValueError(
                f'field "{self.field}" must start with one of {", ".join(FIELD_ROOTS)} '
                "followed by a dot"
            )
        if len(ops) != 1:
            raise ValueError(
                "exactly one operator of eq, in, between, gte, lte, matches, exists, in_list"
            )
        if self.matches is not None:
            try:
                re.compile(self.matches)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError("between: the lower bound exceeds the upper bound")
        return self

    def fields(self) -> set[str]:
        """Every field path this condition and its children read."""
        out = {self.field} if self.field else set()
        for child in (self.all or []) + (self.any or []) + ([self.not_] if self.not_ else []):
            out |= child.fields()
        return out

    def list_names(self, path: str = "") -> list[tuple[str, str]]:
        """(path, name) of every ``in_list`` list this condition and its children use."""
        names = [(path, self.in_list)] if self.in_list else []
        for key, children in (("all", self.all), ("any", self.any)):
            for i, child in enumerate(children or []):
                names.extend(child.list_names(f"{path}.{key}[{i}]"))
        if self.not_ is not None:
            names.extend(self.not_.list_names(f"{path}.not"))
        return names


def getter(path: str) -> Callable[[Context], Any]:
    """A fast accessor for a dotted path (most paths are ``root.field``)."""
    root, *parts = path.split(".")
    if len(parts) == 1:
        key = parts[0]

        def get1(ctx: Context) -> Any:
            node = ctx.get(root)  # contexts hold plain dicts (or nothing) under each root
            return node.get(key) if node is not None else None

        return get1

    def get(ctx: Context) -> Any:
        node: Any = ctx.get(root)
        for part in parts:
            if not isinstance(node, Mapping):
                return None
            node = node.get(part)
        return node

    return get


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    return None


def _norm(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def _member(v: Any, options: frozenset[Any]) -> bool:
    """``v in options``; a list or mapping a lead or event carries in the field is in no
    set of single values (and would not hash)."""
    try:
        return v in options
    except TypeError:
        return False


def compile_condition(cond: Condition, lists: Mapping[str, frozenset[str]]) -> Predicate:
    """Compile a validated condition into a predicate; string comparisons ignore case."""
    if cond.all is not None:
        parts = [compile_condition(c, lists) for c in cond.all]
        return lambda ctx: all(p(ctx) for p in parts)
    if cond.any is not None:
        parts = [compile_condition(c, lists) for c in cond.any]
        return lambda ctx: any(p(ctx) for p in parts)
    if cond.not_ is not None:
        inner = compile_condition(cond.not_, lists)
        return lambda ctx: not inner(ctx)

    assert cond.field is not None
    get = getter(cond.field)
    if cond.eq is not None:
        want = _norm(cond.eq)
        return lambda ctx: _norm(get(ctx)) == want
    if cond.in_ is not None:
        options = frozenset(_norm(v) for v in cond.in_)
        return lambda ctx: _member(_norm(get(ctx)), options)
    if cond.between is not None:
        lo, hi = cond.between

        def between(ctx: Context) -> bool:
            v = _num(get(ctx))
            return v is not None and lo <= v <= hi

        return between
    if cond.gte is not None:
        bound = cond.gte

        def gte(ctx: Context) -> bool:
            v = _num(get(ctx))
            return v is not None and v >= bound

        return gte
    if cond.lte is not None:
        bound_hi = cond.lte

        def lte(ctx: Context) -> bool:
            v = _num(get(ctx))
            return v is not None and v <= bound_hi

        return lte
    if cond.matches is not None:
        rx = re.compile(cond.matches)

        def matches(ctx: Context) -> bool:
            v = get(ctx)
            return isinstance(v, str) and rx.search(v) is not None

        return matches
    if cond.exists is not None:
        want_exists = cond.exists
        return lambda ctx: (get(ctx) not in (None, "")) == want_exists
    assert cond.in_list is not None
    members = lists.get(cond.in_list, frozenset())
    return lambda ctx: _member(_norm(get(ctx)), members)


# -- why a condition failed (the route path's explanation; never on the scoring path) --

Failure = dict[str, Any]
Tracer = Callable[[Context], Failure | None]


def _leaf(cond: Condition) -> tuple[str, Any]:
    """A leaf condition's operator, as the policy spells it, and what it compares with."""
    if cond.eq is not None:
        return "eq", cond.eq
    if cond.in_ is not None:
        return "in", list(cond.in_)
    if cond.between is not None:
        return "between", list(cond.between)
    if cond.gte is not None:
        return "gte", cond.gte
    if cond.lte is not None:
        return "lte", cond.lte
    if cond.matches is not None:
        return "matches", cond.matches
    if cond.exists is not None:
        return "exists", cond.exists
    return "in_list", cond.in_list


def failure(field: str | None, op: str, expected: Any, actual: Any) -> Failure:
    return {"field": field, "op": op, "expected": expected, "actual": actual}


def trace_condition(cond: Condition, lists: Mapping[str, frozenset[str]]) -> Tracer:
    """``compile_condition`` that says why: None when the condition holds, else its first
    failing part as ``{field, op, expected, actual}`` (``actual``: the value the context
    holds). An ``all`` fails at its first failing child; an ``any`` whose children all
    failed lists them under ``failed``; a ``not`` fails when its inner condition held."""
    if cond.all is not None:
        parts = [trace_condition(c, lists) for c in cond.all]

        def all_(ctx: Context) -> Failure | None:
            for part in parts:
                if (failed := part(ctx)) is not None:
                    return failed
            return None

        return all_
    if cond.any is not None:
        options = [trace_condition(c, lists) for c in cond.any]

        def any_(ctx: Context) -> Failure | None:
            failures = []
            for option in options:
                if (failed := option(ctx)) is None:
                    return None
                failures.append(failed)
            return failure(None, "any", None, None) | {"failed": failures}

        return any_
    if cond.not_ is not None:
        return _trace_not(cond.not_, lists)
    assert cond.field is not None
    holds, get, field = compile_condition(cond, lists), getter(cond.field), cond.field
    op, expected = _leaf(cond)
    return lambda ctx: None if holds(ctx) else failure(field, op, expected, get(ctx))


def _trace_not(inner: Condition, lists: Mapping[str, frozenset[str]]) -> Tracer:
    """``not``: a failure when ``inner`` held, named ``not <op>`` for a leaf."""
    holds = compile_condition(inner, lists)
    if inner.field is None:  # a combinator: shown as written
        written = inner.model_dump(by_alias=True, exclude_none=True)
        return lambda ctx: failure(None, "not", written, None) if holds(ctx) else None
    get, field = getter(inner.field), inner.field
    op, expected = _leaf(inner)
    return lambda ctx: failure(field, f"not {op}", expected, get(ctx)) if holds(ctx) else None
