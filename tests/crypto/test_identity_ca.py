"""Identity validation and certificate authority generation / storage records."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from devicetrust.crypto.ca import CA_VALIDITY, CertAuthority
from devicetrust.crypto.identity import DeviceExtensions, Identity
from devicetrust.crypto.keys import load_public_key
from devicetrust.errors import ValidationError

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
DEVICE = DeviceExtensions(device_id="dev-1", asset_tag="C02ABC", credential_id="cred-1")


def make_identity(**overrides: object) -> Identity:
    fields: dict[str, object] = {
        "username": "alice",
        "roles": ("access",),
        "logins": ("alice",),
        "traits": {"logins": ("alice",)},
        "not_before": NOW,
        "not_after": NOW + timedelta(hours=12),
    }
    fields.update(overrides)
    return Identity(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Identity


def test_identity_normalises_time_and_collections() -> None:
    cet = timezone(timedelta(hours=1))
    ident = make_identity(
        roles=["access", "editor"],
        traits={"b": ["2"], "a": ("1",)},
        not_before=datetime(2025, 3, 1, 13, 0, 0, 999_999, tzinfo=cet),
    )
    assert ident.roles == ("access", "editor")
    assert ident.not_before == NOW
    assert ident.not_before.tzinfo is UTC
    assert ident.not_before.microsecond == 0  # certificates carry whole seconds
    assert list(ident.traits) == ["a", "b"]
    assert ident.traits["b"] == ("2",)
    with pytest.raises(TypeError):
        ident.traits["c"] = ("x",)  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ident.username = "mallory"  # type: ignore[misc]


def test_identity_is_bot() -> None:
    assert not make_identity().is_bot
    assert make_identity(bot_name="ci").is_bot


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"username": ""}, "username"),
        ({"username": "al\nice"}, "username"),
        ({"roles": "access"}, "roles"),
        ({"roles": ("",)}, "roles"),
        ({"logins": ("ro\x00ot",)}, "logins"),
        ({"traits": {"": ("x",)}}, "trait name"),
        ({"traits": {"logins": "alice"}}, "traits.logins"),
        ({"traits": {"logins": (1,)}}, "traits.logins"),
        ({"not_before": datetime(2025, 3, 1)}, "not_before"),  # naive on purpose
        ({"not_after": NOW}, "not_after"),
        ({"not_after": NOW - timedelta(seconds=1)}, "not_after"),
        ({"bot_name": ""}, "bot_name"),
    ],
)
def test_identity_rejects_bad_fields(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        make_identity(**overrides)


def test_device_extensions_require_all_values() -> None:
    for missing in ("device_id", "asset_tag", "credential_id"):
        values = {"device_id": "d", "asset_tag": "a", "credential_id": "c", missing: ""}
        with pytest.raises(ValidationError, match=missing):
            DeviceExtensions(**values)


def test_with_device_refuses_to_augment_twice() -> None:
    augmented = make_identity().with_device(DEVICE)
    assert augmented.device == DEVICE
    with pytest.raises(ValidationError, match="already carries device"):
        augmented.with_device(DEVICE)


# --------------------------------------------------------------------------- CertAuthority


@pytest.mark.parametrize("kind", ["user", "host"])
def test_generate_ca(kind: str) -> None:
    ca = CertAuthority.generate(kind, "example.com", NOW)  # type: ignore[arg-type]
    cert = ca.certificate
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"example.com {kind} CA"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "example.com"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and ku.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.not_valid_before_utc <= NOW
    assert cert.not_valid_after_utc == NOW + CA_VALIDITY
    assert cert.serial_number > 0
    cert.verify_directly_issued_by(cert)
    assert load_public_key(ca.ssh_public_key()) == ca.private_key.public_key()
    assert load_public_key(ca.ssh_public_key()) == cert.public_key()


def test_ca_serials_and_keys_are_random() -> None:
    a = CertAuthority.generate("user", "example.com", NOW)
    b = CertAuthority.generate("user", "example.com", NOW)
    assert a.certificate.serial_number != b.certificate.serial_number
    assert a.ssh_public_key() != b.ssh_public_key()


def test_ca_repr_hides_the_private_key() -> None:
    ca = CertAuthority.generate("user", "example.com", NOW)
    assert "private" not in repr(ca).lower()
    assert "PRIVATE" not in repr(ca)


def test_ca_record_round_trip() -> None:
    ca = CertAuthority.generate("host", "example.com", NOW)
    record = ca.to_record()
    assert set(record) == {"kind", "cluster_name", "private_key_pem", "certificate_pem"}
    again = CertAuthority.from_record(record)
    assert again.kind == "host"
    assert again.cluster_name == "example.com"
    assert again.certificate == ca.certificate
    assert again.ssh_public_key() == ca.ssh_public_key()
    assert again.certificate_pem() == ca.certificate_pem()


def test_ca_record_rejects_inconsistent_data() -> None:
    user = CertAuthority.generate("user", "example.com", NOW).to_record()
    other = CertAuthority.generate("user", "example.com", NOW).to_record()
    with pytest.raises(ValidationError, match="missing"):
        CertAuthority.from_record({k: v for k, v in user.items() if k != "certificate_pem"})
    with pytest.raises(ValidationError, match="does not match"):
        CertAuthority.from_record({**user, "private_key_pem": other["private_key_pem"]})
    with pytest.raises(ValidationError, match=r"CN=example\.com host CA"):
        CertAuthority.from_record({**user, "kind": "host"})
    with pytest.raises(ValidationError, match="CN=other user CA"):
        CertAuthority.from_record({**user, "cluster_name": "other"})
    with pytest.raises(ValidationError, match="kind"):
        CertAuthority.from_record({**user, "kind": "db"})
    with pytest.raises(ValidationError, match="certificate"):
        CertAuthority.from_record({**user, "certificate_pem": "nope"})
    with pytest.raises(ValidationError, match="private key"):
        CertAuthority.from_record({**user, "private_key_pem": "nope"})


def test_ca_generate_rejects_bad_input() -> None:
    with pytest.raises(ValidationError, match="kind"):
        CertAuthority.generate("db", "example.com", NOW)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="cluster_name"):
        CertAuthority.generate("user", "", NOW)
    with pytest.raises(ValidationError, match="cluster_name"):
        CertAuthority.generate("user", "x" * 57, NOW)
    with pytest.raises(ValidationError, match="timezone-aware"):
        CertAuthority.generate("user", "example.com", datetime(2025, 1, 1))
