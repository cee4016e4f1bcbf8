"""The device ceremony's routes take their body from the request guard's parse (GuardParsedRoute): whatever
arrives, they answer exactly as FastAPI's own handling of the same route would."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from tests.auth.api_harness import serve_api

from devicetrust.auth.app import ChallengeAnswerBody, GuardParsedRoute, SessionTokenDep, build_app
from devicetrust.auth.server import AuthServer
from devicetrust.ceremony.messages import ChallengeResponse
from devicetrust.protocol import AuthenticateBeginRequest

JSON = {"content-type": "application/json", "authorization": "Bearer a-token"}
CEREMONY_ID = "0" * 40
SIGNATURE = "c2lnbmF0dXJl"


def _reply(body: ChallengeResponse | AuthenticateBeginRequest, token: str, request: Request) -> Response:
    shown = body.to_json() if isinstance(body, ChallengeResponse) else body.model_dump(mode="json")
    # which handler ran: FastAPI's reads the body through the request (Starlette keeps it as ``_body``)
    read_by = "fastapi" if hasattr(request, "_body") else "guard"
    return Response(
        json.dumps({"token": token, "body": shown}), media_type="application/json", headers={"x-read-by": read_by}
    )


async def answer(response: ChallengeAnswerBody, token: SessionTokenDep, request: Request) -> Response:
    return _reply(response, token, request)


async def begin(req: AuthenticateBeginRequest, token: SessionTokenDep, request: Request) -> Response:
    return _reply(req, token, request)


def _add_twin_routes(app: FastAPI) -> None:
    for name, endpoint in (("answer", answer), ("begin", begin)):
        app.router.add_api_route(
            f"/test/{name}/guard-parsed", endpoint, methods=["POST"], route_class_override=GuardParsedRoute
        )
        app.router.add_api_route(f"/test/{name}/fastapi", endpoint, methods=["POST"])


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with serve_api(f"sqlite:///{tempfile.mkdtemp()}/api.sqlite", _add_twin_routes) as api, api.client() as client:
        yield client


def _answer_cases() -> list[tuple[str, dict[str, str], bytes]]:
    valid = json.dumps({"ceremony_id": CEREMONY_ID, "signature": SIGNATURE}).encode()
    return [
        ("valid", JSON, valid),
        ("no token", {"content-type": "application/json"}, valid),
        ("bare scheme", {**JSON, "authorization": "Bearer"}, valid),
        ("other scheme", {**JSON, "authorization": "Basic YTpi"}, valid),
        ("no token and a bad body", {"content-type": "application/json"}, b'{"signature": 5}'),
        ("charset", {**JSON, "content-type": "application/json; charset=utf-8"}, valid),
        ("+json", {**JSON, "content-type": "application/vnd.devicetrust+json"}, valid),
        ("text/plain", {**JSON, "content-type": "text/plain"}, valid),
        ("no content type", {"authorization": "Bearer a-token"}, valid),
        ("empty body", JSON, b""),
        ("blank body", JSON, b"  \n"),
        ("not JSON", JSON, b"{ceremony"),
        ("a list", JSON, b"[1, 2]"),
        ("a string", JSON, b'"x"'),
        ("null", JSON, b"null"),
        ("missing id", JSON, json.dumps({"signature": SIGNATURE}).encode()),
        ("number id", JSON, json.dumps({"ceremony_id": 7, "signature": SIGNATURE}).encode()),
        ("bad base64", JSON, json.dumps({"ceremony_id": CEREMONY_ID, "signature": "!!"}).encode()),
        ("NUL", JSON, json.dumps({"ceremony_id": "a\u0000b"}).encode()),
        ("huge integer", JSON, b'{"ceremony_id": 1' + b"0" * 30 + b"}"),
        ("unknown field", JSON, json.dumps({"ceremony_id": CEREMONY_ID, "extra": 1}).encode()),
    ]


def _begin_cases() -> list[tuple[str, dict[str, str], bytes]]:
    device_data = {"collect_time": "2026-01-01T00:00:00+00:00", "os_type": "linux", "serial_number": "SN"}
    valid = {"credential_id": "c", "device_data": device_data, "ssh_cert": "ssh-cert"}
    return [
        ("valid", JSON, json.dumps(valid).encode()),
        ("with a target", JSON, json.dumps({**valid, "target": {"kind": "ssh", "id": "n", "by_name": True}}).encode()),
        ("bad target", JSON, json.dumps({**valid, "target": {"kind": 3}}).encode()),
        ("empty credential", JSON, json.dumps({**valid, "credential_id": ""}).encode()),
        ("long certificate", JSON, json.dumps({**valid, "ssh_cert": "x" * 20_000}).encode()),
        ("device data a list", JSON, json.dumps({**valid, "device_data": []}).encode()),
        ("no token", {"content-type": "application/json"}, json.dumps(valid).encode()),
        ("missing everything", JSON, b"{}"),
    ]


def _outcome(client: httpx.Client, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, str]:
    response = client.post(path, content=body, headers=headers)
    return response.status_code, response.json(), response.headers.get("x-read-by", "")


@pytest.mark.parametrize(("route", "cases"), [("answer", _answer_cases()), ("begin", _begin_cases())])
def test_every_request_gets_the_answer_fastapi_would_give(
    client: httpx.Client, route: str, cases: list[tuple[str, dict[str, str], bytes]]
) -> None:
    statuses = set()
    for label, headers, body in cases:
        *guard_parsed, read_by = _outcome(client, f"/test/{route}/guard-parsed", headers, body)
        *fastapi, fastapi_read_by = _outcome(client, f"/test/{route}/fastapi", headers, body)
        assert guard_parsed == fastapi, label
        statuses.add(guard_parsed[0])
        if label == "valid":
            # the twin compares two different handlers, not FastAPI's with itself
            assert (read_by, fastapi_read_by) == ("guard", "fastapi")
    assert {200, 400, 401} <= statuses


def test_a_route_of_another_shape_is_refused_when_the_app_is_built(server: AuthServer) -> None:
    async def no_token(response: ChallengeAnswerBody, request: Request) -> Response:
        return Response()

    app = build_app(server)
    with pytest.raises(TypeError, match="guard-parsed route"):
        app.router.add_api_route("/test/no-token", no_token, methods=["POST"], route_class_override=GuardParsedRoute)
