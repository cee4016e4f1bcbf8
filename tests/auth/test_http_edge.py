"""The HTTP edge refuses what no route can use with a 400 (or 413) in the service's error shape, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.auth.api_harness import RunningApi

from devicetrust.auth.edge import MAX_ERROR_MESSAGE_CHARS, MAX_REQUEST_BODY_BYTES
from devicetrust.crypto.keys import generate_private_key, public_key_to_openssh

PASSWORD = "a long enough password"
HUGE = "1e18"
OVERSIZED_INPUT_CHARS = 200_000


def public_key() -> str:
    return public_key_to_openssh(generate_private_key().public_key())


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"kind", "message"}, body
    error: dict[str, Any] = body["error"]
    assert len(error["message"]) <= MAX_ERROR_MESSAGE_CHARS and "\n" not in error["message"]
    return error


def raw_json(client: httpx.Client, method: str, path: str, text: str | bytes) -> httpx.Response:
    return client.request(method, path, content=text, headers={"content-type": "application/json"})


def plain_user_token(api: RunningApi) -> str:
    admin = api.server.authenticate(api.admin_token)
    _, invite = api.server.create_user(admin, "plain", ("access",), {"logins": ["plain"]})
    api.server.signup(invite, PASSWORD)
    return api.server.login("plain", PASSWORD, public_key(), None).session_token


def test_huge_ttls_are_refused_before_anything_else(api: RunningApi) -> None:
    with api.admin() as admin:
        device = admin.post("/v1/devices", json={"os_type": "linux", "asset_tag": "SN-1"}).json()["device"]
        device_id = device["metadata"]["name"]
    key = public_key()
    anonymous_calls = [
        ("/v1/login", f'{{"user": "alice", "password": "x", "public_key": "{key}", "ttl_seconds": {HUGE}}}'),
        ("/v1/bots/join", f'{{"token": "t", "public_key": "{key}", "ttl_seconds": {HUGE}}}'),
    ]
    signed_in_calls = [
        ("/v1/tokens", f'{{"type": "node", "ttl_seconds": {HUGE}}}'),
        ("/v1/bots", f'{{"name": "b", "roles": ["access"], "token_ttl_seconds": {HUGE}}}'),
        ("/v1/devices", f'{{"os_type": "linux", "asset_tag": "SN-2", "enroll_token_ttl_seconds": {HUGE}}}'),
        (f"/v1/devices/{device_id}/enroll-token", f'{{"ttl_seconds": {HUGE}}}'),
    ]
    with api.client() as anonymous:
        for path, body in anonymous_calls:
            assert error_of(raw_json(anonymous, "POST", path, body), 400)["kind"] == "validation"
    for token in (plain_user_token(api), api.admin_token):
        with api.client(token) as client:
            for path, body in signed_in_calls:
                assert error_of(raw_json(client, "POST", path, body), 400)["kind"] == "validation", path
            for beyond_64_bits in (f'{{"type": "node", "ttl_seconds": {10**30}}}', '{"type": "node", "x": -1e400}'):
                error_of(raw_json(client, "POST", "/v1/tokens", beyond_64_bits), 400)


@pytest.mark.parametrize("after", ["1e30", str(10**30), str(2**63)])
def test_event_cursor_beyond_64_bits_is_refused(api: RunningApi, after: str) -> None:
    with api.admin() as admin:
        error_of(admin.get("/v1/events", params={"after": after}), 400)
        assert admin.get("/v1/events", params={"after": str(2**63 - 1)}).json()["items"] == []


def test_nul_characters_never_reach_the_backend(api: RunningApi) -> None:
    role = {"kind": "role", "version": "v7", "metadata": {"name": "r", "description": "a\u0000b"}, "spec": {}}
    with api.client() as anonymous:
        login = {"user": "A\u0000B", "password": "x", "public_key": public_key()}
        error_of(anonymous.post("/v1/login", json=login), 400)
        error_of(anonymous.post("/v1/devices/enroll/finish", json={"ceremony_id": "\u0000"}), 400)
        error_of(anonymous.post("/v1/devices/authenticate/finish", json={"ceremony_id": "\u0000"}), 400)
        lone_surrogate = '{"token": "\\ud800", "password": "a long enough password"}'
        error_of(raw_json(anonymous, "POST", "/v1/signup", lone_surrogate), 400)
    with api.admin() as admin:
        for path in ("/v1/devices/%00", "/v1/resources/role/%00", "/v1/resources/user/a%00b", "/v1/users/a%0Ab/reset"):
            error_of(admin.request("POST" if path.endswith("reset") else "GET", path), 400)
        error_of(admin.get("/v1/events", params={"user": "\u0000"}), 400)
        error_of(admin.get("/v1/devices", params={"asset_tag": "SN\u00001"}), 400)
        error_of(admin.put("/v1/resources", json={"resource": role}), 400)
        error_of(admin.post("/v1/users", json={"name": "u", "roles": ["access"], "traits": {"k\u0000": ["v"]}}), 400)
        error_of(admin.post("/v1/users", json={"name": "line\nbreak", "roles": ["access"]}), 400)
        # an escaped backslash followed by "u0000" is six ordinary characters
        role["metadata"]["description"] = "\\u0000"
        assert admin.put("/v1/resources", json={"resource": role}).status_code == 200


def test_messages_do_not_echo_huge_inputs(api: RunningApi) -> None:
    huge = "x" * OVERSIZED_INPUT_CHARS
    with api.admin() as admin:
        error_of(admin.post("/v1/tokens", json={"type": huge}), 400)
        error_of(admin.post("/v1/users", json={"name": "u", "roles": [huge]}), 400)
        assert error_of(admin.get(f"/v1/resources/role/{'y' * 8000}"), 404)["kind"] == "not_found"
    with api.client() as anonymous:
        error_of(anonymous.post("/v1/login", json={"user": huge, "password": "x", "public_key": "k"}), 400)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"user": ', "not valid JSON"),
        (b'{"user": "\xff\xfe"}', "not valid UTF-8"),
        (b"[" * 1000 + b"]" * 1000, "nested"),
        (b'{"user": NaN}', "NaN"),
        (b'{"user": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
    ids=["truncated", "invalid-utf8", "deep", "nan", "long-number"],
)
def test_malformed_bodies_get_the_error_shape(api: RunningApi, body: bytes, expected: str) -> None:
    with api.client() as anonymous:
        assert expected in error_of(raw_json(anonymous, "POST", "/v1/login", body), 400)["message"]


def test_oversized_chunked_body_is_413(api: RunningApi) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"user": "'
        for _ in range(MAX_REQUEST_BODY_BYTES // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    with api.client() as anonymous:
        assert "larger than" in error_of(raw_json(anonymous, "POST", "/v1/login", chunks()), 413)["message"]  # type: ignore[arg-type]


def test_unknown_routes_and_methods_get_the_error_shape(api: RunningApi) -> None:
    with api.client() as anonymous:
        assert error_of(anonymous.get("/v1/nowhere"), 404)["kind"] == "not_found"
        error_of(anonymous.put("/v1/ping"), 405)


def test_openapi_documents_error_replies_and_the_bearer_scheme(api: RunningApi) -> None:
    with api.client() as anonymous:
        document = anonymous.get("/v1/openapi.json").json()
    assert document["components"]["securitySchemes"]["session"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "a session token from /v1/login or /v1/bots/join",
    }
    error_ref = {"$ref": "#/components/schemas/ErrorReply"}
    assert document["components"]["schemas"]["ErrorReply"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorDetail"
    }
    secured = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" not in responses
            for status in ("400", "401", "403", "404", "409", "413", "429"):
                assert responses[status]["content"]["application/json"]["schema"] == error_ref, (path, method, status)
            if {"session": []} in operation.get("security", []):
                secured.add((method, path))
    assert ("get", "/v1/whoami") in secured and ("post", "/v1/tokens") in secured
    assert ("post", "/v1/login") not in secured and ("get", "/v1/ping") not in secured
    assert document["paths"]["/v1/devices/enroll/begin"]["post"]["security"] == [{}, {"session": []}]


def test_openapi_describes_every_reply_of_the_protocol(api: RunningApi) -> None:
    with api.client() as anonymous:
        document = anonymous.get("/v1/openapi.json").json()
    schemas = document["components"]["schemas"]
    untyped = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            reply = operation["responses"]["200"]["content"]["application/json"]["schema"]
            # resource documents (devices among them) are free-form: their spec depends on their kind
            document_reply = path.startswith(("/v1/resources/", "/v1/devices/"))
            if not document_reply and (reply == {} or reply.get("additionalProperties") is True):
                untyped.append((method, path))
    assert untyped == []
    login = document["paths"]["/v1/login"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert login == {"$ref": "#/components/schemas/LoginResponse"}
    assert {"session_token", "ssh_cert", "tls_cert", "identity", "device_trust", "host_ca_pem"} <= set(
        schemas["LoginResponse"]["properties"]
    )
    assert set(schemas["NodeState"]["properties"]) >= {"roles", "locks", "cluster_auth_preference", "user_ca_ssh"}


def test_openapi_describes_every_request_body(api: RunningApi) -> None:
    with api.client() as anonymous:
        document = anonymous.get("/v1/openapi.json").json()
    schemas = document["components"]["schemas"]
    untyped = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if "requestBody" not in operation:
                continue
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            if "$ref" in body:
                body = schemas[body["$ref"].rpartition("/")[2]]
            if not body.get("properties"):
                untyped.append((method, path))
    assert untyped == []
    answer = {"$ref": "#/components/schemas/ChallengeAnswer"}
    for path in ("/v1/devices/enroll/finish", "/v1/devices/authenticate/finish"):
        assert document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"] == answer
    assert set(schemas["ChallengeAnswer"]["properties"]) == {"ceremony_id", "activated_secret", "quote", "signature"}
    assert schemas["ChallengeAnswer"]["required"] == ["ceremony_id"]
    assert set(schemas["QuoteAnswer"]["properties"]) == {"attest", "signature", "pcr_values", "event_log"}
    begin = schemas["EnrollBeginRequest"]["properties"]
    assert {"collect_time", "os_type", "serial_number"} <= set(begin["device_data"]["properties"])
    assert "ChallengeResponse" not in schemas


def test_an_unexpected_failure_is_a_500_in_the_error_shape(api: RunningApi, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.server, "ping", broken)
    with api.client() as anonymous:
        error = error_of(anonymous.get("/v1/ping"), 500)
    assert error["kind"] == "internal" and "secret" not in error["message"]
