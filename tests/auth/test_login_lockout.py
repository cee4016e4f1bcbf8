"""The login lockout holds under concurrency, on both backends, per user and per client address."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from tests.auth.api_harness import RunningApi, fast_auth_server

from devicetrust.auth.server import MAX_LOGIN_FAILURES, MAX_LOGIN_FAILURES_PER_ADDRESS, AuthServer
from devicetrust.crypto.keys import generate_private_key, public_key_to_openssh
from devicetrust.errors import AuthenticationError, RateLimitedError
from devicetrust.storage.backend import Backend

PASSWORD = "a long enough password"
RACERS = 40


@pytest.fixture
def server(backend_url: str) -> Iterator[AuthServer]:
    backend = Backend.open(backend_url)
    try:
        yield fast_auth_server(backend)
    finally:
        backend.close()


def public_key() -> str:
    return public_key_to_openssh(generate_private_key().public_key())


def sign_up(server: AuthServer, name: str) -> None:
    admin = server.authenticate(server.issue_admin_identity("lockout-test"))
    _, invite = server.create_user(admin, name, ("access",), {"logins": [name]})
    server.signup(invite, PASSWORD)


def race(attempt: Callable[[int], None], count: int) -> Counter[str]:
    """Run ``attempt`` on ``count`` threads released together; count the outcomes by exception name."""
    outcomes: Counter[str] = Counter()
    barrier = threading.Barrier(count)
    lock = threading.Lock()

    def run(index: int) -> None:
        barrier.wait()
        try:
            attempt(index)
            outcome = "ok"
        except (AuthenticationError, RateLimitedError) as err:
            outcome = type(err).__name__
        with lock:
            outcomes[outcome] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_concurrent_wrong_passwords_are_evaluated_at_most_the_allowed_number_of_times(server: AuthServer) -> None:
    sign_up(server, "alice")
    key = public_key()
    outcomes = race(lambda _: server.login("alice", "wrong password", key, None), RACERS)
    assert outcomes == {"AuthenticationError": MAX_LOGIN_FAILURES, "RateLimitedError": RACERS - MAX_LOGIN_FAILURES}
    with pytest.raises(RateLimitedError):
        server.login("alice", PASSWORD, key, None)


def test_one_address_spraying_user_names_is_limited(server: AuthServer) -> None:
    sign_up(server, "alice")
    key = public_key()
    outcomes = race(lambda i: server.login(f"user-{i}", "wrong password", key, None, client_addr="192.0.2.7"), 30)
    assert outcomes == {
        "AuthenticationError": MAX_LOGIN_FAILURES_PER_ADDRESS,
        "RateLimitedError": 30 - MAX_LOGIN_FAILURES_PER_ADDRESS,
    }
    with pytest.raises(RateLimitedError, match="from this address"):
        server.login("alice", PASSWORD, key, None, client_addr="192.0.2.7")
    server.login("alice", PASSWORD, key, None, client_addr="192.0.2.8")


def test_successful_logins_do_not_use_up_the_address_allowance(server: AuthServer) -> None:
    sign_up(server, "alice")
    key = public_key()
    for _ in range(MAX_LOGIN_FAILURES_PER_ADDRESS + 5):
        server.login("alice", PASSWORD, key, None, client_addr="192.0.2.9")


def test_the_http_login_counts_the_client_address(api: RunningApi) -> None:
    key = public_key()

    def attempt(index: int) -> int:
        with api.client() as client:
            body = {"user": f"sprayed-{index}", "password": "wrong password", "public_key": key}
            return client.post("/v1/login", json=body).status_code

    statuses = Counter(attempt(i) for i in range(MAX_LOGIN_FAILURES_PER_ADDRESS + 3))
    assert statuses == {401: MAX_LOGIN_FAILURES_PER_ADDRESS, 429: 3}
