"""TPM enrollment: EK classification, AK policy, MakeCredential/ActivateCredential, quote and event-log
verification, and the ceremony's lifetime and binding."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tests.attestation import fakes
from tests.attestation.real_eventlogs import OPTION_ROM, SHA256, UBUNTU_VM
from tests.ceremony.conftest import (
    BOOT_EVENTS,
    CEREMONY_ID,
    CREDENTIAL_ID,
    DEVICE_ID,
    NOW,
    QUOTED_EVENT_COUNT,
    USER,
    DeterministicRandom,
    DeviceKey,
    FakeTPM,
    Issued,
    PrivateKey,
    begin_auth,
    begin_enroll,
    collected,
    enroll_with_key,
    enroll_with_tpm,
    exactly,
    issue,
    registered,
    replaced_pcrs,
    trusting,
)

from devicetrust.attestation import (
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    Attest,
    ObjectAttributes,
    PCRSelection,
    build_event_log,
)
from devicetrust.ceremony.ceremonies import (
    AUTHENTICATE,
    CEREMONY_TTL,
    CREDENTIAL_SECRET_BYTES,
    ENROLL,
    NONCE_BYTES,
    PendingCeremony,
    finish_enrollment,
)
from devicetrust.ceremony.messages import CeremonyError, Challenge, ChallengeResponse, b64e
from devicetrust.types import DeviceTrustSettings

LINUX = registered("linux")
EK_CERT_REQUIRED = "an EK certificate is required by the cluster's device trust settings"
EXACTLY_ONE = "enrollment needs exactly one of a TPM attestation or a device key"

# -- happy paths ---------------------------------------------------------------------------------------------


def test_ekcert_trusted_enrollment(tpm: FakeTPM, ek_ca: Issued) -> None:
    rng = DeterministicRandom()
    data = collected("linux")
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload(), settings=trusting(ek_ca), data=data, rng=rng)

    secret, nonce = rng.issued
    assert (len(secret), len(nonce)) == (CREDENTIAL_SECRET_BYTES, NONCE_BYTES) == (32, 20)
    assert challenge.ceremony_id == CEREMONY_ID
    assert challenge.nonce == pending.nonce == nonce
    assert challenge.challenge == pending.challenge == b""
    assert challenge.credential_blob and challenge.encrypted_secret
    # The pending record keeps only a digest of the credential secret.
    assert pending.secret_sha256 == hashlib.sha256(secret).digest()
    assert b64e(secret) not in json.dumps(pending.to_body())
    assert (pending.id, pending.kind, pending.device_id, pending.user) == (CEREMONY_ID, ENROLL, DEVICE_ID, USER)
    assert pending.expires == NOW + CEREMONY_TTL == NOW + timedelta(seconds=60)
    assert pending.credential_id == CREDENTIAL_ID
    assert pending.collected == data.to_dict()
    assert pending.session_hash == ""

    credential = pending.credential
    assert credential is not None
    assert credential.id == CREDENTIAL_ID
    assert credential.attestation_type == "tpm_ekcert_trusted"
    assert credential.tpm_ak_public == tpm.ak_public
    assert credential.public_key_der == b""
    assert tpm.ek_cert is not None
    assert credential.tpm_ekcert_serial == tpm.ek_cert.serial_hex
    assert credential.tpm_ek_public_sha256 == tpm.ek_fingerprint

    # Only this TPM, with this AK loaded, recovers the secret.
    assert tpm.activate(challenge) == secret
    proof = finish_enrollment(pending, tpm.enroll_answer(challenge), now=NOW + timedelta(seconds=59))
    assert proof.credential == credential
    assert proof.event_log == f"replayed ({QUOTED_EVENT_COUNT} events, data verified for {QUOTED_EVENT_COUNT})"


def test_ekcert_with_matching_ek_key_is_trusted(tpm: FakeTPM, ek_ca: Issued) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload(ek_key=True), settings=trusting(ek_ca))
    assert pending.credential is not None
    assert pending.credential.attestation_type == "tpm_ekcert_trusted"
    assert finish_enrollment(pending, tpm.enroll_answer(challenge), now=NOW).credential == pending.credential


def test_ekcert_without_configured_cas(tpm: FakeTPM) -> None:
    assert tpm.ek_cert is not None
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload(), settings=DeviceTrustSettings())
    credential = pending.credential
    assert credential is not None
    assert credential.attestation_type == "tpm_ekcert"
    assert credential.tpm_ekcert_serial == tpm.ek_cert.serial_hex
    assert credential.tpm_ek_public_sha256 == tpm.ek_fingerprint
    assert finish_enrollment(pending, tpm.enroll_answer(challenge), now=NOW).credential == credential


def test_bare_ek_public_key(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload(cert=False))
    credential = pending.credential
    assert credential is not None
    assert credential.attestation_type == "tpm_ekpub"
    assert credential.tpm_ekcert_serial == ""
    # The same EK has the same fingerprint whether it came as a certificate or as a bare key.
    assert credential.tpm_ek_public_sha256 == tpm.ek_fingerprint
    assert finish_enrollment(pending, tpm.enroll_answer(challenge), now=NOW).credential == credential


def test_p384_ek_and_rsa_ak(ecc_tpm: FakeTPM) -> None:
    device = registered("windows")
    pending, challenge = begin_enroll(device, tpm=ecc_tpm.payload())
    assert pending.credential is not None
    assert pending.credential.attestation_type == "tpm_ekpub"
    proof = finish_enrollment(pending, ecc_tpm.enroll_answer(challenge), now=NOW)
    assert proof.credential.tpm_ak_public == ecc_tpm.ak_public
    assert proof.event_log == f"replayed ({QUOTED_EVENT_COUNT} events, data verified for {QUOTED_EVENT_COUNT})"


def test_empty_event_log_is_accepted_and_recorded_as_none(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    response = ChallengeResponse(
        CEREMONY_ID, activated_secret=tpm.activate(challenge), quote=tpm.quote(challenge.nonce, event_log=b"")
    )
    assert finish_enrollment(pending, response, now=NOW).event_log == "none"


# -- EK refusals ----------------------------------------------------------------------------------------------


def test_ek_cert_from_an_untrusted_ca_is_refused(tpm: FakeTPM, ek_ca: Issued, rogue_ca: Issued) -> None:
    forged = dataclasses.replace(tpm, ek_cert=issue("", rogue_ca, key=tpm.ek, ca=False))
    with pytest.raises(CeremonyError, match=exactly("EK certificate is not issued by an allowed CA")):
        begin_enroll(LINUX, tpm=forged.payload(), settings=trusting(ek_ca))
    # ...while the genuine certificate of the same EK is accepted with the same settings.
    begin_enroll(LINUX, tpm=tpm.payload(), settings=trusting(ek_ca))


def test_ek_cert_trusted_by_another_ca_only_is_refused(tpm: FakeTPM, rogue_ca: Issued) -> None:
    with pytest.raises(CeremonyError, match="not issued by an allowed CA"):
        begin_enroll(LINUX, tpm=tpm.payload(), settings=trusting(rogue_ca))


def test_expired_ek_cert_is_refused(tpm: FakeTPM, ek_ca: Issued) -> None:
    old = issue("", ek_ca, key=tpm.ek, ca=False, not_before=NOW - 3 * timedelta(days=365), not_after=NOW)
    expired = dataclasses.replace(tpm, ek_cert=old)
    begin_enroll(LINUX, tpm=expired.payload(), settings=trusting(ek_ca), now=NOW)  # the last valid instant
    with pytest.raises(CeremonyError, match="expired or not yet valid"):
        begin_enroll(LINUX, tpm=expired.payload(), settings=trusting(ek_ca), now=NOW + timedelta(seconds=1))


def test_bare_ek_key_is_refused_when_cas_are_configured(tpm: FakeTPM, ek_ca: Issued) -> None:
    with pytest.raises(CeremonyError, match=exactly(EK_CERT_REQUIRED)):
        begin_enroll(LINUX, tpm=tpm.payload(cert=False), settings=trusting(ek_ca))


def test_ek_key_that_does_not_match_the_cert_is_refused(tpm: FakeTPM, ecc_tpm: FakeTPM, ek_ca: Issued) -> None:
    assert tpm.ek_cert is not None
    payload = dataclasses.replace(tpm.payload(), ek_public_der=ecc_tpm.ek_public_der)
    for settings in (trusting(ek_ca), DeviceTrustSettings()):
        with pytest.raises(CeremonyError, match="endorsement key does not match its EK certificate"):
            begin_enroll(LINUX, tpm=payload, settings=settings)


def test_no_ek_at_all_is_refused(tpm: FakeTPM) -> None:
    payload = dataclasses.replace(tpm.payload(), ek_cert_der=None, ek_public_der=None)
    with pytest.raises(CeremonyError, match="neither an EK certificate nor an EK public key"):
        begin_enroll(LINUX, tpm=payload)


def test_garbage_ek_material_is_refused(tpm: FakeTPM) -> None:
    with pytest.raises(CeremonyError, match="EK certificate is not DER"):
        begin_enroll(LINUX, tpm=dataclasses.replace(tpm.payload(), ek_cert_der=b"\x04garbage"))
    with pytest.raises(CeremonyError, match="EK public key is not a DER SubjectPublicKeyInfo"):
        begin_enroll(LINUX, tpm=dataclasses.replace(tpm.payload(cert=False), ek_public_der=b"\x30\x03\x02\x01\x01"))


MALFORMED = "the device's attestation data is malformed or unsupported"


def test_ek_cert_that_cryptography_cannot_fully_parse_is_refused(tpm: FakeTPM, ek_ca: Issued) -> None:
    """cryptography parses some fields lazily and raises more than ValueError: still one clean refusal."""
    assert tpm.ek_cert is not None
    der = tpm.ek_cert.der
    version_v3 = b"\xa0\x03\x02\x01\x02"
    issuer_cn = b"\x0c\x15Test TPM Vendor EK CA"  # UTF8String
    assert version_v3 in der and issuer_cn in der
    unknown_version = der.replace(version_v3, version_v3[:-1] + b"\x03")  # x509.InvalidVersion
    bad_issuer_tag = der.replace(issuer_cn, b"\x0d" + issuer_cn[1:])  # ValueError when the issuer is read
    for cert in (unknown_version, bad_issuer_tag):
        payload = dataclasses.replace(tpm.payload(), ek_cert_der=cert)
        for settings in (trusting(ek_ca), DeviceTrustSettings()):
            with pytest.raises(CeremonyError, match=exactly(MALFORMED)):
                begin_enroll(LINUX, tpm=payload, settings=settings)


def test_ek_key_of_an_unknown_algorithm_is_refused(ecc_tpm: FakeTPM) -> None:
    ec_public_key = bytes.fromhex("2a8648ce3d0201")
    secp384r1 = bytes.fromhex("2b81040022")
    der = ecc_tpm.ek_public_der
    assert ec_public_key in der and secp384r1 in der
    for mangled in (der.replace(ec_public_key, ec_public_key[:-1] + b"\x04"), der.replace(secp384r1, bytes(5))):
        payload = dataclasses.replace(ecc_tpm.payload(), ek_public_der=mangled)
        with pytest.raises(CeremonyError, match=exactly(MALFORMED)):
            begin_enroll(LINUX, tpm=payload)


# -- AK refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        (fakes.AK_ATTRIBUTES & ~ObjectAttributes.RESTRICTED, "missing attribute(s) restricted"),
        (fakes.AK_ATTRIBUTES & ~ObjectAttributes.FIXED_TPM, "missing attribute(s) fixed_tpm"),
        (fakes.AK_ATTRIBUTES & ~ObjectAttributes.FIXED_PARENT, "missing attribute(s) fixed_parent"),
        (fakes.AK_ATTRIBUTES & ~ObjectAttributes.SIGN_ENCRYPT, "missing attribute(s) sign_encrypt"),
        (fakes.AK_ATTRIBUTES & ~ObjectAttributes.SENSITIVE_DATA_ORIGIN, "missing attribute(s) sensitive_data_origin"),
        (fakes.AK_ATTRIBUTES | ObjectAttributes.DECRYPT, "it can decrypt (must be sign-only)"),
    ],
    ids=["not-restricted", "not-fixed-tpm", "not-fixed-parent", "not-signing", "imported", "decrypt"],
)
def test_unacceptable_ak_is_refused(tpm: FakeTPM, ek_ca: Issued, attributes: int, message: str) -> None:
    ak_public = fakes.tpm_public(tpm.ak.public_key(), attributes=attributes).marshal()
    with pytest.raises(CeremonyError, match="attestation key is not acceptable: ") as info:
        begin_enroll(LINUX, tpm=tpm.payload(ak_public=ak_public), settings=trusting(ek_ca))
    assert message in str(info.value)


def test_p384_ak_is_refused(tpm: FakeTPM) -> None:
    ak_public = fakes.tpm_public(ec.generate_private_key(ec.SECP384R1()).public_key()).marshal()
    with pytest.raises(CeremonyError, match="ECC keys must use curve P-256"):
        begin_enroll(LINUX, tpm=tpm.payload(ak_public=ak_public))


def test_malformed_ak_public_is_refused(tpm: FakeTPM) -> None:
    with pytest.raises(CeremonyError, match="malformed TPM public area"):
        begin_enroll(LINUX, tpm=tpm.payload(ak_public=tpm.ak_public[:-1]))
    with pytest.raises(CeremonyError, match="malformed TPM public area"):
        begin_enroll(LINUX, tpm=tpm.payload(ak_public=tpm.ak_public + b"\x00"))


# -- the credential: only the TPM that holds the EK and the AK can activate it ------------------------------------


def test_credential_is_bound_to_the_claimed_ak(tpm: FakeTPM, other_ak: ec.EllipticCurvePrivateKey) -> None:
    """A device claiming an AK its TPM does not hold (say a software key posing as one) gets a credential its TPM
    cannot activate: ActivateCredential checks the name of the object it is asked to activate for."""
    claimed = tpm.with_ak(other_ak)
    rng = DeterministicRandom()
    _, challenge = begin_enroll(LINUX, tpm=claimed.payload(), rng=rng)
    secret = rng.issued[0]
    assert tpm.activate(challenge, ak_name=claimed.ak_name) == secret
    with pytest.raises(ValueError, match="integrity"):
        tpm.activate(challenge)  # the TPM's real AK


def test_secret_of_a_credential_made_for_another_ak_is_refused(
    tpm: FakeTPM, other_ak: ec.EllipticCurvePrivateKey
) -> None:
    """The device answers with the secret of another ceremony's credential (made for another AK of the same TPM)."""
    other = tpm.with_ak(other_ak)
    _, other_challenge = begin_enroll(LINUX, tpm=other.payload(), rng=DeterministicRandom(b"other ceremony"))
    other_secret = other.activate(other_challenge)
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    response = ChallengeResponse(CEREMONY_ID, activated_secret=other_secret, quote=tpm.quote(challenge.nonce))
    with pytest.raises(CeremonyError, match=exactly("the TPM did not activate the enrollment credential")):
        finish_enrollment(pending, response, now=NOW)


@pytest.mark.parametrize(
    "secret",
    [b"", bytes(32), b"\x01" * 32, b"\x00" * 31],
    ids=["empty", "zeros", "ones", "short"],
)
def test_wrong_activated_secret_is_refused(tpm: FakeTPM, secret: bytes) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    response = ChallengeResponse(CEREMONY_ID, activated_secret=secret, quote=tpm.quote(challenge.nonce))
    with pytest.raises(CeremonyError, match=exactly("the TPM did not activate the enrollment credential")):
        finish_enrollment(pending, response, now=NOW)


def test_activated_secret_with_a_byte_changed_is_refused(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    good = tpm.enroll_answer(challenge)
    for index in (0, 31):
        secret = bytearray(good.activated_secret)
        secret[index] ^= 0x01
        with pytest.raises(CeremonyError, match="did not activate"):
            finish_enrollment(pending, dataclasses.replace(good, activated_secret=bytes(secret)), now=NOW)
    assert finish_enrollment(pending, good, now=NOW)


# -- the quote ----------------------------------------------------------------------------------------------------


def _answer(
    tpm: FakeTPM,
    challenge: Challenge,
    *,
    nonce: bytes | None = None,
    signer: PrivateKey | None = None,
    attest: Attest | None = None,
    pcr_values: Mapping[int, bytes] | None = None,
    event_log: bytes | None = None,
) -> ChallengeResponse:
    """The TPM's answer, with its quote built from the given parts."""
    quote = tpm.quote(
        challenge.nonce if nonce is None else nonce,
        signer=signer,
        attest=attest,
        pcr_values=pcr_values,
        event_log=event_log,
    )
    return ChallengeResponse(challenge.ceremony_id, activated_secret=tpm.activate(challenge), quote=quote)


def _with_quote(response: ChallengeResponse, **changes: Any) -> ChallengeResponse:
    assert response.quote is not None
    return dataclasses.replace(response, quote=dataclasses.replace(response.quote, **changes))


def _refused(tpm: FakeTPM, message: str, **parts: Any) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    with pytest.raises(CeremonyError, match=message):
        finish_enrollment(pending, _answer(tpm, challenge, **parts), now=NOW)


def test_quote_over_another_nonce_is_refused(tpm: FakeTPM) -> None:
    _refused(tpm, "^quote nonce does not match the challenge$", nonce=b"\x07" * NONCE_BYTES)


def test_quote_over_a_truncated_nonce_is_refused(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    response = ChallengeResponse(
        CEREMONY_ID, activated_secret=tpm.activate(challenge), quote=tpm.quote(challenge.nonce[:-1])
    )
    with pytest.raises(CeremonyError, match=exactly("quote nonce does not match the challenge")):
        finish_enrollment(pending, response, now=NOW)


def test_quote_signed_by_another_ak_is_refused(tpm: FakeTPM, other_ak: ec.EllipticCurvePrivateKey) -> None:
    _refused(tpm, "^quote signature is not valid for the attestation key$", signer=other_ak)


def test_quote_signed_with_an_rsa_key_for_an_ecc_ak_is_refused(tpm: FakeTPM, ecc_tpm: FakeTPM) -> None:
    _refused(tpm, "does not match the attestation key", signer=ecc_tpm.ak)


def _begin_and_answer(tpm: FakeTPM) -> tuple[PendingCeremony, ChallengeResponse]:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    return pending, _answer(tpm, challenge)


def test_tampered_attest_is_refused(tpm: FakeTPM) -> None:
    pending, response = _begin_and_answer(tpm)
    assert response.quote is not None
    for index in (0, 10, len(response.quote.attest) - 1):
        attest = bytearray(response.quote.attest)
        attest[index] ^= 0x80
        with pytest.raises(CeremonyError, match=exactly("quote signature is not valid for the attestation key")):
            finish_enrollment(pending, _with_quote(response, attest=bytes(attest)), now=NOW)
    assert finish_enrollment(pending, response, now=NOW)


def test_tampered_signature_is_refused(tpm: FakeTPM) -> None:
    pending, response = _begin_and_answer(tpm)
    assert response.quote is not None
    signature = bytearray(response.quote.signature)
    signature[-1] ^= 0x01
    with pytest.raises(CeremonyError, match=exactly("quote signature is not valid for the attestation key")):
        finish_enrollment(pending, _with_quote(response, signature=bytes(signature)), now=NOW)
    with pytest.raises(CeremonyError, match="malformed signature: truncated"):
        finish_enrollment(pending, _with_quote(response, signature=response.quote.signature[:-1]), now=NOW)


def test_tampered_pcr_value_is_refused(tpm: FakeTPM) -> None:
    pending, response = _begin_and_answer(tpm)
    assert response.quote is not None
    for index in (0, 6, 7):
        values = replaced_pcrs(response.quote.pcr_values, {index: b"\x5a" * 32})
        with pytest.raises(CeremonyError, match=exactly("PCR values do not match the quoted PCR digest")):
            finish_enrollment(pending, _with_quote(response, pcr_values=values), now=NOW)


def test_pcr_values_of_another_boot_with_a_matching_log_are_refused(tpm: FakeTPM) -> None:
    """The log and the PCR values agree with each other but not with what the TPM signed."""
    log, extended = build_event_log([(0, b"evil CRTM")])
    values = {i: extended.get(i, bytes(32)) for i in range(8)}
    pending, response = _begin_and_answer(tpm)
    with pytest.raises(CeremonyError, match=exactly("PCR values do not match the quoted PCR digest")):
        finish_enrollment(pending, _with_quote(response, pcr_values=values, event_log=log), now=NOW)


def test_tampered_event_log_is_refused(tpm: FakeTPM) -> None:
    log = tpm.event_log
    position = log.index(b"secure boot: enabled")
    edited = log[:position] + b"secure boot: disabl" + log[position + len(b"secure boot: disabl") :]
    assert len(edited) == len(log)
    _refused(tpm, "event digest does not match its data", event_log=edited)


def test_event_log_missing_its_last_events_is_refused(tpm: FakeTPM) -> None:
    shorter, _ = build_event_log([event for event in BOOT_EVENTS if event[1] != b"secure boot: enabled"])
    _refused(tpm, "^event log does not reproduce PCR 7$", event_log=shorter)


def test_event_log_of_another_boot_is_refused(tpm: FakeTPM) -> None:
    other, _ = build_event_log([*BOOT_EVENTS, (4, b"a second boot loader")])
    _refused(tpm, "^event log does not reproduce PCR 4$", event_log=other)


def test_unreadable_event_log_enrolls_as_without_a_log_and_says_so(tpm: FakeTPM) -> None:
    """An event log the server cannot read proves nothing either way: it must not make the enrollment fail when
    the same device sending no log would enroll, and it is recorded as unverified with the reason."""
    legacy_sha1 = b"\x00" * 4 + b"\x08\x00\x00\x00" + bytes(20) + b"\x01\x00\x00\x00x"  # TCG 1.2 format
    for log, reason in [
        (b"\x00" * 40, "malformed event log: truncated"),
        (tpm.event_log[:-1], "malformed event log: truncated"),
        (
            legacy_sha1,
            "TCG 1.2 (SHA-1) event log (1 event) has only SHA-1 digests, and the SHA-1 PCR bank was not quoted",
        ),
    ]:
        pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
        proof = finish_enrollment(pending, _answer(tpm, challenge, event_log=log), now=NOW)
        assert proof.event_log == f"unverified: {reason}"
        assert proof.credential == pending.credential


def test_real_firmware_logs_at_enrollment(tpm: FakeTPM) -> None:
    """A TPM whose PCRs hold a real firmware boot: its crypto-agile log replays; with SecureBoot flipped in the log
    it is refused; a TCG 1.2 (SHA-1) log enrolls as unverified since only the SHA-256 bank is quoted."""
    sha256_pcrs = UBUNTU_VM.pcrs(SHA256)
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    proof = finish_enrollment(
        pending, _answer(tpm, challenge, pcr_values=sha256_pcrs, event_log=UBUNTU_VM.log), now=NOW
    )
    assert proof.event_log == "replayed (27 events, data verified for 20)"

    secure_boot = next(
        r for r in UBUNTU_VM.records if r.event_type == EV_EFI_VARIABLE_DRIVER_CONFIG and b"S\x00e\x00c" in r.data
    )
    flipped = bytearray(UBUNTU_VM.log)
    flipped[secure_boot.size_offset + 4 + len(secure_boot.data) - 1] ^= 0x01  # its one-byte value, 0 -> 1
    _refused(tpm, "EV_EFI_VARIABLE_DRIVER_CONFIG, PCR 7", pcr_values=sha256_pcrs, event_log=bytes(flipped))

    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    proof = finish_enrollment(pending, _answer(tpm, challenge, event_log=OPTION_ROM.log), now=NOW)
    assert proof.event_log == (
        "unverified: TCG 1.2 (SHA-1) event log (60 events) has only SHA-1 digests, "
        "and the SHA-1 PCR bank was not quoted"
    )


def test_quote_over_fewer_pcrs_is_refused(tpm: FakeTPM) -> None:
    values = replaced_pcrs(tpm.pcr_values, {}, drop=[7])
    _refused(tpm, "^PCR values do not match the PCR selection$", pcr_values=values)


def test_quote_over_more_pcrs_is_refused(tpm: FakeTPM) -> None:
    values = replaced_pcrs(tpm.pcr_values, {8: bytes(32)})
    _refused(tpm, "^PCR values do not match the PCR selection$", pcr_values=values)


def test_quote_selection_differing_from_the_values_sent_is_refused(tpm: FakeTPM) -> None:
    """All eight values are sent, but the TPM was asked to quote only PCRs 0-6."""
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    attest = fakes.attest(challenge.nonce, tpm.pcr_values, pcrs=range(7))
    response = ChallengeResponse(
        CEREMONY_ID, activated_secret=tpm.activate(challenge), quote=tpm.quote(challenge.nonce, attest=attest)
    )
    with pytest.raises(CeremonyError, match=exactly("quote covers different PCRs than requested")):
        finish_enrollment(pending, response, now=NOW)


def test_quote_of_the_sha1_bank_is_refused(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    attest = fakes.attest(challenge.nonce, tpm.pcr_values, selections=(PCRSelection.of(fakes.ALG_SHA1, range(8)),))
    response = ChallengeResponse(
        CEREMONY_ID, activated_secret=tpm.activate(challenge), quote=tpm.quote(challenge.nonce, attest=attest)
    )
    with pytest.raises(CeremonyError, match="SHA-256 PCR bank"):
        finish_enrollment(pending, response, now=NOW)


def test_missing_quote_is_refused(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    response = ChallengeResponse(CEREMONY_ID, activated_secret=tpm.activate(challenge))
    with pytest.raises(CeremonyError, match=exactly("a TPM quote is required")):
        finish_enrollment(pending, response, now=NOW)


def test_key_signature_instead_of_a_tpm_proof_is_refused(tpm: FakeTPM, device_key: DeviceKey) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    response = ChallengeResponse(CEREMONY_ID, signature=device_key.sign(challenge.nonce))
    with pytest.raises(CeremonyError, match="did not activate"):
        finish_enrollment(pending, response, now=NOW)


# -- the ceremony's lifetime and binding ------------------------------------------------------------------------


def test_finish_at_or_after_expiry_is_refused(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    response = tpm.enroll_answer(challenge)
    for now in (pending.expires, pending.expires + timedelta(microseconds=1), NOW + timedelta(days=1)):
        with pytest.raises(CeremonyError, match=exactly("unknown or expired device ceremony")):
            finish_enrollment(pending, response, now=now)
    assert finish_enrollment(pending, response, now=pending.expires - timedelta(microseconds=1))


def test_finish_with_another_ceremony_id_is_refused(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    response = tpm.enroll_answer(challenge)
    for other in ("3f1c2a9e-7d44-4c1b-9a7e-2b8d0c6f5e42", CEREMONY_ID.upper(), CEREMONY_ID[:-1], "x"):
        with pytest.raises(CeremonyError, match=exactly("unknown or expired device ceremony")):
            finish_enrollment(pending, dataclasses.replace(response, ceremony_id=other), now=NOW)


def test_finish_with_a_non_ascii_ceremony_id_is_refused(tpm: FakeTPM) -> None:
    """Ceremony ids come from the device: any string the decoder lets through must be refused cleanly."""
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    response = dataclasses.replace(tpm.enroll_answer(challenge), ceremony_id="3f1c2a9e-7d44-4c1b-9a7e-2b8d0c6f5é41")
    with pytest.raises(CeremonyError, match=exactly("unknown or expired device ceremony")):
        finish_enrollment(pending, response, now=NOW)


def test_authentication_pending_cannot_finish_an_enrollment(tpm: FakeTPM) -> None:
    device = enroll_with_tpm(tpm, LINUX)
    pending, challenge = begin_auth(device)
    assert pending.kind == AUTHENTICATE
    with pytest.raises(CeremonyError, match=exactly("unknown or expired device ceremony")):
        finish_enrollment(pending, tpm.authenticate_answer(challenge), now=NOW)
    response = ChallengeResponse(CEREMONY_ID, activated_secret=bytes(32), quote=tpm.quote(challenge.nonce))
    with pytest.raises(CeremonyError, match=exactly("unknown or expired device ceremony")):
        finish_enrollment(pending, response, now=NOW)


def test_enrollment_pending_relabelled_as_authentication_is_refused(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    response = tpm.enroll_answer(challenge)
    with pytest.raises(CeremonyError, match=exactly("unknown or expired device ceremony")):
        finish_enrollment(dataclasses.replace(pending, kind=AUTHENTICATE), response, now=NOW)


def test_pending_without_a_credential_is_refused(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(LINUX, tpm=tpm.payload())
    with pytest.raises(CeremonyError, match=exactly("unknown or expired device ceremony")):
        finish_enrollment(dataclasses.replace(pending, credential=None), tpm.enroll_answer(challenge), now=NOW)


# -- the device ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [{"os_type": "windows"}, {"os_type": "macos"}, {"serial_number": "PF3XJ0AC"}, {"serial_number": "pf3xj0ab"}],
    ids=["other-os", "macos", "other-serial", "serial-case"],
)
def test_device_data_must_match_the_registered_device(tpm: FakeTPM, changes: dict[str, str]) -> None:
    with pytest.raises(CeremonyError, match=exactly("device data does not match the registered device")):
        begin_enroll(LINUX, tpm=tpm.payload(), data=dataclasses.replace(collected("linux"), **changes))


@pytest.mark.parametrize("os_type", ["macos", "ios"])
def test_tpm_enrollment_of_apple_devices_is_refused(tpm: FakeTPM, os_type: str) -> None:
    with pytest.raises(CeremonyError, match=f"^TPM enrollment is not available for {os_type} devices$"):
        begin_enroll(registered(os_type), tpm=tpm.payload())


def test_windows_devices_enroll_with_a_tpm(tpm: FakeTPM) -> None:
    pending, challenge = begin_enroll(registered("windows"), tpm=tpm.payload())
    assert finish_enrollment(pending, tpm.enroll_answer(challenge), now=NOW)


def test_both_payloads_are_refused(tpm: FakeTPM, device_key: DeviceKey) -> None:
    with pytest.raises(CeremonyError, match=exactly(EXACTLY_ONE)):
        begin_enroll(
            LINUX,
            tpm=tpm.payload(),
            key=device_key.payload(),
            settings=DeviceTrustSettings(allow_unsafe_software_keys=True),
        )


def test_neither_payload_is_refused() -> None:
    with pytest.raises(CeremonyError, match=exactly(EXACTLY_ONE)):
        begin_enroll(LINUX)


# -- re-enrollment ------------------------------------------------------------------------------------------------


def test_reenrollment_with_another_tpm_is_refused(tpm: FakeTPM, ecc_tpm: FakeTPM) -> None:
    device = enroll_with_tpm(tpm, LINUX)
    with pytest.raises(
        CeremonyError,
        match=exactly("this device is enrolled with a different TPM; an administrator must unenroll it first"),
    ):
        begin_enroll(device, tpm=ecc_tpm.payload())
    # After an administrator unenrolls it, the other TPM may enroll.
    begin_enroll(device.unenrolled(), tpm=ecc_tpm.payload())


def test_reenrollment_with_the_same_tpm_is_allowed(
    tpm: FakeTPM, ek_ca: Issued, other_ak: ec.EllipticCurvePrivateKey
) -> None:
    device = enroll_with_tpm(tpm, LINUX)
    # The same EK, now sent as a trusted certificate and with a fresh AK.
    renewed = tpm.with_ak(other_ak)
    pending, challenge = begin_enroll(
        device, tpm=renewed.payload(), settings=trusting(ek_ca), credential_id="second-credential"
    )
    proof = finish_enrollment(pending, renewed.enroll_answer(challenge), now=NOW)
    assert proof.credential.tpm_ek_public_sha256 == tpm.ek_fingerprint
    assert proof.credential.tpm_ak_public == renewed.ak_public
    assert proof.credential.id == "second-credential"


def test_tpm_enrollment_of_a_key_enrolled_device_is_refused(tpm: FakeTPM, device_key: DeviceKey) -> None:
    device = enroll_with_key(device_key, LINUX, "unsafe_software")
    with pytest.raises(CeremonyError, match="enrolled with a different TPM"):
        begin_enroll(device, tpm=tpm.payload())


def test_refused_begin_consumes_no_randomness(tpm: FakeTPM, ecc_tpm: FakeTPM) -> None:
    """Refusals happen before any secret is drawn (nothing to leak, nothing to store)."""
    rng = DeterministicRandom()
    device = enroll_with_tpm(tpm, LINUX)
    with pytest.raises(CeremonyError):
        begin_enroll(device, tpm=ecc_tpm.payload(), rng=rng)
    assert rng.issued == []


def test_rsa_ek_of_another_size_is_refused(tpm: FakeTPM) -> None:
    ek = rsa.generate_private_key(65537, 3072)
    other = dataclasses.replace(tpm, ek=ek, ek_cert=None)
    with pytest.raises(CeremonyError, match="RSA endorsement keys must be RSA-2048"):
        begin_enroll(LINUX, tpm=other.payload())
