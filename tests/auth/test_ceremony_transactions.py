"""What a device-authentication ceremony costs the backend, as the HTTP routes run it: one read transaction at
begin (the caller and the device), one read and ONE write transaction at finish (spent id, the authentication
recorded on the device and its audit events together), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from tests.auth.server_harness import PASSWORD, public_key
from tests.auth.test_session_certificates import NODE, World

from devicetrust.auth.sessions import LoginResult
from devicetrust.ceremony.messages import CeremonyError
from devicetrust.storage.backend import Backend
from devicetrust.types import Device

WRITES = ("INSERT", "UPDATE", "DELETE")


@dataclass
class Transaction:
    statements: list[str] = field(default_factory=list)

    @property
    def writes(self) -> bool:
        return any(statement.lstrip().upper().startswith(WRITES) for statement in self.statements)


@dataclass
class Recorder:
    transactions: list[Transaction] = field(default_factory=list)

    def begin(self, _conn: Any) -> None:
        self.transactions.append(Transaction())

    def execute(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.strip().upper().startswith("BEGIN"):  # SQLite's own BEGIN (IMMEDIATE)
            return
        self.transactions[-1].statements.append(statement)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorded = Recorder()
    sa.event.listen(sa.engine.Engine, "begin", recorded.begin)
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", recorded.execute)
    try:
        yield recorded
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", recorded.execute)
        sa.event.remove(sa.engine.Engine, "begin", recorded.begin)


@pytest.fixture
def world(backend_url: str) -> Iterator[World]:
    backend = Backend.open(backend_url)
    try:
        yield World(backend)
    finally:
        backend.close()


def token_ceremony(world: World, login: LoginResult, target: tuple[str, str] | None) -> Device:
    """One device authentication as the HTTP routes run it (the caller named by its session token)."""
    devices = world.server.devices
    _, challenge, _ = devices.authenticate_begin_as(
        login.session_token, credential_id="cred-1", collected=world.collected, ssh_cert=login.ssh_cert, target=target
    )
    _, certs = devices.authenticate_finish_as(
        login.session_token, world.answer(challenge.ceremony_id, challenge.challenge)
    )
    return certs.device


@pytest.mark.parametrize("target", [None, NODE])
def test_a_ceremony_takes_three_transactions_of_which_one_writes(
    world: World, recorder: Recorder, target: tuple[str, str] | None
) -> None:
    alice, _ = world.user("alice")
    world.enroll(alice)
    # a fresh login certificate: a session proof's target needs none, login-time augmentation an unaugmented one
    login = world.server.login("alice", PASSWORD, public_key(), None)

    token_ceremony(world, login, target)  # the first fills the caches
    recorder.transactions.clear()
    device = token_ceremony(world, login, target)
    transactions = list(recorder.transactions)
    # the document the next ceremony starts from, unparsed, is the one stored
    assert device == world.server.devices.get(world.admin, device.id)

    assert len(transactions) == 3, transactions
    begin, finish_read, finish_write = transactions
    assert not begin.writes and not finish_read.writes
    assert len(begin.statements) == 2 and len(finish_read.statements) == 2, (begin, finish_read)
    # the spent id, the device, and the audit events (the certificate's too for login-time augmentation)
    assert len(finish_write.statements) == 3, finish_write


def test_a_device_unenrolled_after_a_ceremony_is_refused_at_the_next(world: World) -> None:
    alice, _ = world.user("alice")
    world.enroll(alice)
    login = world.server.login("alice", PASSWORD, public_key(), None)

    device = token_ceremony(world, login, NODE)
    world.server.devices.unenroll(world.admin, device.id)
    with pytest.raises(CeremonyError):
        token_ceremony(world, login, NODE)
