"""HTTP surface of the auth service: ``/v1/…`` JSON over HTTPS, thin over :class:`AuthServer`."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, MutableMapping
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

from cryptography.hazmat.primitives import serialization
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import PlainValidator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from devicetrust import __version__
from devicetrust.auth.devices import NodeByName, device_filter
from devicetrust.auth.edge import INT64_MAX, RequestGuardMiddleware, checked_json_body, error_response, short_message
from devicetrust.auth.server import AuthServer, Caller, LoginResult
from devicetrust.auth.sessions import SESSION_EXPIRED
from devicetrust.ceremony.messages import (
    ChallengeResponse,
    CollectedData,
    KeyEnrollPayload,
    QuoteResponse,
    TPMEnrollPayload,
)
from devicetrust.errors import DevicetrustError, RateLimitedError, SessionExpiredError, ValidationError
from devicetrust.logs import request_id_var
from devicetrust.protocol import (
    NDJSON_MEDIA_TYPE,
    AddDeviceRequest,
    AgentEventBatch,
    AgentEventBatchResult,
    AuthenticateBeginRequest,
    BotJoinRequest,
    ChallengeAnswer,
    ChallengeMessage,
    ClusterCAs,
    CreateBotRequest,
    CreateBotResponse,
    CreateTokenRequest,
    CreateTokenResponse,
    CreateUserRequest,
    CreateUserResponse,
    DatabaseCertRequest,
    DatabaseCertResponse,
    DatabaseList,
    DeviceCertificates,
    DeviceList,
    DeviceListQuery,
    DeviceStreamEnd,
    DeviceSummaryList,
    DeviceWithToken,
    Empty,
    EnrollBeginRequest,
    EnrollTokenRequest,
    ErrorDetail,
    ErrorReply,
    EventPage,
    HeartbeatRequest,
    KubeClusterList,
    LoginDeviceTrust,
    LoginIdentity,
    LoginRequest,
    LoginResponse,
    MdmApplyRequest,
    MdmApplyResponse,
    MdmDeleteRequest,
    MdmDeleteResponse,
    MdmDeviceList,
    MdmDevicePage,
    MdmJoinRequest,
    MdmJoinResponse,
    MdmLookupRequest,
    MdmSourceDevicePage,
    MdmStateUpdate,
    MdmStateValue,
    MdmSyncReport,
    NodeJoinRequest,
    NodeJoinResponse,
    NodeList,
    NodeState,
    PingResponse,
    PutResourceRequest,
    PutResourceResponse,
    RefusedAgentEvent,
    ResourceDocument,
    ResourceList,
    SignupRequest,
    SignupResponse,
    TokenList,
    UpdateUserRequest,
    UpdateUserResponse,
    WhoamiResponse,
)
from devicetrust.storage.records import JsonPage
from devicetrust.storage.repositories import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from devicetrust.types import Device, resource_to_dict

log = logging.getLogger("devicetrust.auth.http")

#: Incoming request ids are echoed only when they look like ids, so logs can't be forged through them.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_CEREMONY_PATHS = frozenset({"/v1/devices/authenticate/begin", "/v1/devices/authenticate/finish"})
#: Paths called on a timer (agents) or before every session (the device ceremony, which the audit log records):
#: logged at DEBUG when they succeed.
_ROUTINE_PATHS = frozenset({"/v1/nodes/state", "/v1/nodes/heartbeat", *_CEREMONY_PATHS})

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class RequestContextMiddleware:
    """Gives every request an id (echoed as X-Request-ID, in every log line) and logs one line per request.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which streams every response through extra tasks."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), "")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            # Their successful calls are routine, not news.
            routine = path in _ROUTINE_PATHS and status < 400
            level = logging.DEBUG if routine else logging.INFO
            if log.isEnabledFor(level):
                log.log(
                    level,
                    "request",
                    extra={
                        "method": scope.get("method"),
                        "path": path,
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        "caller": scope.get("state", {}).get("caller"),
                    },
                )


def _device_lines(pages: Iterator[JsonPage]) -> Iterator[bytes]:
    """A device stream's body: each page's devices as lines, then the line that ends the stream. A failure after
    the reply began can no longer change its status: it becomes the last line."""
    token: str | None = None
    try:
        for page in pages:
            if page.items:
                yield ("\n".join(page.items) + "\n").encode()
            token = page.next_page_token
    except DevicetrustError as err:
        yield _error_line(err.kind, err.message)
        return
    except Exception:
        log.exception("device stream failed")
        yield _error_line("internal", "internal error; the auth service logged the details")
        return
    yield (DeviceStreamEnd(next_page_token=token).model_dump_json() + "\n").encode()


def _error_line(kind: str, message: str) -> bytes:
    return (ErrorReply(error=ErrorDetail(kind=kind, message=short_message(message))).model_dump_json() + "\n").encode()


def _device_json(device: Device) -> ResourceDocument:
    return resource_to_dict(device)


#: Declares the bearer scheme in the OpenAPI document; the token is checked by :func:`caller_dep`.
bearer_scheme = HTTPBearer(
    scheme_name="session", description="a session token from /v1/login or /v1/bots/join", auto_error=False
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


async def caller_dep(request: Request, credentials: BearerDep) -> Caller:
    """The authenticated caller from ``Authorization: Bearer <session token>``."""
    server: AuthServer = request.app.state.auth_server
    token = credentials.credentials if credentials is not None else ""
    caller = await run_in_threadpool(server.authenticate, token)
    request.state.caller = caller.name
    return caller


CallerDep = Annotated[Caller, Depends(caller_dep)]


async def session_token(credentials: BearerDep) -> str:
    """The bearer token itself, for routes that resolve their caller in the transaction reading what they need
    (the device ceremony's). A request without one is refused here, before its body is read."""
    if credentials is None or not credentials.credentials:
        raise SessionExpiredError(SESSION_EXPIRED)
    return credentials.credentials


SessionTokenDep = Annotated[str, Depends(session_token)]


_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])


def guard_parsed_post(app: FastAPI, path: str, response_model: type[Any]) -> Callable[[_Endpoint], _Endpoint]:
    """``@app.post(path, response_model=…)`` for a :class:`GuardParsedRoute`."""

    def register(endpoint: _Endpoint) -> _Endpoint:
        app.router.add_api_route(
            path, endpoint, methods=["POST"], response_model=response_model, route_class_override=GuardParsedRoute
        )
        return endpoint

    return register


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


class GuardParsedRoute(APIRoute):
    """A route of the form ``(body, token: SessionTokenDep, request: Request)`` whose JSON body the request guard
    has already parsed and checked (edge.py): the body is validated from that document by the route's own body
    type, and the token is read as :func:`session_token` reads it, without FastAPI's dependency machinery and
    second parse. What FastAPI documents of the route is unchanged. A request the guard left no document for
    (empty body, a body that is not JSON) is handled by FastAPI as any other route's.

    For the device ceremony's two routes, which every session crosses."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        standard = super().get_route_handler()
        dependant = self.dependant
        tokens = [d.name for d in dependant.dependencies if d.call is session_token and d.name is not None]
        request_name = dependant.request_param_name
        bodies = dependant.body_params
        if len(bodies) != 1 or len(tokens) != 1 or request_name is None:
            raise TypeError(f"{self.path}: a guard-parsed route takes (body, token: SessionTokenDep, request)")
        body_field = bodies[0]
        body_name, token_name, request_key = body_field.name, str(tokens[0]), request_name
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            present, document = checked_json_body(request.scope)
            if not present or not _is_json(request.headers.get("content-type")):
                return await standard(request)
            credentials = await bearer_scheme(request)
            token = await session_token(credentials)
            # as FastAPI validates a body: the same field, the same errors
            body, errors = body_field.validate(document, loc=("body",))
            if errors:
                raise RequestValidationError(errors)
            response: Response = await endpoint(**{body_name: body, token_name: token, request_key: request})
            return response

        return handle


def _json_response(body: Any) -> Response:
    """A JSON response built directly: the route's ``response_model`` documents it, without validating again
    what the domain layer has just produced."""
    return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")


async def optional_caller(request: Request, credentials: BearerDep) -> Caller | None:
    """The caller when the request carries a session (token-less enrollment needs one); else None."""
    if not request.headers.get("authorization"):
        return None
    return await caller_dep(request, credentials)


OptionalCallerDep = Annotated[Caller | None, Depends(optional_caller)]


def _challenge_response(body: object) -> ChallengeResponse:
    if not isinstance(body, dict):
        # pydantic's own error for a body that is not an object, as before the parser became the validator
        raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
    return ChallengeResponse.from_json(body)


#: A ceremony's ``finish`` body, read by the ceremony's own parser (its errors are the ones devices show).
ChallengeAnswerBody = Annotated[
    ChallengeResponse, PlainValidator(_challenge_response, json_schema_input_type=ChallengeAnswer)
]


def _login_response(result: LoginResult, server: AuthServer) -> LoginResponse:
    return LoginResponse(
        session_token=result.session_token,
        expires=result.identity.not_after.isoformat(),
        ssh_cert=result.ssh_cert.decode(),
        tls_cert=result.tls_cert.public_bytes(serialization.Encoding.PEM).decode(),
        identity=LoginIdentity(
            user=result.identity.username,
            roles=list(result.identity.roles),
            logins=list(result.identity.logins),
            bot_name=result.identity.bot_name,
        ),
        **server.cluster_cas(),
        cluster_name=server.cluster_name,
        device_trust=LoginDeviceTrust(
            enabled=result.device_trust_enabled,
            auto_enroll=result.auto_enroll,
            session_proof=result.session_proof,
        ),
    )


def _ttl(seconds: int | None) -> timedelta | None:
    return timedelta(seconds=seconds) if seconds is not None else None


_HTTP_KINDS = {400: "validation", 401: "authentication", 403: "access_denied", 404: "not_found", 409: "conflict"}
#: Documented for every operation: the edge answers 400 and 413 to any request, the rest depend on the route.
_ERROR_STATUSES = {
    "400": "invalid request (malformed JSON, a value out of range, NUL or control characters)",
    "401": "no valid session, or wrong credentials",
    "403": "the caller lacks a permission",
    "404": "no such resource",
    "409": "the resource already exists or changed meanwhile",
    "413": "request body larger than 1 MiB",
    "429": "too many attempts; see Retry-After",
    "500": "internal error",
}


def _openapi_with_errors(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the error replies every route can give in place of its 422."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    # FastAPI lists the parsed finish body's classes too; the wire shape is ChallengeAnswer (ChallengeAnswerBody)
    for name in ("HTTPValidationError", "ValidationError", ChallengeResponse.__name__, QuoteResponse.__name__):
        schemas.pop(name, None)
    schemas["ErrorDetail"] = ErrorDetail.model_json_schema()
    schemas["ErrorReply"] = ErrorReply.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas["ErrorReply"].pop("$defs", None)
    reply = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorReply"}}}
    for route in app.routes:
        if isinstance(route, APIRoute) and any(d.call is optional_caller for d in route.dependant.dependencies):
            for method in route.methods or ():
                # anonymous or with a session: an empty requirement makes the scheme optional
                document["paths"][route.path_format][method.lower()]["security"] = [{}, {"session": []}]
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in _ERROR_STATUSES.items():
                responses.setdefault(status, {"description": description, "content": reply})
    app.openapi_schema = document
    return document


def build_app(server: AuthServer) -> FastAPI:
    app = FastAPI(
        title="devicetrust auth service",
        version=__version__,
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    app.state.auth_server = server
    app.openapi = lambda: _openapi_with_errors(app)  # type: ignore[method-assign]

    @app.exception_handler(DevicetrustError)
    async def domain_error(_: Request, err: DevicetrustError) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after)} if isinstance(err, RateLimitedError) else None
        return error_response(err.http_status, err.kind, err.message, headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(400, "validation", f"{where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
        # Unknown paths, wrong methods and the framework's own refusals, in the same shape as every other error.
        return error_response(err.status_code, _HTTP_KINDS.get(err.status_code, "error"), str(err.detail))

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception) -> JSONResponse:
        # Logged with its traceback by the server; the caller learns only that it failed.
        return error_response(500, "internal", "internal error; the auth service logged the details")

    app.add_middleware(RequestGuardMiddleware)
    app.add_middleware(RequestContextMiddleware)

    @app.get("/v1/ping")
    def ping() -> PingResponse:
        """Cluster name, version and the auth preference summary (device trust mode, auto-enroll)."""
        return PingResponse.model_validate(server.ping())

    @app.get("/v1/cas")
    def cas() -> ClusterCAs:
        """Public halves of the cluster's certificate authorities."""
        return ClusterCAs.model_validate(server.cluster_cas())

    @app.post("/v1/login")
    def login(req: LoginRequest, request: Request) -> LoginResponse:
        client_addr = request.client.host if request.client else None
        result = server.login(req.user, req.password, req.public_key, _ttl(req.ttl_seconds), client_addr=client_addr)
        return _login_response(result, server)

    @app.post("/v1/signup")
    def signup(req: SignupRequest) -> SignupResponse:
        return SignupResponse(user=server.signup(req.token, req.password))

    @app.post("/v1/bots/join")
    def bot_join(req: BotJoinRequest) -> LoginResponse:
        result = server.bot_join(req.token, req.public_key, _ttl(req.ttl_seconds))
        return _login_response(result, server)

    @app.post("/v1/logout")
    def logout(caller: CallerDep) -> Empty:
        server.logout(caller)
        return Empty()

    @app.get("/v1/whoami")
    def whoami(caller: CallerDep) -> WhoamiResponse:
        return server.whoami(caller)

    @app.post("/v1/users")
    def create_user(req: CreateUserRequest, caller: CallerDep) -> CreateUserResponse:
        user, invite = server.create_user(caller, req.name, req.roles, req.traits)
        return CreateUserResponse(user=user.metadata.name, invite_token=invite)

    @app.patch("/v1/users/{name}")
    def update_user(name: str, req: UpdateUserRequest, caller: CallerDep) -> UpdateUserResponse:
        user = server.update_user(caller, name, set_roles=req.set_roles, set_traits=req.set_traits)
        return UpdateUserResponse(user=user.metadata.name, roles=list(user.roles))

    @app.post("/v1/users/{name}/reset")
    def reset_user(name: str, caller: CallerDep) -> CreateUserResponse:
        return CreateUserResponse(user=name, invite_token=server.reset_user(caller, name))

    @app.post("/v1/bots")
    def create_bot(req: CreateBotRequest, caller: CallerDep) -> CreateBotResponse:
        bot, token, expires = server.create_bot(caller, req.name, req.roles, req.traits, _ttl(req.token_ttl_seconds))
        return CreateBotResponse(bot=bot.metadata.name, token=token, expires=expires.isoformat())

    @app.post("/v1/tokens")
    def create_token(req: CreateTokenRequest, caller: CallerDep) -> CreateTokenResponse:
        token, expires = server.create_join_token(caller, req.type, _ttl(req.ttl_seconds))
        return CreateTokenResponse(token=token, type=req.type, expires=expires.isoformat())

    @app.get("/v1/tokens")
    def list_tokens(caller: CallerDep) -> TokenList:
        return TokenList.model_validate({"items": server.list_tokens(caller)})

    @app.delete("/v1/tokens/{identifier}")
    def delete_token(identifier: str, caller: CallerDep) -> Empty:
        server.delete_token(caller, identifier)
        return Empty()

    @app.get("/v1/resources/{kind}")
    def list_resources(kind: str, caller: CallerDep) -> ResourceList:
        return ResourceList(items=server.list_resources(caller, kind))

    @app.get("/v1/resources/{kind}/{name}")
    def get_resource(kind: str, name: str, caller: CallerDep) -> ResourceDocument:
        return server.get_resource(caller, kind, name)

    @app.put("/v1/resources")
    def put_resource(req: PutResourceRequest, caller: CallerDep) -> PutResourceResponse:
        resource, outcome = server.put_resource(caller, req.resource, force=req.force)
        return PutResourceResponse(kind=resource.kind, name=resource.metadata.name, outcome=outcome)

    @app.delete("/v1/resources/{kind}/{name}")
    def delete_resource(kind: str, name: str, caller: CallerDep) -> Empty:
        server.delete_resource(caller, kind, name)
        return Empty()

    @app.post("/v1/devices")
    def add_device(req: AddDeviceRequest, caller: CallerDep) -> DeviceWithToken:
        device, token = server.devices.add(
            caller,
            req.os_type,
            req.asset_tag,
            create_token=req.create_enroll_token,
            enroll_token_ttl=_ttl(req.enroll_token_ttl_seconds),
        )
        return DeviceWithToken(device=_device_json(device), enroll_token=token)

    @app.get("/v1/devices", response_model=DeviceList | DeviceSummaryList)
    def list_devices(caller: CallerDep, query: Annotated[DeviceListQuery, Query()], request: Request) -> Response:
        """The inventory, filtered: one page as JSON, or with ``Accept: application/x-ndjson`` a stream of JSON
        lines, one device per line, ended by a ``{"next_page_token": …}`` line."""
        where = device_filter(
            search=query.search,
            asset_tag=query.asset_tag,
            os=query.os,
            enroll_status=query.enroll_status,
            source=query.source,
            owner=query.owner,
        )
        summary = query.view == "summary"
        # The database makes each device's JSON: replies are spliced from it, never parsed and re-encoded.
        if NDJSON_MEDIA_TYPE in request.headers.get("accept", ""):
            pages = server.devices.stream_json(
                caller, page_token=query.page_token, where=where, summary=summary, limit=query.page_size
            )
            return StreamingResponse(_device_lines(pages), media_type=NDJSON_MEDIA_TYPE)
        page_size = DEFAULT_PAGE_SIZE if query.page_size is None else query.page_size
        if page_size > MAX_PAGE_SIZE:
            raise ValidationError(
                f"page_size: at most {MAX_PAGE_SIZE} devices in one JSON page (a stream of {NDJSON_MEDIA_TYPE} "
                "may hold any number)"
            )
        page = server.devices.list_page_json(
            caller, page_size=page_size, page_token=query.page_token, where=where, summary=summary
        )
        token = json.dumps(page.next_page_token)
        reply = f'{{"items":[{",".join(page.items)}],"next_page_token":{token}}}'
        return Response(reply.encode(), media_type="application/json")

    @app.get("/v1/devices/{device_id}")
    def get_device(device_id: str, caller: CallerDep) -> ResourceDocument:
        return _device_json(server.devices.get(caller, device_id))

    @app.delete("/v1/devices/{device_id}")
    def delete_device(device_id: str, caller: CallerDep) -> ResourceDocument:
        return _device_json(server.devices.delete(caller, device_id))

    @app.post("/v1/devices/{device_id}/enroll-token")
    def enroll_token(device_id: str, req: EnrollTokenRequest, caller: CallerDep) -> DeviceWithToken:
        device, token = server.devices.create_enroll_token(caller, device_id, _ttl(req.ttl_seconds))
        return DeviceWithToken(device=_device_json(device), enroll_token=token)

    @app.post("/v1/devices/{device_id}/unenroll")
    def unenroll_device(device_id: str, caller: CallerDep) -> ResourceDocument:
        return _device_json(server.devices.unenroll(caller, device_id))

    @app.post("/v1/devices/enroll/begin")
    def enroll_begin(req: EnrollBeginRequest, caller: OptionalCallerDep) -> ChallengeMessage:
        challenge = server.devices.enroll_begin(
            token=req.token,
            caller=caller,
            credential_id=req.credential_id,
            collected=CollectedData.from_dict(req.device_data),
            tpm=TPMEnrollPayload.from_json(req.tpm) if req.tpm is not None else None,
            key=KeyEnrollPayload.from_json(req.key) if req.key is not None else None,
        )
        return ChallengeMessage.model_validate(challenge.to_json())

    @app.post("/v1/devices/enroll/finish")
    def enroll_finish(response: ChallengeAnswerBody) -> ResourceDocument:
        return _device_json(server.devices.enroll_finish(response))

    # The device ceremony runs before every session. Its routes run on the event loop: their work is short (a
    # cached read, the crypto, one write), and a hop to a worker thread would cost more than the work itself.
    @guard_parsed_post(app, "/v1/devices/authenticate/begin", ChallengeMessage)
    async def authenticate_begin(req: AuthenticateBeginRequest, token: SessionTokenDep, request: Request) -> Response:
        target: tuple[str, str] | NodeByName | None = None
        if req.target is not None:
            if req.target.by_name and req.target.kind != "ssh":
                raise ValidationError("target.by_name: only an SSH node is named by the user")
            target = NodeByName(req.target.id) if req.target.by_name else (req.target.kind, req.target.id)
        caller, challenge, node = server.devices.authenticate_begin_as(
            token,
            credential_id=req.credential_id,
            collected=CollectedData.from_dict(req.device_data),
            ssh_cert=req.ssh_cert.encode(),
            target=target,
        )
        request.state.caller = caller.name
        reply: dict[str, Any] = dict(challenge.to_json())
        if node is not None:
            reply["node"] = node
        return _json_response(reply)

    @guard_parsed_post(app, "/v1/devices/authenticate/finish", DeviceCertificates)
    async def authenticate_finish(response: ChallengeAnswerBody, token: SessionTokenDep, request: Request) -> Response:
        caller, certs = server.devices.authenticate_finish_as(token, response)
        request.state.caller = caller.name
        tls_cert = certs.tls_cert
        return _json_response(
            {
                "ssh_cert": certs.ssh_cert.decode(),
                # empty for an SSH session certificate, which has no X.509 half
                "tls_cert": tls_cert.public_bytes(serialization.Encoding.PEM).decode() if tls_cert else "",
                "device": certs.document,
            }
        )

    @app.post("/v1/nodes/join")
    def node_join(req: NodeJoinRequest) -> NodeJoinResponse:
        return NodeJoinResponse.model_validate(
            server.nodes.join(req.token, req.hostname, req.addr, req.labels, req.public_key, req.role)
        )

    @app.post("/v1/nodes/heartbeat")
    def node_heartbeat(req: HeartbeatRequest, caller: CallerDep) -> Empty:
        server.nodes.heartbeat(
            caller,
            req.addr,
            req.labels,
            [db.model_dump() for db in req.databases],
            [cluster.model_dump() for cluster in req.kube_clusters],
        )
        return Empty()

    @app.get("/v1/nodes/state")
    def node_state(caller: CallerDep) -> NodeState:
        return server.nodes.state(caller)

    @app.post("/v1/nodes/events")
    def node_events(batch: AgentEventBatch, caller: CallerDep) -> AgentEventBatchResult:
        refused = server.nodes.record_events(caller, batch.events)
        if batch.one_event and refused:
            raise ValidationError(refused[0][1])
        return AgentEventBatchResult(
            stored=len(batch.events) - len(refused),
            refused=[RefusedAgentEvent(index=index, error=error) for index, error in refused],
        )

    @app.get("/v1/nodes")
    def list_nodes(caller: CallerDep) -> NodeList:
        return NodeList.model_validate({"items": server.nodes.list_visible(caller)})

    @app.get("/v1/databases")
    def list_databases(caller: CallerDep) -> DatabaseList:
        return DatabaseList.model_validate({"items": server.databases.list_visible(caller)})

    @app.post("/v1/databases/certs")
    def database_cert(req: DatabaseCertRequest, caller: CallerDep) -> DatabaseCertResponse:
        cert, database = server.databases.issue_cert(
            caller, database=req.database, ssh_cert=req.ssh_cert.encode(), db_user=req.db_user, db_name=req.db_name
        )
        return DatabaseCertResponse.model_validate({"tls_cert": cert.decode(), "database": database})

    @app.get("/v1/kube/clusters")
    def list_kube_clusters(caller: CallerDep) -> KubeClusterList:
        return KubeClusterList.model_validate({"items": server.kube.list_visible(caller)})

    # -- remote MDM agents (devicetrust.auth.mdm): a session bound to one source name ---------------------
    mdm = server.mdm

    @app.post("/v1/mdm/join")
    def mdm_join(req: MdmJoinRequest) -> MdmJoinResponse:
        return mdm.join(req.token, req.name)

    @app.get("/v1/mdm/devices")
    async def mdm_scan(
        caller: CallerDep, page_token: Annotated[str | None, Query(max_length=512)] = None
    ) -> MdmDevicePage:
        return await mdm.scan(caller, page_token)

    @app.post("/v1/mdm/devices/lookup")
    async def mdm_lookup(req: MdmLookupRequest, caller: CallerDep) -> MdmDeviceList:
        return await mdm.lookup(caller, req)

    @app.get("/v1/mdm/devices/identities")
    async def mdm_source_devices(
        caller: CallerDep,
        origin: Annotated[str, Query(min_length=1, max_length=64)],
        page_token: Annotated[str | None, Query(max_length=512)] = None,
    ) -> MdmSourceDevicePage:
        return await mdm.source_devices(caller, origin, page_token)

    @app.post("/v1/mdm/devices/apply")
    async def mdm_apply(req: MdmApplyRequest, caller: CallerDep) -> MdmApplyResponse:
        return await mdm.apply(caller, req)

    @app.post("/v1/mdm/devices/delete")
    async def mdm_delete(req: MdmDeleteRequest, caller: CallerDep) -> MdmDeleteResponse:
        return await mdm.delete(caller, req)

    @app.get("/v1/mdm/state/{key:path}")
    async def mdm_load_state(key: str, caller: CallerDep) -> MdmStateValue:
        return await mdm.load_state(caller, key)

    @app.put("/v1/mdm/state/{key:path}")
    async def mdm_save_state(key: str, req: MdmStateUpdate, caller: CallerDep) -> Empty:
        return await mdm.save_state(caller, key, req)

    @app.post("/v1/mdm/syncs")
    async def mdm_record_sync(req: MdmSyncReport, caller: CallerDep) -> Empty:
        return await mdm.record_sync(caller, req)

    @app.get("/v1/events")
    def events(
        caller: CallerDep,
        since: datetime | None = None,
        until: datetime | None = None,
        event_type: Annotated[list[str] | None, Query(alias="type")] = None,
        user: str | None = None,
        limit: Annotated[int, Query(ge=1, le=INT64_MAX)] = DEFAULT_PAGE_SIZE,
        after: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None,
        newest: bool = False,
    ) -> EventPage:
        if limit > MAX_PAGE_SIZE:
            raise ValidationError(f"limit must be at most {MAX_PAGE_SIZE}")
        items = server.search_events(
            caller,
            since=since,
            until=until,
            event_types=event_type or [],
            user=user,
            limit=limit,
            after_id=after,
            newest=newest,
        )
        next_after = items[-1]["id"] if len(items) == limit else None
        return EventPage(items=items, next_after=next_after)

    # The router tries routes in order: the ceremony's, called before every session, go first.
    app.router.routes.sort(key=lambda route: getattr(route, "path", "") not in _CEREMONY_PATHS)
    return app
