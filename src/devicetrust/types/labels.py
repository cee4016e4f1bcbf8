"""Label selectors (``node_labels``, ``kubernetes_labels``, ``db_labels``) and resource labels.

A selector maps a key pattern to one or more value patterns. A pattern is ``*`` (anything), a regular
expression written ``^...$`` (full match), or a literal in which ``*`` matches any run of characters. Selector
values may also be trait templates, expanded per user before matching.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from devicetrust.types._validation import FieldError, describe, frozen_mapping, show
from devicetrust.types.templates import has_template_syntax, parse_template

Labels = Mapping[str, tuple[str, ...]]

WILDCARD = "*"
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9/._:*-]+")


def is_regex(pattern: str) -> bool:
    return len(pattern) >= 2 and pattern.startswith("^") and pattern.endswith("$")


def _check_pattern(pattern: str, field: str) -> None:
    # A leading ^ or trailing $ shows a regular expression was meant: a half-anchored one is an error, not a
    # literal that would silently match nothing.
    if not (pattern.startswith("^") or pattern.endswith("$")):
        return
    try:
        re.compile(pattern)
    except re.error as err:
        raise FieldError(field, f'invalid regular expression "{pattern}": {err}') from None
    if not is_regex(pattern):
        raise FieldError(field, f'invalid regular expression "{pattern}": anchor it at both ends, ^...$')


def as_label_selector(value: object, field: str) -> Labels:
    """A selector with every value normalized to a tuple (YAML may give one string or a list)."""
    if not isinstance(value, Mapping):
        raise FieldError(field, f"expected a mapping of label keys to values, got {describe(value)}")
    result: dict[str, tuple[str, ...]] = {}
    for key, raw_values in value.items():
        if not isinstance(key, str) or not key:
            raise FieldError(field, f"label keys must be non-empty strings, got {show(key)}")
        if has_template_syntax(key):
            raise FieldError(field, f'label key "{key}": templates are only allowed in values')
        _check_pattern(key, field)
        if isinstance(raw_values, str):
            values: tuple[str, ...] = (raw_values,)
        elif isinstance(raw_values, (list, tuple)):
            values = tuple(raw_values)
        else:
            raise FieldError(
                field, f'label "{key}": expected a string or a list of strings, got {describe(raw_values)}'
            )
        if not values:
            raise FieldError(field, f'label "{key}": at least one value is required')
        for item in values:
            if not isinstance(item, str) or not item:
                raise FieldError(field, f'label "{key}": values must be non-empty strings, got {show(item)}')
            # A template's value is only known per user; it is matched as a pattern after expansion.
            if parse_template(item, field) is None:
                _check_pattern(item, field)
        result[key] = values
    return frozen_mapping(result)


def check_resource_labels(labels: Mapping[str, str], field: str) -> None:
    """Labels on a resource itself (metadata.labels): plain keys and values, no patterns."""
    for key in labels:
        if not _LABEL_KEY_RE.fullmatch(key):
            raise FieldError(field, f'invalid label key "{key}": use letters, digits and / . _ : * -')
