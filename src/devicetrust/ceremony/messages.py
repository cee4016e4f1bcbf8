"""Wire messages of the enrollment and authentication ceremonies, and their strict JSON codecs.

Bytes travel as standard base64. Every decoder bounds sizes before decoding and raises one
:class:`CeremonyError` naming the field, so a malformed message never reaches the verifiers as anything but
well-typed values.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from devicetrust.errors import ValidationError
from devicetrust.protocol import ChallengeAnswer, KeyEnrollment, QuoteAnswer, TpmEnrollment

#: Upper bounds on encoded fields (base64 text) — generous multiples of the real sizes.
MAX_EK_CERT_B64 = 8 * 1024
MAX_KEY_B64 = 2 * 1024
MAX_BLOB_B64 = 2 * 1024
MAX_EVENT_LOG_B64 = 1400 * 1024  # the 1 MiB event-log limit, base64-encoded
MAX_PCRS = 24
MAX_ID_CHARS = 64
#: Ceremony ids are opaque to the device; a device-authentication one carries the sealed pending state.
MAX_CEREMONY_ID_CHARS = 8 * 1024
MAX_CERT_CHARS = 16 * 1024

MAX_COLLECTED_FIELD_CHARS = 256

_PCR_INDEX = re.compile(r"0|[1-9][0-9]?")
_PCR_HEX = re.compile(r"[0-9a-fA-F]{64}")

KEY_ATTESTATION_TYPES = ("macos_secure_enclave", "unsafe_software")


class CeremonyError(ValidationError):
    """A ceremony message or step was refused. ``str()`` is one line safe to show to the device's user."""

    kind = "device_trust"
    http_status = 400


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(value: object, field: str, max_chars: int, *, allow_empty: bool = False) -> bytes:
    if not isinstance(value, str):
        raise CeremonyError(f"{field}: expected base64 text")
    if len(value) > max_chars:
        raise CeremonyError(f"{field}: larger than {max_chars} characters")
    if not value and not allow_empty:
        raise CeremonyError(f"{field}: must not be empty")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CeremonyError(f"{field}: not valid base64") from None


def text(value: object, field: str, max_chars: int = MAX_ID_CHARS) -> str:
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise CeremonyError(f"{field}: expected a non-empty string of at most {max_chars} characters")
    return value


def mapping(value: object, field: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise CeremonyError(f"{field}: expected an object")
    return value


@dataclass(frozen=True)
class TPMEnrollPayload:
    ek_cert_der: bytes | None
    ek_public_der: bytes | None
    ak_public: bytes  # marshalled TPMT_PUBLIC

    def to_json(self) -> TpmEnrollment:
        return {
            "ek_cert_der": b64e(self.ek_cert_der) if self.ek_cert_der else None,
            "ek_public_der": b64e(self.ek_public_der) if self.ek_public_der else None,
            "ak_public": b64e(self.ak_public),
        }

    @classmethod
    def from_json(cls, data: object) -> TPMEnrollPayload:
        data = mapping(data, "tpm")
        cert = data.get("ek_cert_der")
        public = data.get("ek_public_der")
        return cls(
            ek_cert_der=b64d(cert, "tpm.ek_cert_der", MAX_EK_CERT_B64) if cert is not None else None,
            ek_public_der=b64d(public, "tpm.ek_public_der", MAX_KEY_B64) if public is not None else None,
            ak_public=b64d(data.get("ak_public"), "tpm.ak_public", MAX_KEY_B64),
        )


@dataclass(frozen=True)
class KeyEnrollPayload:
    """macOS Secure Enclave or unsafe software key: a P-256 public key (PKIX DER)."""

    public_key_der: bytes
    attestation_type: str

    def to_json(self) -> KeyEnrollment:
        return {"public_key_der": b64e(self.public_key_der), "attestation_type": self.attestation_type}

    @classmethod
    def from_json(cls, data: object) -> KeyEnrollPayload:
        data = mapping(data, "key")
        kind = data.get("attestation_type")
        if kind not in KEY_ATTESTATION_TYPES:
            raise CeremonyError(f"key.attestation_type: expected one of {', '.join(KEY_ATTESTATION_TYPES)}")
        return cls(b64d(data.get("public_key_der"), "key.public_key_der", MAX_KEY_B64), str(kind))


@dataclass(frozen=True)
class QuoteResponse:
    attest: bytes
    signature: bytes
    pcr_values: Mapping[int, bytes]
    event_log: bytes

    def to_json(self) -> QuoteAnswer:
        return {
            "attest": b64e(self.attest),
            "signature": b64e(self.signature),
            "pcr_values": {str(k): v.hex() for k, v in sorted(self.pcr_values.items())},
            "event_log": b64e(self.event_log),
        }

    @classmethod
    def from_json(cls, data: object, field: str = "quote") -> QuoteResponse:
        data = mapping(data, field)
        raw_pcrs = mapping(data.get("pcr_values"), f"{field}.pcr_values")
        if len(raw_pcrs) > MAX_PCRS:
            raise CeremonyError(f"{field}.pcr_values: more than {MAX_PCRS} PCRs")
        pcrs: dict[int, bytes] = {}
        for key, value in raw_pcrs.items():
            # ASCII decimal without leading zeros: str.isdigit() also admits "²" (int() fails) and "٣" (== 3)
            if not (isinstance(key, str) and _PCR_INDEX.fullmatch(key) and int(key) < MAX_PCRS):
                raise CeremonyError(f"{field}.pcr_values: bad PCR index {key!r}")
            # bytes.fromhex() would skip whitespace and return fewer than 32 bytes
            if not isinstance(value, str) or not _PCR_HEX.fullmatch(value):
                raise CeremonyError(f"{field}.pcr_values.{key}: expected 64 hex digits")
            pcrs[int(key)] = bytes.fromhex(value)
        return cls(
            attest=b64d(data.get("attest"), f"{field}.attest", MAX_BLOB_B64),
            signature=b64d(data.get("signature"), f"{field}.signature", MAX_BLOB_B64),
            pcr_values=pcrs,
            event_log=b64d(data.get("event_log", ""), f"{field}.event_log", MAX_EVENT_LOG_B64, allow_empty=True),
        )


@dataclass(frozen=True)
class Challenge:
    """The server's reply to a ``begin``: what the device must answer within the ceremony's lifetime."""

    ceremony_id: str
    nonce: bytes = b""  # TPM quote nonce
    challenge: bytes = b""  # macOS/software signature challenge
    credential_blob: bytes = b""  # TPM enrollment: TPM2B_ID_OBJECT
    encrypted_secret: bytes = b""  # TPM enrollment: TPM2B_ENCRYPTED_SECRET

    def to_json(self) -> dict[str, str]:
        return {
            "ceremony_id": self.ceremony_id,
            "nonce": b64e(self.nonce),
            "challenge": b64e(self.challenge),
            "credential_blob": b64e(self.credential_blob),
            "encrypted_secret": b64e(self.encrypted_secret),
        }

    @classmethod
    def from_json(cls, data: object) -> Challenge:
        data = mapping(data, "challenge")
        return cls(
            ceremony_id=text(data.get("ceremony_id"), "ceremony_id", MAX_CEREMONY_ID_CHARS),
            nonce=b64d(data.get("nonce", ""), "nonce", MAX_BLOB_B64, allow_empty=True),
            challenge=b64d(data.get("challenge", ""), "challenge", MAX_BLOB_B64, allow_empty=True),
            credential_blob=b64d(data.get("credential_blob", ""), "credential_blob", MAX_BLOB_B64, allow_empty=True),
            encrypted_secret=b64d(data.get("encrypted_secret", ""), "encrypted_secret", MAX_BLOB_B64, allow_empty=True),
        )


@dataclass(frozen=True)
class ChallengeResponse:
    """The device's ``finish``: the activated secret + quote (TPM) or a signature (macOS/software)."""

    ceremony_id: str
    activated_secret: bytes = b""
    quote: QuoteResponse | None = None
    signature: bytes = b""

    def to_json(self) -> ChallengeAnswer:
        return {
            "ceremony_id": self.ceremony_id,
            "activated_secret": b64e(self.activated_secret),
            "quote": self.quote.to_json() if self.quote else None,
            "signature": b64e(self.signature),
        }

    @classmethod
    def from_json(cls, data: object) -> ChallengeResponse:
        data = mapping(data, "response")
        quote = data.get("quote")
        return cls(
            ceremony_id=text(data.get("ceremony_id"), "ceremony_id", MAX_CEREMONY_ID_CHARS),
            activated_secret=b64d(data.get("activated_secret", ""), "activated_secret", MAX_BLOB_B64, allow_empty=True),
            quote=QuoteResponse.from_json(quote) if quote is not None else None,
            signature=b64d(data.get("signature", ""), "signature", MAX_BLOB_B64, allow_empty=True),
        )


@dataclass(frozen=True)
class CollectedData:
    """The enrollment/authentication record a device sends (Teleport's DeviceCollectedData)."""

    collect_time: str
    os_type: str  # linux | macos | windows
    serial_number: str
    model_identifier: str = ""
    os_id: str = ""
    os_version: str = ""
    os_build: str = ""
    os_username: str = ""
    system_serial_number: str = ""
    base_board_serial_number: str = ""
    reported_asset_tag: str = ""

    def to_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in _COLLECTED_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CollectedData:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValidationError(f"collected_data: unknown field {unknown[0]!r}")
        known: dict[str, str] = {}
        for name in cls.__dataclass_fields__:
            if name not in data:
                continue
            value = data[name]
            if not isinstance(value, str) or len(value) > MAX_COLLECTED_FIELD_CHARS:
                raise ValidationError(
                    f"collected_data.{name}: expected a string of at most {MAX_COLLECTED_FIELD_CHARS} chars"
                )
            known[name] = value
        for required in ("collect_time", "os_type", "serial_number"):
            if not known.get(required):
                raise ValidationError(f"collected_data.{required} is required")
        return cls(**known)


_COLLECTED_FIELDS = tuple(field.name for field in fields(CollectedData))
