"""A remote MDM agent's :class:`~devicetrust.mdm.sink.InventorySink`: its operations over HTTPS+JSON.

The Jamf service can run in a process of its own (``devicetrust start`` with ``auth_service.enabled: false`` and
``jamf_service.auth_server: HOST:PORT``). It joins the cluster with a ``--type=mdm`` join token
(``POST /v1/mdm/join {token, name}``), and gets a session bound to its source name: the auth service lets it
touch only devices of that source. The cluster side (:mod:`devicetrust.auth.mdm`) runs the same
:class:`~devicetrust.mdm.sink.BackendSink` as the in-process service does, so merging, audit and ownership rules
are the same; the agent never sees a device document, only :class:`~devicetrust.mdm.diff.StoredDevice` rows.

TLS: the auth service is verified against the cluster's host CA only (pinned, no system roots), as SSH nodes do.

The requests and replies are the ``Mdm…`` models of :mod:`devicetrust.protocol`, which the auth service validates
its requests with; the conversions between them and the sync's values (StoredDevice, Observation, Removal,
ApplyResult, SyncReport) live here, shared by both ends. A value the models accept but the sync does not (an
unknown OS, a bad serial number) is a :class:`~devicetrust.errors.ValidationError` naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

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
    MdmApplyRequest,
    MdmApplyResponse,
    MdmDeleteRequest,
    MdmDeleteResponse,
    MdmDevice,
    MdmDeviceList,
    MdmDevicePage,
    MdmIdentity,
    MdmJoinRequest,
    MdmJoinResponse,
    MdmLookupRequest,
    MdmObservation,
    MdmProfile,
    MdmRemoval,
    MdmSource,
    MdmSourceDevicePage,
    MdmStateUpdate,
    MdmStateValue,
    MdmSyncReport,
)
from devicetrust.types import DeviceProfile, DeviceSource, FieldError
from devicetrust.types.device import check_asset_tag, check_os_type

if TYPE_CHECKING:
    from devicetrust.mdm.jamf.config import JamfServiceConfig

__all__ = [
    "APPLY_BATCH_SIZE",
    "MAX_BATCH_ITEMS",
    "ApiSink",
    "apply_result_from_model",
    "apply_result_to_model",
    "observation_from_model",
    "observation_to_model",
    "removal_from_model",
    "removal_to_model",
    "run_remote_jamf_service",
    "source_from_model",
    "source_to_model",
    "stored_device_from_model",
    "stored_device_to_model",
    "sync_report_from_model",
    "sync_report_to_model",
]

log = logging.getLogger(__name__)

#: most observations (or removals, or identities) one request may carry: Jamf's largest page
MAX_BATCH_ITEMS: Final = MDM_MAX_BATCH_ITEMS
#: observations ApiSink sends per request (keeps a request well under the auth service's 1 MiB body limit)
APPLY_BATCH_SIZE: Final = 500
#: how long a remote agent waits between attempts to join an unreachable auth service
JOIN_RETRY_SECONDS: Final = 10.0


# -- the wire's models <-> the sync's values ---------------------------------------------------------------------


def source_to_model(source: DeviceSource) -> MdmSource:
    return MdmSource.model_construct(name=source.name, origin=source.origin)


def source_from_model(source: MdmSource, where: str = "source") -> DeviceSource:
    try:
        return DeviceSource(source.name, source.origin)
    except FieldError as err:
        raise err.under(where) from None


def stored_device_to_model(device: StoredDevice) -> MdmDevice:
    return MdmDevice.model_construct(
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


def observation_to_model(observation: Observation) -> MdmObservation:
    profile = observation.profile
    return MdmObservation.model_construct(
        external_id=observation.external_id,
        os_type=observation.os_type,
        asset_tag=observation.asset_tag,
        profile=MdmProfile.model_construct(
            model_identifier=profile.model_identifier,
            os_version=profile.os_version,
            os_build=profile.os_build,
            os_build_supplemental=profile.os_build_supplemental,
            os_usernames=list(profile.os_usernames),
            jamf_binary_version=profile.jamf_binary_version,
            external_id=profile.external_id,
            update_time=profile.update_time,
        ),
        report_time=observation.report_time,
        name=observation.name,
    )


def observation_from_model(observation: MdmObservation, where: str = "observation") -> Observation:
    """The observation an agent sent, checked as the in-process sync's are (OS, serial number, profile)."""
    profile = observation.profile
    try:
        checked = DeviceProfile(
            model_identifier=profile.model_identifier,
            os_version=profile.os_version,
            os_build=profile.os_build,
            os_build_supplemental=profile.os_build_supplemental,
            os_usernames=tuple(profile.os_usernames),
            jamf_binary_version=profile.jamf_binary_version,
            external_id=profile.external_id,
            update_time=profile.update_time,
        )
    except FieldError as err:
        raise err.under(f"{where}.profile") from None
    return Observation(
        external_id=observation.external_id,
        os_type=check_os_type(observation.os_type, f"{where}.os_type"),
        asset_tag=check_asset_tag(observation.asset_tag, f"{where}.asset_tag"),
        profile=checked,
        report_time=observation.report_time,
        name=observation.name or "",
    )


def removal_to_model(removal: Removal) -> MdmRemoval:
    return MdmRemoval.model_construct(
        device_id=removal.device_id, os_type=removal.os_type, asset_tag=removal.asset_tag, reason=removal.reason
    )


def removal_from_model(removal: MdmRemoval) -> Removal:
    return Removal(removal.device_id, removal.os_type, removal.asset_tag, removal.reason or "")


def apply_result_to_model(result: ApplyResult) -> MdmApplyResponse:
    return MdmApplyResponse.model_construct(**dataclasses.asdict(result))


def apply_result_from_model(result: MdmApplyResponse) -> ApplyResult:
    return ApplyResult(**result.model_dump())


def sync_report_to_model(report: SyncReport) -> MdmSyncReport:
    return MdmSyncReport.model_construct(**dataclasses.asdict(report))


def sync_report_from_model(report: MdmSyncReport) -> SyncReport:
    return SyncReport(**report.model_dump())


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
        json: Mapping[str, object] | None = None,
        params: Mapping[str, str] | None = None,
        session: str | None = None,
    ) -> object:
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
        json: Mapping[str, object] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> object:
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
        items = [stored_device_from_model(item) for item in answer.items]
        return items, answer.next_page_token or None

    async def apply(
        self, source: DeviceSource, observations: Sequence[Observation], *, new_keys: frozenset[str]
    ) -> ApplyResult:
        totals = ApplyResult()
        for start in range(0, len(observations), self._apply_batch_size):
            batch = observations[start : start + self._apply_batch_size]
            request = MdmApplyRequest.model_construct(
                source=source_to_model(source),
                observations=[observation_to_model(observation) for observation in batch],
                new_keys=sorted(new_keys.intersection(observation.key for observation in batch)),
            )
            reply = await self._call("POST", "/v1/mdm/devices/apply", json=body(request))
            result = apply_result_from_model(reply_as(MdmApplyResponse, reply, "mdm/devices/apply"))
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
            request = MdmDeleteRequest.model_construct(
                source=source_to_model(source),
                removals=[removal_to_model(removal) for removal in removals[start : start + MAX_BATCH_ITEMS]],
            )
            reply = await self._call("POST", "/v1/mdm/devices/delete", json=body(request))
            deleted += reply_as(MdmDeleteResponse, reply, "mdm/devices/delete").deleted
        return deleted

    async def load_state(self, key: str) -> str | None:
        answer = await self._call("GET", _state_path(key))
        return reply_as(MdmStateValue, answer, "mdm/state").value

    async def save_state(self, key: str, value: str) -> None:
        await self._call("PUT", _state_path(key), json=body(MdmStateUpdate.model_construct(value=value)))

    async def record_sync(self, report: SyncReport) -> None:
        await self._call("POST", "/v1/mdm/syncs", json=body(sync_report_to_model(report)))


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


def _state_path(key: str) -> str:
    """The state route for ``key``, whose ``/`` separate its parts; anything else that means something in a URL
    is escaped."""
    return f"/v1/mdm/state/{quote(key, safe='/')}"
