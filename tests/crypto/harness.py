"""What the certificate tests share: the frozen issue time, the certificates' lifetime, one device and a user's
identity to certify."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from devicetrust.crypto.identity import DeviceExtensions, Identity

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
TTL = timedelta(hours=12)
DEVICE = DeviceExtensions(device_id="dev-1", asset_tag="C02ABC", credential_id="cred-1")


def make_identity(**overrides: object) -> Identity:
    """Alice with two roles and two logins, valid from NOW for TTL, changed by ``overrides``."""
    fields: dict[str, object] = {
        "username": "alice",
        "roles": ("access", "editor"),
        "logins": ("alice", "root"),
        "traits": {"logins": ("alice", "root")},
        "not_before": NOW,
        "not_after": NOW + TTL,
    }
    fields.update(overrides)
    return Identity(**fields)  # type: ignore[arg-type]
