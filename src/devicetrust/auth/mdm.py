"""Remote MDM agents on the auth service: a Jamf service in a process of its own joins with a ``--type=mdm``
token and writes the inventory through ``/v1/mdm/…`` (the operations of
:class:`~devicetrust.mdm.sink.InventorySink`, see :mod:`devicetrust.mdm.api_sink`).

The session is bound to the source name given at join (its Caller's name): every call is limited to devices of
that source — lookups and lists answer only with them, apply and delete refuse a body naming another source
(403), and the sync state keys are namespaced by it. The work itself is
:class:`~devicetrust.mdm.sink.BackendSink`'s, on this server's backend with its audit function, exactly as for
the in-process service.

A lookup answers only with the session's own devices: a page naming a device registered by hand or by another
source is planned as new, and the sink's bulk insert notices the existing row
and redoes that batch device by device (counted as foreign). It costs a retried transaction in that case, and
no agent learns of devices it does not own.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Final

from devicetrust.auth.context import AuthContext
from devicetrust.auth.nodes import spend_join_token
from devicetrust.auth.secrets import hash_token, new_token
from devicetrust.errors import AccessDeniedError, ValidationError
from devicetrust.mdm.api_sink import (
    apply_result_to_model,
    observation_from_model,
    removal_from_model,
    source_from_model,
    stored_device_to_model,
    sync_report_from_model,
)
from devicetrust.mdm.sink import BackendSink
from devicetrust.protocol import (
    Empty,
    MdmApplyRequest,
    MdmApplyResponse,
    MdmDeleteRequest,
    MdmDeleteResponse,
    MdmDeviceList,
    MdmDevicePage,
    MdmJoinResponse,
    MdmLookupRequest,
    MdmSource,
    MdmSourceDevice,
    MdmSourceDevicePage,
    MdmStateUpdate,
    MdmStateValue,
    MdmSyncReport,
)
from devicetrust.types import DeviceSource

if TYPE_CHECKING:
    from devicetrust.auth.context import Caller

__all__ = ["MDM_JOIN", "MDM_SESSION_TTL", "MdmService"]

#: the session an MDM agent gets at join (as long as a node's); after it the agent joins again with its token
MDM_SESSION_TTL: Final = timedelta(days=365)
MDM_JOIN: Final = ("mdm.join", "TMDM002I")
MDM_TOKEN_KIND: Final = "mdm"
#: what an agent's source name may be (as jamf_service.name)
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_STATE_KEY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")
#: state keys of remote agents, under the sink's own prefix: mdm/agent/<source>/<key>
STATE_NAMESPACE: Final = "agent"


class MdmService:
    def __init__(self, context: AuthContext) -> None:
        self.context = context
        self.sink = BackendSink(self.context.backend, audit=self.context.audit, clock=self.context.clock)

    # -- join -------------------------------------------------------------------------------------------------
    def join(self, token: str, name: str) -> MdmJoinResponse:
        if not _NAME_RE.fullmatch(name):
            raise ValidationError(f"name: {name!r} is not a valid source name (1-64 letters, digits, '.', '_', '-')")
        context = self.context
        now = context.clock()
        spend_join_token(context, token, MDM_TOKEN_KIND, now)
        session = new_token()
        with context.backend.begin() as store:
            store.sessions.create(hash_token(session), name, "mdm", {"source": name}, now + MDM_SESSION_TTL)
            context.audit(store, MDM_JOIN, f"mdm:{name}", True, source=name)
        return MdmJoinResponse(session_token=session, cluster_name=context.cluster_name)

    # -- the sink's operations, limited to the caller's source -----------------------------------------------
    @staticmethod
    def _require_mdm(caller: Caller) -> None:
        if caller.kind != "mdm":
            raise AccessDeniedError("only joined mdm agents may call this")

    def _source(self, caller: Caller, source: MdmSource) -> DeviceSource:
        self._require_mdm(caller)
        checked = source_from_model(source)
        if checked.name != caller.name:
            raise AccessDeniedError(f"this session may only write devices of source {caller.name!r}")
        return checked

    async def scan(self, caller: Caller, page_token: str | None) -> MdmDevicePage:
        """Every device of the session's source, by page (for agents that predate :meth:`lookup`)."""
        self._require_mdm(caller)
        devices, next_token = await self.sink.scan(page_token or None)
        return MdmDevicePage(
            items=[stored_device_to_model(device) for device in devices if device.source_name == caller.name],
            next_page_token=next_token,
        )

    async def lookup(self, caller: Caller, request: MdmLookupRequest) -> MdmDeviceList:
        self._require_mdm(caller)
        devices = await self.sink.lookup([(identity.os_type, identity.asset_tag) for identity in request.identities])
        return MdmDeviceList(
            items=[stored_device_to_model(device) for device in devices if device.source_name == caller.name]
        )

    async def source_devices(self, caller: Caller, origin: str, page_token: str | None) -> MdmSourceDevicePage:
        self._require_mdm(caller)
        devices, next_token = await self.sink.source_devices(DeviceSource(caller.name, origin), page_token or None)
        return MdmSourceDevicePage(
            items=[
                MdmSourceDevice(
                    id=device.id,
                    os_type=device.os_type,
                    asset_tag=device.asset_tag,
                    source_origin=origin,
                    external_id=device.external_id,
                )
                for device in devices
            ],
            next_page_token=next_token,
        )

    async def apply(self, caller: Caller, request: MdmApplyRequest) -> MdmApplyResponse:
        source = self._source(caller, request.source)
        observations = [
            observation_from_model(item, f"observations[{index}]") for index, item in enumerate(request.observations)
        ]
        # only keys of this batch mean anything; a claimed-new device that exists is caught by the bulk insert
        new_keys = frozenset(request.new_keys) & {observation.key for observation in observations}
        return apply_result_to_model(await self.sink.apply(source, observations, new_keys=new_keys))

    async def delete(self, caller: Caller, request: MdmDeleteRequest) -> MdmDeleteResponse:
        source = self._source(caller, request.source)
        removals = [removal_from_model(item) for item in request.removals]
        # BackendSink deletes a device only if it still is this source's (name and origin) device
        return MdmDeleteResponse(deleted=await self.sink.delete(source, removals))

    @staticmethod
    def _state_key(caller: Caller, key: str) -> str:
        if not _STATE_KEY_RE.fullmatch(key) or ".." in key:
            raise ValidationError(f"state key: {key!r} is not valid")
        return f"{STATE_NAMESPACE}/{caller.name}/{key}"

    async def load_state(self, caller: Caller, key: str) -> MdmStateValue:
        self._require_mdm(caller)
        return MdmStateValue(value=await self.sink.load_state(self._state_key(caller, key)))

    async def save_state(self, caller: Caller, key: str, request: MdmStateUpdate) -> Empty:
        self._require_mdm(caller)
        await self.sink.save_state(self._state_key(caller, key), request.value)
        return Empty()

    async def record_sync(self, caller: Caller, request: MdmSyncReport) -> Empty:
        self._require_mdm(caller)
        report = sync_report_from_model(request)
        self._source(caller, MdmSource(name=report.source, origin=report.origin))
        await self.sink.record_sync(report)
        return Empty()
