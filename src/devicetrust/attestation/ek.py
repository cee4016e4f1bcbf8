"""Endorsement key certificates: parse, chain to the configured manufacturer CAs, classify the attestation.

cryptography's stock X.509 verifier rejects EK certificates (their EKU is 2.23.133.8.1, not client auth), so
the chain is checked link by link with ``verify_directly_issued_by`` plus basic constraints, key usage and
validity.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import AttestationError

__all__ = [
    "MAX_EK_CERT_BYTES",
    "MAX_EK_CHAIN_DEPTH",
    "OID_TCG_KP_EK_CERTIFICATE",
    "AttestationType",
    "EKAttestation",
    "EKInfo",
    "attestation_type",
    "ek_public_matches",
    "evaluate_ek",
    "load_ek_certificate",
    "parse_ek_certificate",
    "verify_ek_certificate",
]

#: EK certificates live in NV indices of at most ~2 KiB; RSA-4096-signed ones with long SANs stay under 4 KiB
MAX_EK_CERT_BYTES: Final = 8 * 1024
#: EK → intermediate(s) → root: vendors use at most two intermediates
MAX_EK_CHAIN_DEPTH: Final = 4
#: a PEM bundle of allowed CAs larger than this is a configuration mistake
MAX_CA_BUNDLE_BYTES: Final = 1024 * 1024
#: ASN.1 SEQUENCE tag that starts every DER certificate
_DER_SEQUENCE: Final = 0x30
#: TPM 1.2-style stored-certificate header some vendors keep (tag 0x1001, type, size, tag 0x1002): 7 bytes
_TCG_STORED_CERT_TAG: Final = b"\x10\x01"
_TCG_STORED_CERT_HEADER_BYTES: Final = 7

OID_TCG_KP_EK_CERTIFICATE: Final = x509.ObjectIdentifier("2.23.133.8.1")
_OID_TPM_MANUFACTURER: Final = x509.ObjectIdentifier("2.23.133.2.1")
_OID_TPM_MODEL: Final = x509.ObjectIdentifier("2.23.133.2.2")
_OID_TPM_VERSION: Final = x509.ObjectIdentifier("2.23.133.2.3")

AttestationType: TypeAlias = Literal["tpm_ekpub", "tpm_ekcert", "tpm_ekcert_trusted"]
EKKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class EKInfo:
    certificate: x509.Certificate
    #: lower-case hex, as stored in the device credential (tpm_ekcert_serial)
    serial: str
    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    #: from the subjectAltName directoryName (TCG EK Credential Profile §3.2.9), when present
    tpm_manufacturer: str | None
    tpm_model: str | None
    tpm_version: str | None
    #: subjects from the EK's issuer up to the allowed CA it chained to; empty when not verified
    chain: tuple[str, ...] = ()

    def public_key(self) -> EKKey:
        return _ek_key(self.certificate)


@dataclass(frozen=True)
class EKAttestation:
    type: AttestationType
    ek_public_key: EKKey
    ek_info: EKInfo | None


def _strip_to_der(blob: bytes) -> bytes:
    """The DER certificate inside an NV blob: drop a TCG stored-cert header and any trailing padding."""
    if len(blob) > MAX_EK_CERT_BYTES:
        raise AttestationError(f"EK certificate larger than {MAX_EK_CERT_BYTES} bytes")
    if blob[:2] == _TCG_STORED_CERT_TAG:
        blob = blob[_TCG_STORED_CERT_HEADER_BYTES:]
    if len(blob) < 2 or blob[0] != _DER_SEQUENCE:
        raise AttestationError("EK certificate is not DER")
    first = blob[1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if not 1 <= count <= 2 or len(blob) < 2 + count:
            raise AttestationError("EK certificate is not DER")
        header, length = 2 + count, int.from_bytes(blob[2 : 2 + count], "big")
    if header + length > len(blob):
        raise AttestationError("EK certificate is truncated")
    return blob[: header + length]


def load_ek_certificate(ek_cert_der: bytes) -> x509.Certificate:
    """Parse an EK certificate as read from the TPM's NV (header and padding tolerated)."""
    try:
        return x509.load_der_x509_certificate(_strip_to_der(ek_cert_der))
    except ValueError:
        raise AttestationError("EK certificate cannot be parsed") from None


def _ek_key(cert: x509.Certificate) -> EKKey:
    try:
        key = cert.public_key()
    except ValueError:
        raise AttestationError("EK certificate has an unsupported public key") from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise AttestationError("EK certificate key must be RSA or ECC")
    return key


def _ext(cert: x509.Certificate, ext_type: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(ext_type).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        raise AttestationError("certificate extensions cannot be parsed") from None


def _is_ca(cert: x509.Certificate) -> bool:
    bc = _ext(cert, x509.BasicConstraints)
    return isinstance(bc, x509.BasicConstraints) and bc.ca


def _tpm_attributes(cert: x509.Certificate) -> dict[x509.ObjectIdentifier, str]:
    san = _ext(cert, x509.SubjectAlternativeName)
    found: dict[x509.ObjectIdentifier, str] = {}
    if isinstance(san, x509.SubjectAlternativeName):
        for name in san.get_values_for_type(x509.DirectoryName):
            for attribute in name:
                if isinstance(attribute.value, str):
                    found[attribute.oid] = attribute.value
    return found


def parse_ek_certificate(ek_cert_der: bytes) -> EKInfo:
    """Parse an EK certificate without trusting it: it must not be a CA, its key must be RSA/ECC, and if it
    has an extended key usage that must include tcg-kp-EKCertificate (many vendors omit the extension; that is
    fine)."""
    cert = load_ek_certificate(ek_cert_der)
    _ek_key(cert)
    if _is_ca(cert):
        raise AttestationError("EK certificate must not be a CA certificate")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage) and OID_TCG_KP_EK_CERTIFICATE not in eku:
        raise AttestationError("EK certificate's extended key usage does not allow endorsement")
    attrs = _tpm_attributes(cert)
    return EKInfo(
        certificate=cert,
        serial=format(cert.serial_number, "x"),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        tpm_manufacturer=attrs.get(_OID_TPM_MANUFACTURER),
        tpm_model=attrs.get(_OID_TPM_MODEL),
        tpm_version=attrs.get(_OID_TPM_VERSION),
    )


def _load_cas(allowed_cas_pem: Sequence[str]) -> list[x509.Certificate]:
    cas: list[x509.Certificate] = []
    for pem in allowed_cas_pem:
        if len(pem) > MAX_CA_BUNDLE_BYTES:
            raise AttestationError("allowed EK CA bundle is too large")
        try:
            cas.extend(x509.load_pem_x509_certificates(pem.encode()))
        except ValueError:
            raise AttestationError("an allowed EK CA is not a PEM certificate") from None
    return cas


def _valid_at(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _usable_issuer(issuer: x509.Certificate, child: x509.Certificate, below: int, now: datetime) -> bool:
    """``issuer`` signed ``child``, is a valid CA at ``now`` allowed to sign certificates, and its path length
    constraint admits the ``below`` intermediate CAs under it."""
    bc = _ext(issuer, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        return False
    if bc.path_length is not None and below > bc.path_length:
        return False
    ku = _ext(issuer, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        return False
    if not _valid_at(issuer, now):
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _chain(
    cert: x509.Certificate,
    anchors: list[x509.Certificate],
    intermediates: list[x509.Certificate],
    now: datetime,
    path: tuple[x509.Certificate, ...],
) -> tuple[x509.Certificate, ...] | None:
    """Depth-first search for a path from ``cert`` to any anchor; returns the issuers, nearest first."""
    if len(path) >= MAX_EK_CHAIN_DEPTH:
        return None
    below = len(path)  # intermediate CAs between the next issuer and the EK
    for issuer in anchors:
        if issuer.subject == cert.issuer and _usable_issuer(issuer, cert, below, now):
            return (*path, issuer)
    for issuer in intermediates:
        if issuer in path or issuer.subject != cert.issuer:
            continue
        if _usable_issuer(issuer, cert, below, now):
            found = _chain(issuer, anchors, intermediates, now, (*path, issuer))
            if found is not None:
                return found
    return None


def verify_ek_certificate(
    ek_cert_der: bytes,
    allowed_cas_pem: Sequence[str],
    now: datetime,
    *,
    intermediates_der: Sequence[bytes] = (),
) -> EKInfo:
    """Verify an EK certificate: parsed (see :func:`parse_ek_certificate`), valid at ``now``, and issued —
    directly or through ``intermediates_der`` (untrusted, e.g. sent by the device) — by one of
    ``allowed_cas_pem``. Every CA in that list is a trust anchor, root or intermediate. An empty list is an
    error, not "trust everything".
    """
    if now.tzinfo is None:
        raise AttestationError("verification time must be timezone-aware")
    if not allowed_cas_pem:
        raise AttestationError("no EK certificate authorities are configured")
    info = parse_ek_certificate(ek_cert_der)
    anchors = _load_cas(allowed_cas_pem)
    intermediates: list[x509.Certificate] = []
    for der in intermediates_der[:MAX_EK_CHAIN_DEPTH]:
        intermediates.append(load_ek_certificate(der))
    if not _valid_at(info.certificate, now):
        raise AttestationError("EK certificate is expired or not yet valid")
    issuers = _chain(info.certificate, anchors, intermediates, now, ())
    if issuers is None:
        raise AttestationError("EK certificate is not issued by an allowed CA")
    return replace(info, chain=tuple(c.subject.rfc4514_string() for c in issuers))


def _spki(key: EKKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _load_key(key: EKKey | bytes) -> EKKey:
    if not isinstance(key, bytes):
        return key
    try:
        loaded = serialization.load_der_public_key(key)
    except ValueError:
        raise AttestationError("EK public key is not a DER SubjectPublicKeyInfo") from None
    if not isinstance(loaded, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise AttestationError("EK public key must be RSA or ECC")
    return loaded


def ek_public_matches(ek_cert: x509.Certificate | EKInfo | bytes, ek_public_key: EKKey | bytes) -> None:
    """Raise unless the TPM-reported EK public key (key or SPKI DER) is the one in the EK certificate."""
    cert = (
        ek_cert.certificate
        if isinstance(ek_cert, EKInfo)
        else load_ek_certificate(ek_cert)
        if isinstance(ek_cert, bytes)
        else ek_cert
    )
    if not hmac.compare_digest(_spki(_ek_key(cert)), _spki(_load_key(ek_public_key))):
        raise AttestationError("the TPM's endorsement key does not match its EK certificate")


def evaluate_ek(
    *,
    ek_cert_der: bytes | None,
    ek_public: EKKey | bytes | None,
    allowed_cas_pem: Sequence[str],
    now: datetime,
    intermediates_der: Sequence[bytes] = (),
) -> EKAttestation:
    """Classify a device's endorsement (docs/architecture.md, Enrollment):

    - CAs configured: the EK certificate must chain to one → ``tpm_ekcert_trusted``; a bare EK key, or a cert
      that does not chain, is refused.
    - no CAs, EK certificate → ``tpm_ekcert`` (parsed, not trusted); no CAs, only the EK key → ``tpm_ekpub``.

    When both a certificate and a key are given they must match. The returned key is the one to MakeCredential
    to.
    """
    if ek_cert_der is not None:
        info = (
            verify_ek_certificate(ek_cert_der, allowed_cas_pem, now, intermediates_der=intermediates_der)
            if allowed_cas_pem
            else parse_ek_certificate(ek_cert_der)
        )
        if ek_public is not None:
            ek_public_matches(info, ek_public)
        kind: AttestationType = "tpm_ekcert_trusted" if allowed_cas_pem else "tpm_ekcert"
        return EKAttestation(kind, info.public_key(), info)
    if allowed_cas_pem:
        raise AttestationError("an EK certificate is required by the cluster's device trust settings")
    if ek_public is None:
        raise AttestationError("neither an EK certificate nor an EK public key was provided")
    return EKAttestation("tpm_ekpub", _load_key(ek_public), None)


def attestation_type(
    *,
    ek_cert_der: bytes | None,
    ek_public: EKKey | bytes | None,
    allowed_cas_pem: Sequence[str],
    now: datetime,
) -> AttestationType:
    """Just the attestation type of :func:`evaluate_ek` (which also returns the EK key to use)."""
    return evaluate_ek(ek_cert_der=ek_cert_der, ek_public=ek_public, allowed_cas_pem=allowed_cas_pem, now=now).type
