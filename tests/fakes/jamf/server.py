"""A faithful fake Jamf Pro server, for tests, the demo and the benchmark (Starlette on uvicorn, HTTPS, loopback).

Driven by realistic inventory JSON (``examples/jamf/computers.json``: records with every section, field names
exactly as Jamf returns them) or by N synthetic computers generated one page at a time. It behaves as Jamf does
where the sync depends on it:

- ``POST /api/oauth/token`` (form client credentials) and ``POST /api/v1/auth/token`` (basic), tokens that expire
  after ``token_lifetime_s``, ``POST /api/v1/auth/keep-alive`` and ``/invalidate-token``;
- ``GET /api/v2/computers-inventory`` and ``/api/v1/…`` (+ ``/{id}``, ``-detail/{id}``), ``GET
  /api/v2/mobile-devices/detail`` and ``/api/v2/mobile-devices/{id}``: page, page-size (silently cut to 2000),
  sort, the RSQL filter subset (:mod:`.rsql`, unknown fields refused as Jamf does), sections (unrequested ones are
  null), totalCount;
- errors in Jamf's envelope: ``{"httpStatus": 401, "errors": [{"code": "INVALID_TOKEN", "description": …,
  "id": "0", "field": null}]}``;
- switchable faults (:class:`Faults`): 401 mid-sync, 500s, 429 with Retry-After, slow pages, redirects to
  another host, no v2 API, and offset-paging gaps (a device retired mid-walk, so the next page skips one).

Run it by hand for the demo, from the repository root: ``python -m tests.fakes.jamf.server serve --dir
.demo/jamf --computers examples/jamf/computers.json`` (writes a test CA and the API client's secret to ``--dir``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
import socket
import threading
import time
import uuid
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes.jamf import rsql
from tests.fakes.pki import TestPKI, make_test_pki

__all__ = [
    "JAMF_MAX_PAGE_SIZE",
    "FakeJamf",
    "FakeJamfServer",
    "Faults",
    "Inventory",
    "load_inventory_json",
    "synthetic_computer",
]

#: Jamf silently serves at most this many records per page
JAMF_MAX_PAGE_SIZE = 2000
DEFAULT_TOKEN_LIFETIME_S = 60.0
#: (filter, sort) orderings kept; each is an array of ids (400 KB at 100k devices)
QUERY_CACHE_ENTRIES = 16
#: requests remembered for tests to inspect
REQUEST_LOG_ENTRIES = 10_000


def _sections(names: str) -> dict[str, tuple[str, bool]]:
    """Section name -> (JSON key, is a list), in the order given. The key is the name in camelCase (Jamf's own
    rule); a trailing "[]" marks a section that is a list."""
    sections: dict[str, tuple[str, bool]] = {}
    for name in names.split():
        section = name.removesuffix("[]")
        first, *rest = section.lower().split("_")
        sections[section] = (first + "".join(word.capitalize() for word in rest), name.endswith("[]"))
    return sections


COMPUTER_SECTIONS: Mapping[str, tuple[str, bool]] = _sections(
    "GENERAL DISK_ENCRYPTION PURCHASING APPLICATIONS[] STORAGE USER_AND_LOCATION CONFIGURATION_PROFILES[] PRINTERS[] "
    "SERVICES[] HARDWARE LOCAL_USER_ACCOUNTS[] CERTIFICATES[] ATTACHMENTS[] PLUGINS[] PACKAGE_RECEIPTS FONTS[] "
    "SECURITY OPERATING_SYSTEM LICENSED_SOFTWARE[] IBEACONS[] SOFTWARE_UPDATES[] EXTENSION_ATTRIBUTES[] "
    "CONTENT_CACHING GROUP_MEMBERSHIPS[]"
)
MOBILE_SECTIONS: Mapping[str, tuple[str, bool]] = _sections(
    "GENERAL HARDWARE USER_AND_LOCATION PURCHASING SECURITY APPLICATIONS[] EBOOKS[] NETWORK SERVICE_SUBSCRIPTIONS[] "
    "CERTIFICATES[] PROFILES[] USER_PROFILES[] PROVISIONING_PROFILES[] SHARED_USERS[] EXTENSION_ATTRIBUTES[]"
)
# Fields the spec allows in filter= and sort= (the subset the sync and its tests use, plus common ones).
COMPUTER_FILTER_FIELDS = frozenset(
    {
        "general.name",
        "udid",
        "id",
        "general.assetTag",
        "general.barcode1",
        "general.barcode2",
        "general.enrolledViaAutomatedDeviceEnrollment",
        "general.lastIpAddress",
        "general.jamfBinaryVersion",
        "general.lastContactTime",
        "general.lastEnrolledDate",
        "general.reportDate",
        "general.managementId",
        "general.remoteManagement.managed",
        "general.remoteManagement.managementUsername",
        "general.platform",
        "general.supervised",
        "general.userApprovedMdm",
        "hardware.make",
        "hardware.model",
        "hardware.modelIdentifier",
        "hardware.serialNumber",
        "hardware.appleSilicon",
        "operatingSystem.build",
        "operatingSystem.supplementalBuildVersion",
        "operatingSystem.name",
        "operatingSystem.version",
        "userAndLocation.email",
        "userAndLocation.realname",
        "userAndLocation.username",
        "userAndLocation.departmentId",
        "userAndLocation.buildingId",
    }
)
COMPUTER_SORT_FIELDS = frozenset(
    {
        "general.name",
        "udid",
        "id",
        "general.assetTag",
        "general.jamfBinaryVersion",
        "general.lastContactTime",
        "general.lastEnrolledDate",
        "general.reportDate",
        "general.platform",
        "hardware.make",
        "hardware.model",
        "operatingSystem.build",
        "operatingSystem.name",
        "operatingSystem.version",
        "userAndLocation.realname",
    }
)
# mobile-devices/detail names its fields flat; where each lives in a record
MOBILE_FIELDS: Mapping[str, str] = {
    "mobileDeviceId": "mobileDeviceId",
    "displayName": "general.displayName",
    "udid": "general.udid",
    "assetTag": "general.assetTag",
    "managed": "general.managed",
    "supervised": "general.supervised",
    "osVersion": "general.osVersion",
    "osBuild": "general.osBuild",
    "osSupplementalBuildVersion": "general.osSupplementalBuildVersion",
    "lastInventoryUpdateDate": "general.lastInventoryUpdateDate",
    "lastEnrolledDate": "general.lastEnrolledDate",
    "serialNumber": "hardware.serialNumber",
    "model": "hardware.model",
    "modelIdentifier": "hardware.modelIdentifier",
    "modelNumber": "hardware.modelNumber",
    "wifiMacAddress": "hardware.wifiMacAddress",
    "username": "userAndLocation.username",
    "emailAddress": "userAndLocation.emailAddress",
}


def _envelope(status: int, code: str, description: str, field: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"httpStatus": status, "errors": [{"code": code, "description": description, "id": "0", "field": field}]},
        status_code=status,
    )


def _jamf_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dig(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


# -- synthetic computers ------------------------------------------------------------------------------------

_SERIAL_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
#: coprime with 34**9: id -> serial is a bijection, so synthetic serials never collide
_SERIAL_MULTIPLIER = 1_000_000_007
_SERIAL_SPACE = len(_SERIAL_ALPHABET) ** 9
SYNTHETIC_EPOCH = datetime(2026, 10, 1, tzinfo=UTC)
_SYNTHETIC_EPOCH_S = int(SYNTHETIC_EPOCH.timestamp())
#: synthetic report dates spread over this window, in an order unrelated to the ids
SYNTHETIC_REPORT_WINDOW_S = 14 * 24 * 3600
_SYNTHETIC_MODELS = (
    ("MacBookPro18,3", "14-inch MacBook Pro (2021)", "Apple M1 Pro", True),
    ("Mac14,2", "MacBook Air (M2, 2022)", "Apple M2", True),
    ("Mac15,3", "14-inch MacBook Pro (M3, Nov 2023)", "Apple M3", True),
    ("Mac14,3", "Mac mini (2023)", "Apple M2", True),
    ("MacBookPro16,1", "16-inch MacBook Pro (2019)", "Intel Core i9", False),
    ("iMac21,1", "iMac (24-inch, M1, 2021)", "Apple M1", True),
)
_SYNTHETIC_OS = (
    ("14.6.1", "23G93", ""),
    ("15.1", "24B83", ""),
    ("13.6.9", "22G830", ""),
    ("13.4.1", "22F82", "22F770820d"),
)
_FIRST_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar")
_LAST_NAMES = ("smith", "jones", "garcia", "miller", "davis", "lopez", "wilson", "moore", "taylor", "clark")


def _guid(jamf_id: int, salt: int) -> str:
    """A stable, unique-looking GUID for (id, salt), cheaper than uuid5 (the benchmark makes 100k records a sync)."""
    value = ((jamf_id << 8 | salt) * 0x9E3779B97F4A7C15F39CC0605CEDC835) % (1 << 128)
    text = f"{value:032X}"
    return f"{text[:8]}-{text[8:12]}-4{text[13:16]}-A{text[17:20]}-{text[20:]}"


def _serial(jamf_id: int) -> str:
    n = (jamf_id * _SERIAL_MULTIPLIER) % _SERIAL_SPACE
    chars = []
    for _ in range(9):
        n, digit = divmod(n, len(_SERIAL_ALPHABET))
        chars.append(_SERIAL_ALPHABET[digit])
    return "C02" + "".join(chars)


def synthetic_computer(
    jamf_id: int, *, os_index: int | None = None, report_date: datetime | None = None
) -> dict[str, Any]:
    """A deterministic, realistic computers-inventory record (GENERAL, HARDWARE, OPERATING_SYSTEM,
    LOCAL_USER_ACCOUNTS, USER_AND_LOCATION) for id ``jamf_id``."""
    model, model_name, processor, apple_silicon = _SYNTHETIC_MODELS[jamf_id % len(_SYNTHETIC_MODELS)]
    version, build, supplemental = _SYNTHETIC_OS[(jamf_id if os_index is None else os_index) % len(_SYNTHETIC_OS)]
    first = _FIRST_NAMES[jamf_id % len(_FIRST_NAMES)]
    last = _LAST_NAMES[(jamf_id // len(_FIRST_NAMES)) % len(_LAST_NAMES)]
    username = f"{first}.{last}{jamf_id}"
    if report_date is None:
        seconds = _SYNTHETIC_EPOCH_S + (jamf_id * 7919) % SYNTHETIC_REPORT_WINDOW_S
        report = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    else:
        report = _jamf_time(report_date)
    udid = _guid(jamf_id, 1)
    mac = ":".join(f"{(jamf_id >> shift) & 0xFF:02X}" for shift in (40, 32, 24, 16, 8, 0))
    return {
        "id": str(jamf_id),
        "udid": udid,
        "general": {
            "name": f"{first.capitalize()}'s {model_name.split(' (')[0]}",
            "lastIpAddress": f"10.{(jamf_id >> 16) & 255}.{(jamf_id >> 8) & 255}.{jamf_id & 255}",
            "lastReportedIp": f"192.168.{(jamf_id >> 8) & 255}.{jamf_id & 255}",
            "jamfBinaryVersion": "11.9.1-t1726247520",
            "platform": "Mac",
            "barcode1": None,
            "barcode2": None,
            "assetTag": f"IT-{jamf_id:06d}",
            "remoteManagement": {"managed": True, "managementUsername": "jamfadmin"},
            "supervised": True,
            "mdmCapable": {"capable": True, "capableUsers": [username]},
            "reportDate": report,
            "lastContactTime": report,
            "lastCloudBackupDate": None,
            "lastEnrolledDate": "2025-08-14T09:12:44Z",
            "mdmProfileExpiration": "2027-08-14T09:12:44Z",
            "initialEntryDate": "2025-08-14",
            "distributionPoint": None,
            "enrollmentMethod": {"id": "3", "objectName": "Corporate ADE", "objectType": "Automated Device Enrollment"},
            "site": {"id": "-1", "name": "None"},
            "itunesStoreAccountActive": False,
            "enrolledViaAutomatedDeviceEnrollment": True,
            "userApprovedMdm": True,
            "declarativeDeviceManagementEnabled": True,
            "extensionAttributes": [],
            "managementId": _guid(jamf_id, 2).lower(),
        },
        "hardware": {
            "make": "Apple",
            "model": model_name,
            "modelIdentifier": model,
            "serialNumber": _serial(jamf_id),
            "processorSpeedMhz": 3200 if apple_silicon else 2300,
            "processorCount": 1,
            "coreCount": 10 if apple_silicon else 8,
            "processorType": processor,
            "processorArchitecture": "arm64" if apple_silicon else "x86_64",
            "busSpeedMhz": 0,
            "cacheSizeKilobytes": 0,
            "networkAdapterType": "IEEE80211",
            "macAddress": mac,
            "altNetworkAdapterType": None,
            "altMacAddress": None,
            "totalRamMegabytes": 16384,
            "openRamSlots": 0,
            "batteryCapacityPercent": 87,
            "smcVersion": None,
            "nicSpeed": None,
            "opticalDrive": None,
            "bootRom": "10151.140.19",
            "bleCapable": True,
            "supportsIosAppInstalls": apple_silicon,
            "appleSilicon": apple_silicon,
            "extensionAttributes": [],
        },
        "operatingSystem": {
            "name": "macOS",
            "version": version,
            "build": build,
            "supplementalBuildVersion": supplemental or None,
            "rapidSecurityResponse": "(a)" if supplemental else None,
            "activeDirectoryStatus": "Not Bound",
            "fileVault2Status": "ALL_ENCRYPTED",
            "softwareUpdateDeviceId": "J314sAP",
            "extensionAttributes": [],
        },
        "localUserAccounts": [
            {
                "uid": "501",
                "userGuid": _guid(jamf_id, 3),
                "username": username,
                "fullName": f"{first.capitalize()} {last.capitalize()}",
                "admin": jamf_id % 3 == 0,
                "homeDirectory": f"/Users/{username}",
                "homeDirectorySizeMb": 48213,
                "fileVault2Enabled": True,
                "userAccountType": "LOCAL",
                "passwordMinLength": 12,
                "passwordMaxAge": None,
                "passwordMinComplexCharacters": None,
                "passwordHistoryDepth": None,
                "passwordRequireAlphanumeric": True,
                "computerAzureActiveDirectoryId": None,
                "userAzureActiveDirectoryId": None,
                "azureActiveDirectoryId": "UNRESPONSIVE",
            },
            {
                "uid": "502",
                "userGuid": _guid(jamf_id, 4),
                "username": "jamfadmin",
                "fullName": "Jamf Management",
                "admin": True,
                "homeDirectory": "/private/var/jamfadmin",
                "homeDirectorySizeMb": 12,
                "fileVault2Enabled": False,
                "userAccountType": "LOCAL",
                "passwordMinLength": 12,
                "passwordMaxAge": None,
                "passwordMinComplexCharacters": None,
                "passwordHistoryDepth": None,
                "passwordRequireAlphanumeric": True,
                "computerAzureActiveDirectoryId": None,
                "userAzureActiveDirectoryId": None,
                "azureActiveDirectoryId": "UNRESPONSIVE",
            },
        ],
        "userAndLocation": {
            "username": username,
            "realname": f"{first.capitalize()} {last.capitalize()}",
            "email": f"{first}.{last}@example.com",
            "position": None,
            "phone": None,
            "departmentId": "-1",
            "buildingId": "-1",
            "room": None,
            "extensionAttributes": [],
        },
    }


# -- inventories --------------------------------------------------------------------------------------------


class Inventory:
    """Devices by Jamf id: explicit records (from JSON) plus ids 1..``synthetic`` generated on demand.

    ``id_field``: "id" for computers, "mobileDeviceId" for mobile devices. Thread safe (the server thread reads,
    tests write).
    """

    def __init__(
        self,
        records: Iterable[Mapping[str, Any]] = (),
        *,
        id_field: str = "id",
        synthetic: int = 0,
        generator: Callable[[int], dict[str, Any]] = synthetic_computer,
    ) -> None:
        self.id_field = id_field
        self._records: dict[int, dict[str, Any]] = {}
        self._removed: set[int] = set()
        self._synthetic = synthetic
        self._generator = generator
        self._lock = threading.RLock()
        #: bumped by every change; query caches key on it
        self.version = 0
        for record in records:
            self.put(record)

    def put(self, record: Mapping[str, Any]) -> None:
        jamf_id = int(str(record[self.id_field]))
        with self._lock:
            self._records[jamf_id] = json.loads(json.dumps(record))
            self._removed.discard(jamf_id)
            self.version += 1

    def remove(self, jamf_id: int) -> bool:
        with self._lock:
            present = self.get(jamf_id) is not None
            self._records.pop(jamf_id, None)
            if 1 <= jamf_id <= self._synthetic:
                self._removed.add(jamf_id)
            self.version += 1
            return present

    def patch(self, jamf_id: int, section: str, values: Mapping[str, Any]) -> None:
        """Change fields of one section (e.g. a new OS version and reportDate), as a device's next report does."""
        with self._lock:
            record = self.get(jamf_id)
            if record is None:
                raise KeyError(jamf_id)
            record = dict(record)
            record[section] = {**(record.get(section) or {}), **values}
            self._records[jamf_id] = record
            self.version += 1

    def get(self, jamf_id: int) -> dict[str, Any] | None:
        with self._lock:
            if jamf_id in self._records:
                return self._records[jamf_id]
            if 1 <= jamf_id <= self._synthetic and jamf_id not in self._removed:
                return self._generator(jamf_id)
            return None

    def ids(self) -> list[int]:
        with self._lock:
            explicit = set(self._records)
            generated = (i for i in range(1, self._synthetic + 1) if i not in self._removed and i not in explicit)
            return sorted([*explicit, *generated])

    def __len__(self) -> int:
        return len(self.ids())


def load_inventory_json(path: Path, *, id_field: str = "id") -> Inventory:
    """An inventory from a file shaped like Jamf's reply: ``{"totalCount": n, "results": [...]}``."""
    data = json.loads(path.read_text())
    results = data["results"] if isinstance(data, dict) else data
    return Inventory(results, id_field=id_field)


# -- faults -------------------------------------------------------------------------------------------------


@dataclass
class Faults:
    """Switchable misbehaviour; tests flip these between requests. Counters count down as they fire."""

    #: serve /api/v2/computers-inventory (False: 404, as Jamf Pro before v2)
    v2_computers: bool = True
    #: every API request answers 401, whatever the token
    always_unauthorized: bool = False
    #: after this many inventory pages (page-size > 1) have been served, every token is revoked once
    revoke_tokens_after_pages: int | None = None
    #: the next N API requests answer 500
    server_errors: int = 0
    #: the next N API requests answer 429 with Retry-After: retry_after_s
    rate_limited: int = 0
    retry_after_s: int = 1
    #: every inventory page is served this much later
    page_delay_s: float = 0.0
    #: after this many inventory pages have been served, the first device of the walk's order is retired, so every
    #: later device moves one place up and the next page skips one (offset paging's gap)
    gap_after_pages: int | None = None
    #: API requests answer 302 to this origin (e.g. "https://evil.example")
    redirect_to: str | None = None
    #: the next inventory pages (page-size > 1) answer 200 with these bodies instead, one each
    garbled_pages: list[bytes] = field(default_factory=list)


@dataclass
class _TokenGrant:
    expires_at: float
    credential: str


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: str
    status: int


@dataclass
class FakeJamf:
    """The fake's state and its Starlette app (``.app``)."""

    computers: Inventory = field(default_factory=Inventory)
    mobile_devices: Inventory = field(default_factory=lambda: Inventory(id_field="mobileDeviceId"))
    #: client_id -> client_secret
    oauth_clients: dict[str, str] = field(default_factory=dict)
    #: username -> password
    users: dict[str, str] = field(default_factory=dict)
    token_lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S
    faults: Faults = field(default_factory=Faults)
    monotonic: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._tokens: dict[str, _TokenGrant] = {}
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple[Any, ...], array[int]] = OrderedDict()
        self.pages_served = 0
        self.requests: deque[LoggedRequest] = deque(maxlen=REQUEST_LOG_ENTRIES)
        self.tokens_issued = 0
        #: requests being served now, and the most there ever were at once (Jamf asks for at most five)
        self.in_flight = 0
        self.max_in_flight = 0
        self._routes = Starlette(
            routes=[
                Route("/api/oauth/token", self._oauth_token, methods=["POST"]),
                Route("/api/v1/auth/token", self._user_token, methods=["POST"]),
                Route("/api/v1/auth/keep-alive", self._keep_alive, methods=["POST"]),
                Route("/api/v1/auth/invalidate-token", self._invalidate, methods=["POST"]),
                Route("/api/{version:str}/computers-inventory", self._computers, methods=["GET"]),
                Route("/api/{version:str}/computers-inventory/{jamf_id:str}", self._computer, methods=["GET"]),
                Route("/api/v1/computers-inventory-detail/{jamf_id:str}", self._computer_detail, methods=["GET"]),
                Route("/api/v2/mobile-devices/detail", self._mobile_detail, methods=["GET"]),
                Route("/api/v2/mobile-devices/{jamf_id:str}", self._mobile_device, methods=["GET"]),
                Route("/{path:path}", self._not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            ],
        )

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: the routes, counting concurrent requests."""
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._routes(scope, receive, send)
        finally:
            with self._lock:
                self.in_flight -= 1

    # -- tests and the demo drive these -------------------------------------------------------------------
    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def warm(self, kind: str, filter_rsql: str, sort: str) -> int:
        """Compute (and cache) the order a query walks, as Jamf's database indexes would have it ready; returns how
        many devices match. Benchmarks call it so the fake's own start-up cost is not timed."""
        inventory = self.computers if kind == "computers" else self.mobile_devices
        sort_items = [item.strip() if ":" in item else f"{item.strip()}:asc" for item in sort.split(",")]
        return len(self._ordering(inventory, kind, rsql.parse(filter_rsql), filter_rsql, sort_items))

    def token_requests(self) -> int:
        return sum(1 for r in self.requests if r.path in ("/api/oauth/token", "/api/v1/auth/token"))

    def api_requests(self, prefix: str) -> list[LoggedRequest]:
        return [r for r in self.requests if r.path.startswith(prefix)]

    # -- auth ---------------------------------------------------------------------------------------------
    def _issue(self, credential: str) -> tuple[str, float]:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = _TokenGrant(self.monotonic() + self.token_lifetime_s, credential)
            self.tokens_issued += 1
        return token, self.token_lifetime_s

    def _log(self, request: Request, status: int) -> None:
        self.requests.append(LoggedRequest(request.method, request.url.path, request.url.query, status))

    async def _oauth_token(self, request: Request) -> Response:
        # application/x-www-form-urlencoded, parsed by hand (Starlette's form parser needs python-multipart)
        form = {key: values[0] for key, values in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        expected = self.oauth_clients.get(client_id)
        if (
            form.get("grant_type") != "client_credentials"
            or expected is None
            or not secrets.compare_digest(expected.encode(), secret.encode())
        ):
            self._log(request, 401)
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        token, lifetime = self._issue(f"client:{client_id}")
        self._log(request, 200)
        return JSONResponse(
            {"access_token": token, "scope": "api-role:1", "token_type": "Bearer", "expires_in": int(lifetime)}
        )

    def _user_reply(self, token: str, lifetime: float) -> JSONResponse:
        expires = datetime.now(UTC) + timedelta(seconds=lifetime)
        return JSONResponse(
            {"token": token, "expires": expires.strftime("%Y-%m-%dT%H:%M:%S.") + f"{expires.microsecond // 1000:03d}Z"}
        )

    async def _user_token(self, request: Request) -> Response:
        header = request.headers.get("authorization", "")
        username = password = ""
        if header.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                username, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        expected = self.users.get(username)
        if expected is None or not secrets.compare_digest(expected.encode(), password.encode()):
            self._log(request, 401)
            return _envelope(401, "INVALID_CREDENTIALS", "Unauthorized")
        token, lifetime = self._issue(f"user:{username}")
        self._log(request, 200)
        return self._user_reply(token, lifetime)

    def _bearer(self, request: Request) -> _TokenGrant | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            return None
        with self._lock:
            grant = self._tokens.get(header[7:])
            if grant is None or grant.expires_at <= self.monotonic():
                return None
            return grant

    async def _keep_alive(self, request: Request) -> Response:
        grant = self._bearer(request)
        if grant is None:
            self._log(request, 401)
            return _envelope(401, "INVALID_TOKEN", "Unauthorized")
        with self._lock:
            self._tokens.pop(request.headers["authorization"][7:], None)
        token, lifetime = self._issue(grant.credential)
        self._log(request, 200)
        return self._user_reply(token, lifetime)

    async def _invalidate(self, request: Request) -> Response:
        grant = self._bearer(request)
        if grant is not None:
            with self._lock:
                self._tokens.pop(request.headers["authorization"][7:], None)
        self._log(request, 204 if grant else 401)
        return Response(status_code=204) if grant else _envelope(401, "INVALID_TOKEN", "Unauthorized")

    async def _gate(self, request: Request) -> Response | None:
        """What every API request goes through first: redirects, auth, rate limits, server errors."""
        faults = self.faults
        if faults.redirect_to:
            return Response(status_code=302, headers={"Location": faults.redirect_to.rstrip("/") + request.url.path})
        if faults.always_unauthorized or self._bearer(request) is None:
            return _envelope(401, "INVALID_TOKEN", "Unauthorized")
        with self._lock:
            if faults.rate_limited > 0:
                faults.rate_limited -= 1
                response = _envelope(429, "TOO_MANY_REQUESTS", "Rate limit exceeded")
                response.headers["Retry-After"] = str(faults.retry_after_s)
                return response
            if faults.server_errors > 0:
                faults.server_errors -= 1
                return _envelope(500, "INTERNAL_SERVER_ERROR", "An unexpected error occurred")
        return None

    # -- queries ------------------------------------------------------------------------------------------
    def _ordering(
        self, inventory: Inventory, kind: str, node: rsql.Node | None, filter_text: str, sort: Sequence[str]
    ) -> array[int]:
        key = (kind, filter_text, tuple(sort), inventory.version)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        candidates = _pinned_ids(node) or inventory.ids()
        if node is None and list(sort) in (["id:asc"], ["mobileDeviceId:asc"]):
            ordering = array("q", candidates)
            with self._lock:
                self._cache[key] = ordering
            return ordering
        matching: list[tuple[Any, int]] = []
        for jamf_id in candidates:
            record = inventory.get(jamf_id)
            if record is None:
                continue
            resolve = self._resolver(kind, record, jamf_id)
            if rsql.evaluate(node, resolve):
                matching.append((self._sort_key(sort, resolve, jamf_id), jamf_id))
        matching.sort(key=lambda item: item[0])
        ordering = array("q", (jamf_id for _, jamf_id in matching))
        with self._lock:
            self._cache[key] = ordering
            while len(self._cache) > QUERY_CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return ordering

    @staticmethod
    def _resolver(kind: str, record: Mapping[str, Any], jamf_id: int) -> Callable[[str], Any]:
        def resolve(selector: str) -> Any:
            if selector in ("id", "mobileDeviceId"):
                return jamf_id
            path = MOBILE_FIELDS.get(selector, selector) if kind == "mobile_devices" else selector
            return _dig(record, path)

        return resolve

    @staticmethod
    def _sort_key(sort: Sequence[str], resolve: Callable[[str], Any], jamf_id: int) -> tuple[Any, ...]:
        """Jamf's order: each field ascending or descending, missing values last, then by id."""
        parts: list[Any] = []
        for item in sort:
            name, _, direction = item.partition(":")
            value = _sortable(resolve(name))
            descending = direction.lower() == "desc"
            if value is None:
                parts.append((1, 0, 0))
            elif isinstance(value, float):
                parts.append((0, 0, -value if descending else value))
            else:
                parts.append((0, 1, _Descending(value) if descending else value))
        parts.append(jamf_id)
        return tuple(parts)

    def _parse_query(
        self, request: Request, kind: str, default_sort: str
    ) -> tuple[int, int, list[str], rsql.Node | None, str, list[str]] | Response:
        params = request.query_params
        try:
            page = int(params.get("page", "0"))
            page_size = int(params.get("page-size", "100"))
        except ValueError:
            return _envelope(400, "INVALID_FIELD", "page and page-size must be numbers")
        if page < 0 or page_size < 1:
            return _envelope(400, "INVALID_FIELD", "page must be >= 0 and page-size >= 1")
        sections_map = COMPUTER_SECTIONS if kind == "computers" else MOBILE_SECTIONS
        sections = params.getlist("section") or ["GENERAL"]
        for section in sections:
            if section.upper() not in sections_map:
                return _envelope(400, "INVALID_FIELD", f"Unknown section: {section}", "section")
        sort: list[str] = []
        for raw in params.getlist("sort") or [default_sort]:
            for item in raw.split(","):
                name, _, direction = item.strip().partition(":")
                allowed = COMPUTER_SORT_FIELDS if kind == "computers" else MOBILE_FIELDS
                if name not in allowed or direction.lower() not in ("", "asc", "desc"):
                    return _envelope(400, "INVALID_FIELD", f"Sort field not allowed: {item}", "sort")
                sort.append(f"{name}:{direction or 'asc'}")
        filter_text = params.get("filter", "")
        try:
            node = rsql.parse(filter_text)
        except rsql.RSQLError as err:
            return _envelope(400, "INVALID_RSQL_FILTER", f"Invalid filter: {err}", "filter")
        allowed_fields = COMPUTER_FILTER_FIELDS if kind == "computers" else MOBILE_FIELDS
        for selector in sorted(rsql.selectors(node)):
            if selector not in allowed_fields:
                return _envelope(400, "INVALID_FIELD", f"Field not allowed in filter: {selector}", "filter")
        # Jamf serves at most 2000 per page, silently
        return page, min(page_size, JAMF_MAX_PAGE_SIZE), sections, node, filter_text, sort

    @staticmethod
    def _project(
        record: Mapping[str, Any],
        sections: Sequence[str],
        sections_map: Mapping[str, tuple[str, bool]],
        always: Sequence[str],
    ) -> dict[str, Any]:
        wanted = {sections_map[s.upper()][0] for s in sections}
        result: dict[str, Any] = {name: record.get(name) for name in always}
        for key, is_list in sections_map.values():
            if key in wanted:
                value = record.get(key)
                result[key] = value if value is not None else ([] if is_list else None)
            else:
                result[key] = None
        return result

    async def _list(
        self, request: Request, inventory: Inventory, kind: str, default_sort: str, always: Sequence[str]
    ) -> Response:
        gate = await self._gate(request)
        if gate is not None:
            self._log(request, gate.status_code)
            return gate
        parsed = self._parse_query(request, kind, default_sort)
        if isinstance(parsed, Response):
            self._log(request, parsed.status_code)
            return parsed
        page, page_size, sections, node, filter_text, sort = parsed
        ordering = await asyncio.to_thread(self._ordering, inventory, kind, node, filter_text, sort)
        start = page * page_size
        ids = ordering[start : start + page_size]
        sections_map = COMPUTER_SECTIONS if kind == "computers" else MOBILE_SECTIONS
        results = []
        for jamf_id in ids:
            record = inventory.get(jamf_id)
            if record is not None:
                results.append(self._project(record, sections, sections_map, always))
        body = {"totalCount": len(ordering), "results": results}
        if page_size > 1:
            await self._after_page(inventory, ordering)
            if self.faults.garbled_pages:
                self._log(request, 200)
                return Response(self.faults.garbled_pages.pop(0), media_type="application/json")
        self._log(request, 200)
        return JSONResponse(body)

    async def _after_page(self, inventory: Inventory, ordering: array[int]) -> None:
        faults = self.faults
        with self._lock:
            self.pages_served += 1
            served = self.pages_served
        if faults.page_delay_s:
            await asyncio.sleep(faults.page_delay_s)
        if faults.revoke_tokens_after_pages is not None and served >= faults.revoke_tokens_after_pages:
            faults.revoke_tokens_after_pages = None
            self.revoke_tokens()
        if faults.gap_after_pages is not None and served >= faults.gap_after_pages and len(ordering):
            faults.gap_after_pages = None
            inventory.remove(int(ordering[0]))

    # -- routes -------------------------------------------------------------------------------------------
    async def _computers(self, request: Request) -> Response:
        version = request.path_params["version"]
        if version not in ("v1", "v2") or (version == "v2" and not self.faults.v2_computers):
            return await self._not_found(request)
        return await self._list(request, self.computers, "computers", "general.name:asc", ("id", "udid"))

    async def _computer(self, request: Request) -> Response:
        version = request.path_params["version"]
        if version not in ("v1", "v2") or (version == "v2" and not self.faults.v2_computers):
            return await self._not_found(request)
        sections = request.query_params.getlist("section") or ["GENERAL"]
        return await self._one(request, self.computers, sections, COMPUTER_SECTIONS)

    async def _computer_detail(self, request: Request) -> Response:
        return await self._one(request, self.computers, list(COMPUTER_SECTIONS), COMPUTER_SECTIONS)

    async def _one(
        self,
        request: Request,
        inventory: Inventory,
        sections: Sequence[str],
        sections_map: Mapping[str, tuple[str, bool]],
    ) -> Response:
        gate = await self._gate(request)
        if gate is not None:
            self._log(request, gate.status_code)
            return gate
        for section in sections:
            if section.upper() not in sections_map:
                self._log(request, 400)
                return _envelope(400, "INVALID_FIELD", f"Unknown section: {section}", "section")
        raw_id = request.path_params["jamf_id"]
        record = inventory.get(int(raw_id)) if raw_id.isdigit() else None
        if record is None:
            self._log(request, 404)
            return _envelope(
                404,
                "NOT_FOUND",
                "Computer not found" if sections_map is COMPUTER_SECTIONS else "Mobile device not found",
                "id",
            )
        self._log(request, 200)
        return JSONResponse(self._project(record, sections, sections_map, ("id", "udid")))

    async def _mobile_detail(self, request: Request) -> Response:
        return await self._list(
            request, self.mobile_devices, "mobile_devices", "displayName:asc", ("mobileDeviceId", "deviceType")
        )

    async def _mobile_device(self, request: Request) -> Response:
        gate = await self._gate(request)
        if gate is not None:
            self._log(request, gate.status_code)
            return gate
        raw_id = request.path_params["jamf_id"]
        record = self.mobile_devices.get(int(raw_id)) if raw_id.isdigit() else None
        if record is None:
            self._log(request, 404)
            return _envelope(404, "NOT_FOUND", "Mobile device not found", "id")
        general = record.get("general") or {}
        hardware = record.get("hardware") or {}
        location = record.get("userAndLocation") or {}
        device_type = str(record.get("deviceType", "iOS")).lower()
        self._log(request, 200)
        return JSONResponse(
            {
                "id": str(record["mobileDeviceId"]),
                "name": general.get("displayName"),
                "serialNumber": hardware.get("serialNumber"),
                "wifiMacAddress": hardware.get("wifiMacAddress"),
                "udid": general.get("udid"),
                "phoneNumber": None,
                "model": hardware.get("model"),
                "modelIdentifier": hardware.get("modelIdentifier"),
                "username": location.get("username"),
                "type": device_type if device_type in ("ios", "tvos", "watchos", "visionos") else "unknown",
                "managementId": general.get("managementId"),
                "softwareUpdateDeviceId": general.get("softwareUpdateDeviceId"),
            }
        )

    async def _not_found(self, request: Request) -> Response:
        self._log(request, 404)
        return _envelope(404, "NOT_FOUND", f"Not found: {request.url.path}")


def _pinned_ids(node: rsql.Node | None) -> list[int] | None:
    """The ids a filter pins (``id==42`` alone or and-ed with more), so only they are evaluated; else None."""
    if isinstance(node, rsql.Comparison):
        if node.selector in ("id", "mobileDeviceId") and node.comparator == "==" and node.values[0].isdigit():
            return [int(node.values[0])]
        return None
    if isinstance(node, rsql.And):
        for child in node.children:
            pinned = _pinned_ids(child)
            if pinned is not None:
                return pinned
    return None


def _sortable(value: Any) -> float | str | None:
    """Numbers and date-times as floats (instants), strings case-folded; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    if text[:4].isdigit() and text[4:5] == "-":
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return text.lower()


class _Descending:
    """A string that sorts in reverse."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return other.value < self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


# -- serving ------------------------------------------------------------------------------------------------


class FakeJamfServer:
    """Serves a :class:`FakeJamf` over HTTPS on loopback from a background thread: ``with FakeJamfServer(…) as s:``."""

    def __init__(self, fake: FakeJamf, pki: TestPKI, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake = fake
        # proto IPPROTO_TCP, not 0: asyncio only turns Nagle off on accepted sockets of a TCP-typed listener, and
        # with Nagle on every response written in two parts waits ~40 ms for the client's delayed ACK
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(
            self._dispatch,
            interface="asgi3",
            ssl_keyfile=str(pki.key_file),
            ssl_certfile=str(pki.cert_file),
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            http="h11",
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="fake-jamf", daemon=True)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        # looked up per request: tests may swap in a fresh FakeJamf (``server.fake = …``) between tests
        await self.fake.app(scope, receive, send)

    def _serve(self) -> None:
        self._server.run(sockets=[self._socket])

    def start(self) -> FakeJamfServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake Jamf server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> FakeJamfServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _serve_main(args: argparse.Namespace) -> None:
    directory: Path = args.dir
    pki = make_test_pki(directory / "tls")
    computers = load_inventory_json(args.computers) if args.computers else Inventory(synthetic=args.synthetic)
    mobile = load_inventory_json(args.mobile_devices, id_field="mobileDeviceId") if args.mobile_devices else None
    secret = secrets.token_urlsafe(24)
    client_id = str(uuid.uuid5(uuid.NAMESPACE_URL, str(directory.resolve())))
    (directory / "client_secret").write_text(secret + "\n")
    (directory / "client_secret").chmod(0o600)
    fake = FakeJamf(
        computers=computers,
        mobile_devices=mobile or Inventory(id_field="mobileDeviceId"),
        oauth_clients={client_id: secret},
        token_lifetime_s=args.token_lifetime,
    )
    server = FakeJamfServer(fake, pki, port=args.port)
    info = {
        "api_endpoint": server.url,
        "client_id": client_id,
        "client_secret_file": str((directory / "client_secret").resolve()),
        "ca_file": str(pki.ca_file.resolve()),
    }
    (directory / "endpoint.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info), flush=True)  # the demo script reads it
    control = directory / "retire"
    with server:
        # the demo retires a device by writing its Jamf id to <dir>/retire
        while True:
            time.sleep(0.2)
            if control.exists():
                for line in control.read_text().split():
                    if line.isdigit():
                        fake.computers.remove(int(line))
                control.unlink()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.jamf.server", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a fake Jamf Pro over HTTPS on loopback")
    serve.add_argument("--dir", type=Path, required=True, help="where to write the test CA, secret and endpoint.json")
    serve.add_argument("--computers", type=Path, help="inventory JSON ({totalCount, results}) of computers")
    serve.add_argument("--mobile-devices", type=Path, help="inventory JSON of mobile devices")
    serve.add_argument("--synthetic", type=int, default=0, help="serve N generated computers instead")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--token-lifetime", type=float, default=DEFAULT_TOKEN_LIFETIME_S)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        _serve_main(args)


if __name__ == "__main__":
    main()
