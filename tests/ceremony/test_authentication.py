"""Device authentication: enrolled credential, drift checks, the proof, and the binding of the
ceremony to its API session and to the credential the device holds when it finishes."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from tests.ceremony.conftest import (
    CEREMONY_ID,
    CREDENTIAL_ID,
    DEVICE_ID,
    NOW,
    OTHER_CREDENTIAL_ID,
    OTHER_DEVICE_ID,
    QUOTED_EVENT_COUNT,
    SESSION_HASH,
    USER,
    DeterministicRandom,
    DeviceKey,
    FakeTPM,
    begin_auth,
    begin_enroll,
    collected,
    enroll_with_key,
    enroll_with_tpm,
    enrolled,
    exactly,
    finish_auth,
    registered,
)

from devicetrust.ceremony.ceremonies import (
    AUTHENTICATE,
    CEREMONY_TTL,
    CHALLENGE_BYTES,
    NONCE_BYTES,
    check_drift,
    finish_authentication,
    finish_enrollment,
)
from devicetrust.ceremony.messages import CeremonyError, ChallengeResponse
from devicetrust.types import Device

EXPIRED = "unknown or expired device ceremony"
NOT_ENROLLED = "device is not enrolled"
MODEL_CHANGED = "device data does not match the enrolled device (model changed)"
DOWNGRADE = "device data does not match the enrolled device (OS version went backwards)"
NOT_REGISTERED_DATA = "device data does not match the registered device"


@pytest.fixture(scope="module")
def tpm_device(tpm: FakeTPM) -> Device:
    """A Linux laptop enrolled with ``tpm`` (running kernel 6.8.0)."""
    return enroll_with_tpm(tpm, registered("linux"))


@pytest.fixture(scope="module")
def mac(device_key: DeviceKey) -> Device:
    """A Mac enrolled with its Secure Enclave key (macOS 14.2, MacBookPro18,3)."""
    return enroll_with_key(device_key, registered("macos"), "macos_secure_enclave")


# -- happy paths ----------------------------------------------------------------------------------------------


def test_tpm_authentication(tpm: FakeTPM, tpm_device: Device) -> None:
    rng = DeterministicRandom()
    data = collected("linux", os_version="6.9.1")
    pending, challenge = begin_auth(tpm_device, rng=rng, data=data)
    (nonce,) = rng.issued
    assert len(nonce) == NONCE_BYTES
    assert challenge.ceremony_id == CEREMONY_ID
    assert challenge.nonce == pending.nonce == nonce
    assert challenge.challenge == pending.challenge == b""
    assert challenge.credential_blob == challenge.encrypted_secret == b""
    assert (pending.id, pending.kind, pending.device_id, pending.user) == (CEREMONY_ID, AUTHENTICATE, DEVICE_ID, USER)
    assert pending.session_hash == SESSION_HASH
    assert pending.credential_id == CREDENTIAL_ID
    assert pending.credential is None
    assert pending.secret_sha256 == b""
    assert pending.collected == data.to_dict()
    assert pending.expires == NOW + CEREMONY_TTL

    proof = finish_auth(pending, tpm_device, tpm.authenticate_answer(challenge), now=NOW + timedelta(seconds=59))
    assert proof.credential == tpm_device.credential
    assert proof.event_log == f"replayed ({QUOTED_EVENT_COUNT} events, data verified for {QUOTED_EVENT_COUNT})"


def test_tpm_authentication_with_an_empty_event_log(tpm: FakeTPM, tpm_device: Device) -> None:
    pending, challenge = begin_auth(tpm_device)
    response = ChallengeResponse(CEREMONY_ID, quote=tpm.quote(challenge.nonce, event_log=b""))
    assert finish_auth(pending, tpm_device, response).event_log == "none"


def test_key_authentication(device_key: DeviceKey, mac: Device) -> None:
    rng = DeterministicRandom()
    pending, challenge = begin_auth(mac, rng=rng)
    (issued,) = rng.issued
    assert len(issued) == CHALLENGE_BYTES
    assert challenge.challenge == pending.challenge == issued
    assert challenge.nonce == pending.nonce == b""
    assert pending.kind == AUTHENTICATE
    proof = finish_auth(pending, mac, device_key.answer(challenge))
    assert proof.credential == mac.credential
    assert proof.event_log == "none"


def test_every_authentication_gets_a_fresh_challenge(mac: Device) -> None:
    rng = DeterministicRandom()
    first, _ = begin_auth(mac, rng=rng)
    second, _ = begin_auth(mac, rng=rng)
    assert first.challenge != second.challenge
    assert rng.issued == [first.challenge, second.challenge]


# -- begin: the device must be enrolled with this credential ------------------------------------------------------


@pytest.mark.parametrize("os_type", ["linux", "macos"])
def test_device_that_is_not_enrolled_is_refused(os_type: str) -> None:
    rng = DeterministicRandom()
    with pytest.raises(CeremonyError, match=exactly(NOT_ENROLLED)):
        begin_auth(registered(os_type), rng=rng)
    assert rng.issued == []


def test_unenrolled_device_is_refused(mac: Device) -> None:
    with pytest.raises(CeremonyError, match=exactly(NOT_ENROLLED)):
        begin_auth(mac.unenrolled())


@pytest.mark.parametrize(
    "credential_id",
    [OTHER_CREDENTIAL_ID, CREDENTIAL_ID.upper(), CREDENTIAL_ID[:-1], CREDENTIAL_ID + "0", "é" + CREDENTIAL_ID[1:]],
    ids=["other", "upper-case", "prefix", "longer", "non-ascii"],
)
def test_credential_id_mismatch_is_refused(mac: Device, credential_id: str) -> None:
    with pytest.raises(CeremonyError, match=exactly("device credential does not match the enrolled credential")):
        begin_auth(mac, credential_id=credential_id)


# -- begin: drift -------------------------------------------------------------------------------------------------


def test_model_change_is_refused(mac: Device) -> None:
    for model in ("MacBookAir10,1", "", "macbookpro18,3"):
        with pytest.raises(CeremonyError, match=exactly(MODEL_CHANGED)):
            begin_auth(mac, data=collected("macos", model_identifier=model))


@pytest.mark.parametrize("version", ["13.6", "14.1", "14.1.9", "14", "9.9.9", "13.99"])
def test_os_version_going_backwards_is_refused(mac: Device, version: str) -> None:
    with pytest.raises(CeremonyError, match=exactly(DOWNGRADE)):
        begin_auth(mac, data=collected("macos", os_version=version))


@pytest.mark.parametrize("version", ["14.2", "14.2.1", "14.3", "14.10", "15.0", "26"])
def test_os_version_going_forward_is_fine(device_key: DeviceKey, mac: Device, version: str) -> None:
    pending, challenge = begin_auth(mac, data=collected("macos", os_version=version))
    assert pending.collected["os_version"] == version
    assert finish_auth(pending, mac, device_key.answer(challenge))


def test_versions_compare_numerically(mac: Device) -> None:
    """14.10 is newer than 14.9 (a string comparison would say otherwise)."""
    device = dataclasses.replace(mac, collected_data=(dict(mac.collected_data[0], os_version="14.9"),))
    begin_auth(device, data=collected("macos", os_version="14.10"))
    with pytest.raises(CeremonyError, match=exactly(DOWNGRADE)):
        begin_auth(device, data=collected("macos", os_version="14.8.99"))


@pytest.mark.parametrize(
    "changes",
    [{"os_type": "linux"}, {"os_type": "ios"}, {"serial_number": "C02XJ0ABHX88"}, {"serial_number": ""}],
    ids=["linux", "ios", "other-serial", "no-serial"],
)
def test_os_type_or_serial_mismatch_is_refused(mac: Device, changes: dict[str, str]) -> None:
    with pytest.raises(CeremonyError, match=exactly(NOT_REGISTERED_DATA)):
        begin_auth(mac, data=dataclasses.replace(collected("macos"), **changes))


def test_no_enrollment_record_skips_the_drift_checks(device_key: DeviceKey, mac: Device) -> None:
    device = dataclasses.replace(mac, collected_data=())
    begin_auth(device, data=collected("macos", model_identifier="MacBookAir10,1", os_version="10.15"))
    # ...but the registered identity is still checked.
    with pytest.raises(CeremonyError, match=exactly(NOT_REGISTERED_DATA)):
        begin_auth(device, data=collected("macos", serial_number="C02XJ0ABHX88"))


def test_unreported_model_or_version_at_enrollment_is_not_checked(mac: Device) -> None:
    record = dict(mac.collected_data[0], model_identifier="", os_version="")
    device = dataclasses.replace(mac, collected_data=(record,))
    begin_auth(device, data=collected("macos", model_identifier="MacBookAir10,1", os_version="10.15"))


def test_drift_is_checked_against_the_enrollment_record_not_the_latest(mac: Device) -> None:
    latest = dict(mac.collected_data[0], os_version="15.1")
    device = dataclasses.replace(mac, collected_data=(*mac.collected_data, latest))
    begin_auth(device, data=collected("macos", os_version="14.5"))


def test_check_drift_directly(mac: Device) -> None:
    check_drift(mac, collected("macos"))
    with pytest.raises(CeremonyError, match=exactly(DOWNGRADE)):
        check_drift(mac, collected("macos", os_version="14.1"))


# -- finish -------------------------------------------------------------------------------------------------------


def test_finish_with_another_session_is_refused(device_key: DeviceKey, mac: Device) -> None:
    pending, challenge = begin_auth(mac)
    response = device_key.answer(challenge)
    for session_hash in ("0" * 64, SESSION_HASH.upper(), SESSION_HASH[:-1], "", "é"):
        with pytest.raises(CeremonyError, match=exactly(EXPIRED)):
            finish_auth(pending, mac, response, session_hash=session_hash)
    assert finish_auth(pending, mac, response, session_hash=SESSION_HASH)


def test_finish_after_expiry_is_refused(device_key: DeviceKey, mac: Device) -> None:
    pending, challenge = begin_auth(mac)
    response = device_key.answer(challenge)
    for now in (pending.expires, pending.expires + timedelta(seconds=1)):
        with pytest.raises(CeremonyError, match=exactly(EXPIRED)):
            finish_auth(pending, mac, response, now=now)
    assert finish_auth(pending, mac, response, now=pending.expires - timedelta(microseconds=1))


def test_finish_with_another_ceremony_id_is_refused(device_key: DeviceKey, mac: Device) -> None:
    pending, challenge = begin_auth(mac)
    response = device_key.answer(challenge)
    for ceremony_id in ("another", CEREMONY_ID.upper(), CEREMONY_ID + "é"):
        with pytest.raises(CeremonyError, match=exactly(EXPIRED)):
            finish_auth(pending, mac, dataclasses.replace(response, ceremony_id=ceremony_id))


def test_enrollment_pending_cannot_finish_an_authentication(device_key: DeviceKey, mac: Device) -> None:
    pending, challenge = begin_enroll(registered("macos"), key=device_key.payload("macos_secure_enclave"))
    with pytest.raises(CeremonyError, match=exactly(EXPIRED)):
        finish_auth(pending, mac, device_key.answer(challenge))
    relabelled = dataclasses.replace(pending, session_hash=SESSION_HASH)
    with pytest.raises(CeremonyError, match=exactly(EXPIRED)):
        finish_auth(relabelled, mac, device_key.answer(challenge))


def test_unenrolled_between_begin_and_finish_is_refused(device_key: DeviceKey, mac: Device) -> None:
    pending, challenge = begin_auth(mac)
    with pytest.raises(CeremonyError, match=exactly(NOT_ENROLLED)):
        finish_auth(pending, mac.unenrolled(), device_key.answer(challenge))


def test_reenrolled_between_begin_and_finish_is_refused(
    device_key: DeviceKey, other_key: DeviceKey, mac: Device
) -> None:
    pending, challenge = begin_auth(mac)
    # An administrator unenrolled the device and it enrolled again, with a new credential id.
    enroll_pending, enroll_challenge = begin_enroll(
        mac.unenrolled(),
        key=other_key.payload("macos_secure_enclave"),
        credential_id=OTHER_CREDENTIAL_ID,
        rng=DeterministicRandom(b"re-enrollment"),
    )
    proof = finish_enrollment(enroll_pending, other_key.answer(enroll_challenge), now=NOW)
    reenrolled = enrolled(mac.unenrolled(), proof.credential)
    # Neither the old key's answer nor the new key's answer finishes the old ceremony.
    for response in (device_key.answer(challenge), other_key.answer(challenge)):
        with pytest.raises(CeremonyError, match=exactly(NOT_ENROLLED)):
            finish_auth(pending, reenrolled, response)


def test_reenrolled_with_the_same_credential_id_but_another_key(
    device_key: DeviceKey, other_key: DeviceKey, mac: Device
) -> None:
    """The proof is checked against the credential the device holds at finish time, not at begin time."""
    pending, challenge = begin_auth(mac)
    assert mac.credential is not None
    swapped = dataclasses.replace(mac, credential=dataclasses.replace(mac.credential, public_key_der=other_key.der))
    with pytest.raises(CeremonyError, match=exactly("challenge signature is not valid for the device key")):
        finish_auth(pending, swapped, device_key.answer(challenge))


def test_finish_against_another_device_is_refused(device_key: DeviceKey, mac: Device) -> None:
    """Credential ids are chosen by devices: another device holding the same id must not satisfy the ceremony."""
    pending, challenge = begin_auth(mac)
    other = dataclasses.replace(mac, id=OTHER_DEVICE_ID)
    with pytest.raises(CeremonyError, match=exactly(EXPIRED)):
        finish_auth(pending, other, device_key.answer(challenge))


def test_key_signature_by_another_key_is_refused(other_key: DeviceKey, mac: Device) -> None:
    pending, challenge = begin_auth(mac)
    with pytest.raises(CeremonyError, match=exactly("challenge signature is not valid for the device key")):
        finish_auth(pending, mac, other_key.answer(challenge))


def test_key_signature_over_another_challenge_is_refused(device_key: DeviceKey, mac: Device) -> None:
    first, first_challenge = begin_auth(mac)
    second, _ = begin_auth(mac, rng=DeterministicRandom(b"second"))
    with pytest.raises(CeremonyError, match=exactly("challenge signature is not valid for the device key")):
        finish_auth(second, mac, device_key.answer(first_challenge))
    assert finish_auth(first, mac, device_key.answer(first_challenge))


def test_tpm_quote_over_another_nonce_is_refused(tpm: FakeTPM, tpm_device: Device) -> None:
    pending, _ = begin_auth(tpm_device)
    response = ChallengeResponse(CEREMONY_ID, quote=tpm.quote(bytes(NONCE_BYTES)))
    with pytest.raises(CeremonyError, match=exactly("quote nonce does not match the challenge")):
        finish_auth(pending, tpm_device, response)


def test_tpm_quote_by_another_ak_is_refused(
    tpm: FakeTPM, tpm_device: Device, other_ak: ec.EllipticCurvePrivateKey
) -> None:
    pending, challenge = begin_auth(tpm_device)
    response = ChallengeResponse(CEREMONY_ID, quote=tpm.quote(challenge.nonce, signer=other_ak))
    with pytest.raises(CeremonyError, match=exactly("quote signature is not valid for the attestation key")):
        finish_auth(pending, tpm_device, response)


def test_tpm_device_without_a_quote_is_refused(tpm: FakeTPM, tpm_device: Device, device_key: DeviceKey) -> None:
    pending, challenge = begin_auth(tpm_device)
    response = ChallengeResponse(CEREMONY_ID, signature=device_key.sign(challenge.nonce))
    with pytest.raises(CeremonyError, match=exactly("a TPM quote is required")):
        finish_auth(pending, tpm_device, response)


def test_tpm_reenrolled_with_another_ak_under_the_same_id_is_refused(
    tpm: FakeTPM, tpm_device: Device, other_ak: ec.EllipticCurvePrivateKey
) -> None:
    pending, challenge = begin_auth(tpm_device)
    assert tpm_device.credential is not None
    swapped = dataclasses.replace(
        tpm_device,
        credential=dataclasses.replace(tpm_device.credential, tpm_ak_public=tpm.with_ak(other_ak).ak_public),
    )
    with pytest.raises(CeremonyError, match=exactly("quote signature is not valid for the attestation key")):
        finish_auth(pending, swapped, tpm.authenticate_answer(challenge))


def test_finish_authentication_is_pure(device_key: DeviceKey, mac: Device) -> None:
    """Single use is the storage's job (the pending record is consumed once); the step itself has no state, so a
    replayed answer to a pending record the caller failed to consume would verify again — within its lifetime."""
    pending, challenge = begin_auth(mac)
    response = device_key.answer(challenge)
    assert finish_authentication(pending, mac, response, session_hash=SESSION_HASH, now=NOW)
    assert finish_authentication(pending, mac, response, session_hash=SESSION_HASH, now=NOW)
    with pytest.raises(CeremonyError, match=exactly(EXPIRED)):
        finish_authentication(pending, mac, response, session_hash=SESSION_HASH, now=pending.expires)
