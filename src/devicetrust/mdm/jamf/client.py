"""A Jamf Pro API client: tokens, paging, retries. Async (httpx.AsyncClient).

Why async: the sync fetches the next pages while the previous one is written (the writes run in a worker thread),
re-checks missing devices a few at a time, and runs inside the daemon next to the auth service's event loop; a
semaphore caps it at Jamf's guidance of five concurrent requests, and cancellation on shutdown is clean.

Behaviour (Jamf Pro API, ``shared/vendor-specs/jamf-pro-api-openapi.yaml``):

- Auth: an API client's ``POST /api/oauth/token`` (form: client_id, client_secret, grant_type=client_credentials;
  tokens live about a minute) or a user's ``POST /api/v1/auth/token`` (basic auth), renewed through
  ``POST /api/v1/auth/keep-alive``. Tokens are renewed shortly before they expire. A 401 drops the token and the
  request is retried once with a fresh one; a second 401 (or refused credentials) is :class:`JamfAuthError`.
- Computers: ``GET /api/v2/computers-inventory`` (``/api/v1/…`` when v2 answers 404) with page, page-size, sort,
  filter and the sections the sync maps. Mobile devices: ``GET /api/v2/mobile-devices/detail``.
- HTTPS only, verified against the system trust store (honouring SSL_CERT_FILE/SSL_CERT_DIR) plus an optional
  private CA; redirects are followed only within the same origin; 429/503 wait for Retry-After; 5xx and
  transport errors back off; every limit below is a named constant.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import functools
import json
import logging
import os
import random
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Final, Generic, TypeVar, cast

import httpx

from devicetrust.errors import ConfigError, ConnectionFailedError, TrustError, ValidationError
from devicetrust.mdm.jamf.config import (
    COMPUTERS,
    JAMF_MAX_PAGE_SIZE,
    MOBILE_DEVICES,
    Credentials,
    InventoryKind,
    OAuthCredentials,
)
from devicetrust.mdm.jamf.errors import JamfAPIError, JamfAuthError, JamfPermissionError
from devicetrust.mdm.jamf.records import InventoryRecord

__all__ = [
    "COMPUTER_SECTIONS",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_RETRY",
    "MAX_CONCURRENT_REQUESTS",
    "MAX_REDIRECTS",
    "MAX_RESPONSE_BYTES",
    "MOBILE_SECTIONS",
    "PAGE_PREFETCH",
    "RECHECK_SECTIONS",
    "REQUEST_TIMEOUT_S",
    "TOKEN_RENEW_MARGIN_S",
    "InventoryPage",
    "JamfClient",
    "RetryPolicy",
]

log = logging.getLogger(__name__)

#: Jamf asks API clients to keep to five concurrent requests
MAX_CONCURRENT_REQUESTS = 5
CONNECT_TIMEOUT_S = 10.0
#: a page of 2000 computers with four sections takes a busy Jamf a while to assemble
REQUEST_TIMEOUT_S = 120.0
#: a 2000-computer page with the synced sections is ~4 MB; anything near this is not an inventory page
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: same-origin redirects followed per request (another host is never followed)
MAX_REDIRECTS = 3
#: the port of an https:// endpoint that names none
HTTPS_PORT = 443
#: pages fetched ahead of the one being written: two keep the writer busy (measured: one leaves it waiting a
#: third of the time), and each in flight costs a page of memory (~30 MB at 2000 computers)
PAGE_PREFETCH = 2
#: Seconds prefetched pages get to finish when a walk stops early (a partial sync at its cut).
PREFETCH_DRAIN_S: Final = 5.0
#: renew a token this long before it expires (or a quarter of its lifetime, if shorter)
TOKEN_RENEW_MARGIN_S = 15.0
TOKEN_RENEW_FRACTION = 0.25
#: OAuth tokens say how long they live; when one does not, assume Jamf's default
DEFAULT_OAUTH_TOKEN_LIFETIME_S = 60.0
#: legacy tokens carry an absolute expiry; if it is unusable (clock skew), assume a lifetime this long
LEGACY_TOKEN_FALLBACK_LIFETIME_S = 20 * 60.0
MAX_TOKEN_LIFETIME_S = 24 * 3600.0
#: TLS contexts kept (one per CA file and environment)
TRUST_CONTEXT_CACHE_ENTRIES = 8
#: how much of an unexpected reply goes into an error message
MAX_ERROR_TEXT_CHARS = 200
COMPUTER_SECTIONS: tuple[str, ...] = ("GENERAL", "HARDWARE", "OPERATING_SYSTEM", "LOCAL_USER_ACCOUNTS")
MOBILE_SECTIONS: tuple[str, ...] = ("GENERAL", "HARDWARE")
#: enough to tell whether a re-checked computer is still the same Mac
RECHECK_SECTIONS: tuple[str, ...] = ("GENERAL", "HARDWARE")

_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_JAMF_ID_RE = re.compile(r"\d{1,19}")
#: one-item queries (filter validation, scope checks) sort by id: the cheapest order for Jamf's database
_ID_SORT: Final = {"computers": "id:asc", "mobile_devices": "mobileDeviceId:asc"}
_OAUTH_TOKEN_PATH = "/api/oauth/token"
_LEGACY_TOKEN_PATH = "/api/v1/auth/token"
_LEGACY_KEEP_ALIVE_PATH = "/api/v1/auth/keep-alive"


_Params = list[tuple[str, str | int | float | bool | None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait on 429/5xx/transport errors (tests shrink it)."""

    #: the first try included
    max_attempts: int = 5
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    #: a longer Retry-After is cut to this (the retries stay bounded in time, not only in number)
    max_retry_after_s: float = 120.0


DEFAULT_RETRY = RetryPolicy()

_Item = TypeVar("_Item")
_JSON_DECODER = json.JSONDecoder()
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
#: a value that ends this close to the end of the text read so far is decoded again with more of it
_JSON_NUMBER_MARGIN = 64


@dataclass(frozen=True)
class InventoryPage(Generic[_Item]):
    page: int
    total_count: int
    #: the records (or what :meth:`JamfClient.pages` made of each)
    results: list[_Item]


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: httpx.Headers
    #: the body as it arrived: an inventory page is decoded chunk by chunk, never held as one block
    chunks: list[bytes]
    url: httpx.URL

    @property
    def content(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True)
class _Token:
    value: str
    #: on the monotonic clock
    expires_at: float
    lifetime: float


def _one_line(text: str) -> str:
    flat = re.sub(r"\s+", " ", text).strip()
    flat = "".join(ch for ch in flat if ch.isprintable())
    return flat[:MAX_ERROR_TEXT_CHARS] + ("…" if len(flat) > MAX_ERROR_TEXT_CHARS else "")


def _describe(reply: _Reply) -> tuple[str, str]:
    """Jamf's error code and description from its envelope ``{"httpStatus", "errors": [{"code", "description"}]}``
    (or OAuth's ``{"error", "error_description"}``); else a snippet of the body."""
    try:
        data = json.loads(reply.content)
    except ValueError:
        return "", _one_line(reply.content.decode("utf-8", "replace"))
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = str(first.get("code") or "")
            description = str(first.get("description") or "")
            field = first.get("field")
            if field:
                description = f"{description} (field {field})"
            return _one_line(code), _one_line(description)
        if "error" in data:
            return _one_line(str(data["error"])), _one_line(str(data.get("error_description") or ""))
    return "", _one_line(reply.content.decode("utf-8", "replace"))


def _is_tls_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _retry_after(reply: _Reply) -> float | None:
    value = reply.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def trust_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system trust store (OpenSSL's defaults: honours SSL_CERT_FILE and SSL_CERT_DIR) plus ``ca_file``.

    There is deliberately no way to turn verification off.
    """
    return _trust_context(
        None if ca_file is None else str(ca_file), os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    )


@functools.lru_cache(maxsize=TRUST_CONTEXT_CACHE_ENTRIES)
def _trust_context(ca_file: str | None, _cert_file: str | None, _cert_dir: str | None) -> ssl.SSLContext:
    # Loading the system store takes tens of milliseconds; contexts are shared (never modified after this).
    # The environment is part of the key: it decides what load_default_certs reads.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as err:
            raise ConfigError(f"jamf_service.ca_file: cannot load {ca_file}: {err}") from None
    return context


def check_jamf_id(value: str) -> str:
    if not _JAMF_ID_RE.fullmatch(value):
        raise ValidationError(f"invalid Jamf id {value!r}: expected digits")
    return value


class _NotInventory(Exception):
    """An inventory reply of the wrong shape (the message says which)."""


def _as_is(record: InventoryRecord) -> InventoryRecord:
    return record


class _JsonCursor:
    """Walks JSON text arriving in chunks: objects and arrays of the top levels by hand, every value inside them
    with the json module's own decoder, so a caller can take an array's items one at a time and the text read so
    far is dropped as it goes. JSONDecodeError if it is not JSON (UnicodeDecodeError if it is not UTF-8)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._done = False
        #: the text not yet consumed begins at ``index``
        self.text = ""
        self.index = 0

    def _more(self) -> bool:
        """Read on until the unconsumed text at least doubles; False once there is nothing more."""
        if self._done:
            return False
        pending = [self.text[self.index :]]
        wanted = 2 * len(pending[0]) + 1
        while sum(len(part) for part in pending) < wanted:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
                pending.append(self._decoder.decode(b"", final=True))
                break
            pending.append(self._decoder.decode(chunk))
        self.text, self.index = "".join(pending), 0
        return True

    def peek(self) -> str:
        while True:
            match = _JSON_SPACE.match(self.text, self.index)
            assert match is not None  # the pattern matches the empty string
            self.index = match.end()
            if self.index < len(self.text) or not self._more():
                return self.text[self.index : self.index + 1]

    def take(self, chars: str) -> str:
        char = self.peek()
        if not char or char not in chars:
            raise json.JSONDecodeError(f"expected one of {chars!r}", self.text, self.index)
        self.index += 1
        return char

    def value(self) -> object:
        self.peek()
        while True:
            try:
                value, end = _JSON_DECODER.raw_decode(self.text, self.index)
            except json.JSONDecodeError:
                if self._more():  # the value may go on in the next chunk
                    continue
                raise
            if len(self.text) - end < _JSON_NUMBER_MARGIN and self._more():
                continue  # a number near the end of what has arrived ("1.5" of "1.5e10") may go on
            self.index = end
            return value

    def object_keys(self) -> Iterator[str]:
        """An object's keys; the caller reads each member's value before asking for the next key."""
        self.take("{")
        if self.peek() == "}":
            self.index += 1
            return
        while True:
            if self.peek() != '"':
                raise json.JSONDecodeError("expected a key", self.text, self.index)
            key = self.value()
            assert isinstance(key, str)  # peek saw its opening quote
            self.take(":")
            yield key
            if self.take(",}") == "}":
                return

    def array_items(self) -> Iterator[object]:
        """An array's items, decoded one at a time."""
        self.take("[")
        if self.peek() == "]":
            self.index += 1
            return
        while True:
            yield self.value()
            if self.take(",]") == "]":
                return

    def end(self) -> None:
        if self.peek():
            raise json.JSONDecodeError("extra data", self.text, self.index)


def _spent(chunks: list[bytes]) -> Iterator[bytes]:
    """The chunks in order, each let go of once handed out."""
    chunks.reverse()
    while chunks:
        yield chunks.pop()


def _decode_inventory(chunks: Iterator[bytes], each: Callable[[InventoryRecord], _Item]) -> tuple[int, list[_Item]]:
    """``{"totalCount": N, "results": [...]}`` (keys in any order), each record decoded and handed to ``each`` in
    turn. JSONDecodeError or UnicodeDecodeError if it is not JSON, _NotInventory if it is JSON of another shape."""
    cursor = _JsonCursor(chunks)
    total: object = None
    results: list[_Item] | None = None
    for key in cursor.object_keys():
        if key == "results" and results is None and cursor.peek() == "[":
            results = []
            for record in cursor.array_items():
                if not isinstance(record, dict):
                    raise _NotInventory("results must be objects")
                # unchecked: the mapping reads each of the record's values defensively
                results.append(each(cast(InventoryRecord, record)))
            continue
        value = cursor.value()
        if key == "results":
            raise _NotInventory("results must be a list, once")
        if key == "totalCount":
            total = value
    cursor.end()
    if isinstance(total, bool) or not isinstance(total, int) or results is None:
        raise _NotInventory("no totalCount/results")
    return total, results


class JamfClient:
    """One Jamf Pro tenant. Use as ``async with JamfClient(...) as client:``."""

    def __init__(
        self,
        endpoint: str,
        credentials: Credentials,
        *,
        ca_file: Path | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        base = httpx.URL(endpoint.rstrip("/"))
        if base.scheme != "https" or not base.host:
            raise ConfigError(f"jamf_service.api_endpoint: must be an https:// URL, got {endpoint!r}")
        self._base = base
        self._prefix = base.path.rstrip("/")
        self._credentials = credentials
        self._retry = retry
        self._monotonic = monotonic
        self._sleep = sleep
        self._semaphore = asyncio.Semaphore(MAX_CONCURRENT_REQUESTS)
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        #: "v2", "v1", or None until the first computers request tells
        self._computers_version: str | None = None
        self._http = httpx.AsyncClient(
            verify=trust_context(ca_file),
            follow_redirects=False,
            # no proxy/netrc/SSL settings from the environment: the trust store above is the only one used
            trust_env=False,
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=MAX_CONCURRENT_REQUESTS, max_keepalive_connections=MAX_CONCURRENT_REQUESTS
            ),
            headers={"Accept": "application/json", "User-Agent": "devicetrust-jamf-sync"},
        )

    async def __aenter__(self) -> JamfClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def host(self) -> str:
        return self._base.host

    @property
    def address(self) -> str:
        """HOST:PORT of Jamf, for messages (the port is HTTPS's when the endpoint names none)."""
        host = f"[{self._base.host}]" if ":" in self._base.host else self._base.host
        return f"{host}:{self._base.port or HTTPS_PORT}"

    @property
    def computers_api_version(self) -> str | None:
        return self._computers_version

    # -- inventory ----------------------------------------------------------------------------------------
    async def validate_filter(self, kind: InventoryKind, filter_rsql: str) -> int:
        """Run the filter once with a one-item page; ConfigError (naming Jamf's reason) if Jamf rejects it.
        Returns how many devices match."""
        try:
            page = await self.page(
                kind, page=0, page_size=1, sort=_ID_SORT[kind], filter_rsql=filter_rsql, sections=("GENERAL",)
            )
        except JamfAPIError as err:
            if err.status == 400:
                raise ConfigError(f"jamf_service.inventory: Jamf rejects filter_rsql {filter_rsql!r}: {err}") from None
            raise
        return page.total_count

    async def count(self, kind: InventoryKind, filter_rsql: str) -> int:
        """How many devices match ``filter_rsql`` (a one-item query)."""
        page = await self.page(
            kind, page=0, page_size=1, sort=_ID_SORT[kind], filter_rsql=filter_rsql, sections=("GENERAL",)
        )
        return page.total_count

    async def page(
        self,
        kind: InventoryKind,
        *,
        page: int,
        page_size: int,
        sort: str | None,
        filter_rsql: str,
        sections: Sequence[str] | None = None,
    ) -> InventoryPage[InventoryRecord]:
        reply = await self._fetch_page(
            kind, page=page, page_size=page_size, sort=sort, filter_rsql=filter_rsql, sections=sections
        )
        return self._parsed(reply, page, _as_is)

    async def _fetch_page(
        self,
        kind: InventoryKind,
        *,
        page: int,
        page_size: int,
        sort: str | None,
        filter_rsql: str,
        sections: Sequence[str] | None = None,
    ) -> _Reply:
        params: _Params = [("page", page), ("page-size", min(page_size, JAMF_MAX_PAGE_SIZE))]
        if sort:
            params.append(("sort", sort))
        if filter_rsql:
            params.append(("filter", filter_rsql))
        wanted = sections if sections is not None else (COMPUTER_SECTIONS if kind == COMPUTERS else MOBILE_SECTIONS)
        params.extend(("section", section) for section in wanted)
        if kind == MOBILE_DEVICES:
            return await self._api("GET", "/api/v2/mobile-devices/detail", params)
        return await self._computers("", params)

    async def pages(
        self,
        kind: InventoryKind,
        *,
        sort: str,
        filter_rsql: str,
        page_size: int,
        each: Callable[[InventoryRecord], _Item],
    ) -> AsyncGenerator[InventoryPage[_Item], None]:
        """Every page, in order, fetching up to PAGE_PREFETCH ahead; a page's results are what ``each`` makes of
        its records. Close it (``contextlib.aclosing``) when stopping early; that cancels what is in flight.

        Memory: a page's records are decoded and handed to ``each`` one at a time as soon as the page arrives, and
        its bytes released (a whole page of decoded records takes several times its JSON); a page waiting for its
        turn holds only what ``each`` made of its records.
        """
        size = min(page_size, JAMF_MAX_PAGE_SIZE)
        first = self._parsed(
            await self._fetch_page(kind, page=0, page_size=size, sort=sort, filter_rsql=filter_rsql), 0, each
        )
        # counted before yielding: the consumer may empty a page's results to free them early
        short, total = len(first.results) < size, first.total_count
        yield first
        if short:
            return
        in_flight: deque[asyncio.Task[InventoryPage[_Item]]] = deque()
        next_page = 1

        async def fetch(number: int) -> InventoryPage[_Item]:
            reply = await self._fetch_page(kind, page=number, page_size=size, sort=sort, filter_rsql=filter_rsql)
            return self._parsed(reply, number, each)

        try:
            while True:
                # ahead only while Jamf says there is more, but always at least the next page: the inventory
                # may have grown since totalCount was read
                while len(in_flight) < PAGE_PREFETCH and (next_page * size < total or not in_flight):
                    in_flight.append(asyncio.create_task(fetch(next_page)))
                    next_page += 1
                current = await in_flight.popleft()
                short, total = len(current.results) < size, current.total_count
                yield current
                if short:
                    return
        finally:
            if in_flight:
                # Letting prefetched requests finish closes their connections cleanly (cancelling one mid-request
                # can leave its socket to the garbage collector); whatever is slower than the grace is cancelled.
                tasks = list(in_flight)
                _, slow = await asyncio.wait(tasks, timeout=PREFETCH_DRAIN_S)
                for task in slow:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def device(
        self, kind: InventoryKind, jamf_id: str, *, sections: Sequence[str] = RECHECK_SECTIONS
    ) -> InventoryRecord | None:
        """One device by its Jamf id (computers: the given sections; mobile devices: /api/v2/mobile-devices/{id}),
        or None if Jamf answers 404."""
        check_jamf_id(jamf_id)
        try:
            if kind == MOBILE_DEVICES:
                reply = await self._api("GET", f"/api/v2/mobile-devices/{jamf_id}", [])
            else:
                reply = await self._computers(f"/{jamf_id}", [("section", section) for section in sections])
        except JamfAPIError as err:
            if err.status == 404:
                return None
            raise
        data = self._json(reply)
        if not isinstance(data, dict):
            raise JamfAPIError(f"unexpected reply from Jamf for device {jamf_id}: not an object")
        return cast(InventoryRecord, data)

    async def _computers(self, suffix: str, params: _Params) -> _Reply:
        if self._computers_version is None:
            # which inventory API this Jamf has: v2 where available, v1 on older versions (v2 answers 404)
            probe: _Params = [("page", 0), ("page-size", 1), ("sort", "id:asc"), ("section", "GENERAL")]
            try:
                await self._api("GET", "/api/v2/computers-inventory", probe)
                self._computers_version = "v2"
            except JamfAPIError as err:
                if err.status != 404:
                    raise
                log.info("Jamf has no /api/v2/computers-inventory; using /api/v1", extra={"jamf_host": self.address})
                self._computers_version = "v1"
        return await self._api("GET", f"/api/{self._computers_version}/computers-inventory{suffix}", params)

    @staticmethod
    def _parsed(reply: _Reply, page: int, each: Callable[[InventoryRecord], _Item]) -> InventoryPage[_Item]:
        """``{"totalCount": N, "results": [record, …]}``, each record decoded and passed to ``each`` in turn; the
        reply's chunks are let go of as they are read."""
        try:
            total, results = _decode_inventory(_spent(reply.chunks), each)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise JamfAPIError(f"Jamf answered {reply.url.path} with something that is not JSON") from None
        except _NotInventory as err:
            raise JamfAPIError(f"unexpected inventory reply from Jamf: {err}") from None
        return InventoryPage(page=page, total_count=total, results=results)

    @staticmethod
    def _json(reply: _Reply) -> object:
        try:
            return json.loads(reply.content)
        except ValueError:
            raise JamfAPIError(f"Jamf answered {reply.url.path} with something that is not JSON") from None

    # -- authenticated requests ---------------------------------------------------------------------------
    async def _api(self, method: str, path: str, params: _Params) -> _Reply:
        """A request with a bearer token; a 401 drops the token and retries once with a new one."""
        for attempt in (1, 2):
            token = await self._bearer()
            reply = await self._call(method, path, params=params, headers={"Authorization": f"Bearer {token}"})
            if reply.status != 401:
                return self._checked(reply, path)
            await self._drop(token)
            code, description = _describe(reply)
            if attempt == 1:
                log.info(
                    "Jamf refused the token (%s); getting a new one", code or "401", extra={"jamf_host": self.address}
                )
                continue
            raise JamfAuthError(
                f"Jamf at {self.address} refused a freshly issued token for {path} (401 {code or 'Unauthorized'}"
                f"{': ' + description if description else ''}); check the API client's role and that its "
                "credentials were not rotated"
            )
        raise AssertionError("unreachable")

    def _checked(self, reply: _Reply, path: str) -> _Reply:
        if 200 <= reply.status < 300:
            return reply
        code, description = _describe(reply)
        detail = f"{reply.status} {code}".strip() + (f": {description}" if description else "")
        if reply.status == 403:
            raise JamfPermissionError(
                f"Jamf at {self.address} refused {path} ({detail}); the API role needs Read Computers "
                "(and Read Mobile Devices for mobile inventories)"
            )
        raise JamfAPIError(f"Jamf at {self.address} answered {path} with {detail}", status=reply.status, code=code)

    async def _bearer(self) -> str:
        async with self._token_lock:
            token = self._token
            if token is None:
                token = await self._issue()
            elif self._monotonic() >= token.expires_at - min(
                TOKEN_RENEW_MARGIN_S, token.lifetime * TOKEN_RENEW_FRACTION
            ):
                token = await self._renew(token)
            self._token = token
            return token.value

    async def _drop(self, value: str) -> None:
        async with self._token_lock:
            if self._token is not None and self._token.value == value:
                self._token = None

    async def _issue(self) -> _Token:
        credentials = self._credentials
        if isinstance(credentials, OAuthCredentials):
            reply = await self._call(
                "POST",
                _OAUTH_TOKEN_PATH,
                data={
                    "client_id": credentials.client_id,
                    "client_secret": credentials.client_secret,
                    "grant_type": "client_credentials",
                },
            )
            if reply.status in (400, 401):
                code, description = _describe(reply)
                raise JamfAuthError(
                    f"Jamf at {self.address} refused the API client credentials ({code or reply.status}"
                    f"{': ' + description if description else ''}); check client_id and client_secret_file"
                )
            data = self._json(self._checked(reply, _OAUTH_TOKEN_PATH))
            value = data.get("access_token") if isinstance(data, dict) else None
            lifetime = data.get("expires_in") if isinstance(data, dict) else None
            if not isinstance(value, str) or not value:
                raise JamfAPIError(f"Jamf at {self.address} issued no access_token")
            if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
                lifetime = DEFAULT_OAUTH_TOKEN_LIFETIME_S
            return self._token_for(value, float(lifetime))
        basic = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        reply = await self._call("POST", _LEGACY_TOKEN_PATH, headers={"Authorization": f"Basic {basic}"})
        if reply.status == 401:
            code, description = _describe(reply)
            raise JamfAuthError(
                f"Jamf at {self.address} refused user {credentials.username!r} ({code or 401}"
                f"{': ' + description if description else ''}); check username and password_file"
            )
        return self._legacy_token(self._checked(reply, _LEGACY_TOKEN_PATH))

    async def _renew(self, token: _Token) -> _Token:
        if isinstance(self._credentials, OAuthCredentials):
            return await self._issue()
        reply = await self._call("POST", _LEGACY_KEEP_ALIVE_PATH, headers={"Authorization": f"Bearer {token.value}"})
        if reply.status == 200:
            try:
                return self._legacy_token(reply)
            except JamfAPIError:
                pass
        log.info(
            "Jamf did not extend the token (%s); logging in again", reply.status, extra={"jamf_host": self.address}
        )
        return await self._issue()

    def _legacy_token(self, reply: _Reply) -> _Token:
        data = self._json(reply)
        value = data.get("token") if isinstance(data, dict) else None
        expires = data.get("expires") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise JamfAPIError(f"Jamf at {self.address} issued no token")
        lifetime = LEGACY_TOKEN_FALLBACK_LIFETIME_S
        if isinstance(expires, str):
            try:
                when = datetime.fromisoformat(expires.replace("Z", "+00:00"))
                if when.tzinfo is None:
                    when = when.replace(tzinfo=UTC)
                seconds = (when - datetime.now(UTC)).total_seconds()
                if 0 < seconds <= MAX_TOKEN_LIFETIME_S:
                    lifetime = seconds
            except ValueError:
                pass
        return self._token_for(value, lifetime)

    def _token_for(self, value: str, lifetime: float) -> _Token:
        lifetime = min(lifetime, MAX_TOKEN_LIFETIME_S)
        return _Token(value=value, expires_at=self._monotonic() + lifetime, lifetime=lifetime)

    # -- transport: retries, redirects, limits ------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: _Params | None = None,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Reply:
        """One request with bounded retries (429/503 after Retry-After; 5xx and transport errors with backoff)."""
        url = self._base.copy_with(path=self._prefix + path)
        delay = self._retry.backoff_initial_s
        for attempt in range(1, self._retry.max_attempts + 1):
            last = attempt == self._retry.max_attempts
            try:
                reply = await self._follow(method, url, params=params, data=data, headers=headers)
            except httpx.TransportError as err:
                if _is_tls_failure(err):
                    raise TrustError(
                        f"cannot verify the TLS certificate of Jamf at {self.address}: {_one_line(str(err))} "
                        "(for a private CA set jamf_service.ca_file)"
                    ) from None
                if last:
                    detail = _one_line(str(err)) or "no detail"
                    raise ConnectionFailedError(
                        f"cannot reach Jamf at {self.address}: {type(err).__name__}: {detail}"
                    ) from None
                wait = delay
                log.warning("Jamf request failed (%s); retrying in %.1fs", type(err).__name__, wait)
            else:
                if reply.status not in _RETRY_STATUSES or last:
                    return reply
                hinted = _retry_after(reply) if reply.status in _RETRY_AFTER_STATUSES else None
                wait = min(hinted, self._retry.max_retry_after_s) if hinted is not None else delay
                log.warning(
                    "Jamf answered %s for %s; retrying in %.1fs",
                    reply.status,
                    path,
                    wait,
                    extra={"jamf_host": self.address},
                )
            await self._sleep(wait)
            # full jitter keeps several auth servers from retrying in lockstep
            delay = min(self._retry.backoff_max_s, delay * 2) * (0.5 + random.random() / 2)  # noqa: S311
        raise AssertionError("unreachable")

    async def _follow(
        self,
        method: str,
        url: httpx.URL,
        *,
        params: _Params | None,
        data: dict[str, str] | None,
        headers: dict[str, str] | None,
    ) -> _Reply:
        for _ in range(MAX_REDIRECTS + 1):
            reply = await self._send(method, url, params=params, data=data, headers=headers)
            if reply.status not in _REDIRECT_STATUSES:
                return reply
            location = reply.headers.get("location")
            if not location:
                return reply
            target = reply.url.join(location)
            if (target.scheme, target.host, target.port) != (self._base.scheme, self._base.host, self._base.port):
                raise JamfAPIError(
                    f"Jamf at {self.address} redirected {url.path} to {target.scheme}://{target.host}; refusing to "
                    "follow a redirect to another host (check jamf_service.api_endpoint)",
                    status=reply.status,
                )
            if method != "GET" and reply.status not in (307, 308):
                raise JamfAPIError(f"Jamf redirected {method} {url.path}; refusing", status=reply.status)
            url, params = target, None
        raise JamfAPIError(f"Jamf at {self.address} redirected {url.path} more than {MAX_REDIRECTS} times")

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        *,
        params: _Params | None,
        data: dict[str, str] | None,
        headers: dict[str, str] | None,
    ) -> _Reply:
        async with self._semaphore:
            request = self._http.build_request(method, url, params=params, data=data, headers=headers)
            response = await self._http.send(request, stream=True)
            try:
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                    raise JamfAPIError(f"Jamf's reply to {url.path} is larger than {MAX_RESPONSE_BYTES} bytes")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise JamfAPIError(f"Jamf's reply to {url.path} is larger than {MAX_RESPONSE_BYTES} bytes")
                    chunks.append(chunk)
            finally:
                await response.aclose()
        return _Reply(response.status_code, response.headers, chunks, response.url)
