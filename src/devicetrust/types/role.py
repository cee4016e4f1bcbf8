"""The ``role`` resource (v7): device trust mode, allow/deny conditions and admin rules."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar

from devicetrust.types._validation import (
    FieldError,
    as_bool,
    as_instance,
    as_str,
    as_str_tuple,
    as_timedelta,
    empty_mapping,
    show,
)
from devicetrust.types.duration import format_duration, parse_duration
from devicetrust.types.labels import WILDCARD, Labels, as_label_selector
from devicetrust.types.metadata import Metadata
from devicetrust.types.templates import check_template_values

#: Least to most strict is off < optional < required-for-humans < required (see devicetrust.access).
DEVICE_TRUST_MODES: tuple[str, ...] = ("off", "optional", "required", "required-for-humans")
#: A role's device_trust_mode when the role does not set one.
MODE_UNSET = ""

KNOWN_VERBS: tuple[str, ...] = (
    "list",
    "read",
    "create",
    "update",
    "delete",
    "create_enroll_token",
    "enroll",
    WILDCARD,
)


def check_device_trust_mode(value: object, field: str, *, allow_unset: bool) -> str:
    if isinstance(value, bool):
        # YAML 1.1 readers turn an unquoted off into false; say how to write it instead of "got a boolean".
        raise FieldError(field, 'expected a mode as a string, got a boolean (write it quoted, e.g. "off")')
    mode = as_str(value, field)
    if mode == MODE_UNSET and allow_unset:
        return mode
    if mode not in DEVICE_TRUST_MODES:
        raise FieldError(
            field, f"invalid device trust mode {show(mode)} (valid modes: {', '.join(DEVICE_TRUST_MODES)})"
        )
    return mode


@dataclass(frozen=True, slots=True)
class Rule:
    """Grants (or, under deny, refuses) ``verbs`` on ``resources``; ``*`` stands for all of either."""

    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def __post_init__(self) -> None:
        resources = as_str_tuple(self.resources, "resources")
        if not resources:
            raise FieldError("resources", "at least one resource is required")
        verbs = as_str_tuple(self.verbs, "verbs")
        if not verbs:
            raise FieldError("verbs", "at least one verb is required")
        for index, verb in enumerate(verbs):
            if verb not in KNOWN_VERBS:
                raise FieldError(f"verbs[{index}]", f'unknown verb "{verb}" (valid verbs: {", ".join(KNOWN_VERBS)})')
        object.__setattr__(self, "resources", resources)
        object.__setattr__(self, "verbs", verbs)

    def covers(self, resource: str, verb: str) -> bool:
        return (resource in self.resources or WILDCARD in self.resources) and (
            verb in self.verbs or WILDCARD in self.verbs
        )


# Fields holding trait-templated strings, in the order they are written out.
TEMPLATED_FIELDS = ("logins", "kubernetes_groups", "kubernetes_users", "db_names", "db_users")
LABEL_FIELDS = ("node_labels", "kubernetes_labels", "db_labels")


@dataclass(frozen=True, slots=True)
class RoleConditions:
    """What a role allows (``spec.allow``) or denies (``spec.deny``)."""

    logins: tuple[str, ...] = ()
    node_labels: Labels = field(default_factory=empty_mapping)
    kubernetes_labels: Labels = field(default_factory=empty_mapping)
    kubernetes_groups: tuple[str, ...] = ()
    kubernetes_users: tuple[str, ...] = ()
    db_labels: Labels = field(default_factory=empty_mapping)
    db_names: tuple[str, ...] = ()
    db_users: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        for name in TEMPLATED_FIELDS:
            values = as_str_tuple(getattr(self, name), name)
            check_template_values(values, name)
            object.__setattr__(self, name, values)
        for name in LABEL_FIELDS:
            object.__setattr__(self, name, as_label_selector(getattr(self, name), name))
        if not isinstance(self.rules, (list, tuple)):
            raise FieldError("rules", f"expected a list of rules, got {show(self.rules)}")
        rules = tuple(as_instance(rule, Rule, f"rules[{index}]") for index, rule in enumerate(self.rules))
        object.__setattr__(self, "rules", rules)

    def is_empty(self) -> bool:
        return self == RoleConditions()


@dataclass(frozen=True, slots=True)
class RoleOptions:
    """``spec.options``. ``device_trust_mode`` "" means the role leaves the decision to others."""

    device_trust_mode: str = MODE_UNSET
    max_session_ttl: timedelta | None = None
    forward_agent: bool = False
    port_forwarding: bool = False

    def __post_init__(self) -> None:
        check_device_trust_mode(self.device_trust_mode, "device_trust_mode", allow_unset=True)
        if self.max_session_ttl is not None:
            ttl = as_timedelta(self.max_session_ttl, "max_session_ttl", parse_duration)
            try:
                format_duration(ttl)
            except ValueError as err:
                raise FieldError("max_session_ttl", str(err)) from None
            object.__setattr__(self, "max_session_ttl", ttl)
        as_bool(self.forward_agent, "forward_agent")
        as_bool(self.port_forwarding, "port_forwarding")


@dataclass(frozen=True, slots=True)
class Role:
    """A named set of permissions. Deny beats allow; see :class:`devicetrust.access.AccessChecker`."""

    kind: ClassVar[str] = "role"
    version: ClassVar[str] = "v7"

    metadata: Metadata
    options: RoleOptions = field(default_factory=RoleOptions)
    allow: RoleConditions = field(default_factory=RoleConditions)
    deny: RoleConditions = field(default_factory=RoleConditions)

    def __post_init__(self) -> None:
        as_instance(self.metadata, Metadata, "metadata")
        as_instance(self.options, RoleOptions, "spec.options")
        as_instance(self.allow, RoleConditions, "spec.allow")
        as_instance(self.deny, RoleConditions, "spec.deny")
        # A wildcard login would let a user log in as root; only deny may name every login.
        if WILDCARD in self.allow.logins:
            raise FieldError("spec.allow.logins", 'the wildcard "*" is not allowed in allowed logins')

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def device_trust_mode(self) -> str:
        return self.options.device_trust_mode
