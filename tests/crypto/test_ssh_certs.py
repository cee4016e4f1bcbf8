"""SSH user and host certificates: issue, verify, and every way verification must fail."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import SSHCertificateBuilder, SSHCertificateType
from tests.crypto import harness
from tests.crypto.harness import DEVICE, NOW, TTL

from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.certs import (
    NOLOGIN_PRINCIPAL_PREFIX,
    SSH_PERMIT_EXTENSIONS,
    _ssh_mpint,
    identity_from_ssh_cert,
    issue_ssh_host_cert,
    issue_ssh_user_cert,
    load_ssh_certificate,
    ssh_cert_extension_names,
    verify_ssh_user_cert,
)
from devicetrust.crypto.identity import (
    EXT_BOT_NAME,
    EXT_DEVICE_ASSET_TAG,
    EXT_DEVICE_CREDENTIAL_ID,
    EXT_DEVICE_ID,
    EXT_ROLES,
    EXT_TRAITS,
    Identity,
)
from devicetrust.crypto.keys import public_key_to_openssh
from devicetrust.errors import TrustError, ValidationError

DEVICE_EXTS = (EXT_DEVICE_ID, EXT_DEVICE_ASSET_TAG, EXT_DEVICE_CREDENTIAL_ID)


def make_identity(**overrides: object) -> Identity:
    return harness.make_identity(**{"traits": {"logins": ("alice", "root"), "team": ("infra",)}, **overrides})


def raw_user_cert(
    ca: CertAuthority,
    key: ec.EllipticCurvePublicKey,
    extensions: Mapping[str, str],
    *,
    principals: tuple[str, ...] = ("alice",),
    critical: Mapping[str, str] | None = None,
    valid_before: int | None = None,
) -> bytes:
    """A user cert built by hand with the CA key, for shapes the issuer never produces."""
    builder = (
        SSHCertificateBuilder()
        .public_key(key)
        .serial(1)
        .type(SSHCertificateType.USER)
        .key_id(b"alice")
        .valid_principals([p.encode() for p in principals])
        .valid_after(int(NOW.timestamp()))
        .valid_before(valid_before if valid_before is not None else int((NOW + TTL).timestamp()))
    )
    for name, value in extensions.items():
        builder = builder.add_extension(name.encode(), value.encode())
    for name, value in (critical or {}).items():
        builder = builder.add_critical_option(name.encode(), value.encode())
    return builder.sign(ca.private_key).public_bytes()


def full_extensions() -> dict[str, str]:
    return {
        EXT_ROLES: json.dumps({"version": "v1", "roles": ["access"]}),
        EXT_TRAITS: "{}",
        EXT_DEVICE_ID: DEVICE.device_id,
        EXT_DEVICE_ASSET_TAG: DEVICE.asset_tag,
        EXT_DEVICE_CREDENTIAL_ID: DEVICE.credential_id,
    }


# --------------------------------------------------------------------------- the encoding itself


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b""),
        (1, b"\x01"),
        (0x7F, b"\x7f"),
        (0x80, b"\x00\x80"),
        (0xFF00, b"\x00\xff\x00"),
        (0x0100, b"\x01\x00"),
        (2**255, b"\x00\x80" + b"\x00" * 31),
    ],
)
def test_mpints_are_shortest_and_positive(value: int, encoded: bytes) -> None:
    assert _ssh_mpint(value) == len(encoded).to_bytes(4, "big") + encoded


def _fields(line: bytes) -> tuple[object, ...]:
    cert = load_ssh_certificate(line)
    return (
        cert.type,
        cert.key_id,
        cert.valid_principals,
        cert.valid_after,
        cert.valid_before,
        cert.critical_options,
        cert.extensions,
        cert.public_key(),
        cert.signature_key(),
    )


def test_user_certs_say_what_cryptographys_builder_says(
    user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    """Field for field, the certificates we encode equal the builder's for the same identity; each signature
    verifies (over many certificates, so that signatures whose halves need a leading zero byte occur)."""
    identity = make_identity(device=DEVICE, bot_name="robot")
    ours = issue_ssh_user_cert(user_ca, subject_key, identity)
    cert = load_ssh_certificate(ours)
    builder = (
        SSHCertificateBuilder()
        .public_key(subject_key)
        .serial(cert.serial)
        .type(SSHCertificateType.USER)
        .key_id(b"alice")
        .valid_principals([b"alice", b"root"])
        .valid_after(cert.valid_after)
        .valid_before(cert.valid_before)
    )
    for name, value in cert.extensions.items():
        builder = builder.add_extension(name, value)
    theirs = builder.sign(user_ca.private_key).public_bytes()
    assert _fields(ours) == _fields(theirs)
    names = {*SSH_PERMIT_EXTENSIONS, *DEVICE_EXTS, EXT_ROLES, EXT_TRAITS, EXT_BOT_NAME}
    assert set(cert.extensions) == {name.encode() for name in names}
    serials = set()
    for _ in range(64):
        line = issue_ssh_user_cert(user_ca, subject_key, identity)
        again = load_ssh_certificate(line)
        again.verify_cert_signature()
        serials.add(again.serial)
        assert again.nonce != cert.nonce
    assert len(serials) == 64


def test_host_certs_say_what_cryptographys_builder_says(
    host_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    ours = issue_ssh_host_cert(host_ca, subject_key, "host-1", ["web", "web.example.com"], NOW, NOW + TTL)
    cert = load_ssh_certificate(ours)
    cert.verify_cert_signature()
    theirs = (
        SSHCertificateBuilder()
        .public_key(subject_key)
        .serial(cert.serial)
        .type(SSHCertificateType.HOST)
        .key_id(b"host-1")
        .valid_principals([b"web", b"web.example.com"])
        .valid_after(int(NOW.timestamp()))
        .valid_before(int((NOW + TTL).timestamp()))
        .sign(host_ca.private_key)
        .public_bytes()
    )
    assert _fields(ours) == _fields(theirs)


# --------------------------------------------------------------------------- issue + verify


def test_user_cert_round_trip_with_device(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    identity = make_identity(device=DEVICE)
    line = issue_ssh_user_cert(user_ca, subject_key, identity)
    assert line.startswith(b"ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA")
    verified = verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW + timedelta(hours=1))
    assert verified == identity
    assert verified.device == DEVICE

    cert = load_ssh_certificate(line)
    assert cert.key_id == b"alice"
    assert cert.valid_principals == [b"alice", b"root"]
    assert cert.valid_after == int(NOW.timestamp())
    assert cert.valid_before == int((NOW + TTL).timestamp())
    assert cert.public_key() == subject_key
    assert cert.critical_options == {}
    assert json.loads(cert.extensions[EXT_ROLES.encode()]) == {"version": "v1", "roles": ["access", "editor"]}
    assert json.loads(cert.extensions[EXT_TRAITS.encode()]) == {
        "logins": ["alice", "root"],
        "team": ["infra"],
    }
    for name in SSH_PERMIT_EXTENSIONS:
        assert cert.extensions[name.encode()] == b""


def test_user_cert_without_device_has_no_device_extensions(
    user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    line = issue_ssh_user_cert(user_ca, subject_key, make_identity())
    names = ssh_cert_extension_names(line)
    assert names == tuple(sorted([*SSH_PERMIT_EXTENSIONS, EXT_ROLES, EXT_TRAITS]))
    assert verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW).device is None


def test_extension_names_with_device(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    line = issue_ssh_user_cert(user_ca, subject_key, make_identity(device=DEVICE, bot_name="ci"))
    names = ssh_cert_extension_names(line)
    assert set(DEVICE_EXTS) | {EXT_BOT_NAME, EXT_ROLES, EXT_TRAITS} <= set(names)
    assert list(names) == sorted(names)


def test_bot_without_logins_gets_unusable_principal(
    user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    identity = make_identity(logins=(), bot_name="ci-bot", traits={})
    line = issue_ssh_user_cert(user_ca, subject_key, identity)
    principals = load_ssh_certificate(line).valid_principals
    # an empty list would mean "any principal" to OpenSSH
    assert len(principals) == 1
    assert principals[0].startswith(NOLOGIN_PRINCIPAL_PREFIX.encode())
    verified = verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW)
    assert verified.logins == ()
    assert verified.bot_name == "ci-bot"
    assert verified.is_bot
    assert verified == identity
    # each issue picks a fresh placeholder
    assert load_ssh_certificate(issue_ssh_user_cert(user_ca, subject_key, identity)).valid_principals != principals


def test_unicode_and_empty_trait_values_survive(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    identity = make_identity(username="zoë@example.com", traits={"groups": ("Über", ""), "empty": ()})
    line = issue_ssh_user_cert(user_ca, subject_key, identity)
    assert verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW) == identity


def test_verify_accepts_any_of_several_trusted_keys(
    user_ca: CertAuthority, other_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    # CA rotation: old and new keys are trusted side by side
    line = issue_ssh_user_cert(user_ca, subject_key, make_identity())
    trusted = [other_ca.ssh_public_key(), user_ca.ssh_public_key() + " comment\n"]
    assert verify_ssh_user_cert(line, trusted, NOW).username == "alice"


def test_verify_accepts_str_and_trailing_newline(
    user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    line = issue_ssh_user_cert(user_ca, subject_key, make_identity())
    assert verify_ssh_user_cert(line + b" alice@laptop\n", [user_ca.ssh_public_key()], NOW).username == "alice"


# --------------------------------------------------------------------------- refusals at issue time


def test_host_ca_cannot_issue_user_certs(host_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    with pytest.raises(ValidationError, match="user CA"):
        issue_ssh_user_cert(host_ca, subject_key, make_identity())


def test_user_ca_cannot_issue_host_certs(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    with pytest.raises(ValidationError, match="host CA"):
        issue_ssh_host_cert(user_ca, subject_key, "node-1", ["node-1"], NOW, NOW + TTL)


def test_issue_refuses_non_p256_subject_keys(user_ca: CertAuthority) -> None:
    for key in (
        ec.generate_private_key(ec.SECP384R1()).public_key(),
        ed25519.Ed25519PrivateKey.generate().public_key(),
    ):
        with pytest.raises(ValidationError, match="P-256"):
            issue_ssh_user_cert(user_ca, key, make_identity())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("logins", "match"),
    [
        ((f"{NOLOGIN_PRINCIPAL_PREFIX}x",), "reserved prefix"),
        (("a,b",), "not a valid principal"),
        (("a b",), "not a valid principal"),
        (tuple(f"u{i}" for i in range(257)), "at most 256"),
    ],
)
def test_issue_refuses_bad_logins(
    user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey, logins: tuple[str, ...], match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        issue_ssh_user_cert(user_ca, subject_key, make_identity(logins=logins))


# --------------------------------------------------------------------------- negative vectors


def test_cert_from_another_ca_with_device_extensions_is_rejected(
    user_ca: CertAuthority, other_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    forged = issue_ssh_user_cert(other_ca, subject_key, make_identity(device=DEVICE))
    with pytest.raises(TrustError, match="not signed by a trusted user CA"):
        verify_ssh_user_cert(forged, [user_ca.ssh_public_key()], NOW)


def test_cert_signed_by_host_ca_is_rejected(
    user_ca: CertAuthority, host_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    forged = raw_user_cert(host_ca, subject_key, full_extensions())
    with pytest.raises(TrustError, match="not signed by a trusted user CA"):
        verify_ssh_user_cert(forged, [user_ca.ssh_public_key()], NOW)


def test_expired_and_not_yet_valid(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    line = issue_ssh_user_cert(user_ca, subject_key, make_identity(device=DEVICE))
    trusted = [user_ca.ssh_public_key()]
    assert verify_ssh_user_cert(line, trusted, NOW).device == DEVICE
    assert verify_ssh_user_cert(line, trusted, NOW + TTL - timedelta(seconds=1)).device == DEVICE
    with pytest.raises(TrustError, match="expired at 2025-03-02T00:00:00Z"):
        verify_ssh_user_cert(line, trusted, NOW + TTL)
    with pytest.raises(TrustError, match="not valid until 2025-03-01T12:00:00Z"):
        verify_ssh_user_cert(line, trusted, NOW - timedelta(seconds=1))


def _tamper(line: bytes, old: bytes, new: bytes) -> bytes:
    kind, b64 = line.split()[:2]
    blob = base64.b64decode(b64)
    assert blob.count(old) == 1 and len(old) == len(new)
    return kind + b" " + base64.b64encode(blob.replace(old, new))


@pytest.mark.parametrize(("old", "new"), [(b"alice", b"admin"), (b"dev-1", b"dev-2"), (b"editor", b"master")])
def test_tampered_certificate_is_rejected(
    user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey, old: bytes, new: bytes
) -> None:
    identity = make_identity(logins=("root",), traits={}, device=DEVICE)
    line = issue_ssh_user_cert(user_ca, subject_key, identity)
    with pytest.raises(TrustError, match="signature is invalid"):
        verify_ssh_user_cert(_tamper(line, old, new), [user_ca.ssh_public_key()], NOW)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage",
        b"ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA",
        b"ecdsa-sha2-nistp256-cert-v01@openssh.com " + base64.b64encode(b"\x00" * 64),
        b"x" * 70_000,
    ],
)
def test_malformed_lines_are_trust_errors(user_ca: CertAuthority, line: bytes) -> None:
    with pytest.raises(TrustError):
        verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW)


def test_truncated_certificate_is_rejected(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    kind, b64 = issue_ssh_user_cert(user_ca, subject_key, make_identity()).split()
    truncated = kind + b" " + base64.b64encode(base64.b64decode(b64)[:-10])
    with pytest.raises(TrustError, match="not a valid SSH certificate"):
        verify_ssh_user_cert(truncated, [user_ca.ssh_public_key()], NOW)


def test_plain_public_key_is_rejected(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    with pytest.raises(TrustError, match="plain public key"):
        verify_ssh_user_cert(public_key_to_openssh(subject_key).encode(), [user_ca.ssh_public_key()], NOW)


def test_host_cert_is_not_a_user_cert(host_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    line = issue_ssh_host_cert(host_ca, subject_key, "node-1", ["node-1.example.com"], NOW, NOW + TTL)
    # even when its CA is (wrongly) trusted as a user CA
    with pytest.raises(TrustError, match="host certificate"):
        verify_ssh_user_cert(line, [host_ca.ssh_public_key()], NOW)
    with pytest.raises(ValidationError, match="host certificate"):
        identity_from_ssh_cert(line)


@pytest.mark.parametrize("missing", DEVICE_EXTS)
def test_each_missing_device_extension_means_unverified(
    user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey, missing: str
) -> None:
    exts = full_extensions()
    assert verify_ssh_user_cert(raw_user_cert(user_ca, subject_key, exts), [user_ca.ssh_public_key()], NOW).device
    del exts[missing]
    line = raw_user_cert(user_ca, subject_key, exts)
    assert verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW).device is None


@pytest.mark.parametrize("empty", DEVICE_EXTS)
def test_empty_device_extension_means_unverified(
    user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey, empty: str
) -> None:
    line = raw_user_cert(user_ca, subject_key, {**full_extensions(), empty: ""})
    assert verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW).device is None


def test_missing_roles_and_traits_mean_none(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    identity = verify_ssh_user_cert(raw_user_cert(user_ca, subject_key, {}), [user_ca.ssh_public_key()], NOW)
    assert identity.roles == ()
    assert dict(identity.traits) == {}


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        (EXT_ROLES, "not json", "not valid JSON"),
        (EXT_ROLES, '["access"]', "version"),
        (EXT_ROLES, '{"version":"v2","roles":["access"]}', "version"),
        (EXT_ROLES, '{"version":"v1","roles":"access"}', "list of strings"),
        (EXT_ROLES, '{"version":"v1","roles":[""]}', "roles"),
        (EXT_ROLES, "[" * 10_000 + "]" * 10_000, "not valid JSON"),
        (EXT_TRAITS, '["x"]', "JSON object"),
        (EXT_TRAITS, '{"logins":"root"}', "list of strings"),
        (EXT_TRAITS, '{"logins":[1]}', "list of strings"),
        (EXT_BOT_NAME, "bad\nname", "bot_name"),
        (EXT_DEVICE_ID, "dev\x00", "device_id"),
    ],
)
def test_malformed_extensions_are_trust_errors(
    user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey, name: str, value: str, match: str
) -> None:
    line = raw_user_cert(user_ca, subject_key, {**full_extensions(), name: value})
    with pytest.raises(TrustError, match=match):
        verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW)


def test_non_utf8_extension_is_a_trust_error(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    builder = (
        SSHCertificateBuilder()
        .public_key(subject_key)
        .serial(1)
        .type(SSHCertificateType.USER)
        .key_id(b"alice")
        .valid_principals([b"alice"])
        .valid_after(int(NOW.timestamp()))
        .valid_before(int((NOW + TTL).timestamp()))
        .add_extension(EXT_DEVICE_ID.encode(), b"\xff\xfe")
    )
    line = builder.sign(user_ca.private_key).public_bytes()
    with pytest.raises(TrustError, match="not UTF-8"):
        verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW)


def test_unknown_critical_option_is_rejected(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    line = raw_user_cert(user_ca, subject_key, full_extensions(), critical={"force-command": "/bin/true"})
    with pytest.raises(TrustError, match="critical options: force-command"):
        verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW)


def test_forever_validity_is_rejected(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    line = raw_user_cert(user_ca, subject_key, full_extensions(), valid_before=2**64 - 1)
    with pytest.raises(TrustError, match="out of range"):
        verify_ssh_user_cert(line, [user_ca.ssh_public_key()], NOW)
    with pytest.raises(ValidationError, match="out of range"):
        identity_from_ssh_cert(line)


def test_verify_input_validation(user_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    line = issue_ssh_user_cert(user_ca, subject_key, make_identity())
    with pytest.raises(TrustError, match="no trusted user CA keys"):
        verify_ssh_user_cert(line, [], NOW)
    with pytest.raises(ValidationError, match=r"trusted_ca_keys\[0\]"):
        verify_ssh_user_cert(line, ["not a key"], NOW)
    with pytest.raises(ValidationError, match="got a string"):
        verify_ssh_user_cert(line, user_ca.ssh_public_key(), NOW)
    with pytest.raises(ValidationError, match="timezone-aware"):
        verify_ssh_user_cert(line, [user_ca.ssh_public_key()], datetime(2025, 3, 1, 13))  # naive on purpose


# --------------------------------------------------------------------------- unverified decoding


def test_identity_from_ssh_cert_does_not_verify(
    other_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey
) -> None:
    identity = make_identity(device=DEVICE)
    line = issue_ssh_user_cert(other_ca, subject_key, identity)
    # display only: decodes a cert no one trusts, long after it expired
    assert identity_from_ssh_cert(line) == identity


@pytest.mark.parametrize("line", [b"", b"garbage"])
def test_unverified_helpers_raise_validation_errors(line: bytes) -> None:
    with pytest.raises(ValidationError):
        identity_from_ssh_cert(line)
    with pytest.raises(ValidationError):
        ssh_cert_extension_names(line)
    with pytest.raises(ValidationError):
        load_ssh_certificate(line)


# --------------------------------------------------------------------------- host certs


def test_host_cert(host_ca: CertAuthority, subject_key: ec.EllipticCurvePublicKey) -> None:
    line = issue_ssh_host_cert(
        host_ca, subject_key, "node-uuid", ["node-1", "node-1.example.com"], NOW, NOW + timedelta(days=365)
    )
    cert = load_ssh_certificate(line)
    assert cert.type == SSHCertificateType.HOST
    assert cert.key_id == b"node-uuid"
    assert cert.valid_principals == [b"node-1", b"node-1.example.com"]
    assert cert.extensions == {}
    cert.verify_cert_signature()
    assert cert.signature_key() == host_ca.public_key()


@pytest.mark.parametrize(
    ("host_id", "principals", "not_after", "match"),
    [
        ("node", [], NOW + TTL, "at least one host name"),
        ("node", "node-1", NOW + TTL, "got a string"),
        ("", ["node-1"], NOW + TTL, "host_id"),
        ("node", ["node-1"], NOW, "not_after"),
    ],
)
def test_host_cert_refusals(
    host_ca: CertAuthority,
    subject_key: ec.EllipticCurvePublicKey,
    host_id: str,
    principals: list[str],
    not_after: datetime,
    match: str,
) -> None:
    with pytest.raises(ValidationError, match=match):
        issue_ssh_host_cert(host_ca, subject_key, host_id, principals, NOW, not_after)
