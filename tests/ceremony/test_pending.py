"""PendingCeremony.to_body / from_body: what ``begin`` stores survives a JSON round trip and still finishes."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest
from tests.ceremony.conftest import (
    CEREMONY_ID,
    NOW,
    UNSAFE_KEYS_ALLOWED,
    DeterministicRandom,
    DeviceKey,
    FakeTPM,
    Issued,
    begin_auth,
    begin_enroll,
    enroll_with_key,
    enroll_with_tpm,
    finish_auth,
    registered,
    trusting,
)

from devicetrust.ceremony.ceremonies import (
    AUTHENTICATE,
    ENROLL,
    PendingCeremony,
    VerifiedProof,
    finish_enrollment,
)
from devicetrust.ceremony.messages import CeremonyError, Challenge, b64e
from devicetrust.types import Device


def _round_trip(pending: PendingCeremony) -> PendingCeremony:
    """Through JSON text, as the storage layer keeps it; id, kind and expiry travel in their own columns."""
    text = json.dumps(pending.to_body())
    body = json.loads(text)
    assert set(body) >= {"device_id", "user", "credential_id", "nonce", "challenge", "secret_sha256", "collected"}
    assert "id" not in body and "kind" not in body and "expires" not in body
    return PendingCeremony.from_body(pending.id, pending.kind, pending.expires, body)


def test_tpm_enrollment_round_trip(tpm: FakeTPM, ek_ca: Issued) -> None:
    rng = DeterministicRandom()
    pending, challenge = begin_enroll(registered("linux"), tpm=tpm.payload(), settings=trusting(ek_ca), rng=rng)
    secret = rng.issued[0]
    assert b64e(secret) not in json.dumps(pending.to_body())
    restored = _round_trip(pending)
    assert restored == pending
    assert restored.kind == ENROLL
    assert restored.credential is not None
    assert restored.credential.attestation_type == "tpm_ekcert_trusted"
    assert restored.credential.tpm_ekcert_serial == pending.credential.tpm_ekcert_serial != ""  # type: ignore[union-attr]
    proof = finish_enrollment(restored, tpm.enroll_answer(challenge), now=NOW)
    assert proof.credential == pending.credential


def test_tpm_ekpub_enrollment_round_trip(ecc_tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(registered("linux"), tpm=ecc_tpm.payload())
    restored = _round_trip(pending)
    assert restored == pending
    assert finish_enrollment(restored, ecc_tpm.enroll_answer(challenge), now=NOW)


@pytest.mark.parametrize(("os_type", "kind"), [("macos", "macos_secure_enclave"), ("linux", "unsafe_software")])
def test_key_enrollment_round_trip(device_key: DeviceKey, os_type: str, kind: str) -> None:
    pending, challenge = begin_enroll(registered(os_type), key=device_key.payload(kind), settings=UNSAFE_KEYS_ALLOWED)
    restored = _round_trip(pending)
    assert restored == pending
    assert restored.credential is not None
    assert restored.credential.public_key_der == device_key.der
    assert finish_enrollment(restored, device_key.answer(challenge), now=NOW).credential.attestation_type == kind


def test_tpm_authentication_round_trip(tpm: FakeTPM) -> None:
    device = enroll_with_tpm(tpm, registered("linux"))
    pending, challenge = begin_auth(device)
    restored = _round_trip(pending)
    assert restored == pending
    assert restored.kind == AUTHENTICATE
    assert restored.credential is None
    assert "credential" not in pending.to_body()
    assert isinstance(finish_auth(restored, device, tpm.authenticate_answer(challenge)), VerifiedProof)


def test_key_authentication_round_trip(device_key: DeviceKey) -> None:
    device = enroll_with_key(device_key, registered("macos"), "macos_secure_enclave")
    pending, challenge = begin_auth(device)
    restored = _round_trip(pending)
    assert restored == pending
    assert restored.session_hash == pending.session_hash != ""
    assert finish_auth(restored, device, device_key.answer(challenge))


def test_from_body_takes_id_kind_and_expiry_from_the_caller(device_key: DeviceKey) -> None:
    device: Device = enroll_with_key(device_key, registered("macos"), "macos_secure_enclave")
    pending, challenge = begin_auth(device)
    body = json.loads(json.dumps(pending.to_body()))
    expired = PendingCeremony.from_body(CEREMONY_ID, AUTHENTICATE, NOW, body)
    with pytest.raises(CeremonyError, match="unknown or expired device ceremony"):
        finish_auth(expired, device, device_key.answer(challenge))
    wrong_kind = PendingCeremony.from_body(CEREMONY_ID, ENROLL, pending.expires, body)
    with pytest.raises(CeremonyError, match="unknown or expired device ceremony"):
        finish_auth(wrong_kind, device, device_key.answer(challenge))
    other_id = PendingCeremony.from_body("other", AUTHENTICATE, pending.expires, body)
    with pytest.raises(CeremonyError, match="unknown or expired device ceremony"):
        finish_auth(other_id, device, device_key.answer(challenge))
    later = PendingCeremony.from_body(CEREMONY_ID, AUTHENTICATE, NOW + timedelta(hours=1), body)
    assert later == dataclasses.replace(pending, expires=NOW + timedelta(hours=1))


def test_challenge_json_round_trip_of_a_real_begin(tpm: FakeTPM) -> None:
    _, challenge = begin_enroll(registered("linux"), tpm=tpm.payload())
    assert Challenge.from_json(json.loads(json.dumps(challenge.to_json()))) == challenge


def test_corrupt_stored_bytes_are_refused(tpm: FakeTPM) -> None:
    pending, _ = begin_enroll(registered("linux"), tpm=tpm.payload())
    body = json.loads(json.dumps(pending.to_body()))
    with pytest.raises(CeremonyError, match="nonce: not valid base64"):
        PendingCeremony.from_body(pending.id, pending.kind, pending.expires, {**body, "nonce": "%%%"})
    with pytest.raises(CeremonyError, match="credential: not valid base64"):
        credential = {**body["credential"], "tpm_ak_public": "%%%"}
        PendingCeremony.from_body(pending.id, pending.kind, pending.expires, {**body, "credential": credential})
