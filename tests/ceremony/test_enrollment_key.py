"""Key enrollment (macOS Secure Enclave, unsafe software keys): policy, key checks and the challenge signature."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from tests.ceremony.conftest import (
    CEREMONY_ID,
    CREDENTIAL_ID,
    DEVICE_ID,
    NOW,
    UNSAFE_KEYS_ALLOWED,
    USER,
    DeterministicRandom,
    DeviceKey,
    FakeTPM,
    begin_enroll,
    collected,
    enroll_with_key,
    enroll_with_tpm,
    exactly,
    registered,
    spki,
)

from devicetrust.attestation import MAX_ECDSA_SIGNATURE_DER_BYTES
from devicetrust.ceremony.ceremonies import CEREMONY_TTL, CHALLENGE_BYTES, ENROLL, finish_enrollment
from devicetrust.ceremony.messages import CeremonyError, ChallengeResponse, KeyEnrollPayload
from devicetrust.types import Device, DeviceTrustSettings

MAC = registered("macos")
LINUX = registered("linux")
UNSAFE_REFUSED = "unsafe software device keys are refused by this cluster (device_trust.allow_unsafe_software_keys)"
NOT_P256 = "device public key must be ECDSA P-256"
NOT_DER = "device public key is not a DER SubjectPublicKeyInfo"
BAD_SIGNATURE = "challenge signature is not valid for the device key"
BAD_LENGTH = "challenge signature has a bad length"
DIFFERENT_KEY = "this device is enrolled with a different key; an administrator must unenroll it first"


# -- policy -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", [LINUX, MAC, registered("windows")], ids=lambda d: d.os_type)
def test_unsafe_software_keys_are_refused_by_default(device_key: DeviceKey, device: Device) -> None:
    rng = DeterministicRandom()
    with pytest.raises(CeremonyError, match=exactly(UNSAFE_REFUSED)):
        begin_enroll(device, key=device_key.payload("unsafe_software"), rng=rng)
    with pytest.raises(CeremonyError, match=exactly(UNSAFE_REFUSED)):
        begin_enroll(
            device,
            key=device_key.payload("unsafe_software"),
            settings=DeviceTrustSettings(allow_unsafe_software_keys=False, ekcert_allowed_cas=()),
        )
    assert rng.issued == []


@pytest.mark.parametrize("os_type", ["linux", "macos", "windows"])
def test_unsafe_software_keys_enroll_when_allowed(device_key: DeviceKey, os_type: str) -> None:
    rng = DeterministicRandom()
    data = collected(os_type)
    pending, challenge = begin_enroll(
        registered(os_type), key=device_key.payload("unsafe_software"), settings=UNSAFE_KEYS_ALLOWED, rng=rng, data=data
    )
    (issued,) = rng.issued
    assert len(issued) == CHALLENGE_BYTES == 32
    assert challenge.ceremony_id == CEREMONY_ID
    assert challenge.challenge == pending.challenge == issued
    assert challenge.nonce == pending.nonce == b""
    assert challenge.credential_blob == challenge.encrypted_secret == b""
    assert pending.secret_sha256 == b""
    assert (pending.id, pending.kind, pending.device_id, pending.user) == (CEREMONY_ID, ENROLL, DEVICE_ID, USER)
    assert pending.expires == NOW + CEREMONY_TTL
    assert pending.collected == data.to_dict()
    credential = pending.credential
    assert credential is not None
    assert (credential.id, credential.attestation_type) == (CREDENTIAL_ID, "unsafe_software")
    assert credential.public_key_der == device_key.der
    assert (credential.tpm_ak_public, credential.tpm_ekcert_serial, credential.tpm_ek_public_sha256) == (b"", "", "")

    proof = finish_enrollment(pending, device_key.answer(challenge), now=NOW + timedelta(seconds=59))
    assert proof.credential == credential
    assert proof.event_log == "none"


def test_secure_enclave_enrollment_of_a_mac(device_key: DeviceKey) -> None:
    # Needs no setting: the Secure Enclave is hardware.
    pending, challenge = begin_enroll(MAC, key=device_key.payload("macos_secure_enclave"))
    assert pending.credential is not None
    assert pending.credential.attestation_type == "macos_secure_enclave"
    assert finish_enrollment(pending, device_key.answer(challenge), now=NOW).credential == pending.credential


@pytest.mark.parametrize("os_type", ["linux", "windows", "ios"])
def test_secure_enclave_is_for_macs_only(device_key: DeviceKey, os_type: str) -> None:
    with pytest.raises(CeremonyError, match=exactly("Secure Enclave enrollment is only available for macOS devices")):
        begin_enroll(registered(os_type), key=device_key.payload("macos_secure_enclave"), settings=UNSAFE_KEYS_ALLOWED)


# -- the key ------------------------------------------------------------------------------------------------------


def _key_payload(der: bytes) -> KeyEnrollPayload:
    return KeyEnrollPayload(public_key_der=der, attestation_type="macos_secure_enclave")


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ec.generate_private_key(ec.SECP256K1()).public_key(),
        ec.generate_private_key(ec.SECP521R1()).public_key(),
        rsa.generate_private_key(65537, 2048).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
    ],
    ids=["p384", "secp256k1", "p521", "rsa2048", "ed25519"],
)
def test_keys_other_than_p256_are_refused(key: object) -> None:
    with pytest.raises(CeremonyError, match=exactly(NOT_P256)):
        begin_enroll(MAC, key=_key_payload(spki(key)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "der",
    [b"", b"garbage", b"\x30\x00", bytes(91), b"\x30\x59" + bytes(89)],
    ids=["empty", "text", "empty-sequence", "zeros", "sequence-of-zeros"],
)
def test_garbage_der_is_refused(der: bytes) -> None:
    with pytest.raises(CeremonyError, match=exactly(NOT_DER)):
        begin_enroll(MAC, key=_key_payload(der))


def test_truncated_or_extended_der_is_refused(device_key: DeviceKey) -> None:
    for der in (device_key.der[:-1], device_key.der + b"\x00", device_key.der[1:]):
        with pytest.raises(CeremonyError, match=exactly(NOT_DER)):
            begin_enroll(MAC, key=_key_payload(der))


def test_unknown_key_algorithm_or_curve_is_refused(device_key: DeviceKey) -> None:
    """OIDs cryptography does not know raise UnsupportedAlgorithm, not ValueError: still a clean refusal."""
    der = device_key.der
    ec_public_key = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1
    prime256v1 = bytes.fromhex("2a8648ce3d030107")  # 1.2.840.10045.3.1.7
    unknown_algorithm = der.replace(ec_public_key, ec_public_key[:-1] + b"\x04")
    unknown_curve = der.replace(prime256v1, prime256v1[:-1] + b"\x05")
    assert unknown_algorithm != der and unknown_curve != der
    for mangled in (unknown_algorithm, unknown_curve):
        with pytest.raises(CeremonyError, match=exactly(NOT_P256)):
            begin_enroll(MAC, key=_key_payload(mangled))


# -- the signature ------------------------------------------------------------------------------------------------


def test_signature_by_another_key_is_refused(device_key: DeviceKey, other_key: DeviceKey) -> None:
    pending, challenge = begin_enroll(MAC, key=device_key.payload("macos_secure_enclave"))
    with pytest.raises(CeremonyError, match=exactly(BAD_SIGNATURE)):
        finish_enrollment(pending, other_key.answer(challenge), now=NOW)


def test_signature_over_another_challenge_is_refused(device_key: DeviceKey) -> None:
    pending, challenge = begin_enroll(MAC, key=device_key.payload("macos_secure_enclave"))
    for signed in (
        challenge.challenge[::-1],
        challenge.challenge[:-1],
        challenge.challenge + b"\x00",
        hashlib.sha256(challenge.challenge).digest(),
        bytes(32),
        CEREMONY_ID.encode(),
    ):
        response = ChallengeResponse(CEREMONY_ID, signature=device_key.sign(signed))
        with pytest.raises(CeremonyError, match=exactly(BAD_SIGNATURE)):
            finish_enrollment(pending, response, now=NOW)


def test_signature_from_another_ceremony_is_refused(device_key: DeviceKey) -> None:
    first, first_challenge = begin_enroll(MAC, key=device_key.payload("macos_secure_enclave"))
    second, _ = begin_enroll(MAC, key=device_key.payload("macos_secure_enclave"), rng=DeterministicRandom(b"2nd"))
    assert first.challenge != second.challenge
    with pytest.raises(CeremonyError, match=exactly(BAD_SIGNATURE)):
        finish_enrollment(second, device_key.answer(first_challenge), now=NOW)


def test_malformed_signatures_are_refused(device_key: DeviceKey) -> None:
    pending, challenge = begin_enroll(MAC, key=device_key.payload("macos_secure_enclave"))
    good = device_key.sign(challenge.challenge)
    r, s = decode_dss_signature(good)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # IEEE P1363, not ASN.1 DER
    for signature, message in (
        (b"", BAD_LENGTH),
        (good + bytes(64), BAD_LENGTH),
        (raw, BAD_SIGNATURE),
        (good[:-1], BAD_SIGNATURE),
        # DER signatures are 70-72 bytes: one more byte may cross the 72-byte bound
        (good + b"\x00", BAD_SIGNATURE if len(good) < MAX_ECDSA_SIGNATURE_DER_BYTES else BAD_LENGTH),
    ):
        with pytest.raises(CeremonyError, match=exactly(message)):
            finish_enrollment(pending, ChallengeResponse(CEREMONY_ID, signature=signature), now=NOW)
    assert finish_enrollment(pending, ChallengeResponse(CEREMONY_ID, signature=good), now=NOW)


def test_signature_with_another_hash_is_refused(device_key: DeviceKey) -> None:
    pending, challenge = begin_enroll(MAC, key=device_key.payload("macos_secure_enclave"))
    signature = device_key.private.sign(challenge.challenge, ec.ECDSA(hashes.SHA384()))
    with pytest.raises(CeremonyError, match=exactly(BAD_SIGNATURE)):
        finish_enrollment(pending, ChallengeResponse(CEREMONY_ID, signature=signature), now=NOW)


def test_tpm_proof_instead_of_a_signature_is_refused(device_key: DeviceKey, tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(MAC, key=device_key.payload("macos_secure_enclave"))
    response = ChallengeResponse(CEREMONY_ID, activated_secret=challenge.challenge, quote=tpm.quote(bytes(20)))
    with pytest.raises(CeremonyError, match="challenge signature has a bad length"):
        finish_enrollment(pending, response, now=NOW)


def test_key_enrollment_expires(device_key: DeviceKey) -> None:
    pending, challenge = begin_enroll(MAC, key=device_key.payload("macos_secure_enclave"))
    response = device_key.answer(challenge)
    with pytest.raises(CeremonyError, match=exactly("unknown or expired device ceremony")):
        finish_enrollment(pending, response, now=pending.expires)
    with pytest.raises(CeremonyError, match=exactly("unknown or expired device ceremony")):
        finish_enrollment(pending, dataclasses.replace(response, ceremony_id="another"), now=NOW)
    assert finish_enrollment(pending, response, now=pending.expires - timedelta(microseconds=1))


# -- the device ---------------------------------------------------------------------------------------------------


def test_device_data_must_match(device_key: DeviceKey) -> None:
    for data in (collected("macos", serial_number="C02XJ0ABHX88"), collected("linux")):
        with pytest.raises(CeremonyError, match=exactly("device data does not match the registered device")):
            begin_enroll(MAC, key=device_key.payload("macos_secure_enclave"), data=data)


def test_reenrollment_with_another_key_is_refused(device_key: DeviceKey, other_key: DeviceKey) -> None:
    device = enroll_with_key(device_key, MAC, "macos_secure_enclave")
    with pytest.raises(CeremonyError, match=exactly(DIFFERENT_KEY)):
        begin_enroll(device, key=other_key.payload("macos_secure_enclave"))
    begin_enroll(device.unenrolled(), key=other_key.payload("macos_secure_enclave"))


def test_reenrollment_with_the_same_key_is_allowed(device_key: DeviceKey) -> None:
    device = enroll_with_key(device_key, MAC, "macos_secure_enclave")
    pending, challenge = begin_enroll(device, key=device_key.payload("macos_secure_enclave"))
    assert finish_enrollment(pending, device_key.answer(challenge), now=NOW).credential.public_key_der == (
        device_key.der
    )


def test_key_enrollment_of_a_tpm_enrolled_device_is_refused(device_key: DeviceKey, tpm: FakeTPM) -> None:
    device = enroll_with_tpm(tpm, LINUX)
    with pytest.raises(CeremonyError, match=exactly(DIFFERENT_KEY)):
        begin_enroll(device, key=device_key.payload("unsafe_software"), settings=UNSAFE_KEYS_ALLOWED)
