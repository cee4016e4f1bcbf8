"""Strict big-endian readers/writers for TPM 2.0 wire structures (TPM 2.0 Part 2), plus the algorithm tables.

Every reader is bounded: a TPM2B larger than the caller's limit, a truncated buffer or leftover bytes raise
:class:`AttestationError` naming the structure — never ``struct.error`` or ``IndexError``.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

from .errors import AttestationError

# TPM_ALG_ID values used here (TCG Algorithm Registry).
ALG_RSA: Final = 0x0001
ALG_SHA1: Final = 0x0004
ALG_HMAC: Final = 0x0005
ALG_AES: Final = 0x0006
ALG_KEYEDHASH: Final = 0x0008
ALG_XOR: Final = 0x000A
ALG_SHA256: Final = 0x000B
ALG_SHA384: Final = 0x000C
ALG_SHA512: Final = 0x000D
ALG_NULL: Final = 0x0010
ALG_SM4: Final = 0x0013
ALG_RSASSA: Final = 0x0014
ALG_RSAES: Final = 0x0015
ALG_RSAPSS: Final = 0x0016
ALG_OAEP: Final = 0x0017
ALG_ECDSA: Final = 0x0018
ALG_ECDH: Final = 0x0019
ALG_ECDAA: Final = 0x001A
ALG_SM2: Final = 0x001B
ALG_ECSCHNORR: Final = 0x001C
ALG_ECMQV: Final = 0x001D
ALG_KDF1_SP800_56A: Final = 0x0020
ALG_KDF2: Final = 0x0021
ALG_KDF1_SP800_108: Final = 0x0022
ALG_MGF1: Final = 0x0007
ALG_ECC: Final = 0x0023
ALG_SYMCIPHER: Final = 0x0025
ALG_CAMELLIA: Final = 0x0026
ALG_CFB: Final = 0x0043

#: hash algorithms we can compute, with their hashlib name and digest size
HASH_ALGS: Final[dict[int, tuple[str, int]]] = {
    ALG_SHA1: ("sha1", 20),
    ALG_SHA256: ("sha256", 32),
    ALG_SHA384: ("sha384", 48),
    ALG_SHA512: ("sha512", 64),
}

#: largest digest of any supported hash (TPMU_HA)
MAX_DIGEST_BYTES: Final = 64
#: a TPM2B_NAME of an object: 2-byte algorithm + digest
MAX_NAME_BYTES: Final = 2 + MAX_DIGEST_BYTES


def hash_name(alg: int, what: str) -> str:
    try:
        return HASH_ALGS[alg][0]
    except KeyError:
        raise AttestationError(f"{what}: unsupported hash algorithm 0x{alg:04x}") from None


def digest(alg: int, data: bytes, what: str) -> bytes:
    return hashlib.new(hash_name(alg, what), data).digest()


def digest_size(alg: int, what: str) -> int:
    try:
        return HASH_ALGS[alg][1]
    except KeyError:
        raise AttestationError(f"{what}: unsupported hash algorithm 0x{alg:04x}") from None


class Reader:
    """Consumes a byte string front to back; ``order`` is "big" for TPM structures, "little" for event logs."""

    __slots__ = ("_data", "_order", "_pos", "what")

    def __init__(self, data: bytes, what: str, *, order: Literal["big", "little"] = "big") -> None:
        self._data = bytes(data)
        self._pos = 0
        self._order: Literal["big", "little"] = order
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    @property
    def position(self) -> int:
        return self._pos

    def fail(self, reason: str) -> AttestationError:
        return AttestationError(f"malformed {self.what}: {reason}")

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.remaining:
            raise self.fail("truncated")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), self._order)

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def u64(self) -> int:
        return self.uint(8)

    def tpm2b(self, limit: int, field: str) -> bytes:
        """A TPM2B: 16-bit size then that many bytes, at most ``limit``."""
        size = self.u16()
        if size > limit:
            raise self.fail(f"{field} is {size} bytes, more than {limit}")
        return self.take(size)

    def end(self) -> None:
        if self.remaining:
            raise self.fail(f"{self.remaining} trailing bytes")


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def tpm2b(data: bytes) -> bytes:
    return u16(len(data)) + data
