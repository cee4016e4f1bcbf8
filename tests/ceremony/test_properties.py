"""Property-based negative tests: from a valid ``finish`` (TPM and key; enrollment and authentication), every
mutation of every byte field of the device's answer is refused with CeremonyError — never accepted, never another
exception. Mutated ``begin`` payloads may only ever raise CeremonyError / ValidationError.

The one field with accepted mutations is the event log, by design: it is not signed (only the PCRs it replays to
are), so bytes the replay does not depend on (the Spec ID header's platform class / errata / UINTN size, an event's
type label, trailing EV_NO_ACTION records, events of unquoted PCRs) may change — but an accepted log must replay to
exactly the same measured events, an empty log is accepted and recorded as "none", and a log that can
no longer be read is no worse than none: accepted and recorded as "unverified" with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.ceremony.conftest import (
    NOW,
    SESSION_HASH,
    UNSAFE_KEYS_ALLOWED,
    DeviceKey,
    FakeTPM,
    Issued,
    begin_auth,
    begin_enroll,
    enroll_with_key,
    enroll_with_tpm,
    exactly,
    registered,
    trusting,
)

from devicetrust.attestation import UnreadableEventLogError, replay_event_log
from devicetrust.ceremony.ceremonies import (
    PendingCeremony,
    VerifiedProof,
    finish_authentication,
    finish_enrollment,
)
from devicetrust.ceremony.messages import CeremonyError, ChallengeResponse, QuoteResponse, TPMEnrollPayload
from devicetrust.errors import ValidationError
from devicetrust.types import Device, DeviceTrustSettings

FINISH = settings(max_examples=250, deadline=None)
BEGIN = settings(max_examples=150, deadline=None)

# -- mutations ----------------------------------------------------------------------------------------------------


def _flip(data: bytes, index: int, bit: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


def _overwrite(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1 :]


def mutations(original: bytes) -> st.SearchStrategy[bytes]:
    """Bit flips, byte overwrites and deletions, truncations, extensions and wholesale replacements of
    ``original`` — never ``original`` itself."""
    options: list[st.SearchStrategy[bytes]] = [
        st.binary(max_size=max(2 * len(original), 16)),  # replace
        st.binary(min_size=1, max_size=64).map(lambda tail: original + tail),  # extend
        st.binary(min_size=1, max_size=8).map(lambda head: head + original),  # prepend
    ]
    if original:
        last = len(original) - 1
        options += [
            st.builds(_flip, st.just(original), st.integers(0, last), st.integers(0, 7)),
            st.builds(_overwrite, st.just(original), st.integers(0, last), st.integers(0, 255)),
            st.integers(0, last).map(lambda n: original[:n]),  # truncate
            st.integers(0, last).map(lambda i: original[:i] + original[i + 1 :]),  # delete one byte
        ]
    return st.one_of(options).filter(lambda mutated: mutated != original)


# -- the valid answers the mutations start from ---------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A pending ceremony, the device's valid answer, and how to finish it."""

    pending: PendingCeremony
    response: ChallengeResponse
    finish: Callable[[ChallengeResponse], VerifiedProof]


def _enrollment(pending: PendingCeremony, response: ChallengeResponse) -> Case:
    return Case(pending, response, lambda r: finish_enrollment(pending, r, now=NOW))


def _authentication(pending: PendingCeremony, device: Device, response: ChallengeResponse) -> Case:
    return Case(
        pending,
        response,
        lambda r: finish_authentication(pending, device, r, session_hash=SESSION_HASH, now=NOW),
    )


@pytest.fixture(scope="module")
def tpm_enrollment(tpm: FakeTPM, ek_ca: Issued) -> Case:
    pending, challenge = begin_enroll(registered("linux"), tpm=tpm.payload(), settings=trusting(ek_ca))
    return _enrollment(pending, tpm.enroll_answer(challenge))


@pytest.fixture(scope="module")
def key_enrollment(device_key: DeviceKey) -> Case:
    pending, challenge = begin_enroll(registered("macos"), key=device_key.payload("macos_secure_enclave"))
    return _enrollment(pending, device_key.answer(challenge))


@pytest.fixture(scope="module")
def tpm_authentication(tpm: FakeTPM) -> Case:
    device = enroll_with_tpm(tpm, registered("linux"))
    pending, challenge = begin_auth(device)
    return _authentication(pending, device, tpm.authenticate_answer(challenge))


@pytest.fixture(scope="module")
def key_authentication(device_key: DeviceKey) -> Case:
    device = enroll_with_key(device_key, registered("linux"), "unsafe_software")
    pending, challenge = begin_auth(device)
    return _authentication(pending, device, device_key.answer(challenge))


# Byte fields of an answer, addressed by name.
TPM_ENROLL_FIELDS = ("activated_secret", "attest", "signature", *(f"pcr{i}" for i in range(8)))
TPM_AUTH_FIELDS = ("attest", "signature", *(f"pcr{i}" for i in range(8)))
KEY_FIELDS = ("signature",)


def get(response: ChallengeResponse, name: str) -> bytes:
    if name in ("activated_secret",) or (name == "signature" and response.quote is None):
        return bytes(getattr(response, name))
    assert response.quote is not None
    if name.startswith("pcr"):
        return response.quote.pcr_values[int(name[3:])]
    return bytes(getattr(response.quote, name))


def put(response: ChallengeResponse, name: str, value: bytes) -> ChallengeResponse:
    if name in ("activated_secret",) or (name == "signature" and response.quote is None):
        return dataclasses.replace(response, **{name: value})
    assert response.quote is not None
    quote: QuoteResponse
    if name.startswith("pcr"):
        quote = dataclasses.replace(response.quote, pcr_values={**response.quote.pcr_values, int(name[3:]): value})
    else:
        quote = dataclasses.replace(response.quote, **{name: value})
    return dataclasses.replace(response, quote=quote)


def test_the_starting_points_are_accepted(
    tpm_enrollment: Case, key_enrollment: Case, tpm_authentication: Case, key_authentication: Case
) -> None:
    """Otherwise every refusal below would be meaningless."""
    for case in (tpm_enrollment, key_enrollment, tpm_authentication, key_authentication):
        assert case.finish(case.response)
    # ...and get/put address the fields they name.
    for name in TPM_ENROLL_FIELDS:
        original = get(tpm_enrollment.response, name)
        assert original
        assert get(put(tpm_enrollment.response, name, b"x" + original), name) == b"x" + original
    assert get(key_enrollment.response, "signature") == key_enrollment.response.signature


def _refused_mutation(case: Case, fields: tuple[str, ...], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(fields), label="field")
    mutated = data.draw(mutations(get(case.response, name)), label="mutated")
    with pytest.raises(CeremonyError):
        case.finish(put(case.response, name, mutated))


# -- finish: zero acceptances ---------------------------------------------------------------------------------------


@FINISH
@given(data=st.data())
def test_tpm_enrollment_answer_mutations_are_refused(tpm_enrollment: Case, data: st.DataObject) -> None:
    _refused_mutation(tpm_enrollment, TPM_ENROLL_FIELDS, data)


@FINISH
@given(data=st.data())
def test_key_enrollment_signature_mutations_are_refused(key_enrollment: Case, data: st.DataObject) -> None:
    _refused_mutation(key_enrollment, KEY_FIELDS, data)


@FINISH
@given(data=st.data())
def test_tpm_authentication_answer_mutations_are_refused(tpm_authentication: Case, data: st.DataObject) -> None:
    _refused_mutation(tpm_authentication, TPM_AUTH_FIELDS, data)


@FINISH
@given(data=st.data())
def test_key_authentication_signature_mutations_are_refused(key_authentication: Case, data: st.DataObject) -> None:
    _refused_mutation(key_authentication, KEY_FIELDS, data)


@settings(max_examples=100, deadline=None)
@given(
    drop=st.sets(st.integers(0, 7)),
    add=st.dictionaries(st.integers(8, 23), st.binary(min_size=32, max_size=32), max_size=3),
)
def test_pcr_selection_changes_are_refused(
    tpm_enrollment: Case, tpm_authentication: Case, drop: set[int], add: dict[int, bytes]
) -> None:
    if not drop and not add:
        return
    for case in (tpm_enrollment, tpm_authentication):
        assert case.response.quote is not None
        values = {i: v for i, v in case.response.quote.pcr_values.items() if i not in drop} | add
        with pytest.raises(CeremonyError, match="PCR"):
            case.finish(
                dataclasses.replace(case.response, quote=dataclasses.replace(case.response.quote, pcr_values=values))
            )


@settings(max_examples=100, deadline=None)
@given(ceremony_id=st.text(max_size=80))
def test_other_ceremony_ids_are_refused(tpm_enrollment: Case, key_authentication: Case, ceremony_id: str) -> None:
    for case in (tpm_enrollment, key_authentication):
        if ceremony_id == case.response.ceremony_id:
            continue
        with pytest.raises(CeremonyError, match=exactly("unknown or expired device ceremony")):
            case.finish(dataclasses.replace(case.response, ceremony_id=ceremony_id))


def _measured(event_log: bytes, case: Case) -> list[tuple[int, bytes, bytes]]:
    assert case.response.quote is not None
    summary = replay_event_log(event_log, case.response.quote.pcr_values)
    return [(event.pcr, event.digest, event.data) for event in summary.events]


@FINISH
@given(data=st.data())
def test_event_log_mutations_never_change_what_was_measured(
    tpm_enrollment: Case, tpm_authentication: Case, data: st.DataObject
) -> None:
    case = data.draw(st.sampled_from([tpm_enrollment, tpm_authentication]), label="case")
    original = get(case.response, "event_log")
    mutated = data.draw(mutations(original), label="mutated")
    try:
        proof = case.finish(put(case.response, "event_log", mutated))
    except CeremonyError:
        return
    if not mutated:
        assert proof.event_log == "none"
    elif proof.event_log.startswith("unverified: "):
        assert dataclasses.replace(proof, event_log="none") == case.finish(put(case.response, "event_log", b""))
        assert case.response.quote is not None
        with pytest.raises(UnreadableEventLogError):
            replay_event_log(mutated, case.response.quote.pcr_values)
    else:
        assert proof == case.finish(case.response)
        assert _measured(mutated, case) == _measured(original, case)


# -- begin: only CeremonyError / ValidationError ----------------------------------------------------------------------


def _begin_or_refuse(call: Callable[[], Any]) -> Any:
    """The begin's result, or None when it was refused with one of the domain errors."""
    try:
        return call()
    except (CeremonyError, ValidationError):
        return None


@BEGIN
@given(data=st.data(), trusted=st.booleans())
def test_mutated_ak_public_area(tpm: FakeTPM, ek_ca: Issued, data: st.DataObject, trusted: bool) -> None:
    ak_public = data.draw(mutations(tpm.ak_public), label="ak_public")
    settings_ = trusting(ek_ca) if trusted else DeviceTrustSettings()
    began = _begin_or_refuse(
        lambda: begin_enroll(registered("linux"), tpm=tpm.payload(ak_public=ak_public), settings=settings_)
    )
    if began is not None:
        # An acceptable but different AK: the credential is made for it, so the TPM cannot activate it for its own.
        _, challenge = began
        with pytest.raises(ValueError, match="integrity"):
            tpm.activate(challenge)


# pytest turns warnings into errors; in production this one (a certificate with a serial that is not positive, which
# cryptography still loads) is only logged, and such a serial is then refused as a field error of the credential.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@BEGIN
@given(data=st.data(), trusted=st.booleans())
def test_mutated_ek_certificate(tpm: FakeTPM, ek_ca: Issued, data: st.DataObject, trusted: bool) -> None:
    assert tpm.ek_cert is not None
    cert = data.draw(mutations(tpm.ek_cert.der), label="ek_cert_der")
    payload = TPMEnrollPayload(ek_cert_der=cert, ek_public_der=None, ak_public=tpm.ak_public)
    settings_ = trusting(ek_ca) if trusted else DeviceTrustSettings()
    began = _begin_or_refuse(lambda: begin_enroll(registered("linux"), tpm=payload, settings=settings_))
    if began is not None and trusted:
        # The CA's signature covers the key: a certificate that still verifies names the same EK.
        pending, _ = began
        assert pending.credential.attestation_type == "tpm_ekcert_trusted"
        assert pending.credential.tpm_ek_public_sha256 == tpm.ek_fingerprint


@BEGIN
@given(data=st.data())
def test_mutated_ek_public_key(tpm: FakeTPM, ecc_tpm: FakeTPM, data: st.DataObject) -> None:
    which = data.draw(st.sampled_from([tpm, ecc_tpm]), label="tpm")
    der = data.draw(mutations(which.ek_public_der), label="ek_public_der")
    payload = TPMEnrollPayload(ek_cert_der=None, ek_public_der=der, ak_public=which.ak_public)
    began = _begin_or_refuse(lambda: begin_enroll(registered("linux"), tpm=payload))
    if began is not None:
        assert began[0].credential.attestation_type == "tpm_ekpub"


@BEGIN
@given(data=st.data(), kind=st.sampled_from(["macos_secure_enclave", "unsafe_software"]))
def test_mutated_device_public_key(device_key: DeviceKey, data: st.DataObject, kind: str) -> None:
    der = data.draw(mutations(device_key.der), label="public_key_der")
    payload = dataclasses.replace(device_key.payload(kind), public_key_der=der)
    began = _begin_or_refuse(lambda: begin_enroll(registered("macos"), key=payload, settings=UNSAFE_KEYS_ALLOWED))
    if began is not None:
        key = serialization.load_der_public_key(der)
        assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
