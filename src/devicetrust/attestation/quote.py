"""TPM2_Quote verification: TPMS_ATTEST (Part 2 §10.12), TPMT_SIGNATURE (§11.3.4), PCR selection and digest."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from . import _marshal as m
from .errors import AttestationError
from .tpm import MAX_ECC_PARAMETER_BYTES, TPMPublic, check_ak

__all__ = [
    "MAX_ATTEST_BYTES",
    "MAX_NONCE_BYTES",
    "MAX_PCR_INDEX",
    "MAX_SIGNATURE_BYTES",
    "MIN_NONCE_BYTES",
    "PCR_DIGEST_BYTES",
    "TPM_GENERATED_VALUE",
    "TPM_ST_ATTEST_QUOTE",
    "Attest",
    "ClockInfo",
    "ECDSASignature",
    "PCRSelection",
    "QuoteInfo",
    "RSASSASignature",
    "TPMSignature",
    "parse_attest",
    "parse_signature",
    "pcr_digest",
    "verify_quote",
]

#: TPM_GENERATED_VALUE: every TPMS_ATTEST starts with it; a restricted key refuses to sign data that does
TPM_GENERATED_VALUE: Final = 0xFF544347
TPM_ST_ATTEST_QUOTE: Final = 0x8018
#: a quote over 24 PCRs in a few banks with a SHA-512 qualified name is ~250 bytes
MAX_ATTEST_BYTES: Final = 1024
#: an RSA-4096 RSASSA signature is 518 bytes marshalled
MAX_SIGNATURE_BYTES: Final = 1024
#: qualifyingData is a TPM2B_DATA (≤ sizeof(TPMT_HA)); the server's nonces are 20 bytes
MAX_NONCE_BYTES: Final = 64
#: a shorter nonce could be guessed or precomputed
MIN_NONCE_BYTES: Final = 16
#: PC Client TPMs have PCRs 0–23 (three select bytes)
MAX_PCR_INDEX: Final = 23
#: TPMS_PCR_SELECTION.sizeofSelect upper bound (PCR_SELECT_MAX)
MAX_PCR_SELECT_BYTES: Final = 4
#: TPML_PCR_SELECTION.count upper bound (HASH_COUNT)
MAX_PCR_BANKS: Final = 16
#: only the SHA-256 bank is quoted and replayed
PCR_BANK: Final = m.ALG_SHA256
PCR_DIGEST_BYTES: Final = 32


@dataclass(frozen=True)
class ClockInfo:
    """TPMS_CLOCK_INFO, as the TPM signs it into every quote."""

    #: milliseconds the TPM has been powered since its clock was last set
    clock: int
    #: TPM resets (reboots) since the last TPM2_Clear
    reset_count: int
    #: TPM2_Shutdown(STATE)/Startup(STATE) cycles (hibernation) since the last reset
    restart_count: int
    #: no clock value reported before can have been greater than this one
    safe: bool


@dataclass(frozen=True)
class PCRSelection:
    """TPMS_PCR_SELECTION: one bank's bitmap (bit i of byte i//8 selects PCR i), kept raw for exact
    marshalling."""

    hash_alg: int
    select: bytes

    @property
    def pcrs(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.select) * 8) if (self.select[i // 8] >> (i % 8)) & 1)

    @classmethod
    def of(cls, hash_alg: int, pcrs: Sequence[int], size: int = 3) -> PCRSelection:
        bitmap = bytearray(size)
        for index in pcrs:
            bitmap[index // 8] |= 1 << (index % 8)
        return cls(hash_alg, bytes(bitmap))


@dataclass(frozen=True)
class Attest:
    """A TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE."""

    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcr_selections: tuple[PCRSelection, ...]
    pcr_digest: bytes

    def marshal(self) -> bytes:
        out = [
            m.u32(TPM_GENERATED_VALUE),
            m.u16(TPM_ST_ATTEST_QUOTE),
            m.tpm2b(self.qualified_signer),
            m.tpm2b(self.extra_data),
            m.u64(self.clock_info.clock),
            m.u32(self.clock_info.reset_count),
            m.u32(self.clock_info.restart_count),
            bytes([self.clock_info.safe]),
            m.u64(self.firmware_version),
            m.u32(len(self.pcr_selections)),
        ]
        for sel in self.pcr_selections:
            out += [m.u16(sel.hash_alg), bytes([len(sel.select)]), sel.select]
        out.append(m.tpm2b(self.pcr_digest))
        return b"".join(out)


@dataclass(frozen=True)
class ECDSASignature:
    hash_alg: int
    r: bytes
    s: bytes

    def marshal(self) -> bytes:
        return m.u16(m.ALG_ECDSA) + m.u16(self.hash_alg) + m.tpm2b(self.r) + m.tpm2b(self.s)


@dataclass(frozen=True)
class RSASSASignature:
    hash_alg: int
    signature: bytes

    def marshal(self) -> bytes:
        return m.u16(m.ALG_RSASSA) + m.u16(self.hash_alg) + m.tpm2b(self.signature)


TPMSignature: TypeAlias = ECDSASignature | RSASSASignature


@dataclass(frozen=True)
class QuoteInfo:
    """What a verified quote tells: the TPM's clock, its firmware version, the PCRs.

    The TPM obfuscates resetCount/restartCount for keys outside the endorsement hierarchy (an AK under the SRK),
    so only their changes between quotes of the same AK mean anything (a reboot); ``clock_info.clock`` is plain.
    """

    clock_info: ClockInfo
    firmware_version: int
    pcr_digest: bytes
    pcrs: tuple[int, ...]


def parse_attest(data: bytes) -> Attest:
    """Parse a TPMS_ATTEST that must be a quote; the whole buffer must be consumed."""
    if len(data) > MAX_ATTEST_BYTES:
        raise AttestationError(f"malformed quote: more than {MAX_ATTEST_BYTES} bytes")
    r = m.Reader(data, "quote")
    if r.u32() != TPM_GENERATED_VALUE:
        raise r.fail("not generated by a TPM (bad magic)")
    if r.u16() != TPM_ST_ATTEST_QUOTE:
        raise r.fail("attestation is not a quote")
    signer = r.tpm2b(m.MAX_NAME_BYTES, "qualifiedSigner")
    extra = r.tpm2b(MAX_NONCE_BYTES, "extraData")
    clock = ClockInfo(r.u64(), r.u32(), r.u32(), _read_bool(r))
    firmware = r.u64()
    count = r.u32()
    if count > MAX_PCR_BANKS:
        raise r.fail(f"more than {MAX_PCR_BANKS} PCR banks")
    selections = []
    for _ in range(count):
        alg = r.u16()
        size = r.u8()
        if size > MAX_PCR_SELECT_BYTES:
            raise r.fail("PCR selection too large")
        selections.append(PCRSelection(alg, r.take(size)))
    pcr_digest_value = r.tpm2b(m.MAX_DIGEST_BYTES, "pcrDigest")
    r.end()
    return Attest(signer, extra, clock, firmware, tuple(selections), pcr_digest_value)


def _read_bool(r: m.Reader) -> bool:
    value = r.u8()
    if value > 1:
        raise r.fail("bad TPMI_YES_NO")
    return value == 1


def parse_signature(data: bytes) -> TPMSignature:
    """Parse a TPMT_SIGNATURE (ECDSA or RSASSA); the whole buffer must be consumed."""
    if len(data) > MAX_SIGNATURE_BYTES:
        raise AttestationError(f"malformed signature: more than {MAX_SIGNATURE_BYTES} bytes")
    r = m.Reader(data, "signature")
    alg = r.u16()
    hash_alg = r.u16()
    sig: TPMSignature
    if alg == m.ALG_ECDSA:
        sig = ECDSASignature(hash_alg, r.tpm2b(MAX_ECC_PARAMETER_BYTES, "r"), r.tpm2b(MAX_ECC_PARAMETER_BYTES, "s"))
    elif alg == m.ALG_RSASSA:
        sig = RSASSASignature(hash_alg, r.tpm2b(MAX_SIGNATURE_BYTES, "RSA signature"))
    else:
        raise r.fail(f"unsupported signature algorithm 0x{alg:04x}")
    r.end()
    return sig


def pcr_digest(pcrs: Sequence[int], pcr_values: Mapping[int, bytes]) -> bytes:
    """SHA-256 over the selected PCR values in ascending index order (the order the TPM concatenates them)."""
    return hashlib.sha256(b"".join(pcr_values[i] for i in sorted(pcrs))).digest()


def _expected_pcrs(pcr_selection: Sequence[int], pcr_values: Mapping[int, bytes]) -> tuple[int, ...]:
    pcrs = tuple(sorted(set(pcr_selection)))
    if not pcrs or len(pcrs) != len(pcr_selection):
        raise AttestationError("PCR selection must be non-empty and without duplicates")
    if pcrs[0] < 0 or pcrs[-1] > MAX_PCR_INDEX:
        raise AttestationError(f"PCR indices must be 0–{MAX_PCR_INDEX}")
    if set(pcr_values) != set(pcrs):
        raise AttestationError("PCR values do not match the PCR selection")
    if any(len(pcr_values[i]) != PCR_DIGEST_BYTES for i in pcrs):
        raise AttestationError(f"PCR values must be {PCR_DIGEST_BYTES}-byte SHA-256 digests")
    return pcrs


def _verify_signature(ak: TPMPublic, data: bytes, sig: TPMSignature) -> None:
    if sig.hash_alg != m.ALG_SHA256:
        raise AttestationError("quote signature must use SHA-256")
    key = ak.public_key()
    try:
        if isinstance(sig, ECDSASignature) and isinstance(key, ec.EllipticCurvePublicKey):
            # The TPM writes r and s at the full coordinate size; anything else is a non-canonical encoding.
            size = (key.curve.key_size + 7) // 8
            if len(sig.r) != size or len(sig.s) != size:
                raise AttestationError("quote signature is not valid for the attestation key")
            der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
            key.verify(der, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(sig, RSASSASignature) and not isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig.signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise AttestationError("quote signature algorithm does not match the attestation key")
    except InvalidSignature:
        raise AttestationError("quote signature is not valid for the attestation key") from None


def verify_quote(
    ak: TPMPublic,
    attest: bytes,
    signature: bytes,
    *,
    nonce: bytes,
    pcr_selection: Sequence[int],
    pcr_values: Mapping[int, bytes],
) -> QuoteInfo:
    """Verify a TPM2_Quote: signed by ``ak`` over SHA-256(``attest``), fresh (extraData == ``nonce``), over
    exactly the SHA-256 PCRs in ``pcr_selection``, whose digest matches ``pcr_values``. Raises
    AttestationError otherwise.
    """
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        raise AttestationError(f"quote nonce must be {MIN_NONCE_BYTES}–{MAX_NONCE_BYTES} bytes")
    pcrs = _expected_pcrs(pcr_selection, pcr_values)
    check_ak(ak)
    if len(attest) > MAX_ATTEST_BYTES:
        raise AttestationError(f"malformed quote: more than {MAX_ATTEST_BYTES} bytes")
    # Authenticate before interpreting: everything parsed below was signed by the TPM.
    _verify_signature(ak, attest, parse_signature(signature))
    info = parse_attest(attest)
    if not hmac.compare_digest(info.extra_data, nonce):
        raise AttestationError("quote nonce does not match the challenge")
    if len(info.pcr_selections) != 1 or info.pcr_selections[0].hash_alg != PCR_BANK:
        raise AttestationError("quote must cover exactly the SHA-256 PCR bank")
    if info.pcr_selections[0].pcrs != pcrs:
        raise AttestationError("quote covers different PCRs than requested")
    if not hmac.compare_digest(info.pcr_digest, pcr_digest(pcrs, pcr_values)):
        raise AttestationError("PCR values do not match the quoted PCR digest")
    return QuoteInfo(info.clock_info, info.firmware_version, info.pcr_digest, pcrs)
