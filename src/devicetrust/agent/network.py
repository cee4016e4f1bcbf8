"""Addresses as agents listen on, advertise and log them."""

from __future__ import annotations

import contextlib
import ipaddress

from devicetrust.errors import ConfigError

__all__ = ["advertised_addr", "listen_host_port", "socket_addr"]


def socket_addr(sockaddr: object) -> str:
    """``HOST:PORT`` of a socket address tuple ("" if there is none)."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host = str(sockaddr[0])
        return f"[{host}]:{sockaddr[1]}" if ":" in host else f"{host}:{sockaddr[1]}"
    return ""


def listen_host_port(listen_addr: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[V6]:PORT``) to listen on; ConfigError naming ``what`` otherwise."""
    host, _, port = listen_addr.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{what}: expected HOST:PORT, got {listen_addr!r}")
    return host.strip("[]"), int(port)


def advertised_addr(listen_addr: str, hostname: str, port: int | None = None) -> str:
    """Where clients reach an agent listening on ``listen_addr``: that address, or ``hostname`` when it listens on
    all addresses; ``port`` replaces the configured one (the port actually bound when it was 0)."""
    host, _, listen_port = listen_addr.rpartition(":")
    host = host.strip("[]")
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_unspecified:
            host = hostname
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port if port is not None else listen_port}"
