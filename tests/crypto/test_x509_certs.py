"""X.509 client and TLS server certificates: issue, verify, and every way verification must fail."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tests.crypto.harness import DEVICE, NOW, TTL, make_identity

from devicetrust.crypto.ca import CA_VALIDITY, CertAuthority
from devicetrust.crypto.certs import (
    identity_from_x509_cert,
    issue_tls_server_cert,
    issue_x509_client_cert,
    verify_x509_client_cert,
)
from devicetrust.crypto.identity import (
    OID_BOT_NAME,
    OID_DEVICE_ASSET_TAG,
    OID_DEVICE_CREDENTIAL_ID,
    OID_DEVICE_ID,
    OID_LOGINS,
    OID_TRAITS,
)
from devicetrust.errors import TrustError, ValidationError

DEVICE_OIDS = (OID_DEVICE_ID, OID_DEVICE_ASSET_TAG, OID_DEVICE_CREDENTIAL_ID)


def raw_client_cert(
    ca: CertAuthority,
    key: ec.EllipticCurvePublicKey,
    attrs: Sequence[tuple[x509.ObjectIdentifier, str]],
    eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
) -> x509.Certificate:
    """A client cert built by hand with the CA key, for shapes the issuer never produces."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs]))
        .issuer_name(ca.certificate.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + TTL)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(ca.private_key, hashes.SHA256())


def device_attrs() -> list[tuple[x509.ObjectIdentifier, str]]:
    return [
        (NameOID.COMMON_NAME, "alice"),
        (OID_DEVICE_ID, DEVICE.device_id),
        (OID_DEVICE_ASSET_TAG, DEVICE.asset_tag),
        (OID_DEVICE_CREDENTIAL_ID, DEVICE.credential_id),
    ]


def _values(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str | bytes]:
    return [a.value for a in cert.subject.get_attributes_for_oid(oid)]


# --------------------------------------------------------------------------- client certs


def test_client_cert_round_trip(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    identity = make_identity(device=DEVICE, bot_name="ci")
    cert = issue_x509_client_cert(user_ca, subject_key, identity)
    assert _values(cert, NameOID.COMMON_NAME) == ["alice"]
    assert _values(cert, NameOID.ORGANIZATION_NAME) == ["access", "editor"]
    assert _values(cert, OID_LOGINS) == ["alice", "root"]
    assert _values(cert, OID_TRAITS) == ['{"logins":["alice","root"]}']
    assert _values(cert, OID_BOT_NAME) == ["ci"]
    assert [_values(cert, oid) for oid in DEVICE_OIDS] == [["dev-1"], ["C02ABC"], ["cred-1"]]
    assert cert.not_valid_before_utc == identity.not_before
    assert cert.not_valid_after_utc == identity.not_after
    assert cert.public_key() == subject_key
    assert cert.issuer == user_ca.certificate.subject

    exts = cert.extensions
    assert list(exts.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = exts.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert not exts.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = exts.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = user_ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest

    verified = verify_x509_client_cert(cert, user_ca.certificate, NOW + timedelta(hours=1))
    assert verified == identity


def test_client_cert_without_device(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    identity = make_identity(logins=(), traits={})
    cert = issue_x509_client_cert(user_ca, subject_key, identity)
    assert all(not _values(cert, oid) for oid in (*DEVICE_OIDS, OID_BOT_NAME, OID_LOGINS))
    verified = verify_x509_client_cert(cert, user_ca.certificate, NOW)
    assert verified == identity
    assert verified.device is None


def test_host_ca_cannot_issue_client_certs(host_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    with pytest.raises(ValidationError, match="user CA"):
        issue_x509_client_cert(host_ca, subject_key, make_identity())


def test_client_cert_refusals(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    with pytest.raises(ValidationError, match="64 characters"):
        issue_x509_client_cert(user_ca, subject_key, make_identity(username="a" * 65))
    beyond_ca = make_identity(not_after=NOW + CA_VALIDITY + timedelta(days=1))
    with pytest.raises(ValidationError, match="after the user CA expires"):
        issue_x509_client_cert(user_ca, subject_key, beyond_ca)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(ValidationError, match="P-256"):
        issue_x509_client_cert(user_ca, p384, make_identity())


# --------------------------------------------------------------------------- negative vectors


def test_cert_from_another_ca_with_device_is_rejected(
    user_ca: CertAuthority, other_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    forged = issue_x509_client_cert(other_ca, subject_key, make_identity(device=DEVICE))
    with pytest.raises(TrustError, match="not signed by the user CA"):
        verify_x509_client_cert(forged, user_ca.certificate, NOW)


def test_cert_from_host_ca_is_rejected(
    user_ca: CertAuthority, host_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    forged = raw_client_cert(host_ca, subject_key, device_attrs())
    with pytest.raises(TrustError, match="not signed by the user CA"):
        verify_x509_client_cert(forged, user_ca.certificate, NOW)


def test_expired_and_not_yet_valid(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    cert = issue_x509_client_cert(user_ca, subject_key, make_identity(device=DEVICE))
    assert verify_x509_client_cert(cert, user_ca.certificate, NOW + TTL).device == DEVICE
    with pytest.raises(TrustError, match="expired at 2025-03-02T00:00:00Z"):
        verify_x509_client_cert(cert, user_ca.certificate, NOW + TTL + timedelta(seconds=1))
    with pytest.raises(TrustError, match="not valid until 2025-03-01T12:00:00Z"):
        verify_x509_client_cert(cert, user_ca.certificate, NOW - timedelta(seconds=1))


def test_expired_ca_is_rejected(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    cert = issue_x509_client_cert(user_ca, subject_key, make_identity())
    with pytest.raises(TrustError, match="user CA certificate is outside its validity"):
        verify_x509_client_cert(cert, user_ca.certificate, NOW + CA_VALIDITY + timedelta(seconds=1))


@pytest.mark.parametrize("missing", DEVICE_OIDS)
def test_each_missing_device_attribute_means_unverified(
    user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey, missing: x509.ObjectIdentifier
) -> None:
    assert verify_x509_client_cert(raw_client_cert(user_ca, subject_key, device_attrs()), user_ca.certificate, NOW)
    attrs = [(oid, v) for oid, v in device_attrs() if oid != missing]
    cert = raw_client_cert(user_ca, subject_key, attrs)
    assert verify_x509_client_cert(cert, user_ca.certificate, NOW).device is None


def test_duplicate_device_attribute_is_rejected(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    cert = raw_client_cert(user_ca, subject_key, [*device_attrs(), (OID_DEVICE_ID, "dev-2")])
    with pytest.raises(TrustError, match="2 device id attributes"):
        verify_x509_client_cert(cert, user_ca.certificate, NOW)


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ([(NameOID.ORGANIZATION_NAME, "access")], "no CN"),
        ([(NameOID.COMMON_NAME, "a"), (NameOID.COMMON_NAME, "b")], "2 CN attributes"),
        ([(NameOID.COMMON_NAME, "a"), (OID_TRAITS, "nope")], "not valid JSON"),
        ([(NameOID.COMMON_NAME, "a"), (OID_TRAITS, '{"x":"y"}')], "list of strings"),
        ([(NameOID.COMMON_NAME, "a"), (OID_BOT_NAME, "bad\x01")], "bot_name"),
    ],
)
def test_malformed_subject_is_rejected(
    user_ca: CertAuthority,
    subject_key: ec.EllipticCurvePublicKey,
    attrs: list[tuple[x509.ObjectIdentifier, str]],
    match: str,
) -> None:
    with pytest.raises(TrustError, match=match):
        verify_x509_client_cert(raw_client_cert(user_ca, subject_key, attrs), user_ca.certificate, NOW)


def test_eku_must_be_client_auth(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    no_eku = raw_client_cert(user_ca, subject_key, device_attrs(), eku=None)
    with pytest.raises(TrustError, match="no extended key usage"):
        verify_x509_client_cert(no_eku, user_ca.certificate, NOW)
    server = raw_client_cert(user_ca, subject_key, device_attrs(), eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(TrustError, match="clientAuth"):
        verify_x509_client_cert(server, user_ca.certificate, NOW)


def test_ca_certificates_are_not_clients(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    with pytest.raises(TrustError, match="CA certificate, not a client"):
        verify_x509_client_cert(user_ca.certificate, user_ca.certificate, NOW)
    leaf = issue_x509_client_cert(user_ca, subject_key, make_identity())
    with pytest.raises(TrustError, match="not a CA certificate"):
        verify_x509_client_cert(leaf, leaf, NOW)


def test_naive_now_is_refused(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    cert = issue_x509_client_cert(user_ca, subject_key, make_identity())
    with pytest.raises(ValidationError, match="timezone-aware"):
        verify_x509_client_cert(cert, user_ca.certificate, datetime(2025, 3, 1, 13))  # naive on purpose


def test_identity_from_x509_cert_does_not_verify(
    other_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    identity = make_identity(device=DEVICE)
    assert identity_from_x509_cert(issue_x509_client_cert(other_ca, subject_key, identity)) == identity
    with pytest.raises(ValidationError, match="no CN"):
        identity_from_x509_cert(raw_client_cert(other_ca, subject_key, [(NameOID.ORGANIZATION_NAME, "x")]))


# --------------------------------------------------------------------------- TLS server certs


def test_tls_server_cert(host_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    cert = issue_tls_server_cert(
        host_ca, subject_key, ["auth.example.com", "localhost"], ["127.0.0.1", "::1"], NOW, NOW + TTL
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["auth.example.com", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _values(cert, NameOID.COMMON_NAME) == ["auth.example.com"]
    cert.verify_directly_issued_by(host_ca.certificate)
    # a server cert must never pass as a client identity
    with pytest.raises(TrustError):
        verify_x509_client_cert(cert, host_ca.certificate, NOW)


def test_tls_server_cert_long_name_has_no_cn(host_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    long_name = ("a" * 60) + ".example.com"
    cert = issue_tls_server_cert(host_ca, subject_key, [long_name], [], NOW, NOW + TTL)
    assert _values(cert, NameOID.COMMON_NAME) == []
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [long_name]


@pytest.mark.parametrize(
    ("dns", "ips", "match"),
    [
        ([], [], "at least one name"),
        (["bücher.example"], [], "A-labels"),
        (["a b"], [], "host name"),
        ([], ["300.1.1.1"], "not an IP address"),
        ("localhost", [], "got a string"),
    ],
)
def test_tls_server_cert_refusals(
    host_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey, dns: list[str], ips: list[str], match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        issue_tls_server_cert(host_ca, subject_key, dns, ips, NOW, NOW + TTL)


def test_user_ca_cannot_issue_server_certs(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    with pytest.raises(ValidationError, match="host CA"):
        issue_tls_server_cert(user_ca, subject_key, ["localhost"], [], NOW, NOW + TTL)
