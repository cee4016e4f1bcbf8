"""TPMT_PUBLIC parsing, marshalling, names, and the attestation-key policy."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devicetrust.attestation import (
    MAX_TPM_PUBLIC_BYTES,
    AttestationError,
    ECCParameters,
    ECCPoint,
    ObjectAttributes,
    Scheme,
    SymmetricDef,
    TPMPublic,
    check_ak,
    parse_tpm2b_public,
    parse_tpmt_public,
)
from devicetrust.errors import ValidationError
from tests.attestation import fakes
from tests.attestation.fakes import P256, P384, RSA2048


def _ak(**changes: object) -> TPMPublic:
    return dataclasses.replace(fakes.tpm_public(P256.public_key()), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [P256.public_key(), P384.public_key(), RSA2048.public_key()], ids=str)
def test_marshal_parse_round_trip(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> None:
    public = fakes.tpm_public(key)
    wire = public.marshal()
    assert parse_tpmt_public(wire) == public
    assert parse_tpm2b_public(public.marshal_tpm2b()) == public
    assert parse_tpmt_public(wire).marshal() == wire
    assert public.public_key().public_numbers() == key.public_numbers()


def test_ek_shaped_public_round_trips() -> None:
    public = fakes.ek_public(RSA2048.public_key(), name_alg=fakes.ALG_SHA256, sym_bits=128)
    assert parse_tpmt_public(public.marshal()) == public
    assert public.parameters.symmetric == SymmetricDef(fakes.ALG_AES, 128, fakes.ALG_CFB)


def test_name_is_name_alg_and_hash_of_public_area() -> None:
    import hashlib

    public = fakes.tpm_public(P256.public_key())
    assert public.name() == b"\x00\x0b" + hashlib.sha256(public.marshal()).digest()


def test_error_is_a_validation_error_with_its_own_kind() -> None:
    err = AttestationError("x")
    assert isinstance(err, ValidationError)
    assert err.kind == "attestation"


@pytest.mark.parametrize("key", [P256.public_key(), RSA2048.public_key()], ids=str)
def test_every_truncation_is_rejected(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> None:
    wire = fakes.tpm_public(key).marshal()
    for cut in range(len(wire)):
        with pytest.raises(AttestationError, match="malformed TPM public area"):
            parse_tpmt_public(wire[:cut])


def test_trailing_bytes_are_rejected() -> None:
    public = fakes.tpm_public(P256.public_key())
    with pytest.raises(AttestationError, match="trailing"):
        parse_tpmt_public(public.marshal() + b"\x00")
    with pytest.raises(AttestationError, match="trailing"):
        parse_tpm2b_public(public.marshal_tpm2b() + b"\x00")


def test_tpm2b_size_must_match() -> None:
    wire = fakes.tpm_public(P256.public_key()).marshal()
    with pytest.raises(AttestationError):
        parse_tpm2b_public((len(wire) + 1).to_bytes(2, "big") + wire)
    with pytest.raises(AttestationError):
        parse_tpm2b_public((len(wire) - 1).to_bytes(2, "big") + wire)


def test_oversized_input_is_rejected_before_parsing() -> None:
    with pytest.raises(AttestationError, match=str(MAX_TPM_PUBLIC_BYTES)):
        parse_tpmt_public(bytes(MAX_TPM_PUBLIC_BYTES + 1))


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, b"\x00\x08", "unsupported key type"),  # KEYEDHASH
        (0, b"\x12\x34", "unsupported key type"),
        (2, b"\x00\x99", "unknown name algorithm"),
        (2, b"\x00\x10", "unknown name algorithm"),  # TPM_ALG_NULL
    ],
)
def test_unknown_algorithms_are_rejected(offset: int, value: bytes, message: str) -> None:
    wire = bytearray(fakes.tpm_public(P256.public_key()).marshal())
    wire[offset : offset + len(value)] = value
    with pytest.raises(AttestationError, match=message):
        parse_tpmt_public(bytes(wire))


def test_unknown_curve_scheme_and_symmetric_are_rejected() -> None:
    base = fakes.tpm_public(P256.public_key())
    params = base.parameters
    assert isinstance(params, ECCParameters)
    bad_curve = dataclasses.replace(base, parameters=dataclasses.replace(params, curve=0x0999))
    with pytest.raises(AttestationError, match="curve"):
        parse_tpmt_public(bad_curve.marshal())
    bad_scheme = dataclasses.replace(base, parameters=dataclasses.replace(params, scheme=Scheme(0x0999, 0x000B)))
    with pytest.raises(AttestationError, match="ECC scheme"):
        parse_tpmt_public(bad_scheme.marshal())
    bad_sym = dataclasses.replace(
        base, parameters=dataclasses.replace(params, symmetric=SymmetricDef(0x0999, 128, 0x43))
    )
    with pytest.raises(AttestationError, match="symmetric"):
        parse_tpmt_public(bad_sym.marshal())


def test_auth_policy_must_be_empty_or_a_name_alg_digest() -> None:
    with pytest.raises(AttestationError, match="authPolicy"):
        parse_tpmt_public(_ak(auth_policy=bytes(20)).marshal())
    assert parse_tpmt_public(_ak(auth_policy=bytes(32)).marshal()).auth_policy == bytes(32)


def test_rsa_modulus_must_match_key_bits() -> None:
    base = fakes.tpm_public(RSA2048.public_key())
    assert isinstance(base.unique, bytes)
    with pytest.raises(AttestationError, match="keyBits"):
        parse_tpmt_public(dataclasses.replace(base, unique=base.unique[1:]).marshal())


def test_ecc_coordinates_larger_than_the_curve_are_rejected() -> None:
    base = fakes.tpm_public(P256.public_key())
    assert isinstance(base.unique, ECCPoint)
    with pytest.raises(AttestationError, match="ECC x"):
        parse_tpmt_public(dataclasses.replace(base, unique=ECCPoint(b"\x00" + base.unique.x, base.unique.y)).marshal())


def test_point_not_on_the_curve_is_not_a_key() -> None:
    public = _ak(unique=ECCPoint(bytes(31) + b"\x01", bytes(31) + b"\x01"))
    parsed = parse_tpmt_public(public.marshal())  # structurally fine
    with pytest.raises(AttestationError, match="not a valid public key"):
        parsed.public_key()
    with pytest.raises(AttestationError):
        check_ak(parsed)


# -- check_ak -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [P256.public_key(), RSA2048.public_key()], ids=str)
def test_check_ak_accepts_a_tpm_attestation_key(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> None:
    check_ak(fakes.tpm_public(key))


@pytest.mark.parametrize(
    "flag",
    [
        ObjectAttributes.RESTRICTED,
        ObjectAttributes.SIGN_ENCRYPT,
        ObjectAttributes.FIXED_TPM,
        ObjectAttributes.FIXED_PARENT,
        ObjectAttributes.SENSITIVE_DATA_ORIGIN,
    ],
    ids=lambda f: f.name,
)
def test_check_ak_requires_each_attribute(flag: ObjectAttributes) -> None:
    ak = _ak(object_attributes=fakes.AK_ATTRIBUTES & ~flag)
    with pytest.raises(AttestationError, match=str(flag.name).lower()):
        check_ak(ak)


def test_check_ak_rejects_a_decryption_key() -> None:
    with pytest.raises(AttestationError, match="sign-only"):
        check_ak(_ak(object_attributes=fakes.AK_ATTRIBUTES | ObjectAttributes.DECRYPT))


def test_check_ak_rejects_other_curves_small_rsa_and_sha1_names() -> None:
    with pytest.raises(AttestationError, match="P-256"):
        check_ak(fakes.tpm_public(P384.public_key()))
    with pytest.raises(AttestationError, match="2048"):
        check_ak(fakes.tpm_public(rsa.generate_private_key(65537, 1024).public_key()))  # noqa: S505
    with pytest.raises(AttestationError, match="SHA-256"):
        check_ak(_ak(name_alg=fakes.ALG_SHA1))


@pytest.mark.parametrize(
    "scheme", [Scheme(), Scheme(fakes.ALG_ECDSA, fakes.ALG_SHA1), Scheme(0x001C, fakes.ALG_SHA256)], ids=str
)
def test_check_ak_requires_ecdsa_sha256(scheme: Scheme) -> None:
    base = fakes.tpm_public(P256.public_key())
    with pytest.raises(AttestationError, match="scheme"):
        check_ak(dataclasses.replace(base, parameters=dataclasses.replace(base.parameters, scheme=scheme)))


def test_check_ak_rejects_a_symmetric_algorithm() -> None:
    base = fakes.tpm_public(P256.public_key())
    params = dataclasses.replace(base.parameters, symmetric=SymmetricDef(fakes.ALG_AES, 128, fakes.ALG_CFB))
    with pytest.raises(AttestationError, match="symmetric"):
        check_ak(dataclasses.replace(base, parameters=params))
