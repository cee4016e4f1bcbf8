"""MakeCredential (server side): accepted by a reference ActivateCredential and shaped like tpm2-pytss's."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

from devicetrust.attestation import (
    MAX_CREDENTIAL_SECRET_BYTES,
    MIN_CREDENTIAL_SECRET_BYTES,
    AttestationError,
    kdfa,
    kdfe,
    make_credential,
)
from tests.attestation import fakes
from tests.attestation.fakes import P256, P384, RSA2048
from tests.tpm.helpers import require_tpm2_pytss

AK_NAME = fakes.tpm_public(ec.generate_private_key(ec.SECP256R1()).public_key()).name()

# (EK private key, name algorithm, AES bits) per the TCG EK templates L-1, L-2, H-3
EKS = [
    pytest.param(RSA2048, fakes.ALG_SHA256, 128, id="rsa2048"),
    pytest.param(P256, fakes.ALG_SHA256, 128, id="p256"),
    pytest.param(P384, fakes.ALG_SHA384, 256, id="p384"),
]


@pytest.mark.parametrize(("ek", "name_alg", "sym_bits"), EKS)
def test_bare_ek_key_credential_activates(
    ek: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name_alg: int, sym_bits: int
) -> None:
    secret = secrets.token_bytes(32)
    blob, enc = make_credential(ek.public_key(), AK_NAME, secret)
    got = fakes.activate_offline(
        ek, name_alg=name_alg, sym_bits=sym_bits, ak_name=AK_NAME, id_object=blob, encrypted_secret=enc
    )
    assert got == secret


@pytest.mark.parametrize(("ek", "name_alg", "sym_bits"), EKS)
def test_ek_public_area_credential_activates(
    ek: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name_alg: int, sym_bits: int
) -> None:
    public = fakes.ek_public(ek.public_key(), name_alg=name_alg, sym_bits=sym_bits)
    secret = secrets.token_bytes(MIN_CREDENTIAL_SECRET_BYTES)
    blob, enc = make_credential(public, AK_NAME, secret)
    got = fakes.activate_offline(
        ek, name_alg=name_alg, sym_bits=sym_bits, ak_name=AK_NAME, id_object=blob, encrypted_secret=enc
    )
    assert got == secret


def test_credential_is_bound_to_the_ak_name() -> None:
    blob, enc = make_credential(RSA2048.public_key(), AK_NAME, secrets.token_bytes(32))
    other = fakes.tpm_public(ec.generate_private_key(ec.SECP256R1()).public_key()).name()
    with pytest.raises(ValueError, match="integrity"):
        fakes.activate_offline(
            RSA2048, name_alg=fakes.ALG_SHA256, sym_bits=128, ak_name=other, id_object=blob, encrypted_secret=enc
        )


def test_credential_is_bound_to_the_ek() -> None:
    blob, enc = make_credential(P256.public_key(), AK_NAME, secrets.token_bytes(32))
    with pytest.raises(ValueError, match="integrity"):
        fakes.activate_offline(
            ec.generate_private_key(ec.SECP256R1()),
            name_alg=fakes.ALG_SHA256,
            sym_bits=128,
            ak_name=AK_NAME,
            id_object=blob,
            encrypted_secret=enc,
        )


def test_each_credential_uses_a_fresh_seed() -> None:
    secret = secrets.token_bytes(32)
    assert make_credential(P256.public_key(), AK_NAME, secret) != make_credential(P256.public_key(), AK_NAME, secret)


@pytest.mark.parametrize("size", [0, MIN_CREDENTIAL_SECRET_BYTES - 1, MAX_CREDENTIAL_SECRET_BYTES + 1])
def test_secret_size_limits(size: int) -> None:
    with pytest.raises(AttestationError, match="secret"):
        make_credential(P256.public_key(), AK_NAME, bytes(size))


@pytest.mark.parametrize("name", [b"", b"\x00\x0b", b"\x00\x0b" + bytes(31), b"\x00\x99" + bytes(32), bytes(34)])
def test_ak_name_must_be_a_tpm_name(name: bytes) -> None:
    with pytest.raises(AttestationError, match="name"):
        make_credential(P256.public_key(), name, bytes(32))


def test_unsupported_ek_keys_are_refused() -> None:
    for key in (
        rsa.generate_private_key(65537, 1024).public_key(),  # noqa: S505  (refused: the point)
        ec.generate_private_key(ec.SECP521R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
    ):
        with pytest.raises(AttestationError, match="endorsement key"):
            make_credential(key, AK_NAME, bytes(32))  # type: ignore[arg-type]


def test_ek_public_area_must_be_a_restricted_aes_cfb_decryption_key() -> None:
    not_ek = fakes.tpm_public(RSA2048.public_key())  # an AK-shaped signing key
    with pytest.raises(AttestationError, match="restricted decryption"):
        make_credential(not_ek, AK_NAME, bytes(32))


# -- KDFs against cryptography's independent implementations -----------------------------------------------------


def test_kdfa_matches_sp800_108_counter_mode() -> None:
    from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

    key, context = secrets.token_bytes(32), secrets.token_bytes(34)
    for bits in (128, 256, 384):
        expected = KBKDFHMAC(
            algorithm=hashes.SHA256(),
            mode=Mode.CounterMode,
            length=bits // 8,
            rlen=4,
            llen=4,
            location=CounterLocation.BeforeFixed,
            label=b"STORAGE",
            context=context,
            fixed=None,
        ).derive(key)
        assert kdfa(fakes.ALG_SHA256, key, b"STORAGE", context, b"", bits) == expected


def test_kdfe_matches_concat_kdf() -> None:
    z, u, v = secrets.token_bytes(48), secrets.token_bytes(48), secrets.token_bytes(48)
    for bits in (384, 512):
        expected = ConcatKDFHash(hashes.SHA384(), bits // 8, otherinfo=b"IDENTITY\x00" + u + v).derive(z)
        assert kdfe(fakes.ALG_SHA384, z, b"IDENTITY\x00", u, v, bits) == expected


# -- tpm2-pytss's own offline MakeCredential: same shapes, and the reference activation accepts both ---------------


@pytest.mark.parametrize(("ek", "name_alg", "sym_bits"), EKS)
def test_same_shapes_as_tpm2_pytss(
    ek: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, name_alg: int, sym_bits: int
) -> None:
    require_tpm2_pytss()
    from tpm2_pytss import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT, TPM2B_PUBLIC
    from tpm2_pytss.utils import make_credential as pytss_make_credential

    public = fakes.ek_public(ek.public_key(), name_alg=name_alg, sym_bits=sym_bits)
    pytss_public, _ = TPM2B_PUBLIC.unmarshal(public.marshal_tpm2b())
    secret = secrets.token_bytes(32)
    their_blob, their_secret = pytss_make_credential(pytss_public, secret, AK_NAME)
    our_blob, our_secret = make_credential(public, AK_NAME, secret)

    assert len(our_blob) == len(their_blob.marshal())
    assert len(our_secret) == len(their_secret.marshal())
    for data, cls in ((our_blob, TPM2B_ID_OBJECT), (our_secret, TPM2B_ENCRYPTED_SECRET)):
        _, used = cls.unmarshal(data)
        assert used == len(data)
    # the reference activation is itself checked against tpm2-pytss's output
    for blob, enc in ((their_blob.marshal(), their_secret.marshal()), (our_blob, our_secret)):
        got = fakes.activate_offline(
            ek, name_alg=name_alg, sym_bits=sym_bits, ak_name=AK_NAME, id_object=blob, encrypted_secret=enc
        )
        assert got == secret
