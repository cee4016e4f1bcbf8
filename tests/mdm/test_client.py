"""The Jamf client against the fake over real HTTPS: tokens, retries, redirects, API versions, TLS trust."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devicetrust.errors import ConfigError, TrustError
from devicetrust.mdm.jamf.client import MAX_CONCURRENT_REQUESTS, JamfClient, RetryPolicy, _decode_inventory
from devicetrust.mdm.jamf.config import OAuthCredentials, PasswordCredentials
from devicetrust.mdm.jamf.errors import JamfAPIError, JamfAuthError
from tests.fakes.jamf.server import FakeJamf
from tests.mdm.conftest import FAST_RETRY, PASSWORD, USERNAME, JamfSetup

T = TypeVar("T")


def run(client: JamfClient, work: Callable[[JamfClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with client:
            return await work(client)

    return asyncio.run(main())


def _statuses(fake: FakeJamf, prefix: str) -> list[int]:
    return [r.status for r in fake.api_requests(prefix)]


class FakeClock:
    """A monotonic clock shared by the client and the fake, so token lifetimes pass without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_oauth_token_is_reused_then_renewed_before_it_expires(jamf: JamfSetup, fake: FakeJamf) -> None:
    clock = FakeClock()
    fake.monotonic = clock  # tokens live 60 s; the client renews when less than 15 s are left

    async def work(client: JamfClient) -> None:
        await client.count("computers", "")
        clock.now += 40
        await client.count("computers", "")
        assert fake.tokens_issued == 1
        clock.now += 6  # 14 s left
        await client.count("computers", "")

    run(jamf.client(monotonic=clock), work)
    assert fake.tokens_issued == 2
    assert 401 not in _statuses(fake, "/api/v")  # renewed ahead of time, never refused


def test_a_401_drops_the_token_and_retries_once(jamf: JamfSetup, fake: FakeJamf) -> None:
    async def work(client: JamfClient) -> int:
        await client.count("computers", "")
        fake.revoke_tokens()  # e.g. Jamf restarted, or the API client's secret was rotated and back
        return await client.count("computers", "")

    assert run(jamf.client(), work) == 12
    assert fake.tokens_issued == 2
    assert _statuses(fake, "/api/v2/computers-inventory").count(401) == 1


def test_repeated_401_is_a_clear_fatal_error(jamf: JamfSetup, fake: FakeJamf) -> None:
    fake.faults.always_unauthorized = True
    with pytest.raises(JamfAuthError, match=r"refused a freshly issued token .*401 INVALID_TOKEN"):
        run(jamf.client(), lambda c: c.count("computers", ""))
    assert _statuses(fake, "/api/v2/computers-inventory") == [401, 401]  # once, then once more, then stop


def test_refused_client_credentials(jamf: JamfSetup) -> None:
    client = jamf.client(credentials=OAuthCredentials("7c1c4b1e-2f7e-4c5e-9a55-devicetrust", "wrong"))
    with pytest.raises(JamfAuthError, match=r"refused the API client credentials \(invalid_client\)"):
        run(client, lambda c: c.count("computers", ""))


def test_user_credentials_with_keep_alive(jamf: JamfSetup, fake: FakeJamf) -> None:
    clock = FakeClock()
    fake.monotonic = clock

    async def work(client: JamfClient) -> None:
        await client.count("computers", "")
        clock.now += 50
        await client.count("computers", "")

    # the legacy token's expiry is a wall-clock time; the client turns it into a lifetime on its own clock
    run(jamf.client(credentials=PasswordCredentials(USERNAME, PASSWORD), monotonic=clock), work)
    assert [r.status for r in fake.requests if r.path == "/api/v1/auth/token"] == [200]
    assert [r.status for r in fake.requests if r.path == "/api/v1/auth/keep-alive"] == [200]
    with pytest.raises(JamfAuthError, match="refused user 'sync-user'"):
        run(jamf.client(credentials=PasswordCredentials(USERNAME, "wrong")), lambda c: c.count("computers", ""))


def test_429_waits_for_retry_after(jamf: JamfSetup, fake: FakeJamf) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    fake.faults.rate_limited = 2
    fake.faults.retry_after_s = 2
    assert run(jamf.client(sleep=sleep), lambda c: c.count("computers", "")) == 12
    assert slept == [2.0, 2.0]


def test_server_errors_are_retried_a_bounded_number_of_times(jamf: JamfSetup, fake: FakeJamf) -> None:
    fake.faults.server_errors = 2
    assert run(jamf.client(), lambda c: c.count("computers", "")) == 12
    fake.faults.server_errors = 10
    with pytest.raises(JamfAPIError, match="500 INTERNAL_SERVER_ERROR") as caught:
        run(jamf.client(), lambda c: c.count("computers", ""))
    assert caught.value.status == 500
    assert fake.faults.server_errors == 10 - FAST_RETRY.max_attempts


def test_redirects_to_another_host_are_refused(jamf: JamfSetup, fake: FakeJamf) -> None:
    fake.faults.redirect_to = "https://attacker.example"
    with pytest.raises(JamfAPIError, match=r"redirected .* to https://attacker.example; refusing"):
        run(jamf.client(), lambda c: c.count("computers", ""))
    # nothing was sent there: the client never connected (it would have failed to resolve / verify)


def test_v2_falls_back_to_v1_on_404(jamf: JamfSetup, fake: FakeJamf) -> None:
    fake.faults.v2_computers = False

    async def work(client: JamfClient) -> tuple[int, str | None, str | None]:
        page = await client.page("computers", page=0, page_size=5, sort="id:asc", filter_rsql="")
        alice = await client.device("computers", "1")
        gone = await client.device("computers", "999")
        serial = alice["hardware"]["serialNumber"] if alice else None
        return len(page.results), client.computers_api_version, serial if gone is None else "?"

    assert run(jamf.client(), work) == (5, "v1", "C02XJ0ABHX87")
    assert _statuses(fake, "/api/v2/computers-inventory") == [404]


def _walk(client: JamfClient, page_size: int = 5) -> Awaitable[list[list[str]]]:
    """Every page of the walk, as the serial numbers ``each`` was handed (a record at a time)."""

    def serial(record: dict[str, Any]) -> str:
        return str((record.get("hardware") or {}).get("serialNumber"))

    async def walk() -> list[list[str]]:
        pages = client.pages("computers", sort="id:asc", filter_rsql="", page_size=page_size, each=serial)
        return [page.results async for page in pages]

    return walk()


def test_pages_hand_each_record_over_as_it_is_decoded(jamf: JamfSetup, fake: FakeJamf) -> None:
    walked = run(jamf.client(), _walk)
    assert [len(page) for page in walked] == [5, 5, 2]
    assert walked[0][0] == "C02XJ0ABHX87"
    # keys in any order, white space anywhere, text beyond ASCII: still Jamf's JSON
    page = '\ufeff{ "results" : [ {"hardware": {"serialNumber": "C02Ä"}} ,{"x":[1, {"y": null}]}],\n "totalCount":2}'
    fake.faults.garbled_pages = [page.encode()]
    assert run(jamf.client(), lambda c: _walk(c, page_size=2))[0] == ["C02Ä", "None"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>busy</html>", "with something that is not JSON"),
        (b'{"totalCount": 2, "results": [{}, {}]} trailing', "with something that is not JSON"),
        (b'{"totalCount": 2, "results": [{}, ]}', "with something that is not JSON"),
        (b'{"totalCount": 2, "results": [{} {}]}', "with something that is not JSON"),
        (b"\xff\xfe{}", "with something that is not JSON"),
        (b'{"totalCount": 2}', "unexpected inventory reply from Jamf: no totalCount/results"),
        (b'{"totalCount": "2", "results": []}', "unexpected inventory reply from Jamf: no totalCount/results"),
        (b'{"totalCount": 2, "results": [{}, 3]}', "unexpected inventory reply from Jamf: results must be objects"),
        (b'{"totalCount": 2, "results": {}}', "unexpected inventory reply from Jamf: results must be a list"),
        (b'{"results": [], "results": [], "totalCount": 0}', "unexpected inventory reply from Jamf: results must be"),
        (b"[]", "with something that is not JSON"),
    ],
)
def test_a_malformed_inventory_page_is_a_clear_error(
    jamf: JamfSetup, fake: FakeJamf, body: bytes, message: str
) -> None:
    fake.faults.garbled_pages = [body]
    with pytest.raises(JamfAPIError, match=message):
        run(jamf.client(), _walk)


def test_records_are_decoded_across_any_chunk_boundary() -> None:
    # a page arrives in chunks that split numbers ("1.5" of "1.5e10"), strings and UTF-8 sequences anywhere
    records = [{"a": 1.5e100, "b": -2e-3, "c": [10, True, None], "name": "Alice’s Mäc 🍎"}, {"id": "12345"}]
    page = ("\ufeff" + json.dumps({"results": records, "totalCount": 12345}, ensure_ascii=False)).encode()
    for first in range(1, len(page)):
        for second in (first + 1, first + 7):
            chunks = iter([page[:first], page[first:second], page[second:]])
            assert _decode_inventory(chunks, lambda record: record) == (12345, records), (first, second)


def test_filters_are_validated_with_a_one_item_query(jamf: JamfSetup, fake: FakeJamf) -> None:
    assert run(jamf.client(), lambda c: c.validate_filter("computers", "general.remoteManagement.managed==true")) == 11
    assert any("page-size=1" in r.query for r in fake.api_requests("/api/v2/computers-inventory"))
    with pytest.raises(ConfigError, match=r"Jamf rejects filter_rsql 'general.secret==1'.*INVALID_FIELD"):
        run(jamf.client(), lambda c: c.validate_filter("computers", "general.secret==1"))
    with pytest.raises(ConfigError, match="INVALID_RSQL_FILTER"):
        run(jamf.client(), lambda c: c.validate_filter("mobile_devices", "managed=="))


def test_at_most_five_requests_at_once(jamf: JamfSetup, fake: FakeJamf) -> None:
    fake.faults.page_delay_s = 0.1

    async def work(client: JamfClient) -> None:
        await client.count("computers", "")  # token and API version settled first
        pages = (client.page("computers", page=i % 4, page_size=3, sort="id:asc", filter_rsql="") for i in range(12))
        await asyncio.gather(*pages)

    run(jamf.client(), work)
    assert fake.max_in_flight == MAX_CONCURRENT_REQUESTS


def test_tls_is_verified_against_the_system_store_and_ssl_cert_file(
    jamf: JamfSetup, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    port = jamf.url.rsplit(":", 1)[1]
    with pytest.raises(TrustError, match=rf"cannot verify the TLS certificate of Jamf at 127\.0\.0\.1:{port}:"):
        run(jamf.client(ca_file=None), lambda c: c.count("computers", ""))
    monkeypatch.setenv("SSL_CERT_FILE", str(jamf.pki.ca_file))
    assert run(jamf.client(ca_file=None), lambda c: c.count("computers", "")) == 12


def test_https_only(jamf: JamfSetup) -> None:
    with pytest.raises(ConfigError, match="must be an https:// URL"):
        JamfClient(jamf.url.replace("https", "http"), OAuthCredentials("a", "b"))


def test_transport_errors_are_retried_then_reported(jamf: JamfSetup) -> None:
    from devicetrust.errors import ConnectionFailedError

    # a port nobody listens on
    client = JamfClient(
        "https://127.0.0.1:9",
        OAuthCredentials("a", "b"),
        ca_file=jamf.pki.ca_file,
        retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.01),
    )
    with pytest.raises(ConnectionFailedError, match=r"cannot reach Jamf at 127\.0\.0\.1:9:"):
        run(client, lambda c: c.count("computers", ""))


def test_messages_name_the_port_even_when_the_endpoint_does_not() -> None:
    credentials = OAuthCredentials("a", "b")
    assert JamfClient("https://jamf.example.com", credentials).address == "jamf.example.com:443"
    assert JamfClient("https://jamf.example.com:8443/", credentials).address == "jamf.example.com:8443"
    assert JamfClient("https://[::1]:8443", credentials).address == "[::1]:8443"
