"""The auth service's HTTP app served in-process by uvicorn on loopback, over a real backend."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI

from devicetrust.auth.app import build_app
from devicetrust.auth.server import AuthServer
from devicetrust.storage.backend import Backend

START_TIMEOUT_SECONDS = 30


@dataclass
class RunningApi:
    server: AuthServer
    base_url: str
    admin_token: str

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)


def fast_auth_server(backend: Backend) -> AuthServer:
    server = AuthServer(
        backend,
        cluster_name="api.test",
        password_hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1),
    )
    server.initialize()
    return server


@contextlib.contextmanager
def serve_api(backend_url: str, extend: Callable[[FastAPI], None] | None = None) -> Iterator[RunningApi]:
    """uvicorn in a thread (it installs no signal handlers off the main thread), plain HTTP on 127.0.0.1.
    ``extend`` may add routes of a test's own to the app first."""
    backend = Backend.open(backend_url)
    server = fast_auth_server(backend)
    app = build_app(server)
    if extend is not None:
        extend(app)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off")
    web = uvicorn.Server(config)
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not web.started and thread.is_alive() and time.monotonic() < deadline:
            thread.join(0.02)
        assert web.started, "uvicorn did not start"
        port = web.servers[0].sockets[0].getsockname()[1]
        yield RunningApi(server, f"http://127.0.0.1:{port}", server.issue_admin_identity("api-test"))
    finally:
        web.should_exit = True
        thread.join(START_TIMEOUT_SECONDS)
        backend.close()
