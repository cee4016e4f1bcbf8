"""Session audit events from a node to the auth service, buffered in memory while the auth service is away.

Events go out in order, as many per request as are queued (up to the protocol's batch bounds), stored by the auth
service in one transaction. While the auth service is unreachable they wait in a bounded queue
(:data:`MAX_BUFFERED_EVENTS`); when it is full the oldest are dropped and counted, so a long outage cannot
exhaust the node's memory. Events from a service's connection threads wait in an inbox of the same bound until
the forwarder's next pass takes them, so a busy service does not wake the event loop for each. An event the auth
service refuses is dropped, never the others: the reply names the refused ones, and a batch refused as a whole
goes again one event per request. The buffer lives in memory only: events still queued when the node stops are
lost (and logged as such).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NotRequired, Protocol, TypedDict

from devicetrust.access import Decision
from devicetrust.crypto.identity import Identity
from devicetrust.errors import DevicetrustError, ValidationError
from devicetrust.protocol import MAX_AGENT_EVENT_BATCH, MAX_AGENT_EVENT_BATCH_BYTES, AgentEventBatchResult

__all__ = [
    "MAX_BUFFERED_EVENTS",
    "USER_KIND_BOT",
    "USER_KIND_HUMAN",
    "AuditForwarder",
    "AuditSink",
    "DeviceFields",
    "UserFields",
    "device_fields",
    "encoded_members",
    "joined_members",
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

#: How events are sent: JSON, compact, not limited to ASCII, no NaN or infinity.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encoded_members(fields: Mapping[str, object]) -> bytes:
    """``fields`` encoded as the members of a JSON object, without its braces (b"" for none), as events are sent.
    A service that sends many events sharing some of their fields encodes those once, and each event is
    :func:`joined_members` of its parts. Raises TypeError or ValueError for a value JSON cannot hold."""
    return _ENCODER.encode(fields)[1:-1].encode()


def joined_members(parts: Sequence[bytes]) -> bytes:
    """The JSON object of the members ``parts`` encode (see :func:`encoded_members`); their names must differ."""
    return b"{" + b",".join([part for part in parts if part]) + b"}"


#: Events kept while the auth service is unreachable; beyond this the oldest are dropped.
MAX_BUFFERED_EVENTS = 10_000
#: First and longest wait between delivery attempts while the auth service fails (doubling in between).
EVENT_RETRY_MIN_SECONDS = 0.5
EVENT_RETRY_MAX_SECONDS = 10.0
#: How long the forwarder lets events gather before each request while fewer than a full batch are queued: a busy
#: agent then sends one request per interval carrying all its events, rather than one per event or two.
EVENT_BATCH_LINGER_SECONDS = 0.05
#: The bytes a batch body adds around its events: ``{"events":[`` and ``]}``.
_BATCH_FRAME_BYTES = len(b'{"events":[]}')


class AuditSink(Protocol):
    """Where audit events go: the auth service's node API (:class:`devicetrust.agent.api.NodeAPI`)."""

    async def event(self, encoded: bytes) -> None: ...

    async def events(self, encoded: Sequence[bytes]) -> AgentEventBatchResult: ...


@dataclass(frozen=True, eq=False)
class _Queued:
    """An event waiting for delivery: its name (for the log) and the event encoded as JSON, as sent."""

    name: str
    encoded: bytes


class AuditForwarder:
    def __init__(
        self,
        api: AuditSink,
        max_buffered: int = MAX_BUFFERED_EVENTS,
        *,
        max_batch: int = MAX_AGENT_EVENT_BATCH,
        max_batch_bytes: int = MAX_AGENT_EVENT_BATCH_BYTES,
    ) -> None:
        self._api = api
        self._queue: collections.deque[_Queued] = collections.deque()
        self._max = max_buffered
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._retry = asyncio.Event()
        #: events at the head of the queue to send one per request: their batch was refused as a whole
        self._one_by_one = 0
        #: events from other threads (a service's connection threads), encoded, taken into the queue on the event
        #: loop
        self._inbox: collections.deque[_Queued] = collections.deque(maxlen=max_buffered)
        #: whether the next event from another thread must wake the event loop: only while the forwarder waits
        #: for events (otherwise it takes the inbox on its next pass, and a busy service wakes no one)
        self._inbox_wakes = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0
        self.delivered = 0

    def __len__(self) -> int:
        return len(self._queue) + len(self._inbox)

    def emit(self, event: Mapping[str, object]) -> None:
        """Queue one event for delivery; never blocks, never raises."""
        queued = self._encode(event)
        if queued is not None:
            self._enqueue(queued)

    def _encode(self, event: Mapping[str, object]) -> _Queued | None:
        """The event as sent; None (logged) if it can never be delivered."""
        name = str(event.get("event"))
        try:
            encoded = _ENCODER.encode(event).encode()
        except (TypeError, ValueError) as err:  # a bug in the event: it could never be delivered
            log.error("audit event cannot be encoded; dropping it", extra={"event": name, "error": str(err)})
            return None
        return self._sized(name, encoded)

    def _sized(self, name: str, encoded: bytes) -> _Queued | None:
        """The event as sent; None (logged) if no batch could carry it."""
        if len(encoded) + _BATCH_FRAME_BYTES > self._max_batch_bytes:
            log.error("audit event too large; dropping it", extra={"event": name, "bytes": len(encoded)})
            return None
        return _Queued(name, encoded)

    def _enqueue(self, queued: _Queued) -> None:
        if len(self._queue) >= self._max:
            self._queue.popleft()
            self._count_drop()
        self._queue.append(queued)
        self._idle.clear()
        self._wake.set()

    def emit_threadsafe(self, event: Mapping[str, object]) -> None:
        """Queue one event from any thread; never blocks, never raises. Beyond the bound, the oldest of those not
        yet taken into the queue are dropped. The event is encoded in the calling thread: on the event loop, a busy
        interval's events encoded at once would hold up every connection thread."""
        queued = self._encode(event)
        if queued is not None:
            self._to_inbox(queued)

    def emit_encoded_threadsafe(self, name: str, encoded: bytes) -> None:
        """Queue one event, named ``name`` and encoded as sent (a JSON object, see :func:`joined_members`), from any
        thread, as :meth:`emit_threadsafe` does."""
        queued = self._sized(name, encoded)
        if queued is not None:
            self._to_inbox(queued)

    def _to_inbox(self, queued: _Queued) -> None:
        inbox = self._inbox
        if len(inbox) == inbox.maxlen:
            self._count_drop()
        inbox.append(queued)
        loop = self._loop
        if self._inbox_wakes and loop is not None:
            self._inbox_wakes = False
            with contextlib.suppress(RuntimeError):  # the loop is closing: the agent is stopping
                loop.call_soon_threadsafe(self._take_inbox)

    def _count_drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("audit buffer full; dropping the oldest events", extra={"dropped": self.dropped})

    def _take_inbox(self) -> None:
        inbox = self._inbox
        while inbox:
            self._enqueue(inbox.popleft())

    async def flush(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the queue to drain; True if it did."""

        async def drained() -> None:
            while True:
                self._take_inbox()
                await self._idle.wait()
                if not self._inbox:
                    return

        try:
            await asyncio.wait_for(drained(), within)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Deliver the queue, oldest first, as many events per request as the batch bounds allow."""
        self._loop = asyncio.get_running_loop()
        delay = EVENT_RETRY_MIN_SECONDS
        while True:
            self._inbox_wakes = True
            self._take_inbox()  # after the flag: an event put in the inbox from now on wakes the loop
            await self._wake.wait()
            self._inbox_wakes = False
            while self._queue:
                if len(self._queue) < self._max_batch:
                    await asyncio.sleep(EVENT_BATCH_LINGER_SECONDS)
                self._take_inbox()
                self._wake.clear()
                batch = self._next_batch()
                try:
                    refused = await self._send(batch)
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
                if refused is None:
                    continue  # the same events go again, one per request
                for index, error in refused:
                    # The auth service will never take this one: drop it rather than block those behind it.
                    log.error("audit event refused; dropping it", extra={"event": batch[index].name, "error": error})
                self.delivered += len(batch) - len(refused)
                if delay > EVENT_RETRY_MIN_SECONDS:
                    log.info("audit events delivered again", extra={"queued": len(self) - len(batch)})
                delay = EVENT_RETRY_MIN_SECONDS
                self._remove(batch)
            self._idle.set()

    def _next_batch(self) -> list[_Queued]:
        """The oldest events, as many as one request may carry."""
        if self._one_by_one:
            return [self._queue[0]]
        batch: list[_Queued] = []
        size = _BATCH_FRAME_BYTES - 1  # the first event has no comma before it
        for queued in self._queue:
            size += len(queued.encoded) + 1
            if batch and (len(batch) >= self._max_batch or size > self._max_batch_bytes):
                break
            batch.append(queued)
        return batch

    async def _send(self, batch: list[_Queued]) -> list[tuple[int, str]] | None:
        """Deliver ``batch``: the events the auth service refused, as (index, why), or None if it refused the
        batch as a whole. DevicetrustError (but ValidationError) if it may be tried again."""
        if self._one_by_one:
            try:
                await self._api.event(batch[0].encoded)
            except ValidationError as err:
                refused = [(0, str(err))]
            else:
                refused = []
            self._one_by_one -= 1
            return refused
        try:
            result = await self._api.events([queued.encoded for queued in batch])
        except ValidationError as err:
            # A value in one event the service cannot store, or a service that predates batches: one event per
            # request then, so that only the events it refuses are dropped.
            log.info("audit batch refused; sending its events one by one", extra={"error": str(err)})
            self._one_by_one = len(batch)
            return None
        return [(item.index, item.error) for item in result.refused if item.index < len(batch)]

    def _remove(self, batch: list[_Queued]) -> None:
        """Take the delivered ``batch`` off the queue: those of its events still at its head (while it was on its
        way, a full buffer may have dropped its first ones)."""
        for queued in batch:
            if self._queue and self._queue[0] is queued:
                self._queue.popleft()

    def retry_now(self) -> None:
        """The auth service answers again (say, a state poll succeeded): end any back-off wait."""
        if self._queue:
            self._retry.set()

    def abandon(self) -> None:
        if len(self):
            log.warning("node stopping with undelivered audit events", extra={"lost": len(self)})
