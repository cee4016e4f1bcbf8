"""The auth service's edge: every request's path, query and JSON body are checked here before any route sees them.

Values that no route can use and that the storage backends cannot hold (NUL characters, lone surrogates,
integers beyond 64 bits, NaN, absurd nesting) are refused with a 400 in the service's error shape, so no route has
to guard against them one by one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_REQUEST_BODY_BYTES",
    "RequestGuardMiddleware",
    "checked_json_body",
    "error_response",
    "short_message",
]

#: Largest request body accepted; the biggest legitimate one is a resource document or a TPM event log.
MAX_REQUEST_BODY_BYTES = 1024 * 1024
#: Integers must fit the backends' 64-bit integer columns.
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
#: Deepest JSON nesting accepted; resource documents and device data are a handful of levels deep.
MAX_JSON_DEPTH = 64
#: Longest error message sent back: a message quoting a huge input is cut, not echoed whole.
MAX_ERROR_MESSAGE_CHARS = 300
#: Where the guard leaves the request's JSON document, parsed and checked, for a route that takes it from there
_CHECKED_JSON_KEY = "devicetrust.checked_json"

#: Characters that no JSON string may carry to the backends: NUL (PostgreSQL text refuses it) and lone
#: surrogates (not encodable as UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
#: Paths and query parameters are names, ids, times and flags: control characters make no sense there.
_CONTROL = re.compile("[\x00-\x1f\x7f]")

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


def short_message(message: str) -> str:
    """One line of at most MAX_ERROR_MESSAGE_CHARS characters."""
    line = " ".join(message.split())
    return line if len(line) <= MAX_ERROR_MESSAGE_CHARS else line[: MAX_ERROR_MESSAGE_CHARS - 1] + "…"


def error_response(
    status: int, kind: str, message: str, headers: MutableMapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"kind": kind, "message": short_message(message)}}, status_code=status, headers=headers
    )


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestGuardMiddleware:
    """Refuses bad paths, queries and bodies before routing; hands the app the body it has already read.

    The body is read here, whole and bounded (declared Content-Length or not), so an oversized chunked body is a
    413 rather than a parse failure inside the framework.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_REQUEST_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            _check_path_and_query(scope)
            body = await self._read_body(scope, receive)
            if body is None:
                return  # the client went away
            if body.strip():
                scope[_CHECKED_JSON_KEY] = check_json_body(body)
        except _Refused as refused:
            await error_response(refused.status, "validation", refused.message)(scope, _no_receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, scope: MutableMapping[str, Any], receive: Receive) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                raise _Refused(413, f"request body larger than {self.limit} bytes")
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.limit:
                raise _Refused(413, f"request body larger than {self.limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _check_path_and_query(scope: MutableMapping[str, Any]) -> None:
    if _CONTROL.search(scope.get("path", "")):
        raise _Refused(400, "the request path contains control characters")
    query: bytes = scope.get("query_string", b"")
    if not query:
        return
    try:
        # latin-1 first, as the framework decodes it; the percent escapes must then be UTF-8
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise _Refused(400, "the query string is not valid UTF-8") from None
    for name, value in pairs:
        if _CONTROL.search(name) or _CONTROL.search(value) or _UNSTORABLE.search(value):
            raise _Refused(400, "query parameters must not contain control characters")


def checked_json_body(scope: MutableMapping[str, Any]) -> tuple[bool, Any]:
    """(True, the document) if the guard parsed and checked the request's body; (False, None) if the body was
    empty (or no guard ran)."""
    if _CHECKED_JSON_KEY in scope:
        return True, scope[_CHECKED_JSON_KEY]
    return False, None


def check_json_body(body: bytes) -> Any:
    """The document of ``body``; raise ``_Refused`` unless it is JSON whose every string and integer the backends
    can store."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(400, "the request body is not valid UTF-8") from None
    # Most bodies need no walk: a NUL or a lone surrogate can only be written as a \u escape (JSON has no raw
    # control characters, UTF-8 no surrogates), and a body with few brackets cannot nest deeply; its numbers are
    # checked as they are parsed. A body that is walked anyway (an agent's batch of events) is parsed without
    # those per-number calls.
    walk = "\\u" in text or text.count("[") + text.count("{") > MAX_JSON_DEPTH
    try:
        if walk:
            document = json.loads(text, parse_constant=_refuse_constant)
        else:
            document = json.loads(
                text, parse_constant=_refuse_constant, parse_int=_int64_token, parse_float=_finite_float_token
            )
    except RecursionError:
        raise _Refused(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as err:  # JSONDecodeError, or an integer with too many digits
        where = f" at line {err.lineno} column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise _Refused(400, f"the request body is not valid JSON{where}") from None
    if walk:
        _check_values(document)
    return document


def _refuse_constant(name: str) -> Any:
    raise _Refused(400, f"the request body contains {name}, which is not a JSON number")


def _int64_token(token: str) -> int:
    value = int(token)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _Refused(400, "integers in the request body must fit in 64 bits")
    return value


def _finite_float_token(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _Refused(400, "numbers in the request body must be finite")
    return value


def _check_values(document: Any) -> None:
    # Iterative, so a deep document cannot exhaust the stack here either.
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if _UNSTORABLE.search(value):
                raise _Refused(400, "strings in the request body must not contain NUL characters or lone surrogates")
        elif isinstance(value, bool):
            continue
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _Refused(400, "numbers in the request body must be finite")
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                raise _Refused(400, "integers in the request body must fit in 64 bits")
        elif isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _Refused(400, f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
            if isinstance(value, dict):
                pending.extend((key, depth) for key in value)
                pending.extend((item, depth + 1) for item in value.values())
            else:
                pending.extend((item, depth + 1) for item in value)


async def _no_receive() -> Any:  # pragma: no cover - responses never read
    return {"type": "http.disconnect"}
