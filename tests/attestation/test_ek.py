"""EK certificates: chain building to the configured CAs, and the attestation-type decision at enrollment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devicetrust.attestation import (
    MAX_EK_CERT_BYTES,
    OID_TCG_KP_EK_CERTIFICATE,
    AttestationError,
    attestation_type,
    ek_public_matches,
    evaluate_ek,
    load_ek_certificate,
    parse_ek_certificate,
    verify_ek_certificate,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
YEAR = timedelta(days=365)
_CA_KEY = ec.generate_private_key(ec.SECP256R1())  # CA keys: cheap to make, one per test module is enough
_EK_KEY = rsa.generate_private_key(65537, 2048)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def _name(cn: str) -> x509.Name:
    """An empty string gives an empty subject, as many real EK certificates have."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])


def issue(
    subject: str,
    issuer: Issued | None,
    *,
    ca: bool | None = True,
    path_length: int | None = None,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    not_before: datetime = NOW - YEAR,
    not_after: datetime = NOW + 10 * YEAR,
    eku: list[x509.ObjectIdentifier] | None = None,
    key_cert_sign: bool = True,
    san: bool = False,
) -> Issued:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, key_cert_sign, True, False, False), critical=True
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        tpm = x509.Name(
            [
                x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:49465800"),
                x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "SLB9670"),
                x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.3"), "id:000D0008"),
            ]
        )
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DirectoryName(tpm)]), critical=True)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


ROOT = issue("Vendor EK Root", None)
INTERMEDIATE = issue("Vendor EK Intermediate", ROOT)
EK = issue("", INTERMEDIATE, ca=False, key=_EK_KEY, eku=[OID_TCG_KP_EK_CERTIFICATE], san=True)


def test_chains_through_an_allowed_intermediate() -> None:
    info = verify_ek_certificate(EK.der, [INTERMEDIATE.pem], NOW)
    assert info.chain == ("CN=Vendor EK Intermediate",)
    assert info.serial == format(EK.cert.serial_number, "x")
    assert (info.tpm_manufacturer, info.tpm_model, info.tpm_version) == ("id:49465800", "SLB9670", "id:000D0008")


def test_chains_to_the_root_through_a_supplied_intermediate() -> None:
    info = verify_ek_certificate(EK.der, [ROOT.pem], NOW, intermediates_der=[INTERMEDIATE.der])
    assert info.chain == ("CN=Vendor EK Intermediate", "CN=Vendor EK Root")


def test_a_root_alone_does_not_reach_the_ek() -> None:
    with pytest.raises(AttestationError, match="not issued by an allowed CA"):
        verify_ek_certificate(EK.der, [ROOT.pem], NOW)


def test_bundle_pem_with_several_cas() -> None:
    assert verify_ek_certificate(EK.der, [ROOT.pem + INTERMEDIATE.pem], NOW).chain


def test_unrelated_ca_is_not_enough() -> None:
    other = issue("Other Vendor", None)
    with pytest.raises(AttestationError, match="not issued by an allowed CA"):
        verify_ek_certificate(EK.der, [other.pem], NOW)


def test_same_name_different_key_is_not_the_issuer() -> None:
    impostor = issue("Vendor EK Intermediate", ROOT)
    with pytest.raises(AttestationError, match="not issued by an allowed CA"):
        verify_ek_certificate(EK.der, [impostor.pem], NOW)


def test_no_configured_cas_is_an_error_not_trust_everything() -> None:
    with pytest.raises(AttestationError, match="no EK certificate authorities"):
        verify_ek_certificate(EK.der, [], NOW)


@pytest.mark.parametrize("when", [NOW - 2 * YEAR, NOW + 11 * YEAR], ids=["not-yet-valid", "expired"])
def test_validity_of_the_ek(when: datetime) -> None:
    with pytest.raises(AttestationError, match="expired or not yet valid"):
        verify_ek_certificate(EK.der, [INTERMEDIATE.pem], when)


def test_expired_intermediate_breaks_the_chain() -> None:
    old = issue("Old Intermediate", ROOT, not_after=NOW - timedelta(days=1))
    ek = issue("", old, ca=False, key=_EK_KEY, not_after=NOW + YEAR)
    with pytest.raises(AttestationError, match="not issued"):
        verify_ek_certificate(ek.der, [ROOT.pem], NOW, intermediates_der=[old.der])
    with pytest.raises(AttestationError, match="not issued"):
        verify_ek_certificate(ek.der, [old.pem], NOW)


@pytest.mark.parametrize(
    "issuer_kwargs", [{"ca": None}, {"ca": False}, {"key_cert_sign": False}], ids=["no-bc", "not-ca", "no-certsign"]
)
def test_issuer_must_be_a_ca(issuer_kwargs: dict[str, object]) -> None:
    issuer = issue("Not A CA", ROOT, **issuer_kwargs)  # type: ignore[arg-type]
    ek = issue("", issuer, ca=False, key=_EK_KEY)
    with pytest.raises(AttestationError, match="not issued"):
        verify_ek_certificate(ek.der, [issuer.pem], NOW)


def test_path_length_constraint_is_enforced() -> None:
    root = issue("Strict Root", None, path_length=0)
    intermediate = issue("Under Strict Root", root)
    ek = issue("", intermediate, ca=False, key=_EK_KEY)
    with pytest.raises(AttestationError, match="not issued"):
        verify_ek_certificate(ek.der, [root.pem], NOW, intermediates_der=[intermediate.der])
    assert verify_ek_certificate(ek.der, [intermediate.pem], NOW).chain  # an anchor itself is fine


def test_ek_certificate_must_not_be_a_ca() -> None:
    ca_ek = issue("", INTERMEDIATE, ca=True, key=_EK_KEY)
    with pytest.raises(AttestationError, match="must not be a CA"):
        verify_ek_certificate(ca_ek.der, [INTERMEDIATE.pem], NOW)


def test_missing_eku_is_accepted_but_a_foreign_eku_is_not() -> None:
    no_eku = issue("", INTERMEDIATE, ca=None, key=_EK_KEY)
    assert verify_ek_certificate(no_eku.der, [INTERMEDIATE.pem], NOW)
    client = issue("", INTERMEDIATE, ca=False, key=_EK_KEY, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(AttestationError, match="extended key usage"):
        verify_ek_certificate(client.der, [INTERMEDIATE.pem], NOW)


def test_tcg_header_and_padding_are_tolerated() -> None:
    der = EK.der
    stored = b"\x10\x01\x00" + (len(der) + 2).to_bytes(2, "big") + b"\x10\x02" + der + b"\xff" * 100
    assert load_ek_certificate(stored) == EK.cert
    assert load_ek_certificate(der + bytes(64)) == EK.cert
    assert verify_ek_certificate(stored, [INTERMEDIATE.pem], NOW).serial


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "not DER"),
        (b"\x31\x03abc", "not DER"),
        (b"\x30\x85" + bytes(10), "not DER"),
        (EK.der[:-1], "truncated"),
        (b"\x30\x03abc", "cannot be parsed"),
        (bytes(MAX_EK_CERT_BYTES + 1), str(MAX_EK_CERT_BYTES)),
    ],
)
def test_garbage_is_rejected(blob: bytes, message: str) -> None:
    with pytest.raises(AttestationError, match=message):
        parse_ek_certificate(blob)


def test_bad_allowed_ca_and_naive_time_are_errors() -> None:
    with pytest.raises(AttestationError, match="PEM"):
        verify_ek_certificate(EK.der, ["not a pem"], NOW)
    with pytest.raises(AttestationError, match="timezone"):
        verify_ek_certificate(EK.der, [INTERMEDIATE.pem], NOW.replace(tzinfo=None))


def test_ek_public_matches() -> None:
    spki = _EK_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ek_public_matches(EK.cert, _EK_KEY.public_key())
    ek_public_matches(EK.der, spki)
    ek_public_matches(parse_ek_certificate(EK.der), spki)
    with pytest.raises(AttestationError, match="does not match"):
        ek_public_matches(EK.cert, rsa.generate_private_key(65537, 2048).public_key())
    with pytest.raises(AttestationError, match="SubjectPublicKeyInfo"):
        ek_public_matches(EK.cert, b"junk")


# -- attestation type ---------------------------------------------------------------------------------------------

SPKI = _EK_KEY.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_cert_chaining_to_configured_cas_is_trusted() -> None:
    result = evaluate_ek(ek_cert_der=EK.der, ek_public=SPKI, allowed_cas_pem=[ROOT.pem, INTERMEDIATE.pem], now=NOW)
    assert result.type == "tpm_ekcert_trusted"
    assert result.ek_info is not None and result.ek_info.chain
    assert result.ek_public_key.public_numbers() == _EK_KEY.public_key().public_numbers()


def test_cert_without_configured_cas_is_ekcert() -> None:
    assert attestation_type(ek_cert_der=EK.der, ek_public=None, allowed_cas_pem=[], now=NOW) == "tpm_ekcert"


def test_bare_key_without_configured_cas_is_ekpub() -> None:
    result = evaluate_ek(ek_cert_der=None, ek_public=SPKI, allowed_cas_pem=[], now=NOW)
    assert result.type == "tpm_ekpub"
    assert result.ek_info is None


def test_configured_cas_refuse_a_bare_key_and_an_untrusted_cert() -> None:
    with pytest.raises(AttestationError, match="EK certificate is required"):
        attestation_type(ek_cert_der=None, ek_public=SPKI, allowed_cas_pem=[ROOT.pem], now=NOW)
    other = issue("Other Vendor", None)
    with pytest.raises(AttestationError, match="not issued by an allowed CA"):
        attestation_type(ek_cert_der=EK.der, ek_public=SPKI, allowed_cas_pem=[other.pem], now=NOW)


def test_cert_and_key_must_agree() -> None:
    stranger = rsa.generate_private_key(65537, 2048).public_key()
    for cas in ([], [INTERMEDIATE.pem]):
        with pytest.raises(AttestationError, match="does not match"):
            attestation_type(ek_cert_der=EK.der, ek_public=stranger, allowed_cas_pem=cas, now=NOW)


def test_nothing_at_all_is_refused() -> None:
    with pytest.raises(AttestationError, match="neither"):
        attestation_type(ek_cert_der=None, ek_public=None, allowed_cas_pem=[], now=NOW)
