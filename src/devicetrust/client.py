"""HTTPS+JSON client of the auth service, used by tsh, tctl and agents.

Server errors come back as the same :mod:`devicetrust.errors` classes the server raised.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from devicetrust.errors import (
    ERROR_KINDS,
    ConnectionFailedError,
    DevicetrustError,
    RateLimitedError,
    TrustError,
)

#: Seconds to wait for the auth service before telling the user it is unreachable.
REQUEST_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 5.0
HTTPS_PORT = 443


def pinned_ssl_context(ca_pem: str) -> ssl.SSLContext:
    """Trust exactly the cluster's host CA (no system roots: a public CA must not vouch for our auth server)."""
    context = ssl.create_default_context(cadata=ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class AuthClient:
    def __init__(
        self,
        addr: str,
        *,
        ca_pem: str | None = None,
        insecure: bool = False,
        token: str | None = None,
    ) -> None:
        if ca_pem is None and not insecure:
            raise TrustError("no cluster CA to verify the auth service with; run 'tsh login' first")
        self.addr = addr
        verify: ssl.SSLContext | bool = False if insecure or ca_pem is None else pinned_ssl_context(ca_pem)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=f"https://{addr}",
            verify=verify,
            headers=headers,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AuthClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        with transport_errors(
            self.addr,
            untrusted="a certificate not issued by the pinned cluster CA; "
            "if the cluster was re-created, run 'tsh login --trust-new-ca'",
        ):
            response = self._http.request(method, path, json=json, params=params)
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body or {})

    def put(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PUT", path, json=body)

    def patch(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


@contextmanager
def transport_errors(addr: str, *, untrusted: str) -> Iterator[None]:
    """Turn httpx's transport failures into one-line errors naming the auth service. ``untrusted`` completes
    "the auth service at ADDR presented …" when its certificate does not verify against the pinned CA."""
    addr = with_port(addr)
    try:
        yield
    except httpx.ConnectError as err:
        if isinstance(err.__cause__, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(err):
            raise TrustError(f"the auth service at {addr} presented {untrusted}") from None
        raise ConnectionFailedError(f"cannot reach the auth service at {addr}: {_reason(err)}") from None
    except httpx.TimeoutException:
        raise ConnectionFailedError(f"the auth service at {addr} did not answer in time") from None
    except httpx.TransportError as err:
        raise ConnectionFailedError(f"cannot talk to the auth service at {addr}: {_reason(err)}") from None


def with_port(addr: str) -> str:
    """``addr`` as HOST:PORT for messages: an address without a port is reached on HTTPS's."""
    try:
        port = httpx.URL(f"https://{addr}").port
    except httpx.InvalidURL:
        return addr
    return addr if port is not None or addr.endswith(":443") else f"{addr}:{HTTPS_PORT}"


def _reason(err: Exception) -> str:
    text = str(err) or type(err).__name__
    return text.splitlines()[0]


def error_from_response(response: httpx.Response) -> DevicetrustError:
    """The error the auth service raised, rebuilt from its ``{"error": {"kind", "message"}}`` reply."""
    try:
        error = response.json()["error"]
        kind, message = str(error["kind"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return DevicetrustError(f"the auth service answered HTTP {response.status_code}")
    if kind == RateLimitedError.kind:
        return RateLimitedError(message, int(response.headers.get("retry-after", "0") or 0))
    return ERROR_KINDS.get(kind, DevicetrustError)(message)
