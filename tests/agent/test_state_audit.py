"""The node's cluster-state cache and its audit buffer, against a fake auth service."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from devicetrust.agent.audit import AuditForwarder
from devicetrust.agent.state import ClusterState, StateCache
from devicetrust.errors import ConnectionFailedError, ValidationError
from devicetrust.protocol import NodeState
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
    def __init__(self) -> None:
        self.state_reply: Any = ConnectionFailedError("down")
        self.event_failures: list[Exception] = []
        self.events: list[Mapping[str, Any]] = []

    async def state(self) -> NodeState:
        if isinstance(self.state_reply, Exception):
            raise self.state_reply
        return NodeState.model_validate(copy.deepcopy(self.state_reply))

    async def event(self, event: Mapping[str, Any]) -> None:
        if self.event_failures:
            raise self.event_failures.pop(0)
        self.events.append(event)


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


def test_audit_events_are_buffered_in_order_while_the_auth_service_is_down() -> None:
    api = FakeAPI()
    api.event_failures = [ConnectionFailedError("down"), ConnectionFailedError("still down")]
    forwarder = AuditForwarder(api)  # type: ignore[arg-type]

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(forwarder.run())
        for n in range(3):
            forwarder.emit({"event": "session.start", "n": n})
        await asyncio.sleep(0.05)
        assert len(forwarder) == 3 and not api.events
        forwarder.retry_now()  # the auth service is back: no need to sit out the back-off
        assert await forwarder.flush(5)
        assert [e["n"] for e in api.events] == [0, 1, 2]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_audit_buffer_is_bounded_and_drops_the_oldest() -> None:
    api = FakeAPI()
    forwarder = AuditForwarder(api, max_buffered=3)  # type: ignore[arg-type]
    for n in range(5):
        forwarder.emit({"event": "session.start", "n": n})
    assert len(forwarder) == 3 and forwarder.dropped == 2

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(forwarder.run())
        assert await forwarder.flush(5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert [e["n"] for e in api.events] == [2, 3, 4]


def test_an_event_the_auth_service_refuses_is_dropped_not_retried() -> None:
    api = FakeAPI()
    api.event_failures = [ValidationError("event: nodes may only report …")]
    forwarder = AuditForwarder(api)  # type: ignore[arg-type]
    forwarder.emit({"event": "bogus"})
    forwarder.emit({"event": "session.end"})

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(forwarder.run())
        assert await forwarder.flush(5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert [e["event"] for e in api.events] == ["session.end"]
    assert forwarder.delivered == 1
