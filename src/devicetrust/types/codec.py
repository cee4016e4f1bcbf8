"""Resource documents ``{kind, version, metadata, spec}`` <-> resource dataclasses.

Parsing is strict: an unknown field anywhere is an error naming its dotted path, because a misspelt
``device_trust_mode`` that is silently ignored leaves a cluster open that its admin believes closed.
"""

from __future__ import annotations

import base64
import binascii
import difflib
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, TypeVar

from pydantic import JsonValue

from devicetrust.errors import ValidationError
from devicetrust.types._validation import FieldError, build, describe, join_path, present, show
from devicetrust.types.cluster_auth_preference import (
    DEFAULT_SESSION_PROOF_TTL,
    WEBAUTHN_FIELDS,
    ClusterAuthPreference,
    DeviceTrustSettings,
)
from devicetrust.types.device import (
    Device,
    DeviceCredential,
    DeviceProfile,
    DeviceSource,
    format_timestamp,
    record_items,
)
from devicetrust.types.duration import format_duration
from devicetrust.types.labels import Labels
from devicetrust.types.lock import LOCK_TARGET_KINDS, Lock, LockTarget
from devicetrust.types.metadata import Metadata
from devicetrust.types.role import Role, RoleConditions, RoleOptions, Rule
from devicetrust.types.user import Bot, User
from devicetrust.types.yaml_io import load_yaml_documents

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Resource = Role | User | Bot | ClusterAuthPreference | Device | Lock

#: Every kind the CLIs and API name, singular. Only some are documents (see DOCUMENT_KINDS).
RESOURCE_KINDS: tuple[str, ...] = (
    "role",
    "user",
    "bot",
    "cluster_auth_preference",
    "token",
    "device",
    "lock",
    "cert_authority",
)
#: Kinds that parse_resource reads.
DOCUMENT_KINDS: tuple[str, ...] = ("role", "user", "bot", "cluster_auth_preference", "device", "lock")

_KIND_ALIASES: Mapping[str, str] = {
    **{kind: kind for kind in RESOURCE_KINDS},
    **{f"{kind}s": kind for kind in RESOURCE_KINDS},
    "cap": "cluster_auth_preference",
    "cert_authorities": "cert_authority",
    "ca": "cert_authority",
    "cas": "cert_authority",
}

_FlatT = TypeVar("_FlatT", RoleOptions, DeviceTrustSettings)
_IdentityT = TypeVar("_IdentityT", User, Bot)


def _field_names(cls: type[DataclassInstance], *, omit: str = "") -> tuple[str, ...]:
    """The document keys of a part that a dataclass holds: its fields, in order, but ``omit``."""
    return tuple(field.name for field in fields(cls) if field.name != omit)


_DOCUMENT_FIELDS = ("kind", "version", "metadata", "spec")
# revision is written by the server on reads; accepting it lets `get`, edit, `create -f` round-trip.
_METADATA_FIELDS = (*_field_names(Metadata), "revision")
# Devices and locks are named by their id; they have no description or labels.
_NAME_ONLY_METADATA_FIELDS = ("name", "revision")
# A device's id and a lock's name are their metadata.name.
_DEVICE_SPEC_FIELDS = _field_names(Device, omit="id")
_LOCK_SPEC_FIELDS = _field_names(Lock, omit="name")
_CREDENTIAL_FIELDS = _field_names(DeviceCredential)
_CREDENTIAL_BYTES_FIELDS = ("public_key_der", "tpm_ak_public")
_PROFILE_FIELDS = _field_names(DeviceProfile)
_SOURCE_FIELDS = _field_names(DeviceSource)
_RULE_FIELDS = _field_names(Rule)
_CONDITIONS_FIELDS = _field_names(RoleConditions)
_ROLE_SPEC_FIELDS = _field_names(Role, omit="metadata")
_IDENTITY_SPEC_FIELDS: Mapping[type[User | Bot], tuple[str, ...]] = {
    cls: _field_names(cls, omit="metadata") for cls in (User, Bot)
}
_CLUSTER_AUTH_PREFERENCE_SPEC_FIELDS = _field_names(ClusterAuthPreference, omit="metadata")


def normalize_kind(name: str) -> str:
    """``roles`` -> ``role``, ``cap`` -> ``cluster_auth_preference``; ValidationError for an unknown kind."""
    kind = _KIND_ALIASES.get(name.strip().lower().replace("-", "_"))
    if kind is None:
        raise ValidationError(f'unknown resource kind "{name}" (valid kinds: {", ".join(RESOURCE_KINDS)})')
    return kind


class _Fields:
    """One mapping of a document, read strictly: keys outside ``allowed`` are errors naming their path."""

    def __init__(self, value: object, path: str, allowed: Collection[str]) -> None:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise FieldError(path, f"expected a mapping, got {describe(value)}")
        for key in value:
            if key not in allowed:
                raise ValidationError(_unknown_field_message(join_path(path, str(key)), str(key), allowed))
        self._values: Mapping[object, object] = value
        self.path = path

    def get(self, key: str) -> object:
        return self._values.get(key)

    def present(self, keys: Collection[str]) -> dict[str, object]:
        """The values of ``keys`` that are set: a null is not set."""
        return present(**{key: self._values.get(key) for key in keys})

    def as_dict(self) -> dict[object, object]:
        return dict(self._values)

    def path_of(self, key: str) -> str:
        return join_path(self.path, key)


def _unknown_field_message(path: str, key: str, allowed: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f'unknown field "{path}"{hint}'


def _flat(cls: type[_FlatT], value: object, path: str) -> _FlatT:
    """A dataclass whose document fields are exactly its own fields, all optional."""
    names = _field_names(cls)
    return build(path, cls, **_Fields(value, path, names).present(names))


def _check_version(value: object, expected: str) -> None:
    if value is None:
        raise FieldError("version", f"required field is missing (supported: {expected})")
    if value != expected:
        raise FieldError("version", f"unsupported version {show(value)} (supported: {expected})")


def _parse_metadata(value: object) -> Metadata:
    reader = _Fields(value, "metadata", _METADATA_FIELDS)
    if reader.get("name") is None:
        raise FieldError("metadata.name", "required field is missing")
    return build(
        "metadata",
        Metadata,
        **present(name=reader.get("name"), description=reader.get("description"), labels=reader.get("labels")),
    )


def _parse_rules(value: object, path: str) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        raise FieldError(path, f"expected a list of rules, got {describe(value)}")
    rules: list[Rule] = []
    for index, item in enumerate(value):
        rule_path = f"{path}[{index}]"
        reader = _Fields(item, rule_path, _RULE_FIELDS)
        _required(reader, *_RULE_FIELDS)
        rules.append(build(rule_path, Rule, **reader.present(_RULE_FIELDS)))
    return tuple(rules)


def _parse_conditions(value: object, path: str) -> RoleConditions:
    reader = _Fields(value, path, _CONDITIONS_FIELDS)
    values = reader.present(_CONDITIONS_FIELDS)
    if "rules" in values:
        values["rules"] = _parse_rules(values["rules"], reader.path_of("rules"))
    return build(path, RoleConditions, **values)


def _parse_role(top: _Fields) -> Role:
    spec = _Fields(top.get("spec"), "spec", _ROLE_SPEC_FIELDS)
    return build(
        "",
        Role,
        metadata=_parse_metadata(top.get("metadata")),
        options=_flat(RoleOptions, spec.get("options"), "spec.options"),
        allow=_parse_conditions(spec.get("allow"), "spec.allow"),
        deny=_parse_conditions(spec.get("deny"), "spec.deny"),
    )


def _parse_identity(cls: type[_IdentityT], top: _Fields) -> _IdentityT:
    names = _IDENTITY_SPEC_FIELDS[cls]
    spec = _Fields(top.get("spec"), "spec", names)
    return build("", cls, metadata=_parse_metadata(top.get("metadata")), **spec.present(names))


def _parse_cluster_auth_preference(top: _Fields) -> ClusterAuthPreference:
    spec = _Fields(top.get("spec"), "spec", _CLUSTER_AUTH_PREFERENCE_SPEC_FIELDS)
    webauthn = spec.get("webauthn")
    if webauthn is not None:
        webauthn = _Fields(webauthn, "spec.webauthn", WEBAUTHN_FIELDS).as_dict()
    return build(
        "",
        ClusterAuthPreference,
        metadata=_parse_metadata(top.get("metadata")),
        device_trust=_flat(DeviceTrustSettings, spec.get("device_trust"), "spec.device_trust"),
        **present(type=spec.get("type"), second_factors=spec.get("second_factors"), webauthn=webauthn),
    )


def _required(reader: _Fields, *keys: str) -> None:
    for key in keys:
        if reader.get(key) is None:
            raise FieldError(reader.path_of(key), "required field is missing")


def _parse_name_only_metadata(value: object) -> object:
    """``metadata.name``, unchecked: the resource checks it (a device's is a UUID) and names the field."""
    reader = _Fields(value, "metadata", _NAME_ONLY_METADATA_FIELDS)
    _required(reader, "name")
    return reader.get("name")


def _decode_base64(value: object, path: str) -> bytes:
    if not isinstance(value, str):
        raise FieldError(path, f"expected a base64 string, got {describe(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(path, "invalid base64") from None


def _parse_credential(value: object, path: str) -> DeviceCredential:
    reader = _Fields(value, path, _CREDENTIAL_FIELDS)
    _required(reader, "id", "attestation_type")
    values = reader.present(_CREDENTIAL_FIELDS)
    for name in _CREDENTIAL_BYTES_FIELDS:
        if name in values:
            values[name] = _decode_base64(values[name], reader.path_of(name))
    return build(path, DeviceCredential, **values)


def _parse_source(value: object, path: str) -> DeviceSource:
    reader = _Fields(value, path, _SOURCE_FIELDS)
    _required(reader, *_SOURCE_FIELDS)
    return build(path, DeviceSource, **reader.present(_SOURCE_FIELDS))


def _parse_profile(value: object, path: str) -> DeviceProfile:
    return build(path, DeviceProfile, **_Fields(value, path, _PROFILE_FIELDS).present(_PROFILE_FIELDS))


def _parse_device(top: _Fields) -> Device:
    device_id = _parse_name_only_metadata(top.get("metadata"))
    spec = _Fields(top.get("spec"), "spec", _DEVICE_SPEC_FIELDS)
    _required(spec, "os_type", "asset_tag")
    values = spec.present(_DEVICE_SPEC_FIELDS)
    parts: Mapping[str, Callable[[object, str], object]] = {
        "credential": _parse_credential,
        "source": _parse_source,
        "profile": _parse_profile,
    }
    for name, parse in parts.items():
        if name in values:
            values[name] = parse(values[name], spec.path_of(name))
    return build("", Device, id=device_id, **values)


def _parse_lock_target(value: object, path: str) -> LockTarget:
    reader = _Fields(value, path, LOCK_TARGET_KINDS)
    kinds = [kind for kind in LOCK_TARGET_KINDS if kind in reader.as_dict()]
    if not kinds:
        raise FieldError(path, f"a lock needs exactly one target, one of: {', '.join(LOCK_TARGET_KINDS)}")
    if len(kinds) > 1:
        raise FieldError(path, f"a lock has exactly one target, got {' and '.join(kinds)}")
    return build(path, LockTarget, kind=kinds[0], value=reader.get(kinds[0]))


def _parse_lock(top: _Fields) -> Lock:
    name = _parse_name_only_metadata(top.get("metadata"))
    spec = _Fields(top.get("spec"), "spec", _LOCK_SPEC_FIELDS)
    _required(spec, "target")
    values = spec.present(_LOCK_SPEC_FIELDS)
    values["target"] = _parse_lock_target(values["target"], spec.path_of("target"))
    return build("", Lock, name=name, **values)


_PARSERS: Mapping[str, tuple[str, Callable[[_Fields], Resource]]] = {
    Role.kind: (Role.version, _parse_role),
    User.kind: (User.version, lambda top: _parse_identity(User, top)),
    Bot.kind: (Bot.version, lambda top: _parse_identity(Bot, top)),
    ClusterAuthPreference.kind: (ClusterAuthPreference.version, _parse_cluster_auth_preference),
    Device.kind: (Device.version, _parse_device),
    Lock.kind: (Lock.version, _parse_lock),
}


def _check_kind(value: object) -> str:
    supported = ", ".join(DOCUMENT_KINDS)
    if value is None:
        raise FieldError("kind", f"required field is missing (supported kinds: {supported})")
    if isinstance(value, str) and value in _PARSERS:
        return value
    hint = ""
    if isinstance(value, str) and value in RESOURCE_KINDS:
        hint = f" ({value} resources are managed with their own commands)"
    elif isinstance(value, str) and _KIND_ALIASES.get(value.strip().lower().replace("-", "_")) in _PARSERS:
        hint = f' (did you mean "{normalize_kind(value)}"?)'
    raise FieldError("kind", f"unsupported kind {show(value)}{hint} (supported kinds: {supported})")


def _context(kind: str, doc: Mapping[str, object]) -> str:
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return f'{kind} "{name}"' if isinstance(name, str) and name else kind


def parse_resource(doc: Mapping[str, object]) -> Resource:
    """The resource a document describes. ValidationError, naming the resource and field, if it is invalid."""
    if not isinstance(doc, Mapping):
        raise ValidationError(f"expected a resource mapping (kind, version, metadata, spec), got {describe(doc)}")
    kind = _check_kind(doc.get("kind"))
    version, parse = _PARSERS[kind]
    try:
        top = _Fields(doc, "", _DOCUMENT_FIELDS)
        _check_version(top.get("version"), version)
        return parse(top)
    except ValidationError as err:
        raise ValidationError(f"{_context(kind, doc)}: {err.message}") from err


def _labels_to_dict(labels: Labels) -> dict[str, JsonValue]:
    return {key: values[0] if len(values) == 1 else list(values) for key, values in labels.items()}


def _metadata_to_dict(metadata: Metadata) -> dict[str, JsonValue]:
    result: dict[str, JsonValue] = {"name": metadata.name}
    if metadata.description:
        result["description"] = metadata.description
    if metadata.labels:
        result["labels"] = dict(metadata.labels)
    return result


def _options_to_dict(options: RoleOptions) -> dict[str, JsonValue]:
    result: dict[str, JsonValue] = {}
    if options.device_trust_mode:
        result["device_trust_mode"] = options.device_trust_mode
    if options.max_session_ttl is not None:
        result["max_session_ttl"] = format_duration(options.max_session_ttl)
    if options.forward_agent:
        result["forward_agent"] = True
    if options.port_forwarding:
        result["port_forwarding"] = True
    return result


# The seed's order: each resource's label selector first, then what may be used on it.
_CONDITIONS_ORDER = (
    "node_labels",
    "logins",
    "kubernetes_labels",
    "kubernetes_groups",
    "kubernetes_users",
    "db_labels",
    "db_names",
    "db_users",
)


def _conditions_to_dict(conditions: RoleConditions) -> dict[str, JsonValue]:
    result: dict[str, JsonValue] = {}
    for name in _CONDITIONS_ORDER:
        value = getattr(conditions, name)
        if value:
            result[name] = _labels_to_dict(value) if name.endswith("_labels") else list(value)
    if conditions.rules:
        result["rules"] = [{"resources": list(rule.resources), "verbs": list(rule.verbs)} for rule in conditions.rules]
    return result


def _role_spec(role: Role) -> dict[str, JsonValue]:
    spec: dict[str, JsonValue] = {}
    for key, value in (
        ("options", _options_to_dict(role.options)),
        ("allow", _conditions_to_dict(role.allow)),
        ("deny", _conditions_to_dict(role.deny)),
    ):
        if value:
            spec[key] = value
    return spec


def _identity_spec(identity: User | Bot) -> dict[str, JsonValue]:
    spec: dict[str, JsonValue] = {"roles": list(identity.roles)}
    if identity.traits:
        spec["traits"] = {name: list(values) for name, values in identity.traits.items()}
    return spec


def _cluster_auth_preference_spec(cap: ClusterAuthPreference) -> dict[str, JsonValue]:
    spec: dict[str, JsonValue] = {"type": cap.type}
    if cap.second_factors:
        spec["second_factors"] = list(cap.second_factors)
    if cap.webauthn is not None:
        spec["webauthn"] = {
            key: list(value) if isinstance(value, tuple) else value for key, value in cap.webauthn.items()
        }
    settings = cap.device_trust
    device_trust: dict[str, JsonValue] = {"mode": settings.mode}
    if settings.auto_enroll:
        device_trust["auto_enroll"] = True
    if settings.ekcert_allowed_cas:
        device_trust["ekcert_allowed_cas"] = list(settings.ekcert_allowed_cas)
    if settings.allow_unsafe_software_keys:
        device_trust["allow_unsafe_software_keys"] = True
    device_trust["session_proof"] = settings.session_proof
    if settings.session_proof_ttl != DEFAULT_SESSION_PROOF_TTL:
        device_trust["session_proof_ttl"] = settings.session_proof_ttl
    spec["device_trust"] = device_trust
    return spec


def _encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _credential_to_dict(credential: DeviceCredential) -> dict[str, JsonValue]:
    result: dict[str, JsonValue] = {"id": credential.id, "attestation_type": credential.attestation_type}
    for name in _CREDENTIAL_BYTES_FIELDS:
        data: bytes = getattr(credential, name)
        if data:
            result[name] = _encode_base64(data)
    for name in ("tpm_ekcert_serial", "tpm_ek_public_sha256"):
        if getattr(credential, name):
            result[name] = getattr(credential, name)
    return result


def profile_to_dict(profile: DeviceProfile) -> dict[str, JsonValue]:
    """``spec.profile`` as a device document holds it."""
    result: dict[str, JsonValue] = {}
    for name in _PROFILE_FIELDS:
        value = getattr(profile, name)
        if not value:
            continue
        if name == "os_usernames":
            result[name] = list(value)
        elif name == "update_time":
            result[name] = format_timestamp(value)
        else:
            result[name] = value
    return result


def _device_spec(device: Device) -> dict[str, JsonValue]:
    spec: dict[str, JsonValue] = {
        "os_type": device.os_type,
        "asset_tag": device.asset_tag,
        "enroll_status": device.enroll_status,
    }
    if device.credential is not None:
        spec["credential"] = _credential_to_dict(device.credential)
    if device.collected_data:
        spec["collected_data"] = [dict(record_items(record)) for record in device.collected_data]
    if device.source is not None:
        spec["source"] = {"name": device.source.name, "origin": device.source.origin}
    if device.profile is not None:
        spec["profile"] = profile_to_dict(device.profile)
    if device.owner:
        spec["owner"] = device.owner
    if device.create_time is not None:
        spec["create_time"] = format_timestamp(device.create_time)
    if device.update_time is not None:
        spec["update_time"] = format_timestamp(device.update_time)
    return spec


def _lock_spec(lock: Lock) -> dict[str, JsonValue]:
    spec: dict[str, JsonValue] = {"target": {lock.target.kind: lock.target.value}}
    if lock.message:
        spec["message"] = lock.message
    if lock.expires is not None:
        spec["expires"] = format_timestamp(lock.expires)
    if lock.created_by:
        spec["created_by"] = lock.created_by
    if lock.created is not None:
        spec["created"] = format_timestamp(lock.created)
    return spec


def resource_to_dict(res: Resource) -> dict[str, JsonValue]:
    """The canonical document for ``res``: plain dicts, lists and scalars, ready for YAML or JSON."""
    if isinstance(res, Device):
        spec = _device_spec(res)
    elif isinstance(res, Lock):
        spec = _lock_spec(res)
    elif isinstance(res, Role):
        spec = _role_spec(res)
    elif isinstance(res, (User, Bot)):
        spec = _identity_spec(res)
    elif isinstance(res, ClusterAuthPreference):
        spec = _cluster_auth_preference_spec(res)
    else:
        raise TypeError(f"not a resource: {type(res).__name__}")
    return {
        "kind": res.kind,
        "version": res.version,
        "metadata": _metadata_to_dict(res.metadata),
        "spec": spec,
    }


def load_resources(text: str, source: str = "<input>") -> tuple[Resource, ...]:
    """Every resource in a YAML text (``tctl create -f``); errors start with ``source``."""
    resources: list[Resource] = []
    for document in load_yaml_documents(text, source):
        try:
            resources.append(parse_resource(document))
        except ValidationError as err:
            raise ValidationError(f"{source}: {err.message}") from err
    return tuple(resources)
