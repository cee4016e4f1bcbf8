"""An AuthServer without HTTP for the auth service's tests: a frozen clock, fast argon2 parameters, and the users
and keys the tests sign up and join with."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher

from devicetrust.auth.server import AuthServer, Caller
from devicetrust.crypto.keys import generate_private_key, public_key_to_openssh
from devicetrust.storage.backend import Backend

PASSWORD = "a long enough password"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def make_server(backend: Backend, clock: Clock, cluster_name: str = "unit.test") -> AuthServer:
    server = AuthServer(
        backend,
        cluster_name=cluster_name,
        clock=clock,
        password_hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
    )
    server.initialize()
    return server


def public_key() -> str:
    return public_key_to_openssh(generate_private_key().public_key())


def signed_up(server: AuthServer, admin: Caller, name: str, roles: tuple[str, ...] = ("access",)) -> None:
    _, invite = server.create_user(admin, name, roles, {"logins": [name]})
    server.signup(invite, PASSWORD)
