"""The pure core of an MDM sync: what the MDM reports vs what is stored -> what to write, what is missing.

No I/O here. The engine feeds inventory pages in and gets decisions out; the sink (in-process or remote) writes
them. Identity is the pair (os_type, asset_tag) — the device's serial number on that platform — as in storage.

Ownership rule: a sync only ever touches devices whose source is itself (same source name, same origin). A device
registered by hand (tctl devices add, source None) or by another MDM with the same OS and serial is *skipped*,
not adopted — as Teleport does. Adopting would let a later full sync delete a device an administrator registered;
to hand such a device over, delete it and let the next sync register it.

The MDM owns two parts of a device document: ``spec.source`` and ``spec.profile``. Everything else (id, enroll
status, credential, owner, collected data, create time) belongs to the cluster and survives every sync.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from pydantic import JsonValue

from devicetrust.types import Device, DeviceProfile, DeviceSource, profile_to_dict, resource_to_dict
from devicetrust.types.device import format_timestamp
from devicetrust.types.mdm_parts import fingerprint, spec_fingerprint

__all__ = [
    "Action",
    "Gone",
    "Observation",
    "PagePlan",
    "Present",
    "Recheck",
    "Skipped",
    "SourceDevice",
    "StoredDevice",
    "Unknown",
    "Verdict",
    "decide_missing",
    "device_key",
    "fingerprint",
    "lookup_keys",
    "missing",
    "missing_policy",
    "new_device_body",
    "observation_fingerprint",
    "plan_page",
    "reconcile",
    "registration",
    "spec_fingerprint",
]

_T = TypeVar("_T")


def device_key(os_type: str, asset_tag: str) -> str:
    """The identity of a device as one string (cheaper to hold 100k of than tuples): ``macos/C02XJ0ABHX87``."""
    return f"{os_type}/{asset_tag}"


@dataclass(frozen=True, slots=True)
class Observation:
    """One device as the MDM reports it, already mapped to our model (os_type, serial, profile)."""

    external_id: str
    os_type: str
    asset_tag: str
    #: without update_time: that is set when a changed profile is written
    profile: DeviceProfile
    #: when the MDM last heard from the device (Jamf: general.reportDate); drives partial syncs
    report_time: datetime | None = None
    #: the MDM's name for the device, for logs only
    name: str = ""

    @property
    def key(self) -> str:
        return device_key(self.os_type, self.asset_tag)


@dataclass(frozen=True, slots=True)
class Skipped:
    """An inventory record that is not synced, and why (logged; counted in the sync's audit event)."""

    external_id: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class StoredDevice:
    """What a sync needs to know of a stored device: identity, owner (source) and a fingerprint of the MDM's
    parts. Never the credential: a remote MDM agent sees no more than this."""

    id: str
    os_type: str
    asset_tag: str
    source_name: str | None
    source_origin: str | None
    external_id: str | None
    revision: int
    #: :func:`spec_fingerprint` of the stored document
    fingerprint: int

    @property
    def key(self) -> str:
        return device_key(self.os_type, self.asset_tag)

    def belongs_to(self, source: DeviceSource) -> bool:
        return self.source_name == source.name and self.source_origin == source.origin


@dataclass(frozen=True, slots=True)
class SourceDevice:
    """A device this source registered, as a full sync's check for missing devices needs it: no document."""

    id: str
    os_type: str
    asset_tag: str
    external_id: str | None

    @property
    def key(self) -> str:
        return device_key(self.os_type, self.asset_tag)


# -- the document parts the MDM owns ------------------------------------------------------------------------


def registration(observation: Observation, source: DeviceSource) -> tuple[dict[str, JsonValue], dict[str, JsonValue]]:
    """``spec.source`` and ``spec.profile`` (without update_time) as the device document holds them.

    The profile was validated when the observation was made, so it is rendered without building a Device again.
    """
    profile = profile_to_dict(observation.profile)
    profile.pop("update_time", None)
    return {"name": source.name, "origin": source.origin}, profile


def observation_fingerprint(observation: Observation, source: DeviceSource) -> int:
    return fingerprint(*registration(observation, source))


def new_device_body(
    observation: Observation, source: DeviceSource, device_id: str, now: datetime
) -> dict[str, JsonValue]:
    """The document of a device the MDM registers for the first time: not enrolled, no owner."""
    body = resource_to_dict(
        Device(
            id=device_id,
            os_type=observation.os_type,
            asset_tag=observation.asset_tag,
            source=source,
            profile=observation.profile,
            create_time=now,
            update_time=now,
        )
    )
    # the profile was validated when it was mapped; stamping it here spares validating it again
    spec = body["spec"]
    assert isinstance(spec, dict) and isinstance(spec["profile"], dict)
    spec["profile"]["update_time"] = format_timestamp(now)
    return body


# -- reconciling one page ----------------------------------------------------------------------------------


class Action(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    #: registered by hand or by another source: left alone
    FOREIGN = "foreign"


def reconcile(observation: Observation, stored: StoredDevice | None, source: DeviceSource) -> Action:
    if stored is None:
        return Action.CREATE
    if not stored.belongs_to(source):
        return Action.FOREIGN
    if stored.external_id == observation.external_id and stored.fingerprint == observation_fingerprint(
        observation, source
    ):
        return Action.UNCHANGED
    return Action.UPDATE


@dataclass(frozen=True)
class PagePlan:
    #: to create or update, for the sink to write (it re-reads each in its transaction before merging)
    apply: tuple[Observation, ...]
    #: the keys among ``apply`` that were absent when the page was looked up (the sink may insert them in bulk)
    new_keys: frozenset[str]
    unchanged: int
    foreign: tuple[Observation, ...]
    #: seen earlier in this sync (offset paging repeats a record when devices are added during a walk)
    duplicates: int
    #: keys first seen on this page
    seen: frozenset[str]


def plan_page(
    observations: Iterable[Observation],
    stored: Mapping[str, StoredDevice],
    already_seen: Set[str],
    source: DeviceSource,
) -> PagePlan:
    """Sort one page into writes, no-ops and skips.

    ``stored``: the stored devices with the page's identities, by key, looked up just before (:func:`lookup_keys`).
    """
    apply: list[Observation] = []
    new_keys: set[str] = set()
    foreign: list[Observation] = []
    unchanged = duplicates = 0
    seen: set[str] = set()
    for observation in observations:
        key = observation.key
        if key in already_seen or key in seen:
            duplicates += 1
            continue
        seen.add(key)
        action = reconcile(observation, stored.get(key), source)
        if action is Action.UNCHANGED:
            unchanged += 1
        elif action is Action.FOREIGN:
            foreign.append(observation)
        else:
            apply.append(observation)
            if action is Action.CREATE:
                new_keys.add(key)
    return PagePlan(tuple(apply), frozenset(new_keys), unchanged, tuple(foreign), duplicates, frozenset(seen))


def lookup_keys(observations: Iterable[Observation], already_seen: Set[str]) -> list[tuple[str, str]]:
    """The (os_type, asset_tag) identities of a page that :func:`plan_page` will decide on, each once."""
    keys: dict[str, tuple[str, str]] = {}
    for observation in observations:
        key = observation.key
        if key not in already_seen:
            keys.setdefault(key, (observation.os_type, observation.asset_tag))
    return list(keys.values())


# -- devices that were not seen -----------------------------------------------------------------------------


def missing(devices: Iterable[SourceDevice], seen: Set[str], os_types: Collection[str]) -> Iterator[SourceDevice]:
    """The source's devices of the synced platforms that the walk did not see."""
    for device in devices:
        if device.os_type in os_types and device.key not in seen:
            yield device


def missing_policy(missing_count: int, *, records_read: int, delete_missing: bool) -> str | None:
    """Whether a full sync's missing devices are re-checked (None) or all kept, and why.

    A sync that read zero records deletes nothing: an empty answer is far more likely a broken filter, a lost
    privilege or a Jamf incident than a whole fleet retired at once.
    """
    if missing_count == 0:
        return None
    if not delete_missing:
        return f"{missing_count} missing device(s) kept (on_missing: NOOP)"
    if records_read == 0:
        return f"the MDM returned no devices; {missing_count} missing device(s) kept"
    return None


@dataclass(frozen=True)
class Gone:
    """The MDM no longer knows the id (HTTP 404)."""


@dataclass(frozen=True)
class Present:
    """The MDM still has a record under the id: what it maps to now (None: unsupported or no serial)."""

    os_type: str | None
    asset_tag: str | None
    #: whether the record still matches one of the inventory filters (None: not checked)
    in_scope: bool | None = None


@dataclass(frozen=True)
class Unknown:
    """The re-check failed (network, 5xx…): nothing is decided on an error."""

    reason: str


Recheck = Gone | Present | Unknown


@dataclass(frozen=True)
class Verdict:
    delete: bool
    reason: str


def decide_missing(device: SourceDevice, recheck: Recheck) -> Verdict:
    """Gone from the MDM (404) -> delete; now another serial or platform -> delete; the re-check failed -> keep."""
    if isinstance(recheck, Gone):
        return Verdict(True, "no longer in the MDM")
    if isinstance(recheck, Unknown):
        return Verdict(False, f"re-check failed: {recheck.reason}")
    if recheck.asset_tag != device.asset_tag:
        return Verdict(True, f"the MDM id now belongs to serial {recheck.asset_tag or '(none)'}")
    if recheck.os_type != device.os_type:
        return Verdict(True, f"the MDM now reports platform {recheck.os_type or '(unsupported)'}")
    if recheck.in_scope is False:
        return Verdict(True, "no longer matches the inventory filter")
    return Verdict(False, "still in the MDM (it moved between pages during the walk)")


def chunked(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
