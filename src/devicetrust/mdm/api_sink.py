"""A remote MDM agent's :class:`~devicetrust.mdm.sink.InventorySink`: the six operations over HTTPS+JSON.

The Jamf service can run in a process of its own (``devicetrust start`` with ``auth_service.enabled: false`` and
``jamf_service.auth_server: HOST:PORT``). It joins the cluster with a ``--type=mdm`` join token
(``POST /v1/mdm/join {token, name}``), and gets a session bound to its source name: the auth service lets it
touch only devices of that source. The cluster side (:mod:`devicetrust.auth.mdm`) runs the same
:class:`~devicetrust.mdm.sink.BackendSink` as the in-process service does, so merging, audit and ownership rules
are the same; the agent never sees a device document, only :class:`~devicetrust.mdm.diff.StoredDevice` rows.

TLS: the auth service is verified against the cluster's host CA only (pinned, no system roots), as SSH nodes do.

The JSON codecs of the wire (StoredDevice, Observation, Removal, ApplyResult, SyncReport) live here, shared by
both ends; decoders validate what they read and raise :class:`~devicetrust.errors.ValidationError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import httpx

from devicetrust.client import (
    CONNECT_TIMEOUT_SECONDS,
    REQUEST_TIMEOUT_SECONDS,
    body,
    error_from_response,
    pinned_ssl_context,
    reply_as,
    transport_errors,
)
from devicetrust.errors import (
    AuthenticationError,
    ConnectionFailedError,
    SessionExpiredError,
    ValidationError,
)
from devicetrust.mdm.diff import Observation, SourceDevice, StoredDevice
from devicetrust.mdm.sink import ApplyResult, Removal, SyncReport
from devicetrust.protocol import (
    MDM_MAX_BATCH_ITEMS,
    MDM_MAX_TEXT,
    MdmApplyResponse,
    MdmDeleteResponse,
    MdmDevice,
    MdmDeviceList,
    MdmDevicePage,
    MdmIdentity,
    MdmJoinRequest,
    MdmJoinResponse,
    MdmLookupRequest,
    MdmSourceDevicePage,
    MdmStateValue,
)
from devicetrust.types import DeviceProfile, DeviceSource
from devicetrust.types.device import check_asset_tag, check_os_type, format_timestamp

if TYPE_CHECKING:
    from devicetrust.mdm.jamf.config import JamfServiceConfig

__all__ = [
    "APPLY_BATCH_SIZE",
    "MAX_BATCH_ITEMS",
    "ApiSink",
    "apply_result_from_json",
    "apply_result_to_json",
    "observation_from_json",
    "observation_to_json",
    "removal_from_json",
    "removal_to_json",
    "run_remote_jamf_service",
    "source_from_json",
    "source_to_json",
    "stored_device_from_json",
    "stored_device_from_model",
    "stored_device_to_json",
    "stored_device_to_model",
    "sync_report_from_json",
    "sync_report_to_json",
]

log = logging.getLogger(__name__)

#: most observations (or removals, or identities) one request may carry: Jamf's largest page
MAX_BATCH_ITEMS: Final = MDM_MAX_BATCH_ITEMS
#: observations ApiSink sends per request (keeps a request well under the auth service's 1 MiB body limit)
APPLY_BATCH_SIZE: Final = 500
#: longest free text taken from an agent (ids, names, reasons, notes)
MAX_TEXT: Final = MDM_MAX_TEXT
MAX_NOTES: Final = 64
#: how long a remote agent waits between attempts to join an unreachable auth service
JOIN_RETRY_SECONDS: Final = 10.0

_SYNC_COUNTERS: Final = (
    "pages",
    "records",
    "created",
    "updated",
    "unchanged",
    "skipped",
    "foreign",
    "duplicates",
    "conflicts",
    "missing",
    "deleted",
    "kept",
)


# -- codecs ---------------------------------------------------------------------------------------------------


def _obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(f"{where}: expected an object")
    return value


def _str(value: object, where: str, *, optional: bool = False, max_chars: int = MAX_TEXT) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str) or len(value) > max_chars:
        raise ValidationError(f"{where}: expected a string of at most {max_chars} characters")
    return value


def _int(value: object, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"{where}: expected an integer ≥ {minimum}")
    return value


def _time(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    text = _str(value, where, max_chars=64)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(f"{where}: not an ISO 8601 time: {text!r}") from None
    if parsed.tzinfo is None:
        raise ValidationError(f"{where}: the time has no UTC offset")
    return parsed


def _list(value: object, where: str, limit: int = MAX_BATCH_ITEMS) -> list[Any]:
    if not isinstance(value, list):
        raise ValidationError(f"{where}: expected a list")
    if len(value) > limit:
        raise ValidationError(f"{where}: at most {limit} items per request, got {len(value)}")
    return value


def source_to_json(source: DeviceSource) -> dict[str, str]:
    return {"name": source.name, "origin": source.origin}


def source_from_json(value: object) -> DeviceSource:
    data = _obj(value, "source")
    return DeviceSource(_str(data.get("name"), "source.name", max_chars=64), _str(data.get("origin"), "source.origin"))


def stored_device_to_model(device: StoredDevice) -> MdmDevice:
    return MdmDevice(
        id=device.id,
        os_type=device.os_type,
        asset_tag=device.asset_tag,
        source_name=device.source_name,
        source_origin=device.source_origin,
        external_id=device.external_id,
        revision=device.revision,
        # 64-bit unsigned: JSON numbers that big lose precision outside Python, a hex string does not
        fingerprint=f"{device.fingerprint:016x}",
    )


def stored_device_from_model(device: MdmDevice) -> StoredDevice:
    try:
        fingerprint = int(device.fingerprint, 16)
    except ValueError:
        raise ValidationError("device.fingerprint: expected a hex string") from None
    if not 0 <= fingerprint < 1 << 64 or device.revision < 0:
        raise ValidationError("device: fingerprint or revision out of range")
    return StoredDevice(
        id=device.id,
        os_type=sys.intern(device.os_type),
        asset_tag=device.asset_tag,
        source_name=device.source_name,
        source_origin=device.source_origin,
        external_id=device.external_id,
        revision=device.revision,
        fingerprint=fingerprint,
    )


def stored_device_to_json(device: StoredDevice) -> dict[str, Any]:
    return {
        "id": device.id,
        "os_type": device.os_type,
        "asset_tag": device.asset_tag,
        "source_name": device.source_name,
        "source_origin": device.source_origin,
        "external_id": device.external_id,
        "revision": device.revision,
        # 64-bit unsigned: JSON numbers that big lose precision outside Python, a hex string does not
        "fingerprint": f"{device.fingerprint:016x}",
    }


def stored_device_from_json(value: object) -> StoredDevice:
    data = _obj(value, "device")

    def optional(name: str) -> str | None:
        item = data.get(name)
        return None if item is None else _str(item, f"device.{name}")

    try:
        fingerprint = int(_str(data.get("fingerprint"), "device.fingerprint", max_chars=16), 16)
    except ValueError:
        raise ValidationError("device.fingerprint: expected a hex string") from None
    return StoredDevice(
        id=_str(data.get("id"), "device.id"),
        os_type=_str(data.get("os_type"), "device.os_type"),
        asset_tag=_str(data.get("asset_tag"), "device.asset_tag"),
        source_name=optional("source_name"),
        source_origin=optional("source_origin"),
        external_id=optional("external_id"),
        revision=_int(data.get("revision"), "device.revision"),
        fingerprint=fingerprint,
    )


def _profile_to_json(profile: DeviceProfile) -> dict[str, Any]:
    return {
        "model_identifier": profile.model_identifier,
        "os_version": profile.os_version,
        "os_build": profile.os_build,
        "os_build_supplemental": profile.os_build_supplemental,
        "os_usernames": list(profile.os_usernames),
        "jamf_binary_version": profile.jamf_binary_version,
        "external_id": profile.external_id,
        "update_time": None if profile.update_time is None else format_timestamp(profile.update_time),
    }


def _profile_from_json(value: object) -> DeviceProfile:
    data = _obj(value, "observation.profile")
    usernames = data.get("os_usernames", [])
    return DeviceProfile(
        model_identifier=data.get("model_identifier", ""),
        os_version=data.get("os_version", ""),
        os_build=data.get("os_build", ""),
        os_build_supplemental=data.get("os_build_supplemental", ""),
        os_usernames=tuple(usernames) if isinstance(usernames, list) else usernames,
        jamf_binary_version=data.get("jamf_binary_version", ""),
        external_id=data.get("external_id", ""),
        update_time=_time(data.get("update_time"), "observation.profile.update_time"),
    )


def observation_to_json(observation: Observation) -> dict[str, Any]:
    return {
        "external_id": observation.external_id,
        "os_type": observation.os_type,
        "asset_tag": observation.asset_tag,
        "profile": _profile_to_json(observation.profile),
        "report_time": None if observation.report_time is None else observation.report_time.isoformat(),
        "name": observation.name,
    }


def observation_from_json(value: object) -> Observation:
    data = _obj(value, "observation")
    return Observation(
        external_id=_str(data.get("external_id"), "observation.external_id"),
        os_type=check_os_type(data.get("os_type"), "observation.os_type"),
        asset_tag=check_asset_tag(data.get("asset_tag"), "observation.asset_tag"),
        profile=_profile_from_json(data.get("profile", {})),
        report_time=_time(data.get("report_time"), "observation.report_time"),
        name=_str(data.get("name", ""), "observation.name", optional=True),
    )


def removal_to_json(removal: Removal) -> dict[str, str]:
    return {
        "device_id": removal.device_id,
        "os_type": removal.os_type,
        "asset_tag": removal.asset_tag,
        "reason": removal.reason,
    }


def removal_from_json(value: object) -> Removal:
    data = _obj(value, "removal")
    return Removal(
        device_id=_str(data.get("device_id"), "removal.device_id", max_chars=64),
        os_type=_str(data.get("os_type"), "removal.os_type", max_chars=64),
        asset_tag=_str(data.get("asset_tag"), "removal.asset_tag"),
        reason=_str(data.get("reason", ""), "removal.reason", optional=True),
    )


def apply_result_to_json(result: ApplyResult) -> dict[str, int]:
    return {
        "created": result.created,
        "updated": result.updated,
        "unchanged": result.unchanged,
        "foreign": result.foreign,
        "conflicts": result.conflicts,
    }


def apply_result_from_json(value: object) -> ApplyResult:
    data = _obj(value, "result")
    return ApplyResult(
        **{name: _int(data.get(name, 0), f"result.{name}") for name in apply_result_to_json(ApplyResult())}
    )


def sync_report_to_json(report: SyncReport) -> dict[str, Any]:
    return {
        "source": report.source,
        "inventory": report.inventory,
        "kind": report.kind,
        "started": report.started.isoformat(),
        "origin": report.origin,
        "duration_s": report.duration_s,
        **{name: getattr(report, name) for name in _SYNC_COUNTERS},
        "error": report.error,
        "notes": list(report.notes),
    }


def sync_report_from_json(value: object) -> SyncReport:
    data = _obj(value, "report")
    started = _time(data.get("started"), "report.started")
    if started is None:
        raise ValidationError("report.started: required")
    duration = data.get("duration_s", 0.0)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0:
        raise ValidationError("report.duration_s: expected a number ≥ 0")
    error = data.get("error")
    notes = _list(data.get("notes", []), "report.notes", MAX_NOTES)
    return SyncReport(
        source=_str(data.get("source"), "report.source", max_chars=64),
        inventory=_str(data.get("inventory"), "report.inventory", max_chars=4096),
        kind=_str(data.get("kind"), "report.kind", max_chars=16),
        started=started,
        origin=_str(data.get("origin", "jamf"), "report.origin", max_chars=32),
        duration_s=float(duration),
        **{name: _int(data.get(name, 0), f"report.{name}") for name in _SYNC_COUNTERS},
        error=None if error is None else _str(error, "report.error", max_chars=4096),
        notes=[_str(note, f"report.notes[{index}]") for index, note in enumerate(notes)],
    )


# -- the sink -------------------------------------------------------------------------------------------------


class ApiSink:
    """:class:`~devicetrust.mdm.sink.InventorySink` over HTTPS to the auth service.

    ``join_token``: a ``--type=mdm`` join token (or a function returning one); the sink joins on first use, and
    joins again when its session has expired. ``ca_pem``: the cluster's host CA (PEM), the only trust anchor.
    Call :meth:`aclose` (or use ``async with``) on the event loop that used it.
    """

    def __init__(
        self,
        addr: str,
        *,
        ca_pem: str,
        join_token: str | Callable[[], str],
        name: str,
        apply_batch_size: int = APPLY_BATCH_SIZE,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.addr = addr
        self.name = name
        self.cluster_name: str | None = None
        self._join_token = join_token
        self._context: ssl.SSLContext = pinned_ssl_context(ca_pem)
        self._apply_batch_size = max(1, min(apply_batch_size, MAX_BATCH_ITEMS))
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._session: str | None = None
        self._join_lock: asyncio.Lock | None = None

    async def __aenter__(self) -> ApiSink:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=f"https://{self.addr}",
                verify=self._context,
                timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
                follow_redirects=False,
                transport=self._transport,
            )
        return self._http

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        session: str | None = None,
    ) -> Any:
        headers = {"Authorization": f"Bearer {session}"} if session else {}
        with transport_errors(
            self.addr, untrusted="a certificate not issued by the cluster's host CA (jamf_service.auth_ca_file)"
        ):
            response = await self._client().request(method, path, json=json, params=params, headers=headers)
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.json()

    async def join(self) -> str:
        """Join with the token; returns (and keeps) the session token. AuthenticationError: token refused."""
        token = self._join_token() if callable(self._join_token) else self._join_token
        if not token:
            raise AuthenticationError("no mdm join token configured (jamf_service.join_token or token_file)")
        request = MdmJoinRequest.model_construct(token=token, name=self.name)
        answer = reply_as(MdmJoinResponse, await self._send("POST", "/v1/mdm/join", json=body(request)), "mdm/join")
        self._session = answer.session_token
        self.cluster_name = answer.cluster_name or None
        log.info("joined the cluster as an mdm agent", extra={"auth_server": self.addr, "source": self.name})
        return self._session

    async def _session_token(self, stale: str | None = None) -> str:
        if self._join_lock is None:
            self._join_lock = asyncio.Lock()
        async with self._join_lock:
            if self._session is None or self._session == stale:
                self._session = None
                return await self.join()
            return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        session = await self._session_token()
        try:
            return await self._send(method, path, json=json, params=params, session=session)
        except SessionExpiredError:
            # the session expired (or the cluster forgot it): join again once, with the token
            session = await self._session_token(stale=session)
            return await self._send(method, path, json=json, params=params, session=session)

    # -- protocol -----------------------------------------------------------------------------------------
    async def lookup(self, keys: Sequence[tuple[str, str]]) -> list[StoredDevice]:
        found: list[StoredDevice] = []
        for start in range(0, len(keys), MAX_BATCH_ITEMS):
            request = MdmLookupRequest.model_construct(
                identities=[
                    MdmIdentity.model_construct(os_type=os_type, asset_tag=asset_tag)
                    for os_type, asset_tag in keys[start : start + MAX_BATCH_ITEMS]
                ]
            )
            reply = await self._call("POST", "/v1/mdm/devices/lookup", json=body(request))
            found.extend(
                stored_device_from_model(item) for item in reply_as(MdmDeviceList, reply, "mdm/devices/lookup").items
            )
        return found

    async def source_devices(
        self, source: DeviceSource, page_token: str | None
    ) -> tuple[list[SourceDevice], str | None]:
        params = {"origin": source.origin, **({"page_token": page_token} if page_token else {})}
        reply = await self._call("GET", "/v1/mdm/devices/identities", params=params)
        answer = reply_as(MdmSourceDevicePage, reply, "mdm/devices/identities")
        devices = [
            SourceDevice(item.id, sys.intern(item.os_type), item.asset_tag, item.external_id)
            for item in answer.items
            if item.source_origin == source.origin
        ]
        return devices, answer.next_page_token or None

    async def scan(self, page_token: str | None) -> tuple[list[StoredDevice], str | None]:
        params = {"page_token": page_token} if page_token else None
        answer = reply_as(MdmDevicePage, await self._call("GET", "/v1/mdm/devices", params=params), "mdm/devices")
        items = [stored_device_from_json(item.model_dump()) for item in answer.items]
        return items, answer.next_page_token or None

    async def apply(
        self, source: DeviceSource, observations: Sequence[Observation], *, new_keys: frozenset[str]
    ) -> ApplyResult:
        totals = ApplyResult()
        for start in range(0, len(observations), self._apply_batch_size):
            batch = observations[start : start + self._apply_batch_size]
            keys = sorted(new_keys.intersection(observation.key for observation in batch))
            body = {
                "source": source_to_json(source),
                "observations": [observation_to_json(observation) for observation in batch],
                "new_keys": keys,
            }
            reply = await self._call("POST", "/v1/mdm/devices/apply", json=body)
            result = ApplyResult(**reply_as(MdmApplyResponse, reply, "mdm/devices/apply").model_dump())
            totals = ApplyResult(
                created=totals.created + result.created,
                updated=totals.updated + result.updated,
                unchanged=totals.unchanged + result.unchanged,
                foreign=totals.foreign + result.foreign,
                conflicts=totals.conflicts + result.conflicts,
            )
        return totals

    async def delete(self, source: DeviceSource, removals: Sequence[Removal]) -> int:
        deleted = 0
        for start in range(0, len(removals), MAX_BATCH_ITEMS):
            body = {
                "source": source_to_json(source),
                "removals": [removal_to_json(removal) for removal in removals[start : start + MAX_BATCH_ITEMS]],
            }
            answer = await self._call("POST", "/v1/mdm/devices/delete", json=body)
            deleted += reply_as(MdmDeleteResponse, answer, "mdm/devices/delete").deleted
        return deleted

    async def load_state(self, key: str) -> str | None:
        answer = await self._call("GET", f"/v1/mdm/state/{key}")
        return reply_as(MdmStateValue, answer, "mdm/state").value

    async def save_state(self, key: str, value: str) -> None:
        await self._call("PUT", f"/v1/mdm/state/{key}", json={"value": value})

    async def record_sync(self, report: SyncReport) -> None:
        await self._call("POST", "/v1/mdm/syncs", json=sync_report_to_json(report))


# -- the jamf-only daemon -------------------------------------------------------------------------------------


async def run_remote_jamf_service(config: JamfServiceConfig, stop: asyncio.Event) -> None:
    """The Jamf service in a process without the auth service: join ``config.auth_server`` with the mdm token,
    then sync on schedule through :class:`ApiSink` until ``stop`` is set. A refused token or an untrusted
    certificate stops it (raised); an unreachable auth service is retried."""
    from devicetrust.mdm.jamf.service import JamfService

    if not config.auth_server or config.auth_ca_pem is None:
        raise ValidationError("jamf_service: auth_server and auth_ca_file are required to run remotely")
    async with ApiSink(
        config.auth_server, ca_pem=config.auth_ca_pem, join_token=config.join_token, name=config.name
    ) as sink:
        while not stop.is_set():
            try:
                await sink.join()
                break
            except ConnectionFailedError as err:
                log.warning("cannot join the auth service yet: %s", err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=JOIN_RETRY_SECONDS)
        if stop.is_set():
            return
        await JamfService(config, sink).run(stop)
