"""Trait templates -> concrete values, per user."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from devicetrust.types.templates import parse_template


def trait_values(traits: Mapping[str, Sequence[str]], name: str) -> tuple[str, ...]:
    values = traits.get(name, ())
    # A bare string is one value, not a sequence of one-character values.
    return (values,) if isinstance(values, str) else tuple(values)


def expand_traits(values: Sequence[str], traits: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """Each template replaced by the trait's values (with its prefix and suffix), literals kept.

    ``{{internal.X}}`` and ``{{external.X}}`` both read ``traits[X]``; a missing trait expands to nothing, so
    a role cannot grant what the user's traits do not name. The result keeps first-seen order, no repeats.
    A malformed template raises ValidationError.
    """
    expanded: dict[str, None] = {}
    for value in values:
        template = parse_template(value)
        if template is None:
            expanded.setdefault(value)
            continue
        for item in template.expand(trait_values(traits, template.trait)):
            expanded.setdefault(item)
    return tuple(expanded)
