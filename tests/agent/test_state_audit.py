"""The node's cluster-state cache and its audit buffer, against a fake auth service."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from devicetrust.agent import audit
from devicetrust.agent.audit import AuditForwarder, encoded_members, joined_members
from devicetrust.agent.state import ClusterState, StateCache
from devicetrust.errors import ConnectionFailedError, ValidationError
from devicetrust.protocol import AgentEventBatchResult, NodeState, RefusedAgentEvent
from devicetrust.types import Lock, LockTarget, default_cluster_auth_preference, preset_roles, resource_to_dict

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
USER_CA = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOpq user-ca"


def state_doc() -> dict[str, Any]:
    return {
        "cluster_name": "unit.test",
        "roles": [resource_to_dict(role) for role in preset_roles()],
        "cluster_auth_preference": resource_to_dict(default_cluster_auth_preference()),
        "locks": [resource_to_dict(Lock(name="l1", target=LockTarget("user", "bob"), message="gone"))],
        "user_ca_ssh": USER_CA,
        "generated": NOW.isoformat(),
    }


def test_state_parses_roles_settings_and_locks() -> None:
    state = ClusterState.from_json(state_doc())
    assert "require-trusted-device" in state.roles
    assert state.device_trust_mode == "optional"
    assert [lock.target.value for lock in state.locks] == ["bob"]
    assert state.user_ca_ssh == USER_CA


@pytest.mark.parametrize(
    "breakage",
    [
        "bad-role-mode",
        "unknown-role-field",
        "lock-as-role",
        "bad-lock",
        "no-cap",
        "no-user-ca",
        "roles-not-a-list",
    ],
)
def test_any_unreadable_part_rejects_the_whole_state(breakage: str) -> None:
    doc = state_doc()
    if breakage == "bad-role-mode":
        doc["roles"][0]["spec"]["options"] = {"device_trust_mode": "paranoid"}
    elif breakage == "unknown-role-field":
        doc["roles"][-1]["spec"]["deny"] = {"logins": ["root"], "node_lables": {}}
    elif breakage == "lock-as-role":
        doc["roles"].append(doc["locks"][0])
    elif breakage == "bad-lock":
        doc["locks"][0]["spec"]["target"] = {"planet": "mars"}
    elif breakage == "no-cap":
        del doc["cluster_auth_preference"]
    elif breakage == "no-user-ca":
        doc["user_ca_ssh"] = ""
    else:
        doc["roles"] = {"access": {}}
    with pytest.raises(ValidationError):
        ClusterState.from_json(doc)


class FakeAPI:
    """The auth service's node API: the state, and audit events, in batches or (as agents sent them before
    batches) one per request."""

    def __init__(self) -> None:
        self.state_reply: Any = ConnectionFailedError("down")
        #: raised by the next requests, one each
        self.event_failures: list[Exception] = []
        #: events the service refuses (as it would an event an agent may not report)
        self.refused_names: set[str] = set()
        #: a service that predates batches: it refuses every batch body
        self.single_events_only = False
        #: while set and not yet set off, batches wait for it (a request on its way)
        self.gate: asyncio.Event | None = None
        #: when each batch request came
        self.attempts: list[float] = []
        self.requested = asyncio.Event()
        #: what each request carried, decoded
        self.requests: list[list[dict[str, Any]]] = []
        self.stored: list[dict[str, Any]] = []

    async def state(self) -> NodeState:
        if isinstance(self.state_reply, Exception):
            raise self.state_reply
        return NodeState.model_validate(copy.deepcopy(self.state_reply))

    async def event(self, encoded: bytes) -> None:
        if self.event_failures:
            raise self.event_failures.pop(0)
        event = json.loads(encoded)
        self.requests.append([event])
        if event["event"] in self.refused_names:
            raise ValidationError("event: nodes may only report session.end, session.rejected, session.start")
        self.stored.append(event)

    async def events(self, encoded: Sequence[bytes]) -> AgentEventBatchResult:
        self.attempts.append(time.monotonic())
        self.requested.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.event_failures:
            raise self.event_failures.pop(0)
        if self.single_events_only:
            raise ValidationError("event: nodes may only report session.end, session.rejected, session.start")
        batch = [json.loads(item) for item in encoded]
        self.requests.append(batch)
        refused = [
            RefusedAgentEvent(index=index, error="event: not for nodes")
            for index, event in enumerate(batch)
            if event["event"] in self.refused_names
        ]
        self.stored += [event for event in batch if event["event"] not in self.refused_names]
        return AgentEventBatchResult(stored=len(batch) - len(refused), refused=refused)


def test_state_cache_keeps_the_last_good_state() -> None:
    api = FakeAPI()
    updates: list[ClusterState] = []
    cache = StateCache(api, updates.append, lambda: NOW)  # type: ignore[arg-type]

    def current() -> ClusterState | None:
        return cache.current

    async def scenario() -> None:
        assert not await cache.refresh()
        assert current() is None  # never had one: the node refuses sessions
        api.state_reply = state_doc()
        assert await cache.refresh()
        good = current()
        assert good is not None
        assert updates == [good]
        assert cache.fetched == NOW
        api.state_reply = ConnectionFailedError("down again")
        assert not await cache.refresh()
        assert current() is good
        broken = state_doc()
        broken["locks"][0]["spec"]["target"] = {}
        api.state_reply = broken
        assert not await cache.refresh()
        assert current() is good and len(updates) == 1

    asyncio.run(scenario())


def forwarding(forwarder: AuditForwarder, scenario: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run the forwarder through ``scenario`` (by default: until its queue drains), then stop it."""

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(forwarder.run())
        if scenario is not None:
            await scenario()
        assert await forwarder.flush(5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


def test_audit_events_are_buffered_in_order_while_the_auth_service_is_down() -> None:
    api = FakeAPI()
    api.event_failures = [ConnectionFailedError("down"), ConnectionFailedError("still down")]
    forwarder = AuditForwarder(api)

    async def scenario() -> None:
        for n in range(3):
            forwarder.emit({"event": "session.start", "n": n})
        await asyncio.sleep(0.05)
        assert len(forwarder) == 3 and not api.stored
        forwarder.retry_now()  # the auth service is back: no need to sit out the back-off
        assert await forwarder.flush(5)

    forwarding(forwarder, scenario)
    assert [[e["n"] for e in batch] for batch in api.requests] == [[0, 1, 2]]
    assert forwarder.delivered == 3


def test_audit_buffer_is_bounded_and_drops_the_oldest() -> None:
    api = FakeAPI()
    forwarder = AuditForwarder(api, max_buffered=3)
    for n in range(5):
        forwarder.emit({"event": "session.start", "n": n})
    assert len(forwarder) == 3 and forwarder.dropped == 2
    forwarding(forwarder)
    assert [e["n"] for e in api.stored] == [2, 3, 4]


def test_queued_events_go_in_batches_within_the_count_and_byte_bounds_in_order() -> None:
    api = FakeAPI()
    forwarder = AuditForwarder(api, max_batch=500)
    for n in range(1200):
        forwarder.emit({"event": "session.start", "n": n})
    forwarding(forwarder)
    assert [len(batch) for batch in api.requests] == [500, 500, 200]
    assert [e["n"] for e in api.stored] == list(range(1200))
    assert forwarder.delivered == 1200 and len(forwarder) == 0

    by_bytes = FakeAPI()
    event = {"event": "session.start", "pad": "x" * 1000}
    one = len(json.dumps(event, separators=(",", ":")))
    # room for exactly three events: the body's frame, three events and the two commas between them
    forwarder = AuditForwarder(by_bytes, max_batch_bytes=len('{"events":[]}') + 3 * one + 2)
    for _ in range(7):
        forwarder.emit(event)
    forwarding(forwarder)
    assert [len(batch) for batch in by_bytes.requests] == [3, 3, 1]


def test_events_emitted_while_a_batch_is_on_its_way_go_in_the_next() -> None:
    api = FakeAPI()
    api.gate = gate = asyncio.Event()
    forwarder = AuditForwarder(api, max_buffered=3)

    async def scenario() -> None:
        forwarder.emit({"event": "session.start", "n": 0})
        forwarder.emit({"event": "session.start", "n": 1})
        await api.requested.wait()  # the batch [0, 1] is on its way
        for n in range(2, 6):
            forwarder.emit({"event": "session.start", "n": n})
        # the buffer stays bounded meanwhile: 0, 1 and 2 made room, the request in flight still carries 0 and 1
        assert len(forwarder) == 3 and forwarder.dropped == 3
        gate.set()

    forwarding(forwarder, scenario)
    assert [[e["n"] for e in batch] for batch in api.requests] == [[0, 1], [3, 4, 5]]


def test_an_event_the_auth_service_refuses_is_dropped_not_the_others_of_its_batch() -> None:
    api = FakeAPI()
    api.refused_names = {"bogus"}
    forwarder = AuditForwarder(api)
    for name in ("session.start", "bogus", "session.end"):
        forwarder.emit({"event": name})
    forwarding(forwarder)
    assert len(api.requests) == 1  # not retried
    assert [e["event"] for e in api.stored] == ["session.start", "session.end"]
    assert forwarder.delivered == 2 and len(forwarder) == 0


def test_a_batch_refused_as_a_whole_goes_again_one_event_per_request() -> None:
    # an auth service that predates batches, or one value in one event that it cannot store
    api = FakeAPI()
    api.single_events_only = True
    api.refused_names = {"bogus"}
    forwarder = AuditForwarder(api)

    async def scenario() -> None:
        for name in ("session.start", "bogus", "session.end"):
            forwarder.emit({"event": name})
        assert await forwarder.flush(5)
        assert [[e["event"] for e in batch] for batch in api.requests] == [
            ["session.start"],
            ["bogus"],
            ["session.end"],
        ]
        assert [e["event"] for e in api.stored] == ["session.start", "session.end"]
        assert forwarder.delivered == 2
        # then batches again
        api.single_events_only = False
        forwarder.emit({"event": "session.start"})
        forwarder.emit({"event": "session.end"})

    forwarding(forwarder, scenario)
    assert len(api.requests) == 4 and len(api.requests[-1]) == 2


def test_delivery_backs_off_doubling_up_to_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit, "EVENT_RETRY_MIN_SECONDS", 0.02)
    monkeypatch.setattr(audit, "EVENT_RETRY_MAX_SECONDS", 0.08)
    api = FakeAPI()
    api.event_failures = [ConnectionFailedError("down")] * 5
    forwarder = AuditForwarder(api)
    forwarder.emit({"event": "session.start"})
    forwarding(forwarder)
    attempts = api.attempts
    waits = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert len(waits) == 5
    # at least the back-off each time (timers may fire a clock tick early); a loaded machine may wait longer
    for waited, back_off in zip(waits, [0.02, 0.04, 0.08, 0.08, 0.08], strict=True):
        assert waited >= back_off - 0.005
    assert api.stored == [{"event": "session.start"}]


def test_an_event_that_cannot_be_sent_is_dropped_when_emitted() -> None:
    api = FakeAPI()
    forwarder = AuditForwarder(api, max_batch_bytes=200)
    forwarder.emit({"event": "session.start", "ratio": float("nan")})  # not JSON
    forwarder.emit({"event": "session.start", "at": object()})
    forwarder.emit({"event": "session.start", "pad": "x" * 200})  # no batch could carry it
    forwarder.emit({"event": "session.end"})
    assert len(forwarder) == 1
    forwarding(forwarder)
    assert api.stored == [{"event": "session.end"}]


def test_events_of_a_busy_agent_gather_into_one_request() -> None:
    api = FakeAPI()
    forwarder = AuditForwarder(api)

    async def scenario() -> None:
        for n in range(5):  # the forwarder wakes up on the first, the others come while it lets them gather
            forwarder.emit({"event": "session.start", "n": n})
            await asyncio.sleep(0)

    forwarding(forwarder, scenario)
    assert [[e["n"] for e in batch] for batch in api.requests] == [[0, 1, 2, 3, 4]]


def test_events_from_other_threads_are_delivered_in_each_threads_order() -> None:
    api = FakeAPI()
    forwarder = AuditForwarder(api)

    def serve(thread: int) -> None:
        for n in range(200):
            forwarder.emit_threadsafe({"event": "session.start", "thread": thread, "n": n})

    def serve_all() -> None:
        threads = [threading.Thread(target=serve, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    async def scenario() -> None:
        await asyncio.to_thread(serve_all)

    forwarding(forwarder, scenario)
    assert len(api.stored) == 800 and forwarder.delivered == 800
    for thread in range(4):
        assert [e["n"] for e in api.stored if e["thread"] == thread] == list(range(200))


def test_an_event_from_another_thread_wakes_an_idle_forwarder() -> None:
    api = FakeAPI()
    forwarder = AuditForwarder(api)

    async def scenario() -> None:
        await asyncio.sleep(0.01)  # the forwarder waits for events
        await asyncio.to_thread(forwarder.emit_threadsafe, {"event": "session.end"})
        await asyncio.wait_for(api.requested.wait(), 5)  # delivered without a flush taking it

    forwarding(forwarder, scenario)
    assert api.stored == [{"event": "session.end"}]


def test_events_from_other_threads_are_bounded_too() -> None:
    api = FakeAPI()
    forwarder = AuditForwarder(api, max_buffered=3)
    for n in range(5):
        forwarder.emit_threadsafe({"event": "session.start", "n": n})
    assert len(forwarder) == 3 and forwarder.dropped == 2
    forwarding(forwarder)  # the flush takes them in
    assert [e["n"] for e in api.stored] == [2, 3, 4]


def test_an_event_joined_from_encoded_parts_is_the_event() -> None:
    who = {"event": "kube.request", "user": "ålice", "device": {"asset_tag": "SN-1"}}
    what = {"request_path": '/api?x="1"', "kubernetes_groups": ["a", "b"]}
    joined = joined_members([encoded_members(who), encoded_members({}), encoded_members(what)])
    assert json.loads(joined) == {**who, **what}
    assert joined_members([]) == b"{}"
    with pytest.raises(ValueError):
        encoded_members({"ratio": float("nan")})


def test_an_encoded_event_from_another_thread_is_delivered_as_encoded() -> None:
    api = FakeAPI()
    forwarder = AuditForwarder(api, max_batch_bytes=200)
    forwarder.emit_encoded_threadsafe("session.start", b'{"event":"session.start","pad":"' + b"x" * 200 + b'"}')
    forwarder.emit_encoded_threadsafe("session.end", joined_members([encoded_members({"event": "session.end"})]))
    assert len(forwarder) == 1  # the first could never be sent
    forwarding(forwarder)
    assert api.stored == [{"event": "session.end"}]
