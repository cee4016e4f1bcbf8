"""Errors about the auth service name where it was looked for: HOST:PORT, even when the address has no port."""

from __future__ import annotations

import socket

import pytest

from devicetrust.client import AuthClient, with_port
from devicetrust.errors import ConnectionFailedError


def test_addresses_get_the_https_port_when_they_name_none() -> None:
    assert with_port("auth.example.com") == "auth.example.com:443"
    assert with_port("auth.example.com:3080") == "auth.example.com:3080"
    assert with_port("auth.example.com:443") == "auth.example.com:443"
    assert with_port("[::1]:3080") == "[::1]:3080"
    assert with_port("[::1]") == "[::1]:443"


def test_a_closed_port_is_named_in_the_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the socket is: nobody listens there
    with (
        AuthClient(f"127.0.0.1:{port}", insecure=True) as client,
        pytest.raises(ConnectionFailedError, match=rf"^cannot reach the auth service at 127\.0\.0\.1:{port}: "),
    ):
        client.get("/v1/ping")
