"""Trait templates in role values: ``{{internal.logins}}``, ``{{external.groups}}``, ``a-{{internal.x}}-b``.

A value holds at most one template. Anything else between ``{{`` and ``}}``, or a stray ``{{``/``}}``, is an
error rather than a literal, so a typo cannot silently turn into a login or group that nobody has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from devicetrust.types._validation import FieldError

TEMPLATE_NAMESPACES = ("internal", "external")
_EXPRESSION_RE = re.compile(r"\s*(internal|external)\.([A-Za-z0-9_][A-Za-z0-9_.-]*)\s*")
_OPEN = "{{"
_CLOSE = "}}"
_EXPECTED = "expected {{internal.NAME}} or {{external.NAME}}, optionally with a literal prefix and suffix"


@dataclass(frozen=True, slots=True)
class TraitTemplate:
    """``prefix{{namespace.trait}}suffix``; both namespaces read the user's trait ``trait``."""

    prefix: str
    namespace: str
    trait: str
    suffix: str

    def expand(self, trait_values: Iterable[str]) -> Iterator[str]:
        for value in trait_values:
            if value:  # an empty trait value would leave only the prefix and suffix: not a real value
                yield f"{self.prefix}{value}{self.suffix}"


def has_template_syntax(value: str) -> bool:
    return _OPEN in value or _CLOSE in value


def parse_template(value: str, field: str = "") -> TraitTemplate | None:
    """The template in ``value``, or None if ``value`` is a literal. Raises FieldError if it is malformed."""
    if not has_template_syntax(value):
        return None
    start = value.find(_OPEN)
    end = value.find(_CLOSE)
    if value.count(_OPEN) != 1 or value.count(_CLOSE) != 1 or end < start:
        raise FieldError(field, f'invalid template "{value}": {_EXPECTED}, once per value')
    match = _EXPRESSION_RE.fullmatch(value[start + len(_OPEN) : end])
    if match is None:
        raise FieldError(field, f'invalid template "{value}": {_EXPECTED}')
    namespace, trait = match.groups()
    return TraitTemplate(value[:start], namespace, trait, value[end + len(_CLOSE) :])


def check_template_values(values: Iterable[str], field: str) -> None:
    for index, value in enumerate(values):
        parse_template(value, f"{field}[{index}]")
