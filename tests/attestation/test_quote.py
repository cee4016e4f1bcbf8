"""verify_quote: a software "TPM" signs quotes; every deviation from the expected quote is rejected."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devicetrust.attestation import (
    MAX_ATTEST_BYTES,
    MAX_SIGNATURE_BYTES,
    MIN_NONCE_BYTES,
    Attest,
    AttestationError,
    ClockInfo,
    ECDSASignature,
    ObjectAttributes,
    PCRSelection,
    parse_attest,
    parse_signature,
    verify_quote,
)
from tests.attestation import fakes

KEY = ec.generate_private_key(ec.SECP256R1())
AK = fakes.tpm_public(KEY.public_key())
NONCE = secrets.token_bytes(20)
PCRS = tuple(range(8))
VALUES = fakes.pcr_bank(PCRS)
ATTEST = fakes.attest(NONCE, VALUES).marshal()
SIGNATURE = fakes.sign(KEY, ATTEST)


def _verify(
    attest: bytes = ATTEST,
    signature: bytes = SIGNATURE,
    *,
    ak: object = AK,
    nonce: bytes = NONCE,
    pcrs: tuple[int, ...] = PCRS,
    values: dict[int, bytes] | None = None,
) -> object:
    return verify_quote(
        ak,  # type: ignore[arg-type]
        attest,
        signature,
        nonce=nonce,
        pcr_selection=pcrs,
        pcr_values=VALUES if values is None else values,
    )


def test_valid_quote_is_accepted() -> None:
    info = verify_quote(AK, ATTEST, SIGNATURE, nonce=NONCE, pcr_selection=PCRS, pcr_values=VALUES)
    assert info.pcrs == PCRS
    assert info.clock_info == ClockInfo(123456, 1, 0, True)
    assert info.pcr_digest == hashlib.sha256(b"".join(VALUES[i] for i in PCRS)).digest()


def test_rsassa_quote_is_accepted() -> None:
    key = rsa.generate_private_key(65537, 2048)
    info = _verify(signature=fakes.sign(key, ATTEST), ak=fakes.tpm_public(key.public_key()))
    assert info


def test_attest_and_signature_round_trip() -> None:
    assert parse_attest(ATTEST).marshal() == ATTEST
    assert parse_signature(SIGNATURE).marshal() == SIGNATURE


def _resigned(transform: Callable[[Attest], Attest]) -> tuple[bytes, bytes]:
    attest = transform(fakes.attest(NONCE, VALUES)).marshal()
    return attest, fakes.sign(KEY, attest)


@pytest.mark.parametrize(
    ("attest", "message"),
    [
        (b"\x00" + ATTEST[1:], "bad magic"),
        (ATTEST[:4] + b"\x80\x17" + ATTEST[6:], "not a quote"),  # TPM_ST_ATTEST_CERTIFY
        (ATTEST + b"\x00", "trailing"),
        (ATTEST[:-1], "truncated"),
    ],
    ids=["magic", "type", "trailing", "truncated"],
)
def test_signed_but_malformed_attest_is_rejected(attest: bytes, message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        _verify(attest, fakes.sign(KEY, attest))


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda a: dataclasses.replace(a, extra_data=secrets.token_bytes(20)), "nonce"),
        (lambda a: dataclasses.replace(a, extra_data=b""), "nonce"),
        (lambda a: dataclasses.replace(a, extra_data=NONCE[:-1]), "nonce"),
        (lambda a: dataclasses.replace(a, pcr_digest=bytes(32)), "PCR digest"),
        (
            lambda a: dataclasses.replace(a, pcr_selections=(PCRSelection.of(fakes.ALG_SHA256, range(7)),)),
            "different PCRs",
        ),
        (
            lambda a: dataclasses.replace(a, pcr_selections=(PCRSelection.of(fakes.ALG_SHA1, PCRS),)),
            "SHA-256 PCR bank",
        ),
        (
            lambda a: dataclasses.replace(a, pcr_selections=(*a.pcr_selections, PCRSelection.of(fakes.ALG_SHA1, PCRS))),
            "SHA-256 PCR bank",
        ),
        (lambda a: dataclasses.replace(a, pcr_selections=()), "SHA-256 PCR bank"),
    ],
    ids=["other-nonce", "no-nonce", "short-nonce", "digest", "fewer-pcrs", "sha1-bank", "two-banks", "no-bank"],
)
def test_signed_but_wrong_quote_is_rejected(transform: Callable[[Attest], Attest], message: str) -> None:
    attest, signature = _resigned(transform)
    with pytest.raises(AttestationError, match=message):
        _verify(attest, signature)


def test_wrong_expectations_are_rejected() -> None:
    with pytest.raises(AttestationError, match="nonce"):
        _verify(nonce=secrets.token_bytes(20))
    with pytest.raises(AttestationError, match="PCR values do not match the quoted"):
        _verify(values={**VALUES, 3: bytes(32)})
    with pytest.raises(AttestationError, match="different PCRs"):
        _verify(pcrs=tuple(range(7)), values={i: VALUES[i] for i in range(7)})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nonce": bytes(MIN_NONCE_BYTES - 1)}, "nonce must be"),
        ({"nonce": bytes(65)}, "nonce must be"),
        ({"pcrs": ()}, "non-empty"),
        ({"pcrs": (0, 0, 1)}, "duplicates"),
        ({"pcrs": (24,), "values": {24: bytes(32)}}, "0–23"),
        ({"values": {i: VALUES[i] for i in range(7)}}, "do not match the PCR selection"),
        ({"values": {**VALUES, 8: bytes(32)}}, "do not match the PCR selection"),
        ({"values": {**VALUES, 0: bytes(20)}}, "32-byte"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        _verify(**kwargs)  # type: ignore[arg-type]


def test_quote_from_another_key_is_rejected() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AttestationError, match="not valid for the attestation key"):
        _verify(signature=fakes.sign(other, ATTEST))


def test_ak_must_pass_check_ak() -> None:
    weak = dataclasses.replace(AK, object_attributes=fakes.AK_ATTRIBUTES & ~ObjectAttributes.RESTRICTED)
    with pytest.raises(AttestationError, match="restricted"):
        _verify(ak=weak)


def test_signature_algorithm_must_match_the_key() -> None:
    key = rsa.generate_private_key(65537, 2048)
    with pytest.raises(AttestationError, match="does not match"):
        _verify(signature=fakes.sign(key, ATTEST))


def test_signature_hash_must_be_sha256() -> None:
    sig = parse_signature(SIGNATURE)
    assert isinstance(sig, ECDSASignature)
    with pytest.raises(AttestationError, match="SHA-256"):
        _verify(signature=dataclasses.replace(sig, hash_alg=fakes.ALG_SHA1).marshal())


def test_non_canonical_ecdsa_encoding_is_rejected() -> None:
    sig = parse_signature(SIGNATURE)
    assert isinstance(sig, ECDSASignature)
    padded = dataclasses.replace(sig, r=b"\x00" + sig.r).marshal()
    with pytest.raises(AttestationError, match="not valid"):
        _verify(signature=padded)


def test_unsupported_signature_algorithms_are_rejected() -> None:
    with pytest.raises(AttestationError, match="unsupported signature algorithm"):
        _verify(signature=b"\x00\x16" + SIGNATURE[2:])  # RSAPSS
    with pytest.raises(AttestationError, match="unsupported signature algorithm"):
        _verify(signature=b"\x00\x10\x00\x0b")  # NULL


def test_size_limits() -> None:
    with pytest.raises(AttestationError, match=str(MAX_ATTEST_BYTES)):
        _verify(attest=bytes(MAX_ATTEST_BYTES + 1))
    with pytest.raises(AttestationError, match=str(MAX_SIGNATURE_BYTES)):
        _verify(signature=bytes(MAX_SIGNATURE_BYTES + 1))


def test_every_truncation_of_attest_and_signature_is_rejected() -> None:
    for cut in range(len(ATTEST)):
        with pytest.raises(AttestationError):
            parse_attest(ATTEST[:cut])
    for cut in range(len(SIGNATURE)):
        with pytest.raises(AttestationError):
            _verify(signature=SIGNATURE[:cut])


def test_every_single_byte_change_is_rejected() -> None:
    """Exhaustive: each byte of attest and signature XOR-ed with 0x01 and 0xFF."""
    for data, position in ((ATTEST, 0), (SIGNATURE, 1)):
        for index in range(len(data)):
            for mask in (0x01, 0xFF):
                mutated = bytearray(data)
                mutated[index] ^= mask
                args = [ATTEST, SIGNATURE]
                args[position] = bytes(mutated)
                with pytest.raises(AttestationError):
                    _verify(*args)


# -- property tests: random mutations of every input are never accepted -------------------------------------------

_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def _mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """A different byte string: flip bytes, cut, extend, or splice."""
    kind = draw(st.sampled_from(["flip", "cut", "extend", "splice"]))
    if kind == "flip":
        flipped = bytearray(data)
        for index in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4, unique=True)):
            flipped[index] ^= draw(st.integers(1, 255))
        return bytes(flipped)
    if kind == "cut":
        start = draw(st.integers(0, len(data) - 1))
        end = draw(st.integers(start + 1, len(data)))
        return data[:start] + data[end:]
    if kind == "extend":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    at = draw(st.integers(0, len(data) - 1))
    replacement = draw(st.binary(min_size=1, max_size=8))
    out = data[:at] + replacement + data[at + len(replacement) :]
    return out if out != data else data + b"\x00"


@_SETTINGS
@given(st.data())
def test_property_mutated_attest_is_never_accepted(data: st.DataObject) -> None:
    with pytest.raises(AttestationError):
        _verify(attest=data.draw(_mutation(ATTEST)))


@_SETTINGS
@given(st.data())
def test_property_mutated_signature_is_never_accepted(data: st.DataObject) -> None:
    with pytest.raises(AttestationError):
        _verify(signature=data.draw(_mutation(SIGNATURE)))


@_SETTINGS
@given(st.data(), st.sampled_from(PCRS))
def test_property_mutated_pcr_value_is_never_accepted(data: st.DataObject, pcr: int) -> None:
    with pytest.raises(AttestationError):
        _verify(values={**VALUES, pcr: data.draw(_mutation(VALUES[pcr]))})


@_SETTINGS
@given(st.data())
def test_property_mutated_nonce_is_never_accepted(data: st.DataObject) -> None:
    with pytest.raises(AttestationError):
        _verify(nonce=data.draw(_mutation(NONCE)))
