"""The ``cluster_auth_preference`` singleton (v2): authentication settings, including device trust."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
from devicetrust.types.metadata import Metadata
from devicetrust.types.role import check_device_trust_mode

CLUSTER_AUTH_PREFERENCE_NAME = "cluster-auth-preference"
DEFAULT_CLUSTER_DEVICE_TRUST_MODE = "optional"
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


def as_webauthn(value: object, field: str) -> Mapping[str, Any]:
    """``{rp_id, attestation_allowed_cas?, attestation_denied_cas?}``, lists as tuples, read-only."""
    if not isinstance(value, Mapping):
        raise FieldError(field, f"expected a mapping, got {describe(value)}")
    settings: dict[str, Any] = {}
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
    webauthn: Mapping[str, Any] | None = None
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
