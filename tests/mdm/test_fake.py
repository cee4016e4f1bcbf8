"""The fake Jamf answers as Jamf Pro does where the sync depends on it (checked over HTTPS with httpx)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.jamf.server import (
    COMPUTER_SECTIONS,
    JAMF_MAX_PAGE_SIZE,
    FakeJamf,
    FakeJamfServer,
    Inventory,
    synthetic_computer,
)
from tests.fakes.pki import TestPKI
from tests.mdm.conftest import CLIENT_ID, CLIENT_SECRET, PASSWORD, USERNAME


@pytest.fixture
def http(jamf_server: FakeJamfServer, pki: TestPKI) -> Iterator[httpx.Client]:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    with httpx.Client(base_url=jamf_server.url, verify=context) as client:
        yield client


def _token(http: httpx.Client) -> dict[str, str]:
    reply = http.post(
        "/api/oauth/token",
        data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "grant_type": "client_credentials"},
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 60
    return {"Authorization": f"Bearer {body['access_token']}"}


def _get(http: httpx.Client, path: str, **params: Any) -> httpx.Response:
    return http.get(path, params=params, headers=_token(http))


def test_invalid_token_uses_jamfs_error_envelope(fake: FakeJamf, http: httpx.Client) -> None:
    reply = http.get("/api/v1/computers-inventory", headers={"Authorization": "Bearer nope"})
    assert reply.status_code == 401
    assert reply.json() == {
        "httpStatus": 401,
        "errors": [{"code": "INVALID_TOKEN", "description": "Unauthorized", "id": "0", "field": None}],
    }
    refused = http.post(
        "/api/oauth/token", data={"client_id": CLIENT_ID, "client_secret": "x", "grant_type": "client_credentials"}
    )
    assert (refused.status_code, refused.json()) == (401, {"error": "invalid_client"})


def test_unrequested_sections_are_null_and_ids_are_strings(fake: FakeJamf, http: httpx.Client) -> None:
    reply = _get(http, "/api/v2/computers-inventory", **{"page-size": 2, "section": ["GENERAL", "HARDWARE"]})
    body = reply.json()
    assert body["totalCount"] == 12
    first = body["results"][0]
    assert set(first) == {"id", "udid"} | {key for key, _ in COMPUTER_SECTIONS.values()}
    assert isinstance(first["id"], str)
    assert first["general"]["name"] and first["hardware"]["serialNumber"]
    assert first["operatingSystem"] is None and first["localUserAccounts"] is None and first["purchasing"] is None
    # the default sort is general.name:asc
    names = [r["general"]["name"] for r in body["results"]]
    assert names == sorted(names, key=str.lower)


def test_filter_sort_and_paging(fake: FakeJamf, http: httpx.Client) -> None:
    managed = _get(
        http,
        "/api/v1/computers-inventory",
        filter="general.remoteManagement.managed==true",
        sort="general.reportDate:desc",
        page=1,
        **{"page-size": 4},
    ).json()
    assert managed["totalCount"] == 11
    dates = [r["general"]["reportDate"] for r in managed["results"]]
    assert len(dates) == 4 and dates == sorted(dates, reverse=True)
    by_id = _get(http, "/api/v1/computers-inventory", sort="id:asc", **{"page-size": 100}).json()
    assert [int(r["id"]) for r in by_id["results"]] == list(range(1, 13))


@pytest.mark.parametrize(
    ("params", "code", "field"),
    [
        ({"filter": "general.secret==1"}, "INVALID_FIELD", "filter"),
        ({"filter": "general.name=="}, "INVALID_RSQL_FILTER", "filter"),
        ({"sort": "hardware.serialNumber:asc"}, "INVALID_FIELD", "sort"),
        ({"section": "BOGUS"}, "INVALID_FIELD", "section"),
        ({"page-size": 0}, "INVALID_FIELD", None),
    ],
)
def test_bad_queries_are_400s(
    fake: FakeJamf, http: httpx.Client, params: dict[str, Any], code: str, field: str | None
) -> None:
    reply = _get(http, "/api/v2/computers-inventory", **params)
    assert reply.status_code == 400
    error = reply.json()["errors"][0]
    assert (error["code"], error["field"]) == (code, field)


def test_page_size_is_clamped_to_2000(jamf_server: FakeJamfServer, http: httpx.Client) -> None:
    jamf_server.fake = FakeJamf(computers=Inventory(synthetic=2100), oauth_clients={CLIENT_ID: CLIENT_SECRET})
    body = _get(http, "/api/v2/computers-inventory", sort="id:asc", **{"page-size": 5000}).json()
    assert body["totalCount"] == 2100
    assert len(body["results"]) == JAMF_MAX_PAGE_SIZE


def test_synthetic_computers_are_realistic_and_distinct() -> None:
    records = [synthetic_computer(i) for i in range(1, 3001)]
    assert len({r["hardware"]["serialNumber"] for r in records}) == 3000
    assert len({r["udid"] for r in records}) == 3000
    first = records[0]
    assert first["id"] == "1" and first["general"]["platform"] == "Mac"
    assert first["general"]["reportDate"].endswith("Z")
    assert (
        first["localUserAccounts"][0]["username"].startswith("bob.smith") or first["localUserAccounts"][0]["username"]
    )


def test_v1_only_and_by_id(fake: FakeJamf, http: httpx.Client) -> None:
    fake.faults.v2_computers = False
    assert _get(http, "/api/v2/computers-inventory").status_code == 404
    one = _get(http, "/api/v1/computers-inventory/3", section=["HARDWARE"])
    assert one.status_code == 200
    assert one.json()["hardware"]["serialNumber"] == "H4TXK2JNQ5" and one.json()["general"] is None
    missing = _get(http, "/api/v1/computers-inventory/999")
    assert missing.status_code == 404 and missing.json()["httpStatus"] == 404
    ipad = _get(http, "/api/v2/mobile-devices/2").json()
    assert (ipad["serialNumber"], ipad["modelIdentifier"], ipad["type"]) == ("DMPZN4KLQ1GH", "iPad13,18", "ios")


def test_mobile_devices_detail(fake: FakeJamf, http: httpx.Client) -> None:
    body = _get(
        http,
        "/api/v2/mobile-devices/detail",
        filter="managed==true",
        sort="mobileDeviceId:asc",
        section=["GENERAL", "HARDWARE"],
    ).json()
    assert body["totalCount"] == 5
    first = body["results"][0]
    assert (first["mobileDeviceId"], first["deviceType"]) == ("1", "iOS")
    assert first["hardware"]["modelIdentifier"] == "iPhone15,2" and first["userAndLocation"] is None


def test_user_tokens_keep_alive_and_expiry(fake: FakeJamf, http: httpx.Client) -> None:
    reply = http.post("/api/v1/auth/token", auth=(USERNAME, PASSWORD))
    assert reply.status_code == 200
    token = reply.json()["token"]
    assert reply.json()["expires"].endswith("Z")
    renewed = http.post("/api/v1/auth/keep-alive", headers={"Authorization": f"Bearer {token}"}).json()["token"]
    assert renewed != token
    # the old token went with the keep-alive
    assert http.get("/api/v1/computers-inventory", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert http.get("/api/v1/computers-inventory", headers={"Authorization": f"Bearer {renewed}"}).status_code == 200
    assert http.post("/api/v1/auth/token", auth=(USERNAME, "wrong")).status_code == 401
    fake.token_lifetime_s = 0
    expired = http.post("/api/v1/auth/token", auth=(USERNAME, PASSWORD)).json()["token"]
    assert http.get("/api/v1/computers-inventory", headers={"Authorization": f"Bearer {expired}"}).status_code == 401


def test_faults(fake: FakeJamf, http: httpx.Client) -> None:
    headers = _token(http)
    fake.faults.rate_limited = 1
    limited = http.get("/api/v1/computers-inventory", headers=headers)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "1")
    fake.faults.server_errors = 1
    assert http.get("/api/v1/computers-inventory", headers=headers).status_code == 500
    assert http.get("/api/v1/computers-inventory", headers=headers).status_code == 200
    fake.faults.redirect_to = "https://elsewhere.example"
    moved = http.get("/api/v1/computers-inventory", headers=headers)
    assert (moved.status_code, moved.headers["Location"]) == (
        302,
        "https://elsewhere.example/api/v1/computers-inventory",
    )
    fake.faults.redirect_to = None
    # a gap: after the first page, the first device of the walk is retired
    fake.faults.gap_after_pages = 1
    first = http.get("/api/v1/computers-inventory", params={"sort": "id:asc", "page-size": 3}, headers=headers).json()
    second = http.get(
        "/api/v1/computers-inventory", params={"sort": "id:asc", "page-size": 3, "page": 1}, headers=headers
    ).json()
    assert [r["id"] for r in first["results"]] == ["1", "2", "3"]
    assert [r["id"] for r in second["results"]] == ["5", "6", "7"]  # "4" moved up to the first page
    assert second["totalCount"] == 11
