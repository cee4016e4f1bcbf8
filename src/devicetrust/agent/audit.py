"""Session audit events from a node to the auth service, buffered in memory while the auth service is away.

Events go out in order, one request each. While the auth service is unreachable they wait in a bounded queue
(:data:`MAX_BUFFERED_EVENTS`); when it is full the oldest are dropped and counted, so a long outage cannot
exhaust the node's memory. The buffer lives in memory only: events still queued when the node stops are lost
(and logged as such).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Mapping
from typing import NotRequired, TypedDict

from devicetrust.access import Decision
from devicetrust.agent.api import NodeAPI
from devicetrust.crypto.identity import Identity
from devicetrust.errors import DevicetrustError, ValidationError

__all__ = [
    "MAX_BUFFERED_EVENTS",
    "USER_KIND_BOT",
    "USER_KIND_HUMAN",
    "AuditForwarder",
    "DeviceFields",
    "UserFields",
    "device_fields",
    "user_fields",
]

#: Audit ``user_kind`` values, as Teleport writes them.
USER_KIND_HUMAN = 1
USER_KIND_BOT = 2


class UserFields(TypedDict):
    """Who a session event is about."""

    user: str
    user_kind: int
    bot_name: NotRequired[str]


class DeviceFields(TypedDict, total=False):
    """The device a session event names: ``device`` (``asset_tag``, ``device_id``, ``os``, ``credential_id``)
    and ``device_proof`` (``id``, ``time``)."""

    device: dict[str, str]
    device_proof: dict[str, str]


def user_fields(identity: Identity | None) -> UserFields:
    """Who a session event is about: ``user``, ``user_kind`` and, for a bot, ``bot_name``."""
    fields: UserFields = {
        "user": identity.username if identity is not None else "",
        "user_kind": USER_KIND_BOT if identity is not None and identity.is_bot else USER_KIND_HUMAN,
    }
    if identity is not None and identity.bot_name is not None:
        fields["bot_name"] = identity.bot_name
    return fields


def device_fields(identity: Identity | None, decision: Decision | None) -> DeviceFields:
    """The ``device`` block of a session event (and ``device_proof``, the ceremony the session ran on), where
    the decision lets audit name the device (never when device trust is off); empty otherwise.
    See docs/architecture.md, Audit events."""
    if identity is None or identity.device is None or decision is None or not decision.audit_device:
        return {}
    fields: DeviceFields = {
        "device": {
            "asset_tag": identity.device.asset_tag,
            "device_id": identity.device.device_id,
            # The certificate does not say which OS the device runs; the auth service knows it by id.
            "os": "",
            "credential_id": identity.device.credential_id,
        }
    }
    proof = identity.session_proof
    if proof is not None and decision.device_verified:
        # correlates the session with the device.authenticate event of its ceremony
        fields["device_proof"] = {"id": proof.id, "time": proof.time.isoformat()}
    return fields


log = logging.getLogger(__name__)

#: Events kept while the auth service is unreachable; beyond this the oldest are dropped.
MAX_BUFFERED_EVENTS = 10_000
#: First and longest wait between delivery attempts while the auth service fails (doubling in between).
EVENT_RETRY_MIN_SECONDS = 0.5
EVENT_RETRY_MAX_SECONDS = 10.0


class AuditForwarder:
    def __init__(self, api: NodeAPI, max_buffered: int = MAX_BUFFERED_EVENTS) -> None:
        self._api = api
        self._queue: collections.deque[dict[str, object]] = collections.deque()
        self._max = max_buffered
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._retry = asyncio.Event()
        self.dropped = 0
        self.delivered = 0

    def __len__(self) -> int:
        return len(self._queue)

    def emit(self, event: Mapping[str, object]) -> None:
        """Queue one event for delivery; never blocks, never raises."""
        if len(self._queue) >= self._max:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("audit buffer full; dropping the oldest events", extra={"dropped": self.dropped})
        self._queue.append(dict(event))
        self._idle.clear()
        self._wake.set()

    async def flush(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the queue to drain; True if it did."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        delay = EVENT_RETRY_MIN_SECONDS
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                event = self._queue[0]
                try:
                    await self._api.event(event)
                except ValidationError as err:
                    # The auth service will never take this one: drop it rather than block those behind it.
                    log.error(
                        "audit event refused; dropping it", extra={"event": event.get("event"), "error": str(err)}
                    )
                except DevicetrustError as err:
                    if delay == EVENT_RETRY_MIN_SECONDS:
                        log.warning(
                            "cannot deliver audit events; buffering and retrying",
                            extra={"error": str(err), "queued": len(self)},
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._retry.wait(), delay)
                    self._retry.clear()
                    delay = min(delay * 2, EVENT_RETRY_MAX_SECONDS)
                    continue
                else:
                    self.delivered += 1
                    if delay > EVENT_RETRY_MIN_SECONDS:
                        log.info("audit events delivered again", extra={"queued": len(self) - 1})
                delay = EVENT_RETRY_MIN_SECONDS
                if self._queue and self._queue[0] is event:
                    self._queue.popleft()
            self._idle.set()

    def retry_now(self) -> None:
        """The auth service answers again (say, a state poll succeeded): end any back-off wait."""
        if self._queue:
            self._retry.set()

    def abandon(self) -> None:
        if self._queue:
            log.warning("node stopping with undelivered audit events", extra={"lost": len(self._queue)})
