"""What the repositories take and return: plain frozen values, free of the resource model (``devicetrust.types``).

Every ``datetime`` is timezone-aware UTC. Bodies are the JSON documents as stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import JsonValue

__all__ = [
    "AuditEntry",
    "AuditRecord",
    "DeviceFilter",
    "DeviceFingerprint",
    "DeviceIdentity",
    "DeviceRecord",
    "DeviceSourceParts",
    "DeviceSourceUpdate",
    "DeviceUpsert",
    "JsonPage",
    "LockRecord",
    "PendingRecord",
    "ResourceRecord",
    "SessionRecord",
    "TokenRecord",
    "UpsertResult",
    "UserRecord",
]


@dataclass(frozen=True)
class ResourceRecord:
    kind: str
    name: str
    body: dict[str, JsonValue]
    #: starts at 1 and grows by one with every write; pass it back as ``expected_revision``
    revision: int
    created: datetime
    updated: datetime


@dataclass(frozen=True)
class UserRecord:
    name: str
    body: dict[str, JsonValue]
    password_hash: str | None
    created: datetime
    updated: datetime


@dataclass(frozen=True)
class TokenRecord:
    token_hash: str
    kind: str
    subject: str
    body: dict[str, JsonValue]
    expires: datetime
    single_use: bool
    created: datetime


@dataclass(frozen=True)
class SessionRecord:
    token_hash: str
    user: str
    #: "user" | "bot" | "admin"
    kind: str
    body: dict[str, JsonValue]
    expires: datetime
    created: datetime


@dataclass(frozen=True)
class PendingRecord:
    id: str
    kind: str
    subject: str
    body: dict[str, JsonValue]
    expires: datetime
    created: datetime


@dataclass(frozen=True)
class AuditEntry:
    """An event to append: its name and code, when, who it is about, whether it succeeded, its own fields."""

    event: str
    code: str
    time: datetime
    user: str
    success: bool
    body: Mapping[str, object]


@dataclass(frozen=True)
class AuditRecord:
    #: ordering key, assigned by the backend
    id: int
    uid: str
    event: str
    code: str
    time: datetime
    user: str
    success: bool
    body: dict[str, JsonValue]


@dataclass(frozen=True)
class DeviceRecord:
    #: a UUID, fixed at creation
    id: str
    #: with ``asset_tag``, unique and fixed at creation
    os_type: str
    asset_tag: str
    enroll_status: str
    #: "" when nobody owns the device
    owner: str
    source_name: str | None
    source_origin: str | None
    #: the MDM's id for the device
    external_id: str | None
    #: the whole device document
    body: dict[str, JsonValue]
    #: starts at 1 and grows by one with every write; pass it back as ``expected_revision``
    revision: int
    created: datetime
    updated: datetime


@dataclass(frozen=True)
class DeviceFilter:
    """Which devices a listing keeps: those matching every field that is set (None matches anything).

    ``search`` is a case-insensitive substring of the asset tag, the owner or the id; the others are exact.
    ``source_name=""`` keeps the devices of no source, ``owner=""`` those nobody owns.
    """

    search: str | None = None
    asset_tag: str | None = None
    os_type: str | None = None
    enroll_status: str | None = None
    source_name: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class JsonPage:
    """A page of a listing as JSON texts straight from the database, and the token of the next page (None on the
    last)."""

    items: list[str]
    next_page_token: str | None


@dataclass(frozen=True)
class DeviceUpsert:
    """One device of an MDM sync batch (``DeviceRepository.upsert_many``).

    ``id`` is used only when the device is new: an existing (os_type, asset_tag) keeps its id.
    """

    id: str
    os_type: str
    asset_tag: str
    body: dict[str, JsonValue]
    source_name: str | None
    source_origin: str | None
    external_id: str | None


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device without its document (``DeviceRepository.identities_page``): what a full MDM sync needs to find
    the devices it no longer sees."""

    id: str
    os_type: str
    asset_tag: str
    source_name: str | None
    source_origin: str | None
    external_id: str | None


@dataclass(frozen=True, slots=True)
class DeviceFingerprint:
    """A device's columns and the fingerprint of its MDM-owned parts
    (``DeviceRepository.find_fingerprints_by_asset_tag``)."""

    id: str
    os_type: str
    asset_tag: str
    source_name: str | None
    source_origin: str | None
    external_id: str | None
    revision: int
    #: devicetrust.types.mdm_parts.fingerprint of the document at ``revision``
    fingerprint: int
    #: whether it was stored for this revision; False: computed from the document (stale or never stored)
    stored: bool


@dataclass(frozen=True)
class DeviceSourceUpdate:
    """One device of an MDM sync's update batch (``DeviceRepository.update_from_source``): its new document and
    source columns, written only if the device still has ``expected_revision``."""

    id: str
    body: dict[str, JsonValue]
    source_name: str | None
    source_origin: str | None
    external_id: str | None
    expected_revision: int


@dataclass(frozen=True)
class DeviceSourceParts:
    """One device of an MDM sync's update batch (``DeviceRepository.update_source_parts``): the parts of its
    document the MDM owns (``spec.source``; ``spec.profile``, stamped) and the stamp for ``spec.update_time``,
    written onto the document as stored (everything else kept) with its source columns, only if the device still
    has ``expected_revision``."""

    id: str
    source: dict[str, JsonValue]
    profile: dict[str, JsonValue]
    update_time: str
    source_name: str | None
    source_origin: str | None
    external_id: str | None
    expected_revision: int


@dataclass(frozen=True)
class UpsertResult:
    created: int
    updated: int
    #: already stored exactly so: not written, revision not bumped
    unchanged: int


@dataclass(frozen=True)
class LockRecord:
    name: str
    target_kind: str
    target_value: str
    body: dict[str, JsonValue]
    #: None: until deleted
    expires: datetime | None
    created: datetime
