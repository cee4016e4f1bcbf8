"""The ``user`` (v2) and ``bot`` (v1) resources: identities with roles and traits.

Passwords are not part of the resource: they are credentials, stored and checked by the auth service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from devicetrust.types._validation import (
    FieldError,
    as_instance,
    as_str_tuple,
    check_names,
    check_unique,
    describe,
    empty_mapping,
    frozen_mapping,
    join_path,
    show,
)
from devicetrust.types.metadata import Metadata

Traits = Mapping[str, tuple[str, ...]]


def as_traits(value: object, field: str) -> Traits:
    """``{trait: [values...]}`` with every value list as a tuple."""
    if not isinstance(value, Mapping):
        raise FieldError(field, f"expected a mapping of trait names to lists of values, got {describe(value)}")
    traits: dict[str, tuple[str, ...]] = {}
    for name, values in value.items():
        if not isinstance(name, str) or not name:
            raise FieldError(field, f"trait names must be non-empty strings, got {show(name)}")
        traits[name] = as_str_tuple(values, join_path(field, name))
    return frozen_mapping(traits)


def _check_identity(metadata: object, roles: object, traits: object) -> tuple[tuple[str, ...], Traits]:
    as_instance(metadata, Metadata, "metadata")
    role_names = check_names(roles, "spec.roles")
    check_unique(role_names, "spec.roles")
    return role_names, as_traits(traits, "spec.traits")


@dataclass(frozen=True, slots=True)
class _Principal:
    """What users and bots share: a name, roles, and traits for role templates."""

    metadata: Metadata
    roles: tuple[str, ...] = ()
    traits: Traits = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        roles, traits = _check_identity(self.metadata, self.roles, self.traits)
        object.__setattr__(self, "roles", roles)
        object.__setattr__(self, "traits", traits)

    @property
    def name(self) -> str:
        return self.metadata.name


@dataclass(frozen=True, slots=True)
class User(_Principal):
    """A human. ``traits`` feed role templates such as ``{{internal.logins}}``."""

    kind: ClassVar[str] = "user"
    version: ClassVar[str] = "v2"


@dataclass(frozen=True, slots=True)
class Bot(_Principal):
    """A machine identity. Its certificates are marked as a bot's, so ``required-for-humans`` exempts it."""

    kind: ClassVar[str] = "bot"
    version: ClassVar[str] = "v1"
