"""Metadata filters of searches: a small boolean language over a collection's indexed fields, parsed by
hand (no eval), checked against the fields' types, shared by the gateway (which refuses bad filters
in the public API's terms) and the shards (which evaluate them).

    label = "Bag"                          equality (== also works), != for inequality
    label in ["Bag", "Sandal"]             membership; not in
    price >= 10 and price < 50             ranges on number fields: < <= > >=
    not (label = "Bag" or split = "test")  and, or, not (also &&, ||, !), parentheses

String fields take = != in; number fields take every comparison. An item without a value for the field
matches no comparison, so `!=`, `not in` and `not` (negations) match it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from semsearch.core.errors import InvalidArgument

MAX_LENGTH = 4096
MAX_DEPTH = 32
MAX_TERMS = 128
MAX_VALUES = 1024
FIELD = "filter"

_SPACE = re.compile(r"\s*")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_STRING = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_COMPARE = ("==", "!=", "<=", ">=", "=", "<", ">")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


@dataclass(frozen=True)
class Compare:
    field: str
    op: str  # == != < <= > >=
    value: str | float


@dataclass(frozen=True)
class InSet:
    field: str
    values: tuple[str | float, ...]
    negated: bool = False


@dataclass(frozen=True)
class And:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node = Compare | InSet | And | Or | Not


def parse(text: str) -> Node | None:
    """The filter's tree, or None for an empty filter; InvalidArgument naming the position otherwise."""
    if len(text) > MAX_LENGTH:
        raise InvalidArgument(f"{len(text)} characters, at most {MAX_LENGTH}", FIELD)
    if not text.strip():
        return None
    parser = _Parser(text)
    node = parser.expression(0)
    parser.skip()
    if parser.pos < len(text):
        parser.fail(f"unexpected {parser.rest()!r}")
    return node


def check(node: Node | None, fields: dict[str, str], collection: str) -> None:
    """Every field of the filter is indexed by the collection, with values of its type and operators that
    type takes (InvalidArgument naming the field otherwise)."""
    for term in terms(node):
        kind = fields.get(term.field)
        if kind is None:
            indexed = ", ".join(f"{n} ({t})" for n, t in sorted(fields.items())) or "none"
            where = f"collection {collection!r} (indexed fields: {indexed})"
            raise InvalidArgument(f"field {term.field!r} is not indexed by {where}", FIELD)
        values = term.values if isinstance(term, InSet) else (term.value,)
        wanted = str if kind == "string" else float
        for value in values:
            if not isinstance(value, wanted):
                shown = f'"{value}"' if isinstance(value, str) else _number(value)
                raise InvalidArgument(
                    f"field {term.field!r} holds {kind}s, got {shown}"
                    + (f" (write {_number(value)!r} in quotes)" if kind == "string" else ""),
                    FIELD,
                )
        if kind == "string" and isinstance(term, Compare) and term.op not in ("==", "!="):
            raise InvalidArgument(
                f"field {term.field!r} holds strings: compare it with =, != or in, not {term.op}", FIELD
            )


def metadata_error(fields: dict[str, str], metadata: dict[str, str]) -> tuple[str, str] | None:
    """(field, message) when an item's metadata gives a number field a value that is not a finite
    number; None when its indexed fields are fine."""
    for name, kind in fields.items():
        value = metadata.get(name)
        if kind == "number" and value is not None:
            try:
                ok = math.isfinite(float(value))
            except ValueError:
                ok = False
            if not ok:
                return name, f"{value!r} is not a finite number (the collection indexes {name!r} as a number)"
    return None


def terms(node: Node | None) -> list[Compare | InSet]:
    """The comparisons of a filter, left to right."""
    if node is None:
        return []
    if isinstance(node, (Compare, InSet)):
        return [node]
    if isinstance(node, Not):
        return terms(node.part)
    return [t for part in node.parts for t in terms(part)]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


class _Parser:
    """Recursive descent: expression = term (or term)*; term = factor (and factor)*; factor = not factor |
    ( expression ) | comparison."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.count = 0

    # --- scanning -------------------------------------------------------------------------------------

    def skip(self) -> None:
        self.pos = _SPACE.match(self.text, self.pos).end()

    def rest(self) -> str:
        return self.text[self.pos : self.pos + 20]

    def fail(self, message: str):
        raise InvalidArgument(f"at position {self.pos + 1}: {message}", FIELD)

    def accept(self, *tokens: str) -> str | None:
        """The first of `tokens` at the position (words must end there), consumed; None if none is."""
        self.skip()
        for token in tokens:
            end = self.pos + len(token)
            if self.text[self.pos : end].lower() == token:
                if token[-1].isalpha() and end < len(self.text) and _NAME.match(self.text[end]):
                    continue
                self.pos = end
                return token
        return None

    def value(self) -> str | float:
        self.skip()
        if match := _STRING.match(self.text, self.pos):
            self.pos = match.end()
            return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), match.group(0)[1:-1])
        if self.text[self.pos : self.pos + 1] in ('"', "'"):
            self.fail("a string without its closing quote")
        match = _NUMBER.match(self.text, self.pos)
        if match and not (match.end() < len(self.text) and _NAME.match(self.text[match.end()])):
            self.pos = match.end()
            return float(match.group(0))
        self.fail(f'expected a value ("text" or a number), got {self.rest()!r}' if self.rest() else
                  'expected a value ("text" or a number) at the end')  # fmt: skip

    # --- grammar --------------------------------------------------------------------------------------

    def expression(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            self.fail(f"nested more than {MAX_DEPTH} deep")
        parts = [self.term(depth)]
        while self.accept("||", "or"):
            parts.append(self.term(depth))
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def term(self, depth: int) -> Node:
        parts = [self.factor(depth)]
        while self.accept("&&", "and"):
            parts.append(self.factor(depth))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def factor(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            self.fail(f"nested more than {MAX_DEPTH} deep")
        if self.accept("not", "!"):
            return Not(self.factor(depth + 1))
        if self.accept("("):
            node = self.expression(depth + 1)
            if not self.accept(")"):
                self.fail(f"expected ')', got {self.rest()!r}" if self.rest() else "expected ')' at the end")
            return node
        return self.comparison()

    def comparison(self) -> Compare | InSet:
        self.skip()
        match = _NAME.match(self.text, self.pos)
        if match is None:
            self.fail(f"expected a field name, got {self.rest()!r}" if self.rest() else
                      "expected a field name at the end")  # fmt: skip
        field = match.group(0)
        self.pos = match.end()
        self.count += 1
        if self.count > MAX_TERMS:
            self.fail(f"more than {MAX_TERMS} comparisons")
        negated = bool(self.accept("not"))
        if self.accept("in"):
            return InSet(field, self.values(), negated)
        if negated:
            self.fail("expected 'in' after 'not'")
        op = self.accept(*_COMPARE)
        if op is None:
            self.fail(f"expected =, !=, <, <=, >, >=, in or not in after {field!r}")
        return Compare(field, "==" if op == "=" else op, self.value())

    def values(self) -> tuple[str | float, ...]:
        if not self.accept("["):
            self.fail("expected '[' after 'in'")
        values = [self.value()]
        while self.accept(","):
            values.append(self.value())
            if len(values) > MAX_VALUES:
                self.fail(f"more than {MAX_VALUES} values in one list")
        if not self.accept("]"):
            self.fail(
                f"expected ',' or ']', got {self.rest()!r}" if self.rest() else "expected ']' at the end"
            )
        return tuple(values)
