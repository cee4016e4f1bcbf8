"""HTTPS+JSON client of the auth service, used by tsh, tctl and agents.

Server errors come back as the same :mod:`devicetrust.errors` classes the server raised.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
import pydantic
from pydantic import JsonValue

from devicetrust import protocol
from devicetrust.errors import (
    ConnectionFailedError,
    DevicetrustError,
    RateLimitedError,
    TrustError,
    error_class,
)

_Reply = TypeVar("_Reply", bound=protocol.Message)

#: Seconds to wait for the auth service before telling the user it is unreachable.
REQUEST_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 5.0
HTTPS_PORT = 443
#: What an auth service whose certificate does not verify presented (see transport_errors).
UNTRUSTED_AUTH_SERVICE = (
    "a certificate not issued by the pinned cluster CA; if the cluster was re-created, run 'tsh login --trust-new-ca'"
)


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

    def __enter__(self) -> Self:
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
        return self.send(method, path, json=json, params=params).json()

    def send(
        self,
        method: str,
        path: str,
        *,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """The service's successful response as it came; its error reply raised as the error it names."""
        with transport_errors(self.addr, untrusted=UNTRUSTED_AUTH_SERVICE):
            response = self._http.request(method, path, json=json, params=params, headers=headers)
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

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


def segment(value: str) -> str:
    """``value`` as one path segment: a name with ``/``, ``?`` or ``%`` in it cannot reach another route."""
    quoted = quote(value, safe="")
    # "." and ".." survive quote() and would be resolved away by the HTTP client.
    return "%2E" * len(quoted) if quoted in (".", "..") else quoted


def body(request: protocol.Message) -> dict[str, JsonValue]:
    """A request model as JSON. Built unvalidated by :class:`AuthApi`: the service validates, and its one-line
    errors are the ones users see."""
    return request.model_dump(mode="json")


def reply_as(model: type[_Reply], reply: Any, what: str) -> _Reply:
    """The service's ``reply`` as ``model``; a reply of another shape is an error, never a partial value."""
    try:
        return model.model_validate(reply)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "reply"
        raise DevicetrustError(
            f"the auth service sent an unexpected reply to {what} ({where}: {first['msg']})"
        ) from None


def document(reply: Any, what: str) -> protocol.ResourceDocument:
    if not isinstance(reply, dict):
        raise DevicetrustError(f"the auth service sent an unexpected reply to {what} (expected an object)")
    return reply


class AuthApi(AuthClient):
    """The auth service's operations as methods taking and returning :mod:`devicetrust.protocol` models."""

    def ping(self) -> protocol.PingResponse:
        return reply_as(protocol.PingResponse, self.get("/v1/ping"), "ping")

    def cas(self) -> protocol.ClusterCAs:
        return reply_as(protocol.ClusterCAs, self.get("/v1/cas"), "cas")

    def login(
        self, user: str, password: str, public_key: str, ttl_seconds: int | None = None
    ) -> protocol.LoginResponse:
        request = protocol.LoginRequest.model_construct(
            user=user, password=password, public_key=public_key, ttl_seconds=ttl_seconds
        )
        return reply_as(protocol.LoginResponse, self.post("/v1/login", body(request)), "login")

    def bot_join(self, token: str, public_key: str, ttl_seconds: int | None = None) -> protocol.LoginResponse:
        request = protocol.BotJoinRequest.model_construct(token=token, public_key=public_key, ttl_seconds=ttl_seconds)
        return reply_as(protocol.LoginResponse, self.post("/v1/bots/join", body(request)), "bots/join")

    def signup(self, token: str, password: str) -> protocol.SignupResponse:
        request = protocol.SignupRequest.model_construct(token=token, password=password)
        return reply_as(protocol.SignupResponse, self.post("/v1/signup", body(request)), "signup")

    def logout(self) -> None:
        self.post("/v1/logout")

    def whoami(self) -> protocol.WhoamiResponse:
        return reply_as(protocol.WhoamiResponse, self.get("/v1/whoami"), "whoami")

    # -- users, bots, tokens
    def create_user(self, name: str, roles: list[str], traits: dict[str, list[str]]) -> protocol.CreateUserResponse:
        request = protocol.CreateUserRequest.model_construct(name=name, roles=roles, traits=traits)
        return reply_as(protocol.CreateUserResponse, self.post("/v1/users", body(request)), "users")

    def update_user(
        self, name: str, *, set_roles: list[str] | None = None, set_traits: dict[str, list[str]] | None = None
    ) -> protocol.UpdateUserResponse:
        request = protocol.UpdateUserRequest.model_construct(set_roles=set_roles, set_traits=set_traits)
        return reply_as(protocol.UpdateUserResponse, self.patch(f"/v1/users/{segment(name)}", body(request)), "users")

    def reset_user(self, name: str) -> protocol.CreateUserResponse:
        return reply_as(protocol.CreateUserResponse, self.post(f"/v1/users/{segment(name)}/reset"), "users/reset")

    def create_bot(
        self, name: str, roles: list[str], traits: dict[str, list[str]], token_ttl_seconds: int | None = None
    ) -> protocol.CreateBotResponse:
        request = protocol.CreateBotRequest.model_construct(
            name=name, roles=roles, traits=traits, token_ttl_seconds=token_ttl_seconds
        )
        return reply_as(protocol.CreateBotResponse, self.post("/v1/bots", body(request)), "bots")

    def create_token(self, kind: str, ttl_seconds: int | None = None) -> protocol.CreateTokenResponse:
        request = protocol.CreateTokenRequest.model_construct(type=kind, ttl_seconds=ttl_seconds)
        return reply_as(protocol.CreateTokenResponse, self.post("/v1/tokens", body(request)), "tokens")

    def list_tokens(self) -> protocol.TokenList:
        return reply_as(protocol.TokenList, self.get("/v1/tokens"), "tokens")

    def delete_token(self, identifier: str) -> None:
        self.delete(f"/v1/tokens/{segment(identifier)}")

    # -- resources
    def list_resources(self, kind: str) -> protocol.ResourceList:
        return reply_as(protocol.ResourceList, self.get(f"/v1/resources/{segment(kind)}"), "resources")

    def get_resource(self, kind: str, name: str) -> protocol.ResourceDocument:
        return document(self.get(f"/v1/resources/{segment(kind)}/{segment(name)}"), "resources")

    def put_resource(self, resource: protocol.ResourceDocument, *, force: bool = False) -> protocol.PutResourceResponse:
        request = protocol.PutResourceRequest.model_construct(resource=resource, force=force)
        return reply_as(protocol.PutResourceResponse, self.put("/v1/resources", body(request)), "resources")

    def delete_resource(self, kind: str, name: str) -> None:
        self.delete(f"/v1/resources/{segment(kind)}/{segment(name)}")

    # -- devices
    def add_device(
        self, os_type: str, asset_tag: str, *, create_enroll_token: bool = False, enroll_token_ttl_seconds: int | None
    ) -> protocol.DeviceWithToken:
        request = protocol.AddDeviceRequest.model_construct(
            os_type=os_type,
            asset_tag=asset_tag,
            create_enroll_token=create_enroll_token,
            enroll_token_ttl_seconds=enroll_token_ttl_seconds,
        )
        return reply_as(protocol.DeviceWithToken, self.post("/v1/devices", body(request)), "devices")

    def list_devices(self, query: protocol.DeviceListQuery | None = None) -> protocol.DeviceList:
        """One page of the inventory, whole documents (``query.view`` is ignored)."""
        params = _device_query(query, view="resource")
        return reply_as(protocol.DeviceList, self.get("/v1/devices", **params), "devices")

    def list_device_summaries(self, query: protocol.DeviceListQuery | None = None) -> protocol.DeviceSummaryList:
        """One page of the inventory as ``tctl devices ls`` shows it."""
        params = _device_query(query, view="summary")
        return reply_as(protocol.DeviceSummaryList, self.get("/v1/devices", **params), "devices")

    def stream_devices(self, query: protocol.DeviceListQuery) -> DeviceStream:
        """The listing streamed (``query.page_size``: at most that many devices, default all); see
        :class:`DeviceStream`."""
        return DeviceStream(self, _device_query(query))

    def find_devices(self, asset_tag: str) -> protocol.DeviceList:
        return self.list_devices(protocol.DeviceListQuery.model_construct(asset_tag=asset_tag))

    def get_device(self, device_id: str) -> protocol.ResourceDocument:
        return document(self.get(f"/v1/devices/{segment(device_id)}"), "devices")

    def delete_device(self, device_id: str) -> protocol.ResourceDocument:
        return document(self.delete(f"/v1/devices/{segment(device_id)}"), "devices")

    def create_enroll_token(self, device_id: str, ttl_seconds: int | None = None) -> protocol.DeviceWithToken:
        request = protocol.EnrollTokenRequest.model_construct(ttl_seconds=ttl_seconds)
        path = f"/v1/devices/{segment(device_id)}/enroll-token"
        return reply_as(protocol.DeviceWithToken, self.post(path, body(request)), "enroll-token")

    def unenroll_device(self, device_id: str) -> protocol.ResourceDocument:
        return document(self.post(f"/v1/devices/{segment(device_id)}/unenroll"), "unenroll")

    def enroll_begin(
        self,
        *,
        token: str | None,
        credential_id: str,
        device_data: Mapping[str, str],
        tpm: protocol.TpmEnrollment | None = None,
        key: protocol.KeyEnrollment | None = None,
    ) -> protocol.ChallengeMessage:
        request = protocol.EnrollBeginRequest.model_construct(
            token=token, credential_id=credential_id, device_data=device_data, tpm=tpm, key=key
        )
        return reply_as(protocol.ChallengeMessage, self.post("/v1/devices/enroll/begin", body(request)), "enroll/begin")

    def enroll_finish(self, answer: protocol.ChallengeAnswer) -> protocol.ResourceDocument:
        return document(self.post("/v1/devices/enroll/finish", answer), "enroll/finish")

    def authenticate_begin(
        self,
        *,
        credential_id: str,
        device_data: Mapping[str, str],
        ssh_cert: str,
        target: protocol.SessionTarget | None = None,
    ) -> protocol.ChallengeMessage:
        request = protocol.AuthenticateBeginRequest.model_construct(
            credential_id=credential_id, device_data=device_data, ssh_cert=ssh_cert, target=target
        )
        path = "/v1/devices/authenticate/begin"
        return reply_as(protocol.ChallengeMessage, self.post(path, body(request)), "authenticate/begin")

    def authenticate_finish(self, answer: protocol.ChallengeAnswer) -> protocol.DeviceCertificates:
        path = "/v1/devices/authenticate/finish"
        return reply_as(protocol.DeviceCertificates, self.post(path, answer), "authenticate/finish")

    # -- nodes, databases, audit
    def list_nodes(self) -> protocol.NodeList:
        return reply_as(protocol.NodeList, self.get("/v1/nodes"), "nodes")

    def list_databases(self) -> protocol.DatabaseList:
        return reply_as(protocol.DatabaseList, self.get("/v1/databases"), "databases")

    def list_kube_clusters(self) -> protocol.KubeClusterList:
        return reply_as(protocol.KubeClusterList, self.get("/v1/kube/clusters"), "kube/clusters")

    def database_cert(
        self, database: str, ssh_cert: str, db_user: str = "", db_name: str = ""
    ) -> protocol.DatabaseCertResponse:
        request = protocol.DatabaseCertRequest.model_construct(
            database=database, ssh_cert=ssh_cert, db_user=db_user, db_name=db_name
        )
        return reply_as(
            protocol.DatabaseCertResponse, self.post("/v1/databases/certs", body(request)), "databases/certs"
        )

    def events(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        types: list[str] | None = None,
        user: str | None = None,
        limit: int | None = None,
        after: int | None = None,
        newest: bool = False,
    ) -> protocol.EventPage:
        params = {
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "type": types or None,
            "user": user,
            "limit": limit,
            "after": after,
            "newest": "true" if newest else None,
        }
        return reply_as(protocol.EventPage, self.get("/v1/events", **params), "events")


class DeviceStream:
    """A streamed device listing. Iterating yields the devices in batches as they arrive, each device one line of
    JSON, unparsed (to pass on, or to parse as needed); once the iteration ends, ``next_page_token`` continues
    after the streamed devices (None: the listing reached the end). The request is sent when iteration starts; a
    refusal (a bad filter, a missing permission) raises before the first batch."""

    def __init__(self, client: AuthClient, params: dict[str, str | int]) -> None:
        self._client = client
        self._params = params
        self.next_page_token: str | None = None

    def __iter__(self) -> Iterator[list[bytes]]:
        http = self._client._http
        with (
            transport_errors(self._client.addr, untrusted=UNTRUSTED_AUTH_SERVICE),
            http.stream(
                "GET", "/v1/devices", params=self._params, headers={"Accept": protocol.NDJSON_MEDIA_TYPE}
            ) as reply,
        ):
            if reply.status_code >= 400:
                reply.read()
                raise error_from_response(reply)
            if not reply.headers.get("content-type", "").startswith(protocol.NDJSON_MEDIA_TYPE):
                raise DevicetrustError("the auth service sent an unexpected reply to devices (expected JSON lines)")
            # The last complete line may be the one that ends the stream: it is held back until more arrive.
            held: bytes | None = None
            partial = b""
            for chunk in reply.iter_bytes():
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                if not lines:
                    continue
                batch = lines[:-1] if held is None else [held, *lines[:-1]]
                held = lines[-1]
                if batch:
                    yield batch
        self.next_page_token = self._end(held if not partial else None)

    @staticmethod
    def _end(line: bytes | None) -> str | None:
        try:
            end = json.loads(line) if line is not None else None
        except ValueError:
            end = None
        if isinstance(end, dict) and isinstance(end.get("error"), dict):
            kind, message = str(end["error"].get("kind")), str(end["error"].get("message"))
            raise rebuilt_error(kind, message)
        if not (isinstance(end, dict) and set(end) == {"next_page_token"}):
            raise DevicetrustError("the auth service's device listing ended early; run the command again")
        token = end["next_page_token"]
        if token is not None and not isinstance(token, str):
            raise DevicetrustError("the auth service sent an unexpected reply to devices (next_page_token)")
        return token


def _device_query(query: protocol.DeviceListQuery | None, **override: str) -> dict[str, str | int]:
    """The query's parameters, leaving out what is unset (an empty filter is set: it means "none")."""
    fields = (query or protocol.DeviceListQuery.model_construct()).model_dump(exclude_none=True)
    fields.update(override)
    if fields.get("view") == "resource":
        del fields["view"]
    return fields


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
    return rebuilt_error(kind, message, retry_after=int(response.headers.get("retry-after", "0") or 0))


def rebuilt_error(kind: str, message: str, *, retry_after: int = 0) -> DevicetrustError:
    """The error of wire ``kind`` with ``message``, as the class the auth service raised it as."""
    cls = error_class(kind)
    if cls is RateLimitedError:
        return RateLimitedError(message, retry_after)
    return cls(message)
