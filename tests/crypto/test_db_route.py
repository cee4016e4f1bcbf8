"""The route to a database in X.509 client certificates: Teleport's OIDs, round trip, and what is refused."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.certs import issue_x509_client_cert, verify_x509_client_cert
from devicetrust.crypto.identity import (
    OID_DB_NAME,
    OID_DB_PROTOCOL,
    OID_DB_SERVICE,
    OID_DB_USER,
    DatabaseRoute,
    Identity,
)
from devicetrust.crypto.keys import generate_private_key
from devicetrust.errors import TrustError, ValidationError

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
IDENTITY = Identity(
    username="alice",
    roles=("access",),
    logins=("alice",),
    traits={},
    not_before=NOW - timedelta(minutes=1),
    not_after=NOW + timedelta(hours=12),
)


@pytest.fixture(scope="module")
def user_ca() -> CertAuthority:
    return CertAuthority.generate("user", "example.com", NOW)


def test_teleports_numbers() -> None:
    assert [oid.dotted_string for oid in (OID_DB_SERVICE, OID_DB_PROTOCOL, OID_DB_USER, OID_DB_NAME)] == [
        "1.3.9999.2.1",
        "1.3.9999.2.2",
        "1.3.9999.2.3",
        "1.3.9999.2.4",
    ]


@pytest.mark.parametrize(
    "route",
    [DatabaseRoute("pg-prod", "postgres", "alice", "app"), DatabaseRoute("pg-prod", "postgres"), None],
)
def test_round_trip(user_ca: CertAuthority, route: DatabaseRoute | None) -> None:
    key = generate_private_key().public_key()
    cert = issue_x509_client_cert(user_ca, key, dataclasses.replace(IDENTITY, db_route=route))
    assert verify_x509_client_cert(cert, user_ca.certificate, NOW).db_route == route
    written = [a.oid for a in cert.subject if a.oid.dotted_string.startswith("1.3.9999.2.")]
    if route is None:
        assert written == []
    elif route.username:
        assert written == [OID_DB_SERVICE, OID_DB_PROTOCOL, OID_DB_USER, OID_DB_NAME]
    else:
        assert written == [OID_DB_SERVICE, OID_DB_PROTOCOL]


def _signed_with(user_ca: CertAuthority, extra: list[x509.NameAttribute]) -> x509.Certificate:
    """A certificate the user CA signed with a hand-made subject (what a bug elsewhere could produce)."""
    good = issue_x509_client_cert(user_ca, generate_private_key().public_key(), IDENTITY)
    subject = x509.Name([*good.subject, *extra])
    builder = x509.CertificateBuilder(
        issuer_name=good.issuer,
        subject_name=subject,
        public_key=good.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=good.not_valid_before_utc,
        not_valid_after=good.not_valid_after_utc,
        extensions=list(good.extensions),
    )
    return builder.sign(user_ca.private_key, hashes.SHA256())


@pytest.mark.parametrize(
    "extra",
    [
        [x509.NameAttribute(OID_DB_SERVICE, "a"), x509.NameAttribute(OID_DB_SERVICE, "b")],  # ambiguous
        [x509.NameAttribute(OID_DB_SERVICE, "pg-prod")],  # no protocol
        [x509.NameAttribute(OID_DB_PROTOCOL, "postgres")],  # no database
    ],
)
def test_an_ambiguous_or_partial_route_is_refused(user_ca: CertAuthority, extra: list[x509.NameAttribute]) -> None:
    with pytest.raises(TrustError):
        verify_x509_client_cert(_signed_with(user_ca, extra), user_ca.certificate, NOW)


def test_route_values_are_checked() -> None:
    with pytest.raises(ValidationError):
        DatabaseRoute("", "postgres")
    with pytest.raises(ValidationError):
        DatabaseRoute("pg", "postgres", "ali\nce")
