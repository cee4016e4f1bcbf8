"""The server side of enrollment and device authentication as I/O-free steps (docs/architecture.md, Ceremonies).

``begin_*`` takes the registered device and what the device sent, checks everything that can be checked before
the device proves anything, and returns the pending state to store plus the challenge to send. ``finish_*``
takes that pending state (consumed from storage exactly once by the caller) and the device's answer and raises
:class:`CeremonyError` unless the proof holds. Randomness and time are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicetrust.attestation import (
    AttestationError,
    UnreadableEventLogError,
    check_ak,
    evaluate_ek,
    make_credential,
    parse_tpmt_public,
    replay_event_log,
    verify_challenge_signature,
    verify_quote,
)
from devicetrust.ceremony.messages import (
    KEY_ATTESTATION_TYPES,
    CeremonyError,
    Challenge,
    ChallengeResponse,
    CollectedData,
    KeyEnrollPayload,
    TPMEnrollPayload,
    b64d,
    b64e,
)
from devicetrust.types import Device, DeviceCredential, DeviceTrustSettings

#: A ceremony must finish within a minute of its begin.
CEREMONY_TTL = timedelta(seconds=60)
#: TPM quote nonces: 20 bytes (as Teleport's); software/Secure Enclave challenges: 32 bytes.
NONCE_BYTES = 20
CHALLENGE_BYTES = 32
#: The credential secret wrapped by MakeCredential.
CREDENTIAL_SECRET_BYTES = 32
#: PCRs quoted at enrollment and authentication: the SRTM measurements of a PC Client platform.
QUOTE_PCRS = tuple(range(8))

ENROLL = "device_enroll"
AUTHENTICATE = "device_authn"

RandomBytes = Callable[[int], bytes]


class CredentialBody(TypedDict):
    """A pending enrollment's credential as stored (bytes as base64)."""

    id: str
    attestation_type: str
    public_key_der: str
    tpm_ak_public: str
    tpm_ekcert_serial: str
    tpm_ek_public_sha256: str


class PendingBody(TypedDict):
    """A pending ceremony as stored or sealed (bytes as base64)."""

    device_id: str
    user: str
    credential_id: str
    nonce: str
    challenge: str
    secret_sha256: str
    collected: dict[str, str]
    session_hash: str
    credential: NotRequired[CredentialBody]


def _stored_text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string in a stored ceremony")
    return value


def _stored_fields(value: object) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise TypeError("expected an object in a stored ceremony")
    return value


@dataclass(frozen=True)
class PendingCeremony:
    """What ``begin`` stores and ``finish`` consumes. Secrets are kept only as digests."""

    id: str
    kind: str
    device_id: str
    user: str
    expires: datetime
    credential_id: str
    nonce: bytes = b""
    challenge: bytes = b""
    secret_sha256: bytes = b""
    #: enrollment: the credential the device will hold once it proves possession
    credential: DeviceCredential | None = None
    collected: Mapping[str, str] = field(default_factory=dict)
    #: authentication: the API session the ceremony is bound to
    session_hash: str = ""

    def to_body(self) -> PendingBody:
        body: PendingBody = {
            "device_id": self.device_id,
            "user": self.user,
            "credential_id": self.credential_id,
            "nonce": b64e(self.nonce),
            "challenge": b64e(self.challenge),
            "secret_sha256": b64e(self.secret_sha256),
            "collected": dict(self.collected),
            "session_hash": self.session_hash,
        }
        if self.credential is not None:
            body["credential"] = {
                "id": self.credential.id,
                "attestation_type": self.credential.attestation_type,
                "public_key_der": b64e(self.credential.public_key_der),
                "tpm_ak_public": b64e(self.credential.tpm_ak_public),
                "tpm_ekcert_serial": self.credential.tpm_ekcert_serial,
                "tpm_ek_public_sha256": self.credential.tpm_ek_public_sha256,
            }
        return body

    @classmethod
    def from_body(cls, ceremony_id: str, kind: str, expires: datetime, body: Mapping[str, object]) -> PendingCeremony:
        """The ceremony ``to_body`` stored; KeyError, TypeError or ValueError if ``body`` is not one."""
        raw = body.get("credential")
        credential = None
        if raw is not None:
            stored = _stored_fields(raw)
            credential = DeviceCredential(
                id=_stored_text(stored["id"]),
                attestation_type=_stored_text(stored["attestation_type"]),
                public_key_der=b64d(stored["public_key_der"], "credential", 4096, allow_empty=True),
                tpm_ak_public=b64d(stored["tpm_ak_public"], "credential", 4096, allow_empty=True),
                tpm_ekcert_serial=_stored_text(stored["tpm_ekcert_serial"]),
                tpm_ek_public_sha256=_stored_text(stored["tpm_ek_public_sha256"]),
            )
        collected = _stored_fields(body.get("collected", {}))
        return cls(
            id=ceremony_id,
            kind=kind,
            device_id=str(body["device_id"]),
            user=str(body["user"]),
            expires=expires,
            credential_id=str(body["credential_id"]),
            nonce=b64d(body["nonce"], "nonce", 128, allow_empty=True),
            challenge=b64d(body["challenge"], "challenge", 128, allow_empty=True),
            secret_sha256=b64d(body["secret_sha256"], "secret", 128, allow_empty=True),
            credential=credential,
            collected={key: _stored_text(value) for key, value in collected.items()},
            session_hash=str(body.get("session_hash", "")),
        )


@dataclass(frozen=True)
class VerifiedProof:
    """What a successful ``finish`` established, for the device's collected-data record and the audit log."""

    credential: DeviceCredential
    #: "none", "replayed (N events, data verified for K)", or "unverified: <why the log could not be read>"
    event_log: str


def _check_device_data(device: Device, collected: CollectedData) -> None:
    if collected.os_type != device.os_type or collected.serial_number != device.asset_tag:
        raise CeremonyError("device data does not match the registered device")


def _spki_sha256(key: Any) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _same_text(a: str, b: str) -> bool:
    """Constant-time equality of two strings; compare_digest refuses non-ASCII ``str``, and ids come from devices."""
    return hmac.compare_digest(a.encode(), b.encode())


def _attestation(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except AttestationError as err:
        raise CeremonyError(str(err)) from None
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion, x509.UnsupportedGeneralNameType):
        # What cryptography raises on device-supplied bytes the verifiers let through to it: certificate fields
        # it parses lazily (ValueError), key types and curves it does not know (UnsupportedAlgorithm), X.509
        # versions and general names it does not know.
        raise CeremonyError("the device's attestation data is malformed or unsupported") from None


def begin_enrollment(
    *,
    ceremony_id: str,
    device: Device,
    user: str,
    credential_id: str,
    collected: CollectedData,
    tpm: TPMEnrollPayload | None,
    key: KeyEnrollPayload | None,
    settings: DeviceTrustSettings,
    now: datetime,
    random_bytes: RandomBytes,
) -> tuple[PendingCeremony, Challenge]:
    _check_device_data(device, collected)
    if (tpm is None) == (key is None):
        raise CeremonyError("enrollment needs exactly one of a TPM attestation or a device key")
    expires = now + CEREMONY_TTL
    if tpm is not None:
        if device.os_type not in ("linux", "windows"):
            raise CeremonyError(f"TPM enrollment is not available for {device.os_type} devices")
        ek = _attestation(
            lambda: evaluate_ek(
                ek_cert_der=tpm.ek_cert_der,
                ek_public=tpm.ek_public_der,
                allowed_cas_pem=settings.ekcert_allowed_cas,
                now=now,
            )
        )
        ak = _attestation(lambda: parse_tpmt_public(tpm.ak_public))
        _attestation(lambda: check_ak(ak))
        ek_fingerprint = _spki_sha256(ek.ek_public_key)
        current = device.credential
        if current is not None and current.tpm_ek_public_sha256 != ek_fingerprint:
            raise CeremonyError("this device is enrolled with a different TPM; an administrator must unenroll it first")
        secret = random_bytes(CREDENTIAL_SECRET_BYTES)
        blob, encrypted_secret = _attestation(lambda: make_credential(ek.ek_public_key, ak.name(), secret))
        nonce = random_bytes(NONCE_BYTES)
        credential = DeviceCredential(
            id=credential_id,
            attestation_type=ek.type,
            tpm_ak_public=tpm.ak_public,
            tpm_ekcert_serial=ek.ek_info.serial if ek.ek_info else "",
            tpm_ek_public_sha256=ek_fingerprint,
        )
        pending = PendingCeremony(
            id=ceremony_id,
            kind=ENROLL,
            device_id=device.id,
            user=user,
            expires=expires,
            credential_id=credential_id,
            nonce=nonce,
            secret_sha256=hashlib.sha256(secret).digest(),
            credential=credential,
            collected=collected.to_dict(),
        )
        return pending, Challenge(ceremony_id, nonce=nonce, credential_blob=blob, encrypted_secret=encrypted_secret)

    assert key is not None
    if key.attestation_type == "unsafe_software" and not settings.allow_unsafe_software_keys:
        raise CeremonyError(
            "unsafe software device keys are refused by this cluster (device_trust.allow_unsafe_software_keys)"
        )
    if key.attestation_type == "macos_secure_enclave" and device.os_type != "macos":
        raise CeremonyError("Secure Enclave enrollment is only available for macOS devices")
    try:
        public_key = serialization.load_der_public_key(key.public_key_der)
    except ValueError:
        raise CeremonyError("device public key is not a DER SubjectPublicKeyInfo") from None
    except UnsupportedAlgorithm:
        raise CeremonyError("device public key must be ECDSA P-256") from None
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise CeremonyError("device public key must be ECDSA P-256")
    current = device.credential
    if current is not None and current.public_key_der != key.public_key_der:
        raise CeremonyError("this device is enrolled with a different key; an administrator must unenroll it first")
    challenge = random_bytes(CHALLENGE_BYTES)
    pending = PendingCeremony(
        id=ceremony_id,
        kind=ENROLL,
        device_id=device.id,
        user=user,
        expires=expires,
        credential_id=credential_id,
        challenge=challenge,
        credential=DeviceCredential(
            id=credential_id, attestation_type=key.attestation_type, public_key_der=key.public_key_der
        ),
        collected=collected.to_dict(),
    )
    return pending, Challenge(ceremony_id, challenge=challenge)


def _verify_tpm_quote(credential: DeviceCredential, nonce: bytes, response: ChallengeResponse) -> str:
    if response.quote is None:
        raise CeremonyError("a TPM quote is required")
    quote = response.quote
    ak = _attestation(lambda: parse_tpmt_public(credential.tpm_ak_public))
    _attestation(
        lambda: verify_quote(
            ak,
            quote.attest,
            quote.signature,
            nonce=nonce,
            pcr_selection=QUOTE_PCRS,
            pcr_values=quote.pcr_values,
        )
    )
    try:
        summary = replay_event_log(quote.event_log, quote.pcr_values)
    except UnreadableEventLogError as err:
        # A log that cannot be read (another format, a bank not quoted, firmware bugs) proves nothing either way:
        # the device is no worse off than one sending no log, and the record says the log is unverified.
        return f"unverified: {err}"
    except AttestationError as err:
        # A readable log that contradicts the signed PCRs or its own digests is a forgery: refuse it.
        raise CeremonyError(str(err)) from None
    return summary.describe()


def _check_live(pending: PendingCeremony, response: ChallengeResponse, kind: str, now: datetime) -> None:
    if pending.kind != kind or not _same_text(pending.id, response.ceremony_id):
        raise CeremonyError("unknown or expired device ceremony")
    if now >= pending.expires:
        raise CeremonyError("unknown or expired device ceremony")


def finish_enrollment(pending: PendingCeremony, response: ChallengeResponse, *, now: datetime) -> VerifiedProof:
    _check_live(pending, response, ENROLL, now)
    credential = pending.credential
    if credential is None:
        raise CeremonyError("unknown or expired device ceremony")
    if credential.is_tpm:
        activated = hashlib.sha256(response.activated_secret).digest()
        if not response.activated_secret or not hmac.compare_digest(activated, pending.secret_sha256):
            raise CeremonyError("the TPM did not activate the enrollment credential")
        event_log = _verify_tpm_quote(credential, pending.nonce, response)
        return VerifiedProof(credential, event_log)
    _attestation(lambda: verify_challenge_signature(credential.public_key_der, pending.challenge, response.signature))
    return VerifiedProof(credential, "none")


_VERSION_PART = re.compile(r"\d+")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in _VERSION_PART.findall(version))


def check_drift(device: Device, collected: CollectedData) -> None:
    """Refuse data that contradicts what the device reported at enrollment: another OS, serial or model, or an
    OS version older than the enrolled one (a downgrade is how old vulnerabilities come back)."""
    _check_device_data(device, collected)
    if not device.collected_data:
        return
    enrolled = device.collected_data[0]
    if enrolled.get("model_identifier") and collected.model_identifier != enrolled["model_identifier"]:
        raise CeremonyError("device data does not match the enrolled device (model changed)")
    before, after = _version_key(enrolled.get("os_version", "")), _version_key(collected.os_version)
    if before and after and after < before:
        raise CeremonyError("device data does not match the enrolled device (OS version went backwards)")


def begin_authentication(
    *,
    ceremony_id: str,
    device: Device,
    user: str,
    session_hash: str,
    credential_id: str,
    collected: CollectedData,
    now: datetime,
    random_bytes: RandomBytes,
) -> tuple[PendingCeremony, Challenge]:
    credential = device.credential
    if not device.is_enrolled or credential is None:
        raise CeremonyError("device is not enrolled")
    if not _same_text(credential.id, credential_id):
        raise CeremonyError("device credential does not match the enrolled credential")
    check_drift(device, collected)
    is_tpm = credential.is_tpm
    nonce = random_bytes(NONCE_BYTES) if is_tpm else b""
    challenge = b"" if is_tpm else random_bytes(CHALLENGE_BYTES)
    pending = PendingCeremony(
        id=ceremony_id,
        kind=AUTHENTICATE,
        device_id=device.id,
        user=user,
        expires=now + CEREMONY_TTL,
        credential_id=credential.id,
        nonce=nonce,
        challenge=challenge,
        collected=collected.to_dict(),
        session_hash=session_hash,
    )
    return pending, Challenge(ceremony_id, nonce=nonce, challenge=challenge)


def finish_authentication(
    pending: PendingCeremony, device: Device, response: ChallengeResponse, *, session_hash: str, now: datetime
) -> VerifiedProof:
    """Verify with the credential the device holds NOW (re-read from storage): an unenroll or re-enrollment
    between begin and finish makes the proof worthless."""
    _check_live(pending, response, AUTHENTICATE, now)
    if not _same_text(pending.session_hash, session_hash) or device.id != pending.device_id:
        raise CeremonyError("unknown or expired device ceremony")
    credential = device.credential
    if not device.is_enrolled or credential is None or credential.id != pending.credential_id:
        raise CeremonyError("device is not enrolled")
    if credential.is_tpm:
        return VerifiedProof(credential, _verify_tpm_quote(credential, pending.nonce, response))
    _attestation(lambda: verify_challenge_signature(credential.public_key_der, pending.challenge, response.signature))
    return VerifiedProof(credential, "none")


__all__ = [
    "AUTHENTICATE",
    "CEREMONY_TTL",
    "CHALLENGE_BYTES",
    "ENROLL",
    "KEY_ATTESTATION_TYPES",
    "NONCE_BYTES",
    "QUOTE_PCRS",
    "CredentialBody",
    "PendingBody",
    "PendingCeremony",
    "VerifiedProof",
    "begin_authentication",
    "begin_enrollment",
    "check_drift",
    "finish_authentication",
    "finish_enrollment",
]
