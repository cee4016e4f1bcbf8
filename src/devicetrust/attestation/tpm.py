"""TPM public areas (TPMT_PUBLIC), the attestation-key policy, and the server half of TPM2_MakeCredential.

References: TPM 2.0 Library Part 1 §11.4.9–11.4.10 (KDFa/KDFe), §24 (credential protection), Part 2 §12.2
(TPMT_PUBLIC); TCG EK Credential Profile 2.0 §B.3 (EK templates). Pure: bytes in, bytes out.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final, TypeAlias

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from . import _marshal as m
from .errors import AttestationError

__all__ = [
    "AK_NAME_ALG",
    "CREDENTIAL_LABEL",
    "MAX_AUTH_POLICY_BYTES",
    "MAX_CREDENTIAL_SECRET_BYTES",
    "MAX_ECC_PARAMETER_BYTES",
    "MAX_RSA_KEY_BITS",
    "MAX_TPM_PUBLIC_BYTES",
    "MIN_CREDENTIAL_SECRET_BYTES",
    "MIN_RSA_AK_BITS",
    "ECCParameters",
    "ECCPoint",
    "EKPublicKey",
    "ObjectAttributes",
    "RSAParameters",
    "Scheme",
    "SymmetricDef",
    "TPMPublic",
    "check_ak",
    "kdfa",
    "kdfe",
    "make_credential",
    "parse_tpm2b_public",
    "parse_tpmt_public",
]

#: sizeof(TPMT_PUBLIC) for the largest key we accept (RSA-4096 + a SHA-512 policy) is ~600 bytes; TPM2B_PUBLIC
#: on real TPMs never exceeds this.
MAX_TPM_PUBLIC_BYTES: Final = 1024
#: RSA moduli above 4096 bits are not produced by TPMs and only cost verification time
MAX_RSA_KEY_BITS: Final = 4096
MIN_RSA_KEY_BITS: Final = 1024
#: the weakest RSA attestation key we accept
MIN_RSA_AK_BITS: Final = 2048
#: a coordinate of the largest curve (P-521)
MAX_ECC_PARAMETER_BYTES: Final = 66
MAX_AUTH_POLICY_BYTES: Final = m.MAX_DIGEST_BYTES
#: the activation secret is a TPM2B_DIGEST; below 16 bytes it would be guessable
MIN_CREDENTIAL_SECRET_BYTES: Final = 16
MAX_CREDENTIAL_SECRET_BYTES: Final = 32
#: the only name algorithm we accept for attestation keys
AK_NAME_ALG: Final = m.ALG_SHA256
#: the label binding MakeCredential's seed to its purpose (Part 1 §24.4), NUL included
CREDENTIAL_LABEL: Final = b"IDENTITY\x00"

_CURVES: Final[dict[int, ec.EllipticCurve]] = {
    0x0003: ec.SECP256R1(),
    0x0004: ec.SECP384R1(),
    0x0005: ec.SECP521R1(),
}
CURVE_NIST_P256: Final = 0x0003
CURVE_NIST_P384: Final = 0x0004

_SYMMETRIC_ALGS: Final = frozenset({m.ALG_AES, m.ALG_SM4, m.ALG_CAMELLIA})
_RSA_SCHEMES: Final = frozenset({m.ALG_NULL, m.ALG_RSASSA, m.ALG_RSAPSS, m.ALG_RSAES, m.ALG_OAEP})
_ECC_SCHEMES: Final = frozenset(
    {m.ALG_NULL, m.ALG_ECDSA, m.ALG_ECDH, m.ALG_ECDAA, m.ALG_SM2, m.ALG_ECSCHNORR, m.ALG_ECMQV}
)
_KDF_SCHEMES: Final = frozenset({m.ALG_NULL, m.ALG_MGF1, m.ALG_KDF1_SP800_56A, m.ALG_KDF2, m.ALG_KDF1_SP800_108})
# schemes whose TPMU_ASYM_SCHEME member is empty (no hashAlg follows the scheme id)
_SCHEMES_WITHOUT_DETAILS: Final = frozenset({m.ALG_NULL, m.ALG_RSAES})


class ObjectAttributes(enum.IntFlag):
    """TPMA_OBJECT bits (Part 2 §8.3)."""

    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN_ENCRYPT = 1 << 18
    X509_SIGN = 1 << 19


@dataclass(frozen=True)
class SymmetricDef:
    """TPMT_SYM_DEF_OBJECT: ``algorithm`` ALG_NULL means none (then key_bits and mode are 0)."""

    algorithm: int = m.ALG_NULL
    key_bits: int = 0
    mode: int = 0


@dataclass(frozen=True)
class Scheme:
    """TPMT_RSA_SCHEME / TPMT_ECC_SCHEME / TPMT_KDF_SCHEME. ``count`` is used by ECDAA only."""

    algorithm: int = m.ALG_NULL
    hash_alg: int = m.ALG_NULL
    count: int = 0


@dataclass(frozen=True)
class RSAParameters:
    symmetric: SymmetricDef
    scheme: Scheme
    key_bits: int
    #: 0 means the default 65537, as on the wire
    exponent: int


@dataclass(frozen=True)
class ECCParameters:
    symmetric: SymmetricDef
    scheme: Scheme
    curve: int
    kdf: Scheme


@dataclass(frozen=True)
class ECCPoint:
    """TPMS_ECC_POINT with the coordinates exactly as marshalled (big-endian, as the TPM wrote them)."""

    x: bytes
    y: bytes


@dataclass(frozen=True)
class TPMPublic:
    """A parsed TPMT_PUBLIC. ``marshal()`` reproduces the wire bytes exactly, so ``name()`` is the TPM's."""

    type: int
    name_alg: int
    object_attributes: int
    auth_policy: bytes
    parameters: RSAParameters | ECCParameters
    #: RSA: the modulus; ECC: the point
    unique: bytes | ECCPoint

    def has(self, attributes: ObjectAttributes) -> bool:
        return (self.object_attributes & attributes) == attributes

    def marshal(self) -> bytes:
        """The TPMT_PUBLIC wire encoding."""
        out = [
            m.u16(self.type),
            m.u16(self.name_alg),
            m.u32(self.object_attributes),
            m.tpm2b(self.auth_policy),
        ]
        params = self.parameters
        if isinstance(params, RSAParameters) and isinstance(self.unique, bytes):
            out += [
                _marshal_symmetric(params.symmetric),
                _marshal_scheme(params.scheme),
                m.u16(params.key_bits),
                m.u32(params.exponent),
                m.tpm2b(self.unique),
            ]
        elif isinstance(params, ECCParameters) and isinstance(self.unique, ECCPoint):
            out += [
                _marshal_symmetric(params.symmetric),
                _marshal_scheme(params.scheme),
                m.u16(params.curve),
                _marshal_scheme(params.kdf),
                m.tpm2b(self.unique.x),
                m.tpm2b(self.unique.y),
            ]
        else:
            raise AttestationError("TPM public area: parameters do not match the key type")
        return b"".join(out)

    def marshal_tpm2b(self) -> bytes:
        """The TPM2B_PUBLIC wire encoding (size-prefixed)."""
        return m.tpm2b(self.marshal())

    def name(self) -> bytes:
        """The TPM object name: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC)."""
        return m.u16(self.name_alg) + m.digest(self.name_alg, self.marshal(), "TPM public area")

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a ``cryptography`` object; raises AttestationError if it is not a valid key."""
        params, unique = self.parameters, self.unique
        try:
            if isinstance(params, RSAParameters) and isinstance(unique, bytes):
                exponent = params.exponent or 65537
                return rsa.RSAPublicNumbers(exponent, int.from_bytes(unique, "big")).public_key()
            if isinstance(params, ECCParameters) and isinstance(unique, ECCPoint):
                curve = _CURVES[params.curve]
                x, y = int.from_bytes(unique.x, "big"), int.from_bytes(unique.y, "big")
                return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        except (ValueError, KeyError):
            raise AttestationError("TPM public area: the key is not a valid public key") from None
        raise AttestationError("TPM public area: parameters do not match the key type")


EKPublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | TPMPublic


def _marshal_symmetric(sym: SymmetricDef) -> bytes:
    if sym.algorithm == m.ALG_NULL:
        return m.u16(m.ALG_NULL)
    return m.u16(sym.algorithm) + m.u16(sym.key_bits) + m.u16(sym.mode)


def _marshal_scheme(scheme: Scheme) -> bytes:
    if scheme.algorithm in _SCHEMES_WITHOUT_DETAILS:
        return m.u16(scheme.algorithm)
    out = m.u16(scheme.algorithm) + m.u16(scheme.hash_alg)
    if scheme.algorithm == m.ALG_ECDAA:
        out += m.u16(scheme.count)
    return out


def _read_symmetric(r: m.Reader) -> SymmetricDef:
    alg = r.u16()
    if alg == m.ALG_NULL:
        return SymmetricDef()
    if alg not in _SYMMETRIC_ALGS:
        raise r.fail(f"unknown symmetric algorithm 0x{alg:04x}")
    return SymmetricDef(alg, r.u16(), r.u16())


def _read_scheme(r: m.Reader, allowed: frozenset[int], field: str) -> Scheme:
    alg = r.u16()
    if alg not in allowed:
        raise r.fail(f"unknown {field} 0x{alg:04x}")
    if alg in _SCHEMES_WITHOUT_DETAILS:
        return Scheme(alg)
    hash_alg = r.u16()
    if hash_alg not in m.HASH_ALGS:
        raise r.fail(f"unknown {field} hash 0x{hash_alg:04x}")
    count = r.u16() if alg == m.ALG_ECDAA else 0
    return Scheme(alg, hash_alg, count)


def _read_tpmt_public(r: m.Reader) -> TPMPublic:
    key_type = r.u16()
    name_alg = r.u16()
    if name_alg not in m.HASH_ALGS:
        raise r.fail(f"unknown name algorithm 0x{name_alg:04x}")
    attributes = r.u32()
    auth_policy = r.tpm2b(MAX_AUTH_POLICY_BYTES, "authPolicy")
    if auth_policy and len(auth_policy) != m.HASH_ALGS[name_alg][1]:
        raise r.fail("authPolicy size does not match the name algorithm")
    symmetric = _read_symmetric(r)
    parameters: RSAParameters | ECCParameters
    unique: bytes | ECCPoint
    if key_type == m.ALG_RSA:
        scheme = _read_scheme(r, _RSA_SCHEMES, "RSA scheme")
        key_bits, exponent = r.u16(), r.u32()
        if not MIN_RSA_KEY_BITS <= key_bits <= MAX_RSA_KEY_BITS or key_bits % 8:
            raise r.fail(f"unsupported RSA key size {key_bits}")
        unique = r.tpm2b(MAX_RSA_KEY_BITS // 8, "RSA modulus")
        if len(unique) * 8 != key_bits:
            raise r.fail("RSA modulus size does not match keyBits")
        parameters = RSAParameters(symmetric, scheme, key_bits, exponent)
    elif key_type == m.ALG_ECC:
        scheme = _read_scheme(r, _ECC_SCHEMES, "ECC scheme")
        curve = r.u16()
        if curve not in _CURVES:
            raise r.fail(f"unsupported curve 0x{curve:04x}")
        kdf = _read_scheme(r, _KDF_SCHEMES, "KDF scheme")
        size = (_CURVES[curve].key_size + 7) // 8
        unique = ECCPoint(r.tpm2b(size, "ECC x"), r.tpm2b(size, "ECC y"))
        parameters = ECCParameters(symmetric, scheme, curve, kdf)
    else:
        raise r.fail(f"unsupported key type 0x{key_type:04x}")
    return TPMPublic(key_type, name_alg, attributes, auth_policy, parameters, unique)


def parse_tpmt_public(data: bytes) -> TPMPublic:
    """Parse a marshalled TPMT_PUBLIC; the whole buffer must be consumed."""
    if len(data) > MAX_TPM_PUBLIC_BYTES:
        raise AttestationError(f"malformed TPM public area: more than {MAX_TPM_PUBLIC_BYTES} bytes")
    r = m.Reader(data, "TPM public area")
    public = _read_tpmt_public(r)
    r.end()
    return public


def parse_tpm2b_public(data: bytes) -> TPMPublic:
    """Parse a marshalled TPM2B_PUBLIC (16-bit size, then TPMT_PUBLIC); the whole buffer must be consumed."""
    r = m.Reader(data, "TPM public area")
    inner = r.tpm2b(MAX_TPM_PUBLIC_BYTES, "TPM2B_PUBLIC")
    r.end()
    return parse_tpmt_public(inner)


_AK_REQUIRED: Final = (
    ObjectAttributes.RESTRICTED
    | ObjectAttributes.SIGN_ENCRYPT
    | ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
)


def check_ak(ak: TPMPublic) -> None:
    """Require a TPM-resident attestation key: restricted, sign-only, fixedTPM, fixedParent, generated inside
    the TPM (sensitiveDataOrigin), name algorithm SHA-256, and ECDSA-P256 or RSASSA-2048+ with SHA-256.

    Restricted + fixedTPM is what makes a quote trustworthy: the TPM refuses to sign externally supplied data
    that looks like a TPMS_ATTEST with such a key, and the key can never leave this TPM.
    """
    missing = [flag.name for flag in ObjectAttributes if flag & _AK_REQUIRED and not ak.has(flag)]
    if missing:
        names = ", ".join(str(name).lower() for name in missing)
        raise AttestationError(f"attestation key is not acceptable: missing attribute(s) {names}")
    if ak.has(ObjectAttributes.DECRYPT):
        raise AttestationError("attestation key is not acceptable: it can decrypt (must be sign-only)")
    if ak.name_alg != AK_NAME_ALG:
        raise AttestationError("attestation key is not acceptable: name algorithm must be SHA-256")
    params = ak.parameters
    if params.symmetric.algorithm != m.ALG_NULL:
        raise AttestationError("attestation key is not acceptable: a signing key has no symmetric algorithm")
    if isinstance(params, ECCParameters):
        if params.curve != CURVE_NIST_P256:
            raise AttestationError("attestation key is not acceptable: ECC keys must use curve P-256")
        expected = Scheme(m.ALG_ECDSA, m.ALG_SHA256)
    else:
        if params.key_bits < MIN_RSA_AK_BITS:
            raise AttestationError(
                f"attestation key is not acceptable: RSA keys must have at least {MIN_RSA_AK_BITS} bits"
            )
        expected = Scheme(m.ALG_RSASSA, m.ALG_SHA256)
    if params.scheme != expected:
        raise AttestationError(
            "attestation key is not acceptable: scheme must be ECDSA-SHA256 (ECC) or RSASSA-SHA256 (RSA)"
        )
    ak.public_key()  # the point / modulus itself must be valid


def kdfa(hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa (Part 1 §11.4.10.2): SP800-108 counter-mode HMAC. ``label`` without its NUL (added here)."""
    name = m.hash_name(hash_alg, "KDFa")
    fixed = label + b"\x00" + context_u + context_v + m.u32(bits)
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hmac.new(key, m.u32(counter) + fixed, name).digest()
        counter += 1
    return out[: bits // 8]


def kdfe(hash_alg: int, z: bytes, use: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:
    """KDFe (Part 1 §11.4.10.3): SP800-56A concatenation KDF. ``use`` includes its NUL."""
    name = m.hash_name(hash_alg, "KDFe")
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hashlib.new(name, m.u32(counter) + z + use + party_u + party_v).digest()
        counter += 1
    return out[: bits // 8]


_HASHES: Final[dict[int, type[hashes.HashAlgorithm]]] = {
    m.ALG_SHA1: hashes.SHA1,
    m.ALG_SHA256: hashes.SHA256,
    m.ALG_SHA384: hashes.SHA384,
    m.ALG_SHA512: hashes.SHA512,
}


def _ek_parameters(ek: EKPublicKey) -> tuple[rsa.RSAPublicKey | ec.EllipticCurvePublicKey, int, int]:
    """(key, name algorithm, AES key bits) of the EK. A bare key gets the TCG EK template for its type:
    RSA-2048 and P-256 use SHA-256 + AES-128-CFB (templates L-1, L-2); P-384 uses SHA-384 + AES-256-CFB (H-3,
    which is what swtpm and high-range EK certificates use)."""
    if isinstance(ek, TPMPublic):
        sym = ek.parameters.symmetric
        if not ek.has(ObjectAttributes.RESTRICTED | ObjectAttributes.DECRYPT):
            raise AttestationError("endorsement key is not a restricted decryption key")
        if sym.algorithm != m.ALG_AES or sym.mode != m.ALG_CFB or sym.key_bits not in (128, 192, 256):
            raise AttestationError("endorsement key must use AES-CFB as its symmetric algorithm")
        if ek.name_alg not in _HASHES or ek.name_alg == m.ALG_SHA1:
            raise AttestationError("endorsement key has an unsupported name algorithm")
        return ek.public_key(), ek.name_alg, sym.key_bits
    if isinstance(ek, rsa.RSAPublicKey):
        if ek.key_size != 2048:
            raise AttestationError("RSA endorsement keys must be RSA-2048 (pass the EK public area otherwise)")
        return ek, m.ALG_SHA256, 128
    if isinstance(ek, ec.EllipticCurvePublicKey):
        if isinstance(ek.curve, ec.SECP256R1):
            return ek, m.ALG_SHA256, 128
        if isinstance(ek.curve, ec.SECP384R1):
            return ek, m.ALG_SHA384, 256
    raise AttestationError("endorsement key must be RSA-2048, ECC P-256 or ECC P-384")


def _validate_name(name: bytes, what: str) -> None:
    if len(name) < 2:
        raise AttestationError(f"{what} is not a TPM object name")
    alg = int.from_bytes(name[:2], "big")
    if alg not in m.HASH_ALGS or len(name) != 2 + m.HASH_ALGS[alg][1]:
        raise AttestationError(f"{what} is not a TPM object name")


def make_credential(ek_public_key: EKPublicKey, ak_name: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """Protect ``secret`` so that only the TPM holding ``ek_public_key`` can recover it with
    TPM2_ActivateCredential, and only for the object named ``ak_name`` loaded in that same TPM (Part 1 §24).

    Returns (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET), both marshalled and size-prefixed.
    """
    key, name_alg, sym_bits = _ek_parameters(ek_public_key)
    _validate_name(ak_name, "attestation key name")
    if not MIN_CREDENTIAL_SECRET_BYTES <= len(secret) <= MAX_CREDENTIAL_SECRET_BYTES:
        raise AttestationError(
            f"credential secret must be {MIN_CREDENTIAL_SECRET_BYTES}–{MAX_CREDENTIAL_SECRET_BYTES} bytes"
        )
    hash_name, hash_size = m.HASH_ALGS[name_alg]
    if isinstance(key, rsa.RSAPublicKey):
        seed = secrets.token_bytes(hash_size)
        hash_cls = _HASHES[name_alg]
        encrypted_seed = key.encrypt(
            seed, padding.OAEP(mgf=padding.MGF1(hash_cls()), algorithm=hash_cls(), label=CREDENTIAL_LABEL)
        )
    else:
        # One-pass Diffie-Hellman (Part 1 §C.6.1): the ephemeral public point is the "encrypted" seed.
        ephemeral = ec.generate_private_key(key.curve)
        size = (key.curve.key_size + 7) // 8
        ephemeral_numbers = ephemeral.public_key().public_numbers()
        ex, ey = ephemeral_numbers.x.to_bytes(size, "big"), ephemeral_numbers.y.to_bytes(size, "big")
        z = ephemeral.exchange(ec.ECDH(), key)
        ek_x = key.public_numbers().x.to_bytes(size, "big")
        seed = kdfe(name_alg, z, CREDENTIAL_LABEL, ex, ek_x, hash_size * 8)
        encrypted_seed = m.tpm2b(ex) + m.tpm2b(ey)
    storage_key = kdfa(name_alg, seed, b"STORAGE", ak_name, b"", sym_bits)
    # The IV is zero: the key is single-use, derived from a fresh seed (Part 1 §24.4).
    encryptor = Cipher(algorithms.AES(storage_key), CFB(b"\x00" * 16)).encryptor()
    enc_identity = encryptor.update(m.tpm2b(secret)) + encryptor.finalize()
    hmac_key = kdfa(name_alg, seed, b"INTEGRITY", b"", b"", hash_size * 8)
    outer_hmac = hmac.new(hmac_key, enc_identity + ak_name, hash_name).digest()
    id_object = m.tpm2b(m.tpm2b(outer_hmac) + enc_identity)
    return id_object, m.tpm2b(encrypted_seed)
