"""A software stand-in for a TPM, for pure tests: AK public areas from ``cryptography`` keys, signed quotes,
and a reference ActivateCredential written from the spec (Part 1 §24) independently of the code under test."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from devicetrust.attestation import (
    Attest,
    ClockInfo,
    ECCParameters,
    ECCPoint,
    ECDSASignature,
    ObjectAttributes,
    PCRSelection,
    RSAParameters,
    RSASSASignature,
    Scheme,
    SymmetricDef,
    TPMPublic,
    pcr_digest,
)

ALG_RSA, ALG_ECC = 0x0001, 0x0023
ALG_SHA1, ALG_SHA256, ALG_SHA384 = 0x0004, 0x000B, 0x000C
ALG_AES, ALG_CFB, ALG_NULL = 0x0006, 0x0043, 0x0010
ALG_RSASSA, ALG_ECDSA = 0x0014, 0x0018
CURVE_P256, CURVE_P384 = 0x0003, 0x0004

#: One key of each kind for the tests that need one and not a particular one (RSA keys are slow to make).
P256 = ec.generate_private_key(ec.SECP256R1())
P384 = ec.generate_private_key(ec.SECP384R1())
RSA2048 = rsa.generate_private_key(65537, 2048)

AK_ATTRIBUTES = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.USER_WITH_AUTH
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.SIGN_ENCRYPT
    | ObjectAttributes.NO_DA
)
EK_ATTRIBUTES = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.ADMIN_WITH_POLICY
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.DECRYPT
)
_CURVE_IDS = {"secp256r1": CURVE_P256, "secp384r1": CURVE_P384, "secp521r1": 0x0005}
_HASHES = {ALG_SHA256: hashes.SHA256, ALG_SHA384: hashes.SHA384}


def tpm_public(
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    attributes: int = AK_ATTRIBUTES,
    name_alg: int = ALG_SHA256,
    scheme: Scheme | None = None,
    symmetric: SymmetricDef | None = None,
    auth_policy: bytes = b"",
) -> TPMPublic:
    """The TPMT_PUBLIC a TPM would report for ``key`` (by default: an AK)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        numbers = key.public_numbers()
        return TPMPublic(
            type=ALG_ECC,
            name_alg=name_alg,
            object_attributes=int(attributes),
            auth_policy=auth_policy,
            parameters=ECCParameters(
                symmetric=symmetric or SymmetricDef(),
                scheme=scheme or Scheme(ALG_ECDSA, ALG_SHA256),
                curve=_CURVE_IDS[key.curve.name],
                kdf=Scheme(),
            ),
            unique=ECCPoint(numbers.x.to_bytes(size, "big"), numbers.y.to_bytes(size, "big")),
        )
    numbers_rsa = key.public_numbers()
    return TPMPublic(
        type=ALG_RSA,
        name_alg=name_alg,
        object_attributes=int(attributes),
        auth_policy=auth_policy,
        parameters=RSAParameters(
            symmetric=symmetric or SymmetricDef(),
            scheme=scheme or Scheme(ALG_RSASSA, ALG_SHA256),
            key_bits=key.key_size,
            exponent=0 if numbers_rsa.e == 65537 else numbers_rsa.e,
        ),
        unique=numbers_rsa.n.to_bytes(key.key_size // 8, "big"),
    )


def ek_public(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, *, name_alg: int, sym_bits: int) -> TPMPublic:
    """An EK-shaped public area (restricted decryption key, AES-CFB)."""
    return tpm_public(
        key,
        attributes=EK_ATTRIBUTES,
        name_alg=name_alg,
        scheme=Scheme(),
        symmetric=SymmetricDef(ALG_AES, sym_bits, ALG_CFB),
        auth_policy=bytes(hashlib.new("sha256" if name_alg == ALG_SHA256 else "sha384").digest_size),
    )


def sign(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, data: bytes) -> bytes:
    """A marshalled TPMT_SIGNATURE by ``key`` over SHA-256(``data``), as a TPM writes it."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        size = (key.curve.key_size + 7) // 8
        return ECDSASignature(ALG_SHA256, r.to_bytes(size, "big"), s.to_bytes(size, "big")).marshal()
    return RSASSASignature(ALG_SHA256, key.sign(data, padding.PKCS1v15(), hashes.SHA256())).marshal()


def attest(
    nonce: bytes,
    pcr_values: Mapping[int, bytes],
    *,
    pcrs: Sequence[int] | None = None,
    selections: tuple[PCRSelection, ...] | None = None,
    digest: bytes | None = None,
) -> Attest:
    pcrs = sorted(pcr_values) if pcrs is None else list(pcrs)
    return Attest(
        qualified_signer=b"\x00\x0b" + bytes(32),
        extra_data=nonce,
        clock_info=ClockInfo(clock=123456, reset_count=1, restart_count=0, safe=True),
        firmware_version=0x2019102300163636,
        pcr_selections=selections or (PCRSelection.of(ALG_SHA256, pcrs),),
        pcr_digest=pcr_digest(pcrs, pcr_values) if digest is None else digest,
    )


def pcr_bank(pcrs: Sequence[int] = range(8)) -> dict[int, bytes]:
    return {i: hashlib.sha256(b"pcr %d" % i).digest() for i in pcrs}


# -- reference ActivateCredential (the TPM's side), built on cryptography's own KDFs -----------------------------


def _kdfa(hash_alg: int, key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    return KBKDFHMAC(
        algorithm=_HASHES[hash_alg](),
        mode=Mode.CounterMode,
        length=bits // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context,
        fixed=None,
    ).derive(key)


def activate_offline(
    ek_private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    *,
    name_alg: int,
    sym_bits: int,
    ak_name: bytes,
    id_object: bytes,
    encrypted_secret: bytes,
) -> bytes:
    """What TPM2_ActivateCredential does; raises ValueError where the TPM would fail."""
    hash_cls = _HASHES[name_alg]
    digest_size, hash_name = hash_cls().digest_size, hash_cls().name
    assert int.from_bytes(encrypted_secret[:2], "big") == len(encrypted_secret) - 2
    enc = encrypted_secret[2:]
    if isinstance(ek_private, rsa.RSAPrivateKey):
        seed = ek_private.decrypt(
            enc, padding.OAEP(mgf=padding.MGF1(hash_cls()), algorithm=hash_cls(), label=b"IDENTITY\x00")
        )
    else:
        xlen = int.from_bytes(enc[:2], "big")
        x = enc[2 : 2 + xlen]
        ylen = int.from_bytes(enc[2 + xlen : 4 + xlen], "big")
        y = enc[4 + xlen : 4 + xlen + ylen]
        assert len(enc) == 4 + xlen + ylen
        peer = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ek_private.curve
        ).public_key()
        z = ek_private.exchange(ec.ECDH(), peer)
        size = (ek_private.curve.key_size + 7) // 8
        ek_x = ek_private.public_key().public_numbers().x.to_bytes(size, "big")
        seed = ConcatKDFHash(hash_cls(), digest_size, otherinfo=b"IDENTITY\x00" + x + ek_x).derive(z)
    assert int.from_bytes(id_object[:2], "big") == len(id_object) - 2
    body = id_object[2:]
    hmac_size = int.from_bytes(body[:2], "big")
    outer_hmac, enc_identity = body[2 : 2 + hmac_size], body[2 + hmac_size :]
    hmac_key = _kdfa(name_alg, seed, b"INTEGRITY", b"", digest_size * 8)
    expected = hmac.new(hmac_key, enc_identity + ak_name, hash_name).digest()
    if not hmac.compare_digest(outer_hmac, expected):
        raise ValueError("integrity check failed")
    storage_key = _kdfa(name_alg, seed, b"STORAGE", ak_name, sym_bits)
    decryptor = Cipher(algorithms.AES(storage_key), CFB(bytes(16))).decryptor()
    plain = decryptor.update(enc_identity) + decryptor.finalize()
    size = int.from_bytes(plain[:2], "big")
    if size != len(plain) - 2:
        raise ValueError("bad credential")
    return plain[2:]
