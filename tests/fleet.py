"""A fleet of registered devices written straight into the backend, for the listing tests (``GET /v1/devices``
and ``tctl devices ls``): what each seeded device is, as the tests expect to see it listed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from devicetrust.storage.repositories import Store
from devicetrust.types import Device, DeviceCredential, DeviceSource, resource_to_dict

#: When every seeded device was created and last updated.
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass(frozen=True)
class Seeded:
    id: str
    os_type: str
    asset_tag: str
    enrolled: bool
    owner: str
    source: str


def seed(store: Store, devices: Iterable[Seeded]) -> None:
    """Store each of ``devices`` as the auth service would have registered (and, if enrolled, enrolled) it."""
    for seeded in devices:
        device = Device(
            id=seeded.id,
            os_type=seeded.os_type,
            asset_tag=seeded.asset_tag,
            enroll_status="enrolled" if seeded.enrolled else "not_enrolled",
            credential=DeviceCredential(
                id=f"cred-{seeded.asset_tag}", attestation_type="unsafe_software", public_key_der=b"key"
            )
            if seeded.enrolled
            else None,
            source=DeviceSource(seeded.source, seeded.source) if seeded.source else None,
            owner=seeded.owner,
            create_time=WHEN,
            update_time=WHEN,
        )
        store.devices.create(
            device.id,
            device.os_type,
            device.asset_tag,
            resource_to_dict(device),
            enroll_status=device.enroll_status,
            owner=device.owner,
            source_name=seeded.source or None,
            source_origin=seeded.source or None,
        )
