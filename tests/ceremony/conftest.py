"""Shared pieces of the ceremony tests: a frozen clock, deterministic randomness, a pure-Python TPM (the software
stand-in of ``tests/attestation/fakes.py``) with an EK certificate from a test CA, P-256 device keys, and
registered / enrolled devices.

Everything is offline: keys come from ``cryptography``, no swtpm, no network. Test modules import the helpers
from here (``tests.ceremony.conftest``); keys are generated once per session by the fixtures at the bottom.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from tests.attestation import fakes

from devicetrust.attestation import OID_TCG_KP_EK_CERTIFICATE, Attest, build_event_log
from devicetrust.ceremony.ceremonies import (
    PendingCeremony,
    VerifiedProof,
    begin_authentication,
    begin_enrollment,
    finish_authentication,
    finish_enrollment,
)
from devicetrust.ceremony.messages import (
    Challenge,
    ChallengeResponse,
    CollectedData,
    KeyEnrollPayload,
    QuoteResponse,
    TPMEnrollPayload,
)
from devicetrust.types import Device, DeviceCredential, DeviceTrustSettings

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: The frozen clock every ceremony runs at.
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=365)
DEVICE_ID = "5a2b3c4d-1111-2222-3333-444455556666"
OTHER_DEVICE_ID = "9e8d7c6b-aaaa-bbbb-cccc-ddddeeeeffff"
LINUX_SERIAL = "PF3XJ0AB"
MAC_SERIAL = "C02XJ0ABHX87"
CREDENTIAL_ID = "0c5e1e36-5c5a-4b0e-9b1e-6f0f0e0d0c0b"
OTHER_CREDENTIAL_ID = "7d1f0a22-3b4c-4d5e-8f90-a1b2c3d4e5f6"
CEREMONY_ID = "3f1c2a9e-7d44-4c1b-9a7e-2b8d0c6f5e41"
USER = "alice"
SESSION_HASH = hashlib.sha256(b"alice's API session").hexdigest()

#: A measured boot: PCR 6 is never extended (stays zero), PCR 14 is outside the quote (unverifiable).
BOOT_EVENTS: tuple[tuple[int, bytes], ...] = (
    (0, b"CRTM version"),
    (0, b"POST code"),
    (1, b"platform configuration"),
    (2, b"option ROM"),
    (3, b"option ROM configuration"),
    (4, b"boot manager"),
    (4, b"shim"),
    (5, b"GPT"),
    (7, b"secure boot: enabled"),
    (14, b"MokList"),
)
#: The events of BOOT_EVENTS on quoted PCRs (0-7): what a successful replay reports.
QUOTED_EVENT_COUNT = 9
EVENT_LOG, _EXTENDED = build_event_log(BOOT_EVENTS)
#: The SHA-256 PCRs 0-7 a TPM that booted as BOOT_EVENTS reports.
PCR_VALUES: Mapping[int, bytes] = {i: _EXTENDED.get(i, bytes(32)) for i in range(8)}


UNSAFE_KEYS_ALLOWED = DeviceTrustSettings(allow_unsafe_software_keys=True)


def exactly(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern for exactly ``message``."""
    return "^" + re.escape(message) + "$"


class DeterministicRandom:
    """``random_bytes`` for the ceremonies: a SHA-256 counter stream that remembers what it handed out."""

    def __init__(self, seed: bytes = b"ceremony tests") -> None:
        self._seed = seed
        self.issued: list[bytes] = []

    def __call__(self, size: int) -> bytes:
        out = b""
        block = 0
        while len(out) < size:
            out += hashlib.sha256(b"%s|%d|%d" % (self._seed, len(self.issued), block)).digest()
            block += 1
        self.issued.append(out[:size])
        return out[:size]


# -- a test EK CA --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def serial_hex(self) -> str:
        return format(self.cert.serial_number, "x")


def issue(
    subject: str,
    issuer: Issued | None,
    *,
    key: PrivateKey | None = None,
    ca: bool = True,
    not_before: datetime = NOW - YEAR,
    not_after: datetime = NOW + 10 * YEAR,
) -> Issued:
    """A CA certificate, or (``ca=False``) an EK certificate with the TCG EK extended key usage."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]) if subject else x509.Name([])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([OID_TCG_KP_EK_CERTIFICATE]), critical=False)
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def trusting(*cas: Issued) -> DeviceTrustSettings:
    return DeviceTrustSettings(ekcert_allowed_cas=tuple(ca.pem for ca in cas))


def spki(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# -- the fake TPM ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeTPM:
    """A TPM with an endorsement key (and maybe its certificate) and one attestation key, that booted as
    BOOT_EVENTS. ActivateCredential and Quote are the reference implementations of tests/attestation/fakes.py."""

    ek: PrivateKey
    ak: PrivateKey
    ek_cert: Issued | None = None
    event_log: bytes = EVENT_LOG
    pcr_values: Mapping[int, bytes] = field(default_factory=lambda: dict(PCR_VALUES))

    @property
    def ak_public(self) -> bytes:
        """The marshalled TPMT_PUBLIC of the AK, as the device sends it."""
        return fakes.tpm_public(self.ak.public_key()).marshal()

    @property
    def ak_name(self) -> bytes:
        return fakes.tpm_public(self.ak.public_key()).name()

    @property
    def ek_public_der(self) -> bytes:
        return spki(self.ek.public_key())

    @property
    def ek_fingerprint(self) -> str:
        return hashlib.sha256(self.ek_public_der).hexdigest()

    def with_ak(self, ak: PrivateKey) -> FakeTPM:
        return dataclasses.replace(self, ak=ak)

    def payload(self, *, cert: bool = True, ek_key: bool = False, ak_public: bytes | None = None) -> TPMEnrollPayload:
        return TPMEnrollPayload(
            ek_cert_der=self.ek_cert.der if cert and self.ek_cert else None,
            ek_public_der=self.ek_public_der if ek_key or not (cert and self.ek_cert) else None,
            ak_public=self.ak_public if ak_public is None else ak_public,
        )

    def activate(self, challenge: Challenge, *, ak_name: bytes | None = None) -> bytes:
        """TPM2_ActivateCredential with the object named ``ak_name`` (default: our AK) loaded; ValueError when the
        TPM would refuse (the credential was made for another EK or another object)."""
        if isinstance(self.ek, rsa.RSAPrivateKey) or isinstance(self.ek.curve, ec.SECP256R1):
            name_alg, sym_bits = fakes.ALG_SHA256, 128
        else:
            name_alg, sym_bits = fakes.ALG_SHA384, 256
        return fakes.activate_offline(
            self.ek,
            name_alg=name_alg,
            sym_bits=sym_bits,
            ak_name=self.ak_name if ak_name is None else ak_name,
            id_object=challenge.credential_blob,
            encrypted_secret=challenge.encrypted_secret,
        )

    def quote(
        self,
        nonce: bytes,
        *,
        signer: PrivateKey | None = None,
        attest: Attest | None = None,
        pcr_values: Mapping[int, bytes] | None = None,
        event_log: bytes | None = None,
    ) -> QuoteResponse:
        """TPM2_Quote over ``pcr_values`` (default: our PCRs 0-7) signed by the AK (or ``signer``), plus the log."""
        values = dict(self.pcr_values if pcr_values is None else pcr_values)
        raw = (attest or fakes.attest(nonce, values)).marshal()
        return QuoteResponse(
            attest=raw,
            signature=fakes.sign(signer or self.ak, raw),
            pcr_values=values,
            event_log=self.event_log if event_log is None else event_log,
        )

    def enroll_answer(self, challenge: Challenge) -> ChallengeResponse:
        return ChallengeResponse(
            challenge.ceremony_id, activated_secret=self.activate(challenge), quote=self.quote(challenge.nonce)
        )

    def authenticate_answer(self, challenge: Challenge) -> ChallengeResponse:
        return ChallengeResponse(challenge.ceremony_id, quote=self.quote(challenge.nonce))


# -- macOS Secure Enclave / unsafe software keys ---------------------------------------------------------------


@dataclass(frozen=True)
class DeviceKey:
    private: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return spki(self.private.public_key())

    def payload(self, attestation_type: str = "unsafe_software") -> KeyEnrollPayload:
        return KeyEnrollPayload(public_key_der=self.der, attestation_type=attestation_type)

    def sign(self, data: bytes) -> bytes:
        """ECDSA-P256 (ASN.1 DER) over SHA-256(``data``), as the Secure Enclave signs."""
        return self.private.sign(data, ec.ECDSA(hashes.SHA256()))

    def answer(self, challenge: Challenge) -> ChallengeResponse:
        return ChallengeResponse(challenge.ceremony_id, signature=self.sign(challenge.challenge))


# -- devices and ceremonies -------------------------------------------------------------------------------------

SERIALS = {"linux": LINUX_SERIAL, "windows": LINUX_SERIAL, "macos": MAC_SERIAL, "ios": MAC_SERIAL}
MODELS = {"linux": "ThinkPad X1 Carbon Gen 11", "windows": "Surface Laptop 5", "macos": "MacBookPro18,3"}
VERSIONS = {"linux": "6.8.0", "windows": "10.0.22631", "macos": "14.2", "ios": "17.1"}


def registered(os_type: str = "linux", *, device_id: str = DEVICE_ID) -> Device:
    """A registered, not enrolled device."""
    return Device(id=device_id, os_type=os_type, asset_tag=SERIALS[os_type])


def collected(os_type: str = "linux", **changes: str) -> CollectedData:
    """What the device reports about itself, matching ``registered(os_type)`` unless changed."""
    data = CollectedData(
        collect_time=NOW.isoformat(),
        os_type=os_type,
        serial_number=SERIALS[os_type],
        model_identifier=MODELS.get(os_type, ""),
        os_version=VERSIONS.get(os_type, ""),
        os_username="alice",
    )
    return dataclasses.replace(data, **changes)


def enrolled(device: Device, credential: DeviceCredential, data: CollectedData | None = None) -> Device:
    """``device`` as the auth server stores it after a successful enrollment."""
    record = data or collected(device.os_type)
    return dataclasses.replace(
        device, enroll_status="enrolled", credential=credential, owner=USER, collected_data=(record.to_dict(),)
    )


class _CeremonyStart(TypedDict):
    ceremony_id: str
    device: Device
    user: str
    credential_id: str
    collected: CollectedData
    now: datetime
    random_bytes: DeterministicRandom


def _ceremony_start(
    device: Device,
    credential_id: str,
    data: CollectedData | None,
    rng: DeterministicRandom | None,
    now: datetime,
    ceremony_id: str,
) -> _CeremonyStart:
    """What both ceremonies begin with: USER's ``device`` reporting ``data`` (by default ``collected``)."""
    return {
        "ceremony_id": ceremony_id,
        "device": device,
        "user": USER,
        "credential_id": credential_id,
        "collected": data or collected(device.os_type),
        "now": now,
        "random_bytes": rng or DeterministicRandom(),
    }


def begin_enroll(
    device: Device,
    *,
    tpm: TPMEnrollPayload | None = None,
    key: KeyEnrollPayload | None = None,
    settings: DeviceTrustSettings | None = None,
    data: CollectedData | None = None,
    rng: DeterministicRandom | None = None,
    now: datetime = NOW,
    ceremony_id: str = CEREMONY_ID,
    credential_id: str = CREDENTIAL_ID,
) -> tuple[PendingCeremony, Challenge]:
    return begin_enrollment(
        **_ceremony_start(device, credential_id, data, rng, now, ceremony_id),
        tpm=tpm,
        key=key,
        settings=settings or DeviceTrustSettings(),
    )


def begin_auth(
    device: Device,
    *,
    credential_id: str = CREDENTIAL_ID,
    data: CollectedData | None = None,
    rng: DeterministicRandom | None = None,
    now: datetime = NOW,
    ceremony_id: str = CEREMONY_ID,
    session_hash: str = SESSION_HASH,
) -> tuple[PendingCeremony, Challenge]:
    return begin_authentication(
        **_ceremony_start(device, credential_id, data, rng, now, ceremony_id), session_hash=session_hash
    )


def finish_auth(
    pending: PendingCeremony,
    device: Device,
    response: ChallengeResponse,
    *,
    session_hash: str = SESSION_HASH,
    now: datetime = NOW,
) -> VerifiedProof:
    return finish_authentication(pending, device, response, session_hash=session_hash, now=now)


def enroll_with_tpm(tpm: FakeTPM, device: Device, settings: DeviceTrustSettings | None = None) -> Device:
    """A complete, successful TPM enrollment; returns the device as stored afterwards."""
    pending, challenge = begin_enroll(device, tpm=tpm.payload(), settings=settings)
    proof = finish_enrollment(pending, tpm.enroll_answer(challenge), now=NOW)
    return enrolled(device, proof.credential)


def enroll_with_key(key: DeviceKey, device: Device, attestation_type: str) -> Device:
    """A complete, successful key enrollment; returns the device as stored afterwards."""
    pending, challenge = begin_enroll(device, key=key.payload(attestation_type), settings=UNSAFE_KEYS_ALLOWED)
    proof = finish_enrollment(pending, key.answer(challenge), now=NOW)
    return enrolled(device, proof.credential)


def replaced_pcrs(
    values: Mapping[int, bytes], changes: Mapping[int, bytes], drop: Sequence[int] = ()
) -> dict[int, bytes]:
    out = {**values, **changes}
    for index in drop:
        del out[index]
    return out


# -- session fixtures: key generation is the slow part -------------------------------------------------------------


@pytest.fixture(scope="session")
def ek_ca() -> Issued:
    """The TPM vendor's EK CA the cluster trusts."""
    return issue("Test TPM Vendor EK CA", None)


@pytest.fixture(scope="session")
def rogue_ca() -> Issued:
    """A CA with the same name as ``ek_ca`` but its own key: nobody trusts it."""
    return issue("Test TPM Vendor EK CA", None)


@pytest.fixture(scope="session")
def tpm(ek_ca: Issued) -> FakeTPM:
    """A TPM with an RSA-2048 EK certified by ``ek_ca`` and a P-256 AK."""
    ek = rsa.generate_private_key(65537, 2048)
    return FakeTPM(ek=ek, ak=ec.generate_private_key(ec.SECP256R1()), ek_cert=issue("", ek_ca, key=ek, ca=False))


@pytest.fixture(scope="session")
def ecc_tpm() -> FakeTPM:
    """Another TPM: a P-384 EK without a certificate (template H-3) and an RSA-2048 AK."""
    return FakeTPM(ek=ec.generate_private_key(ec.SECP384R1()), ak=rsa.generate_private_key(65537, 2048))


@pytest.fixture(scope="session")
def other_ak() -> ec.EllipticCurvePrivateKey:
    """An attestation key of some other TPM (or a software key posing as one)."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def device_key() -> DeviceKey:
    return DeviceKey(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="session")
def other_key() -> DeviceKey:
    return DeviceKey(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def rng() -> DeterministicRandom:
    return DeterministicRandom()
