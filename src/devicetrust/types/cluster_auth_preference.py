"""The ``cluster_auth_preference`` singleton (v2): authentication settings, including device trust."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import ClassVar

from devicetrust.types._validation import (
    FieldError,
    as_bool,
    as_instance,
    as_str,
    as_str_tuple,
    check_unique,
    describe,
    frozen_mapping,
    join_path,
    show,
)
from devicetrust.types.duration import format_duration, parse_duration
from devicetrust.types.metadata import Metadata
from devicetrust.types.role import check_device_trust_mode

CLUSTER_AUTH_PREFERENCE_NAME = "cluster-auth-preference"
DEFAULT_CLUSTER_DEVICE_TRUST_MODE = "optional"
#: When the device is proven: ``per_session`` (a device ceremony before every session, bound to its target) or
#: ``login`` (once, at login: the certificate files alone then carry the device, for plain OpenSSH clients).
SESSION_PROOF_PER_SESSION = "per_session"
SESSION_PROOF_LOGIN = "login"
SESSION_PROOF_MODES: tuple[str, ...] = (SESSION_PROOF_PER_SESSION, SESSION_PROOF_LOGIN)
#: How long a session proof admits a session: long enough to connect, short enough that a copy is worthless.
DEFAULT_SESSION_PROOF_TTL = "1m"
MIN_SESSION_PROOF_TTL = timedelta(seconds=5)
MAX_SESSION_PROOF_TTL = timedelta(minutes=5)
#: Only local users exist in this cluster; SSO connectors (github, oidc, saml) are not implemented.
AUTH_TYPES: tuple[str, ...] = ("local",)
SECOND_FACTORS: tuple[str, ...] = ("otp", "webauthn", "sso")
WEBAUTHN_FIELDS: tuple[str, ...] = ("rp_id", "attestation_allowed_cas", "attestation_denied_cas")

_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"
_PEM_BODY_RE = re.compile(r"[A-Za-z0-9+/=\s]+")


def is_pem_certificate(text: str) -> bool:
    """One PEM certificate, checked by its framing only: it is parsed where it is used (crypto)."""
    text = text.strip()
    if not (text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END)):
        return False
    body = text[len(_PEM_BEGIN) : -len(_PEM_END)]
    return _PEM_BODY_RE.fullmatch(body) is not None and not body.isspace()


@dataclass(frozen=True, slots=True)
class DeviceTrustSettings:
    """``spec.device_trust``. A missing or empty mode means the default, ``optional``."""

    mode: str = DEFAULT_CLUSTER_DEVICE_TRUST_MODE
    auto_enroll: bool = False
    #: PEM CA certificates; when set, TPM enrollment needs an EK certificate chaining to one of them.
    ekcert_allowed_cas: tuple[str, ...] = ()
    #: Development only: accept software keys that prove nothing about the hardware.
    allow_unsafe_software_keys: bool = False
    session_proof: str = SESSION_PROOF_PER_SESSION
    session_proof_ttl: str = DEFAULT_SESSION_PROOF_TTL

    def __post_init__(self) -> None:
        mode = check_device_trust_mode(self.mode, "mode", allow_unset=True) or DEFAULT_CLUSTER_DEVICE_TRUST_MODE
        object.__setattr__(self, "mode", mode)
        as_bool(self.auto_enroll, "auto_enroll")
        cas = as_str_tuple(self.ekcert_allowed_cas, "ekcert_allowed_cas")
        for index, pem in enumerate(cas):
            if not is_pem_certificate(pem):
                raise FieldError(
                    f"ekcert_allowed_cas[{index}]",
                    f"expected one PEM certificate ({_PEM_BEGIN} ... {_PEM_END})",
                )
        object.__setattr__(self, "ekcert_allowed_cas", cas)
        as_bool(self.allow_unsafe_software_keys, "allow_unsafe_software_keys")
        proof = as_str(self.session_proof, "session_proof") or SESSION_PROOF_PER_SESSION
        if proof not in SESSION_PROOF_MODES:
            raise FieldError("session_proof", f"unknown value {show(proof)} (valid: {', '.join(SESSION_PROOF_MODES)})")
        object.__setattr__(self, "session_proof", proof)
        ttl_text = as_str(self.session_proof_ttl, "session_proof_ttl") or DEFAULT_SESSION_PROOF_TTL
        try:
            ttl = parse_duration(ttl_text)
        except ValueError as err:
            raise FieldError("session_proof_ttl", str(err)) from None
        if not MIN_SESSION_PROOF_TTL <= ttl <= MAX_SESSION_PROOF_TTL:
            bounds = f"{format_duration(MIN_SESSION_PROOF_TTL)} and {format_duration(MAX_SESSION_PROOF_TTL)}"
            raise FieldError("session_proof_ttl", f"must be between {bounds}")
        object.__setattr__(self, "session_proof_ttl", ttl_text)

    @property
    def per_session(self) -> bool:
        return self.session_proof == SESSION_PROOF_PER_SESSION

    @property
    def session_proof_window(self) -> timedelta:
        return parse_duration(self.session_proof_ttl)


def as_webauthn(value: object, field: str) -> Mapping[str, str | tuple[str, ...]]:
    """``{rp_id, attestation_allowed_cas?, attestation_denied_cas?}``, lists as tuples, read-only."""
    if not isinstance(value, Mapping):
        raise FieldError(field, f"expected a mapping, got {describe(value)}")
    settings: dict[str, str | tuple[str, ...]] = {}
    for key, item in value.items():
        path = join_path(field, str(key))
        if key == "rp_id":
            settings[key] = as_str(item, path, allow_empty=False)
        elif key in WEBAUTHN_FIELDS:
            settings[key] = as_str_tuple(item, path)
        else:
            raise FieldError(field, f"unknown setting {show(key)} (valid settings: {', '.join(WEBAUTHN_FIELDS)})")
    if "rp_id" not in settings:
        raise FieldError(join_path(field, "rp_id"), "required field is missing")
    return frozen_mapping(settings)


def _default_metadata() -> Metadata:
    return Metadata(name=CLUSTER_AUTH_PREFERENCE_NAME)


@dataclass(frozen=True, slots=True)
class ClusterAuthPreference:
    """The cluster's authentication settings. There is exactly one, named ``cluster-auth-preference``."""

    kind: ClassVar[str] = "cluster_auth_preference"
    version: ClassVar[str] = "v2"

    metadata: Metadata = field(default_factory=_default_metadata)
    type: str = "local"
    second_factors: tuple[str, ...] = ()
    webauthn: Mapping[str, str | tuple[str, ...]] | None = None
    device_trust: DeviceTrustSettings = field(default_factory=DeviceTrustSettings)

    def __post_init__(self) -> None:
        metadata = as_instance(self.metadata, Metadata, "metadata")
        if metadata.name != CLUSTER_AUTH_PREFERENCE_NAME:
            raise FieldError("metadata.name", f'must be "{CLUSTER_AUTH_PREFERENCE_NAME}", got "{metadata.name}"')
        if as_str(self.type, "spec.type") not in AUTH_TYPES:
            raise FieldError("spec.type", f"unsupported type {show(self.type)} (supported: {', '.join(AUTH_TYPES)})")
        factors = as_str_tuple(self.second_factors, "spec.second_factors")
        for index, factor in enumerate(factors):
            if factor not in SECOND_FACTORS:
                raise FieldError(
                    f"spec.second_factors[{index}]",
                    f'unknown second factor "{factor}" (valid: {", ".join(SECOND_FACTORS)})',
                )
        check_unique(factors, "spec.second_factors")
        object.__setattr__(self, "second_factors", factors)
        if self.webauthn is not None:
            object.__setattr__(self, "webauthn", as_webauthn(self.webauthn, "spec.webauthn"))
        as_instance(self.device_trust, DeviceTrustSettings, "spec.device_trust")

    @property
    def name(self) -> str:
        return self.metadata.name


def default_cluster_auth_preference() -> ClusterAuthPreference:
    """The settings of a new cluster: local users, no second factor configured, device trust optional."""
    return ClusterAuthPreference()
