"""Audit events from agents over ``POST /v1/nodes/events``, on both backends: batches stored in one transaction,
refused events named by their index while the others are stored, each attributed to the agent whose session
reports it, and the one-event body of agents that predate batches still taken as it always was."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from tests.auth.api_harness import RunningApi
from tests.auth.server_harness import public_key
from tests.auth.test_http_edge import error_of

from devicetrust.auth.server import Caller
from devicetrust.protocol import MAX_AGENT_EVENT_BATCH
from devicetrust.storage.backend import Backend
from devicetrust.storage.repositories import Store


def joined(api: RunningApi, role: str, hostname: str) -> tuple[Caller, str]:
    """An agent of ``role`` joined to the cluster: its caller (host id as name) and API session token."""
    server = api.server
    admin = server.authenticate(api.admin_token)
    token, _ = server.create_join_token(admin, role, None)
    session = str(server.nodes.join(token, hostname, "127.0.0.1:3022", {}, public_key(), role)["session_token"])
    return server.authenticate(session), session


def stored(api: RunningApi, *event_types: str) -> list[dict[str, Any]]:
    admin = api.server.authenticate(api.admin_token)
    return list(
        api.server.search_events(
            admin, since=None, until=None, event_types=list(event_types), user=None, limit=1000, after_id=None
        )
    )


@contextlib.contextmanager
def counted_transactions(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the write transactions begun on ``backend`` within the block."""
    count = [0]
    begin = backend.begin

    @contextlib.contextmanager
    def counting() -> Iterator[Store]:
        count[0] += 1
        with begin() as store:
            yield store

    with monkeypatch.context() as patch:
        patch.setattr(backend, "begin", counting)
        yield count


def test_a_batch_is_stored_in_order_in_one_transaction(api: RunningApi, monkeypatch: pytest.MonkeyPatch) -> None:
    _, session = joined(api, "node", "n1")
    backend = api.server.context.backend
    with api.client(session) as agent:
        with counted_transactions(backend, monkeypatch) as one:
            reply = agent.post("/v1/nodes/events", json={"events": [{"event": "session.start", "user": "alice"}]})
        assert reply.status_code == 200 and reply.json() == {"stored": 1, "refused": []}
        batch = [{"event": "session.start", "user": f"u{n}", "session_id": str(n)} for n in range(50)]
        with counted_transactions(backend, monkeypatch) as fifty:
            reply = agent.post("/v1/nodes/events", json={"events": batch})
        assert reply.status_code == 200 and reply.json() == {"stored": 50, "refused": []}
    assert fifty == one  # whatever the request itself costs, the events take one transaction together
    assert [e["user"] for e in stored(api, "session.start")] == ["alice"] + [f"u{n}" for n in range(50)]
    caller, _ = joined(api, "node", "n2")
    with counted_transactions(backend, monkeypatch) as direct:
        api.server.nodes.record_events(caller, batch)
    assert direct == [1]


def test_refused_events_are_named_and_the_others_stored(api: RunningApi) -> None:
    _, session = joined(api, "kube", "kube-host")
    batch: list[dict[str, Any]] = [
        {"event": "kube.request", "user": "dana", "verb": "list", "success": False},
        {"event": "session.start", "user": "dana"},  # an SSH node's event
        {"event": ["kube.request"], "user": "dana"},
        {"event": "kube.request", "user": "erin", "verb": "get"},
    ]
    with api.client(session) as agent:
        reply = agent.post("/v1/nodes/events", json={"events": batch})
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["stored"] == 2
    assert [item["index"] for item in result["refused"]] == [1, 2]
    assert all("kube services may only report kube.request" in item["error"] for item in result["refused"])
    events = stored(api, "kube.request", "session.start")
    assert [(e["user"], e["code"], e["success"]) for e in events] == [
        ("dana", "T3009W", False),
        ("erin", "T3009I", True),
    ]


def test_events_are_attributed_to_the_reporting_agent(api: RunningApi) -> None:
    other, _ = joined(api, "node", "victim")
    reporter, session = joined(api, "node", "reporter")
    forged = {
        "event": "session.start",
        "user": "alice",
        "server_id": other.name,
        "code": "T0000I",
        "time": "1999",
        "cluster_name": "another-cluster",
    }
    with api.client(session) as agent:
        assert agent.post("/v1/nodes/events", json={"events": [forged]}).status_code == 200
        assert agent.post("/v1/nodes/events", json=forged).status_code == 200
    events = stored(api, "session.start")
    assert [(e["server_id"], e["code"]) for e in events] == [(reporter.name, "T2000I")] * 2
    assert all(not e["time"].startswith("1999") for e in events)
    assert {e["cluster_name"] for e in events} == {api.server.cluster_name}
    with api.client(api.admin_token) as admin:
        error_of(admin.post("/v1/nodes/events", json={"events": [forged]}), 403)
    with api.client() as anonymous:
        error_of(anonymous.post("/v1/nodes/events", json={"events": [forged]}), 401)


def test_the_one_event_body_of_older_agents_is_still_taken(api: RunningApi) -> None:
    _, session = joined(api, "db", "db-host")
    with api.client(session) as agent:
        reply = agent.post("/v1/nodes/events", json={"event": "db.session.start", "user": "alice", "success": False})
        assert reply.status_code == 200 and reply.json()["stored"] == 1
        # refused as it always was: an error reply, which older agents drop the event on
        refused = error_of(agent.post("/v1/nodes/events", json={"event": "session.start", "user": "alice"}), 400)
        assert refused["kind"] == "validation" and "database services may only report" in refused["message"]
    assert [(e["event"], e["code"]) for e in stored(api, "db.session.start", "session.start")] == [
        ("db.session.start", "TDB00W")
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"events": []}, "events"),
        ({"events": [{"event": "session.start"}] * (MAX_AGENT_EVENT_BATCH + 1)}, "events"),
        ({"events": [{"event": "session.start"}, "session.end"]}, "events.1"),
        # a value no backend can store refuses the whole body: the agent then sends its events one by one
        ({"events": [{"event": "session.start"}, {"event": "session.end", "note": "a\u0000b"}]}, "NUL"),
    ],
    ids=["empty", "too-many", "not-an-object", "unstorable-value"],
)
def test_a_malformed_batch_is_refused_whole(api: RunningApi, body: dict[str, Any], message: str) -> None:
    _, session = joined(api, "node", "n1")
    with api.client(session) as agent:
        reply = agent.post("/v1/nodes/events", json=body)
    assert message.lower() in error_of(reply, 400)["message"].lower()
    assert stored(api, "session.start", "session.end") == []
