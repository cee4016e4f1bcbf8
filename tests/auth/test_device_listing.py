"""``GET /v1/devices`` over HTTP on both backends: pages and their tokens, JSON and JSON lines, the summary view,
every filter, one-line errors for bad queries, and the permissions a listing needs."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from tests.auth.api_harness import RunningApi
from tests.fleet import Seeded, seed

from devicetrust.auth import devices as devices_module
from devicetrust.client import AuthApi, DeviceStream
from devicetrust.crypto.keys import generate_private_key, public_key_to_openssh
from devicetrust.errors import AccessDeniedError, DevicetrustError, ValidationError
from devicetrust.protocol import (
    NDJSON_MEDIA_TYPE,
    DeviceList,
    DeviceListQuery,
    DeviceSummary,
    DeviceSummaryList,
)
from devicetrust.storage.repositories import DeviceRepository

PASSWORD = "a long enough password"


def _device(index: int) -> Seeded:
    return Seeded(
        id=str(uuid.UUID(int=index + 1)),
        os_type=("macos", "windows", "linux")[index % 3],
        asset_tag=f"SN{index:04d}",
        enrolled=index % 4 == 0,
        owner=("alice", "bob")[index // 4 % 2] if index % 4 == 0 else "",
        source=("jamf", "intune", "")[index % 3],
    )


@pytest.fixture
def fleet(api: RunningApi) -> list[Seeded]:
    devices = [_device(index) for index in range(25)]
    with api.server.context.backend.begin() as store:
        seed(store, devices)
    return devices


def _pages(client: httpx.Client, **params: object) -> Iterator[tuple[list[object], str | None]]:
    """JSON pages, following their tokens to the end."""
    token: str | None = None
    while True:
        query = {**params, **({"page_token": token} if token else {})}
        response = client.get("/v1/devices", params=query)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        reply = response.json()
        items, token = reply["items"], reply["next_page_token"]
        yield items, token
        if token is None:
            return


def _stream(client: httpx.Client, **params: object) -> tuple[list[object], object]:
    """A stream of JSON lines: the devices, and its last line."""
    response = client.get("/v1/devices", params=params, headers={"accept": NDJSON_MEDIA_TYPE})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == NDJSON_MEDIA_TYPE
    assert response.content.endswith(b"\n")
    *items, end = [json.loads(line) for line in response.content.splitlines()]
    return items, end


def _streamed_pages(client: httpx.Client, **params: object) -> Iterator[tuple[list[object], str | None]]:
    """Streams of at most ``page_size`` devices, following their tokens to the end."""
    token: str | None = None
    while True:
        items, end = _stream(client, **params, **({"page_token": token} if token else {}))
        assert isinstance(end, dict) and set(end) == {"next_page_token"}
        token = end["next_page_token"]
        yield items, token
        if token is None:
            return


@pytest.mark.parametrize("walk", [_pages, _streamed_pages], ids=["json", "json-lines"])
def test_a_page_walk_sees_every_device_once_and_the_last_page_has_no_token(
    api: RunningApi, fleet: list[Seeded], walk: Callable[..., Iterator[tuple[list[object], str | None]]]
) -> None:
    with api.admin() as client:
        pages = list(walk(client, page_size=7))
    assert [len(items) for items, _ in pages] == [7, 7, 7, 4]
    assert [token is None for _, token in pages] == [False, False, False, True]
    documents = [item for items, _ in pages for item in items]
    assert [d["metadata"]["name"] for d in documents] == [d.id for d in sorted(fleet, key=lambda d: d.asset_tag)]  # type: ignore[index]
    # whole documents, as stored
    alice = next(d for d in documents if d["spec"].get("owner") == "alice")  # type: ignore[index, union-attr]
    assert alice["spec"]["credential"]["attestation_type"] == "unsafe_software"  # type: ignore[index]


def test_an_exact_last_page_ends_the_walk_without_an_empty_page(api: RunningApi, fleet: list[Seeded]) -> None:
    with api.admin() as client:
        assert [(len(items), token) for items, token in _pages(client, page_size=25)] == [(25, None)]
        assert [(len(items), token) for items, token in _streamed_pages(client, page_size=25)] == [(25, None)]


def test_a_stream_reads_in_chunks_and_holds_everything(
    api: RunningApi, fleet: list[Seeded], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices_module, "STREAM_FIRST_CHUNK", 2)
    monkeypatch.setattr(devices_module, "STREAM_CHUNK", 3)
    sizes: list[int] = []
    original = DeviceRepository.list_page_json

    def spy(self: DeviceRepository, **kwargs: object) -> object:
        sizes.append(kwargs["page_size"])  # type: ignore[arg-type]
        return original(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DeviceRepository, "list_page_json", spy)
    with api.admin() as client:
        items, end = _stream(client)
        assert [d["metadata"]["name"] for d in items] == [d.id for d in fleet]  # type: ignore[index]
        assert end == {"next_page_token": None}
        # a small first chunk, then full ones until one comes back short
        assert sizes == [2, *[3] * 8]
        sizes.clear()
        items, end = _stream(client, page_size=6, view="summary")
        assert [d["id"] for d in items] == [d.id for d in fleet[:6]]  # type: ignore[index]
        assert sizes == [2, 3, 1]
        assert isinstance(end, dict) and end["next_page_token"]


@pytest.mark.parametrize(
    ("failure", "line"),
    [
        (ValidationError("the database said no"), {"error": {"kind": "validation", "message": "the database said no"}}),
        (
            RuntimeError("boom"),
            {"error": {"kind": "internal", "message": "internal error; the auth service logged the details"}},
        ),
    ],
)
def test_a_failure_after_the_stream_began_is_its_last_line(
    api: RunningApi, fleet: list[Seeded], monkeypatch: pytest.MonkeyPatch, failure: Exception, line: object
) -> None:
    monkeypatch.setattr(devices_module, "STREAM_FIRST_CHUNK", 5)
    original = DeviceRepository.list_page_json

    def fail_after_the_first(self: DeviceRepository, **kwargs: object) -> object:
        if kwargs.get("page_token"):
            raise failure
        return original(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DeviceRepository, "list_page_json", fail_after_the_first)
    with api.admin() as client:
        items, end = _stream(client)
    assert len(items) == 5
    assert end == line
    with _typed(api) as typed:
        stream = typed.stream_devices(DeviceListQuery.model_construct())
        with pytest.raises(type(failure) if isinstance(failure, ValidationError) else DevicetrustError) as raised:
            list(stream)
    assert str(raised.value) == line["error"]["message"]  # type: ignore[index]


def test_replies_match_the_protocol_models(api: RunningApi, fleet: list[Seeded]) -> None:
    with api.admin() as client:
        documents = DeviceList.model_validate_json(client.get("/v1/devices", params={"page_size": 3}).content)
        summaries = DeviceSummaryList.model_validate_json(
            client.get("/v1/devices", params={"page_size": 3, "view": "summary"}).content
        )
    assert len(documents.items) == len(summaries.items) == 3
    assert documents.next_page_token == summaries.next_page_token is not None
    first = fleet[0]
    assert summaries.items[0] == DeviceSummary(
        id=first.id,
        os_type=first.os_type,
        asset_tag=first.asset_tag,
        enroll_status="enrolled",
        owner="alice",
        source="jamf",
    )


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({"os": "macOS"}, lambda d: d.os_type == "macos"),
        ({"enroll_status": "not enrolled"}, lambda d: not d.enrolled),
        ({"enroll_status": "ENROLLED"}, lambda d: d.enrolled),
        ({"source": "intune"}, lambda d: d.source == "intune"),
        ({"source": ""}, lambda d: d.source == ""),
        ({"owner": "bob"}, lambda d: d.owner == "bob"),
        ({"owner": ""}, lambda d: d.owner == ""),
        ({"search": "sn001"}, lambda d: d.asset_tag.startswith("SN001")),
        ({"search": "00000000000c"}, lambda d: d.id.endswith("00000000000c")),
        ({"search": ""}, lambda d: True),
        ({"asset_tag": "SN0008"}, lambda d: d.asset_tag == "SN0008"),
        (
            {"os": "macos", "enroll_status": "enrolled", "owner": "alice", "search": "sn"},
            lambda d: (d.os_type, d.enrolled, d.owner) == ("macos", True, "alice"),
        ),
    ],
)
@pytest.mark.parametrize("walk", [_pages, _streamed_pages], ids=["json", "json-lines"])
def test_filters_are_applied_by_the_service(
    api: RunningApi,
    fleet: list[Seeded],
    params: dict[str, str],
    keep: object,
    walk: Callable[..., Iterator[tuple[list[object], str | None]]],
) -> None:
    expected = [d.id for d in fleet if keep(d)]  # type: ignore[operator]
    assert expected
    with api.admin() as client:
        found = [item["id"] for items, _ in walk(client, page_size=4, view="summary", **params) for item in items]  # type: ignore[index]
    assert found == expected
    with api.admin() as client:
        streamed, _ = _stream(client, view="summary", **params)
    assert [item["id"] for item in streamed] == expected  # type: ignore[index]


def _error(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["kind"] == "validation"
    assert "\n" not in error["message"]
    return str(error["message"])


def _tampered(token: str) -> list[str]:
    decoded = json.loads(base64.urlsafe_b64decode(token))
    return [
        "garbage",
        token[:-4],  # cut short
        ("X" if token[0] != "X" else "Y") + token[1:],  # a changed character: no longer JSON
        base64.urlsafe_b64encode(json.dumps(decoded[:1]).encode()).decode(),  # one part missing
        base64.urlsafe_b64encode(json.dumps([decoded[0], 7]).encode()).decode(),  # a part of the wrong type
    ]


def test_a_garbage_or_tampered_page_token_is_a_one_line_400(api: RunningApi, fleet: list[Seeded]) -> None:
    with api.admin() as client:
        token = client.get("/v1/devices", params={"page_size": 2}).json()["next_page_token"]
        for bad in _tampered(token):
            for headers in ({}, {"accept": NDJSON_MEDIA_TYPE}):
                response = client.get("/v1/devices", params={"page_token": bad}, headers=headers)
                assert _error(response) == "invalid page token", bad
        assert "page_token" in _error(client.get("/v1/devices", params={"page_token": "A" * 5000}))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"os": "beos"}, 'os: invalid OS type "beos" (valid: linux, macos, windows, ios, ipados)'),
        ({"enroll_status": "maybe"}, 'enroll_status: invalid enroll status "maybe" (valid: not_enrolled, enrolled)'),
        ({"view": "everything"}, "query.view: Input should be 'resource' or 'summary'"),
        ({"ownr": "alice"}, "query.ownr: Extra inputs are not permitted"),
        ({"page_size": "0"}, "query.page_size: Input should be greater than or equal to 1"),
        (
            {"page_size": "1001"},
            "page_size: at most 1000 devices in one JSON page (a stream of application/x-ndjson may hold any number)",
        ),
        ({"page_size": str(2**31)}, "query.page_size: Input should be less than or equal to 2147483647"),
        ({"search": "x" * 257}, "query.search: String should have at most 256 characters"),
    ],
)
def test_bad_queries_are_one_line_400s_naming_what_is_allowed(
    api: RunningApi, params: dict[str, str], message: str
) -> None:
    with api.admin() as client:
        assert _error(client.get("/v1/devices", params=params)) == message


def _session(api: RunningApi, name: str, roles: tuple[str, ...]) -> str:
    admin = api.server.authenticate(api.admin_token)
    _, invite = api.server.create_user(admin, name, roles, {"logins": [name]})
    api.server.signup(invite, PASSWORD)
    key = public_key_to_openssh(generate_private_key().public_key())
    return api.server.login(name, PASSWORD, key, None).session_token


def test_listing_needs_list_and_a_lookup_by_asset_tag_needs_read(api: RunningApi, fleet: list[Seeded]) -> None:
    admin = api.server.authenticate(api.admin_token)
    reader = {
        "kind": "role",
        "version": "v7",
        "metadata": {"name": "device-reader"},
        "spec": {"allow": {"rules": [{"resources": ["device"], "verbs": ["read"]}]}},
    }
    api.server.put_resource(admin, reader, force=False)
    for name, roles in (("plain", ("access",)), ("reader", ("access", "device-reader"))):
        with api.client(_session(api, name, roles)) as client:
            for params in ({}, {"view": "summary"}, {"owner": "alice"}, {"search": "SN0008"}):
                for headers in ({}, {"accept": NDJSON_MEDIA_TYPE}):
                    response = client.get("/v1/devices", params=params, headers=headers)
                    assert response.status_code == 403, (name, params, response.text)
                    assert response.json()["error"]["message"] == 'access denied: missing permission "list" on "device"'
            lookup = client.get("/v1/devices", params={"asset_tag": "SN0008"})
            if name == "plain":
                assert lookup.status_code == 403
                assert lookup.json()["error"]["message"] == 'access denied: missing permission "read" on "device"'
            else:
                assert [d["spec"]["asset_tag"] for d in lookup.json()["items"]] == ["SN0008"]
    with api.client(_session(api, "admin2", ("access", "device-admin"))) as client:
        assert len(client.get("/v1/devices", params={"page_size": 1000}).json()["items"]) == len(fleet)


def _typed(api: RunningApi) -> AuthApi:
    client = AuthApi("127.0.0.1", insecure=True)
    client._http.close()
    client._http = httpx.Client(base_url=api.base_url, headers={"authorization": f"Bearer {api.admin_token}"})
    return client


def test_the_typed_client_pages_filters_and_streams(api: RunningApi, fleet: list[Seeded]) -> None:
    with _typed(api) as client:
        page = client.list_devices(DeviceListQuery.model_construct(page_size=10, os="linux"))
        assert isinstance(page, DeviceList) and page.next_page_token is None
        assert [d["spec"]["asset_tag"] for d in page.items] == [d.asset_tag for d in fleet if d.os_type == "linux"]
        summaries = client.list_device_summaries(DeviceListQuery.model_construct(page_size=5))
        assert isinstance(summaries.items[0], DeviceSummary) and summaries.next_page_token
        rest = client.list_device_summaries(
            DeviceListQuery.model_construct(page_size=1000, page_token=summaries.next_page_token)
        )
        assert [s.id for s in summaries.items + rest.items] == [d.id for d in fleet]
        stream = client.stream_devices(DeviceListQuery.model_construct(page_size=3, view="summary", owner=""))
        lines = [line for batch in stream for line in batch]
        assert [json.loads(line)["owner"] for line in lines] == ["", "", ""]
        assert stream.next_page_token is not None
        after = client.stream_devices(
            DeviceListQuery.model_construct(view="summary", owner="", page_token=stream.next_page_token)
        )
        rest_ids = [json.loads(line)["id"] for batch in after for line in batch]
        assert after.next_page_token is None
        assert [json.loads(line)["id"] for line in lines] + rest_ids == [d.id for d in fleet if not d.owner]
        assert [d["metadata"]["name"] for d in client.find_devices("SN0003").items] == [fleet[3].id]
        with pytest.raises(ValidationError, match=r"^invalid page token$"):
            list(client.stream_devices(DeviceListQuery.model_construct(page_token="nope")))
        with pytest.raises(ValidationError, match=r"^os: invalid OS type"):
            client.list_devices(DeviceListQuery.model_construct(os="plan9"))
        with pytest.raises(ValidationError, match=r"^page_size: at most 1000 devices in one JSON page"):
            client.list_devices(DeviceListQuery.model_construct(page_size=1001))


@pytest.mark.parametrize(
    ("last", "outcome"),
    [
        (b'{"next_page_token": "abc"}', "abc"),
        (b'{"next_page_token": null}', None),
        (b'{"error": {"kind": "access_denied", "message": "no"}}', AccessDeniedError("no")),
        (b'{"error": {"kind": "made-up", "message": "odd"}}', DevicetrustError("odd")),
        (None, DevicetrustError("the auth service's device listing ended early; run the command again")),
        (
            b'{"kind": "device"}',
            DevicetrustError("the auth service's device listing ended early; run the command again"),
        ),
        (b"not json", DevicetrustError("the auth service's device listing ended early; run the command again")),
        (b'{"next_page_token": 7}', DevicetrustError("the auth service sent an unexpected reply to devices")),
    ],
)
def test_a_stream_is_complete_only_with_its_last_line(last: bytes | None, outcome: object) -> None:
    if not isinstance(outcome, Exception):
        assert DeviceStream._end(last) == outcome
        return
    with pytest.raises(type(outcome)) as raised:
        DeviceStream._end(last)
    assert str(raised.value).startswith(str(outcome))


def test_the_typed_client_refuses_a_reply_that_is_not_a_stream(api: RunningApi, fleet: list[Seeded]) -> None:
    with _typed(api) as client:
        original = client._http.stream

        def json_only(method: str, url: str, **kwargs: Any) -> Any:
            kwargs["headers"] = {"Accept": "application/json"}
            return original(method, url, **kwargs)

        client._http.stream = json_only  # type: ignore[method-assign]
        with pytest.raises(DevicetrustError, match=r"unexpected reply to devices \(expected JSON lines\)$"):
            list(client.stream_devices(DeviceListQuery.model_construct()))
