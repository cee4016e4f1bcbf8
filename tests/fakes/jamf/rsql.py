"""The RSQL subset Jamf Pro's inventory filters use, for the fake Jamf server (and tests).

Grammar (as Jamf takes it in ``filter=``)::

    or        := and ( "," and )*
    and       := term ( ";" term )*
    term      := "(" or ")" | selector comparator arguments
    comparator:= "==" | "!=" | "=gt=" | "=ge=" | "=lt=" | "=le=" | "<" | "<=" | ">" | ">=" | "=in=" | "=out="
    arguments := value | "(" value ( "," value )* ")"
    value     := "double quoted" | 'single quoted' | unreserved characters

``==``/``!=`` on strings are case-insensitive and take ``*`` as a wildcard; booleans match ``true``/``false``;
ordering comparisons compare date-times as instants and numbers as numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["And", "Comparison", "Node", "Or", "RSQLError", "evaluate", "parse", "selectors"]

#: longest filter parsed (Jamf takes it in the query string)
MAX_FILTER_CHARS = 4096
#: deepest nesting of parentheses
MAX_DEPTH = 32

_COMPARATOR_RE = re.compile(r"=[a-z]+=|==|!=|<=|>=|<|>")
_SELECTOR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_UNRESERVED_RE = re.compile(r"[^\"'();,=!~<>\s]+")
_COMPARATORS = {"==", "!=", "=gt=", "=ge=", "=lt=", "=le=", "<", "<=", ">", ">=", "=in=", "=out="}
_ALIASES = {"<": "=lt=", "<=": "=le=", ">": "=gt=", ">=": "=ge="}


class RSQLError(ValueError):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Comparison:
    selector: str
    comparator: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


Node = Comparison | And | Or


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> RSQLError:
        return RSQLError(f"{message} at position {self.pos} of {self.text!r}")

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, char: str) -> bool:
        self.skip()
        return self.text.startswith(char, self.pos)

    def expect(self, char: str) -> None:
        if not self.peek(char):
            raise self.error(f"expected {char!r}")
        self.pos += len(char)

    def parse(self) -> Node:
        node = self.or_(0)
        self.skip()
        if self.pos != len(self.text):
            raise self.error("unexpected text")
        return node

    def or_(self, depth: int) -> Node:
        children = [self.and_(depth)]
        while self.peek(","):
            self.pos += 1
            children.append(self.and_(depth))
        return children[0] if len(children) == 1 else Or(tuple(children))

    def and_(self, depth: int) -> Node:
        children = [self.term(depth)]
        while self.peek(";"):
            self.pos += 1
            children.append(self.term(depth))
        return children[0] if len(children) == 1 else And(tuple(children))

    def term(self, depth: int) -> Node:
        if self.peek("("):
            if depth >= MAX_DEPTH:
                raise self.error("nested too deeply")
            self.pos += 1
            node = self.or_(depth + 1)
            self.expect(")")
            return node
        self.skip()
        selector = _SELECTOR_RE.match(self.text, self.pos)
        if selector is None:
            raise self.error("expected a field name")
        self.pos = selector.end()
        self.skip()
        comparator = _COMPARATOR_RE.match(self.text, self.pos)
        if comparator is None or comparator.group() not in _COMPARATORS:
            raise self.error("expected a comparison such as == or =gt=")
        self.pos = comparator.end()
        op = _ALIASES.get(comparator.group(), comparator.group())
        if self.peek("("):
            self.pos += 1
            values = [self.value()]
            while self.peek(","):
                self.pos += 1
                values.append(self.value())
            self.expect(")")
        else:
            values = [self.value()]
        if op not in ("=in=", "=out=") and len(values) != 1:
            raise self.error(f"{op} takes one value")
        return Comparison(selector.group(), op, tuple(values))

    def value(self) -> str:
        self.skip()
        if self.pos < len(self.text) and self.text[self.pos] in "\"'":
            quote = self.text[self.pos]
            self.pos += 1
            out: list[str] = []
            while self.pos < len(self.text):
                char = self.text[self.pos]
                if char == "\\" and self.pos + 1 < len(self.text):
                    out.append(self.text[self.pos + 1])
                    self.pos += 2
                    continue
                if char == quote:
                    self.pos += 1
                    return "".join(out)
                out.append(char)
                self.pos += 1
            raise self.error("unterminated quoted value")
        match = _UNRESERVED_RE.match(self.text, self.pos)
        if match is None:
            raise self.error("expected a value")
        self.pos = match.end()
        return match.group()


def parse(text: str) -> Node | None:
    """The filter's tree; None for an empty filter (everything matches). RSQLError on a syntax error."""
    if len(text) > MAX_FILTER_CHARS:
        raise RSQLError(f"filter longer than {MAX_FILTER_CHARS} characters")
    if not text.strip():
        return None
    return _Parser(text).parse()


def selectors(node: Node | None) -> set[str]:
    if node is None:
        return set()
    if isinstance(node, Comparison):
        return {node.selector}
    return set().union(*(selectors(child) for child in node.children))


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str) or len(value) < 10 or not value[:4].isdigit() or value[4] != "-":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _equals(actual: Any, expected: str) -> bool:
    if actual is None:
        return expected.lower() == "null"
    if isinstance(actual, bool):
        return expected.lower() == ("true" if actual else "false")
    if isinstance(actual, (int, float)):
        number = _number(expected)
        return number is not None and float(actual) == number
    text = str(actual)
    if "*" in expected:
        pattern = ".*".join(re.escape(part) for part in expected.split("*"))
        return re.fullmatch(pattern, text, re.IGNORECASE | re.DOTALL) is not None
    return text.lower() == expected.lower()


def _order(actual: Any, expected: str) -> int | None:
    """-1/0/1 comparing actual to expected, or None when they are not comparable."""
    left_time, right_time = _instant(actual), _instant(expected)
    if left_time is not None and right_time is not None:
        return (left_time > right_time) - (left_time < right_time)
    left_number, right_number = _number(actual), _number(expected)
    if left_number is not None and right_number is not None and not isinstance(actual, str):
        return (left_number > right_number) - (left_number < right_number)
    if isinstance(actual, str):
        return (actual > expected) - (actual < expected)
    return None


def evaluate(node: Node | None, resolve: Callable[[str], Any]) -> bool:
    """Whether a record matches; ``resolve(selector)`` returns the record's value for a field."""
    if node is None:
        return True
    if isinstance(node, And):
        return all(evaluate(child, resolve) for child in node.children)
    if isinstance(node, Or):
        return any(evaluate(child, resolve) for child in node.children)
    actual = resolve(node.selector)
    op = node.comparator
    if op == "==":
        return _equals(actual, node.values[0])
    if op == "!=":
        return not _equals(actual, node.values[0])
    if op == "=in=":
        return any(_equals(actual, value) for value in node.values)
    if op == "=out=":
        return not any(_equals(actual, value) for value in node.values)
    order = _order(actual, node.values[0])
    if order is None:
        return False
    return {"=gt=": order > 0, "=ge=": order >= 0, "=lt=": order < 0, "=le=": order <= 0}[op]
