"""Label selectors against the labels of a node, Kubernetes cluster or database."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from devicetrust.types.labels import WILDCARD, Labels, is_regex
from devicetrust.types.templates import has_template_syntax

_PATTERN_CACHE_SIZE = 1024


@functools.lru_cache(maxsize=_PATTERN_CACHE_SIZE)
def _compile(pattern: str) -> re.Pattern[str] | None:
    if is_regex(pattern):
        try:
            return re.compile(pattern)
        except re.error:
            return None  # roles are validated; an uncompilable pattern here matches nothing
    return re.compile(".*".join(re.escape(part) for part in pattern.split(WILDCARD)), re.DOTALL)


def pattern_matches(pattern: str, value: str) -> bool:
    """``*`` matches anything, ``^...$`` is a full-match regex, otherwise ``*`` in a literal is a glob."""
    if pattern == WILDCARD:
        return True
    if has_template_syntax(pattern):
        return False  # an unexpanded template is not a value anybody has
    if WILDCARD not in pattern and not is_regex(pattern):
        return pattern == value
    compiled = _compile(pattern)
    return compiled is not None and compiled.fullmatch(value) is not None


def label_matches(selector: Labels, labels: Mapping[str, str]) -> bool:
    """True if every selector entry matches some label.

    ``'*': '*'`` matches anything, even no labels at all; an empty selector matches nothing.
    """
    if not selector:
        return False
    for key, values in selector.items():
        given: object = values
        patterns = (given,) if isinstance(given, str) else values  # a bare string is one pattern
        if key == WILDCARD and WILDCARD in patterns:
            continue
        if not any(
            pattern_matches(key, label_key) and any(pattern_matches(pattern, label_value) for pattern in patterns)
            for label_key, label_value in labels.items()
        ):
            return False
    return True
