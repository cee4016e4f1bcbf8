"""Remote MDM agents on the auth service: a Jamf service in a process of its own joins with a ``--type=mdm``
token and writes the inventory through ``/v1/mdm/…`` (the six operations of
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
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol

from devicetrust.auth.context import AuthContext
from devicetrust.auth.secrets import hash_token, new_token
from devicetrust.errors import AccessDeniedError, AuthenticationError, NotFoundError, ValidationError
from devicetrust.mdm.api_sink import (
    MAX_BATCH_ITEMS,
    apply_result_to_json,
    observation_from_json,
    removal_from_json,
    source_from_json,
    stored_device_to_json,
    stored_device_to_model,
    sync_report_from_json,
)
from devicetrust.mdm.sink import BackendSink
from devicetrust.protocol import MdmDeviceList, MdmLookupRequest, MdmSourceDevice, MdmSourceDevicePage
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
MAX_STATE_VALUE_CHARS: Final = 4096
#: state keys of remote agents, under the sink's own prefix: mdm/agent/<source>/<key>
STATE_NAMESPACE: Final = "agent"


class CarriesAuthContext(Protocol):
    @property
    def context(self) -> AuthContext: ...


class MdmService:
    def __init__(self, context: AuthContext | CarriesAuthContext) -> None:
        # Also built from the AuthServer facade, which carries the context its services share.
        self.context = context if isinstance(context, AuthContext) else context.context
        self.sink = BackendSink(self.context.backend, audit=self.context.audit, clock=self.context.clock)

    # -- join -------------------------------------------------------------------------------------------------
    def join(self, token: str, name: str) -> dict[str, Any]:
        if not _NAME_RE.fullmatch(name):
            raise ValidationError(f"name: {name!r} is not a valid source name (1-64 letters, digits, '.', '_', '-')")
        context = self.context
        now = context.clock()
        with context.backend.begin() as store:
            try:
                store.tokens.consume(hash_token(token), MDM_TOKEN_KIND, now)
            except NotFoundError:
                failure = True
            else:
                failure = False
        if failure:
            raise AuthenticationError("invalid or expired mdm join token")
        session = new_token()
        with context.backend.begin() as store:
            store.sessions.create(hash_token(session), name, "mdm", {"source": name}, now + MDM_SESSION_TTL)
            context.audit(store, MDM_JOIN, f"mdm:{name}", True, source=name)
        return {"session_token": session, "cluster_name": context.cluster_name}

    # -- the sink's operations, limited to the caller's source -----------------------------------------------
    @staticmethod
    def _require_mdm(caller: Caller) -> None:
        if caller.kind != "mdm":
            raise AccessDeniedError("only joined mdm agents may call this")

    def _source(self, caller: Caller, value: object) -> DeviceSource:
        self._require_mdm(caller)
        source = source_from_json(value)
        if source.name != caller.name:
            raise AccessDeniedError(f"this session may only write devices of source {caller.name!r}")
        return source

    @staticmethod
    def _items(body: Mapping[str, Any], name: str) -> list[Any]:
        items = body.get(name)
        if not isinstance(items, list):
            raise ValidationError(f"{name}: expected a list")
        if len(items) > MAX_BATCH_ITEMS:
            raise ValidationError(f"{name}: at most {MAX_BATCH_ITEMS} per request, got {len(items)}")
        return items

    async def scan(self, caller: Caller, page_token: str | None) -> dict[str, Any]:
        self._require_mdm(caller)
        devices, next_token = await self.sink.scan(page_token or None)
        return {
            "items": [stored_device_to_json(device) for device in devices if device.source_name == caller.name],
            "next_page_token": next_token,
        }

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

    async def apply(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        source = self._source(caller, body.get("source"))
        observations = [observation_from_json(item) for item in self._items(body, "observations")]
        raw_keys = self._items(body, "new_keys") if "new_keys" in body else []
        if not all(isinstance(key, str) for key in raw_keys):
            raise ValidationError("new_keys: expected a list of strings")
        # only keys of this batch mean anything; a claimed-new device that exists is caught by the bulk insert
        new_keys = frozenset(raw_keys) & {observation.key for observation in observations}
        result = await self.sink.apply(source, observations, new_keys=new_keys)
        return apply_result_to_json(result)

    async def delete(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        source = self._source(caller, body.get("source"))
        removals = [removal_from_json(item) for item in self._items(body, "removals")]
        # BackendSink deletes a device only if it still is this source's (name and origin) device
        return {"deleted": await self.sink.delete(source, removals)}

    @staticmethod
    def _state_key(caller: Caller, key: str) -> str:
        if not _STATE_KEY_RE.fullmatch(key) or ".." in key:
            raise ValidationError(f"state key: {key!r} is not valid")
        return f"{STATE_NAMESPACE}/{caller.name}/{key}"

    async def load_state(self, caller: Caller, key: str) -> dict[str, Any]:
        self._require_mdm(caller)
        return {"value": await self.sink.load_state(self._state_key(caller, key))}

    async def save_state(self, caller: Caller, key: str, value: object) -> dict[str, Any]:
        self._require_mdm(caller)
        if not isinstance(value, str) or len(value) > MAX_STATE_VALUE_CHARS:
            raise ValidationError(f"value: expected a string of at most {MAX_STATE_VALUE_CHARS} characters")
        await self.sink.save_state(self._state_key(caller, key), value)
        return {}

    async def record_sync(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        self._require_mdm(caller)
        report = sync_report_from_json(body)
        self._source(caller, {"name": report.source, "origin": report.origin})
        await self.sink.record_sync(report)
        return {}
