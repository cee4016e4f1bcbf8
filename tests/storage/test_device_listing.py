"""Filtered device listings, on both dialects: every filter alone and combined, paged, and the JSON page the
database makes (documents and summaries) against the records the same query returns."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from devicetrust.errors import ValidationError
from devicetrust.storage.backend import Backend
from devicetrust.storage.records import DeviceFilter, DeviceRecord
from devicetrust.storage.repositories import Store

OS_TYPES = ("linux", "macos", "windows", "ios")


@dataclass(frozen=True)
class Seeded:
    id: str
    os_type: str
    asset_tag: str
    enroll_status: str
    owner: str
    source_name: str | None


def _fleet() -> list[Seeded]:
    """A small fleet with every combination that matters: owned and not, each source and none, several OSes
    sharing an asset tag, and tags and owners holding LIKE's wildcards and mixed case."""
    devices = []
    for index in range(60):
        devices.append(
            Seeded(
                id=str(uuid.UUID(int=index + 1)),
                os_type=OS_TYPES[index % len(OS_TYPES)],
                asset_tag=f"C02Ab{index // 2:03d}",
                enroll_status="enrolled" if index % 3 == 0 else "not_enrolled",
                owner=("alice", "bob", "Carol_x", "")[index % 4] if index % 3 == 0 else "",
                source_name=("jamf", "intune", None)[index % 3],
            )
        )
    devices += [
        Seeded(str(uuid.UUID(int=1000)), "macos", "100%_TAG", "not_enrolled", "", None),
        Seeded(str(uuid.UUID(int=1001)), "macos", "100XXTAG", "enrolled", "dave%", "jamf"),
    ]
    return devices


def _create(store: Store, device: Seeded) -> None:
    store.devices.create(
        device.id,
        device.os_type,
        device.asset_tag,
        {
            "kind": "device",
            "version": "v1",
            "metadata": {"name": device.id},
            "spec": {"asset_tag": device.asset_tag, "os_type": device.os_type, "note": "é\nline"},
        },
        enroll_status=device.enroll_status,
        owner=device.owner,
        source_name=device.source_name,
        source_origin=None if device.source_name is None else device.source_name,
    )


@pytest.fixture
def fleet(backend: Backend) -> list[Seeded]:
    devices = _fleet()
    with backend.begin() as store:
        for device in devices:
            _create(store, device)
    return devices


def _walk(backend: Backend, where: DeviceFilter | None, page_size: int) -> list[DeviceRecord]:
    seen: list[DeviceRecord] = []
    token: str | None = None
    while True:
        with backend.begin() as store:
            page, token = store.devices.list_page(page_size=page_size, page_token=token, where=where)
        assert len(page) <= page_size
        seen.extend(page)
        if token is None:
            return seen
        assert page, "a page with a next token is never empty"


FILTERS: list[tuple[str, DeviceFilter, Callable[[Seeded], bool]]] = [
    ("os", DeviceFilter(os_type="windows"), lambda d: d.os_type == "windows"),
    ("enrolled", DeviceFilter(enroll_status="enrolled"), lambda d: d.enroll_status == "enrolled"),
    ("not enrolled", DeviceFilter(enroll_status="not_enrolled"), lambda d: d.enroll_status == "not_enrolled"),
    ("source", DeviceFilter(source_name="intune"), lambda d: d.source_name == "intune"),
    ("no source", DeviceFilter(source_name=""), lambda d: d.source_name is None),
    ("owner", DeviceFilter(owner="alice"), lambda d: d.owner == "alice"),
    ("owner is exact", DeviceFilter(owner="Alice"), lambda d: d.owner == "Alice"),
    ("nobody's", DeviceFilter(owner=""), lambda d: d.owner == ""),
    ("asset tag", DeviceFilter(asset_tag="C02Ab007"), lambda d: d.asset_tag == "C02Ab007"),
    ("search tag any case", DeviceFilter(search="c02ab01"), lambda d: "c02ab01" in d.asset_tag.lower()),
    ("search owner", DeviceFilter(search="CAROL"), lambda d: "carol" in d.owner.lower()),
    ("search id", DeviceFilter(search="0000000003"), lambda d: "0000000003" in d.id),
    # LIKE's wildcards match only themselves
    ("search %", DeviceFilter(search="0%_"), lambda d: "0%_" in d.asset_tag),
    ("search _", DeviceFilter(search="l_x"), lambda d: "l_x" in d.owner.lower()),
    ("search % in owner", DeviceFilter(search="e%"), lambda d: "e%" in d.owner),
    ("search nothing", DeviceFilter(search="zzz"), lambda d: "zzz" in d.asset_tag.lower()),
    (
        "combined",
        DeviceFilter(search="ab0", os_type="linux", enroll_status="enrolled", source_name="jamf", owner="alice"),
        lambda d: (
            "ab0" in d.asset_tag.lower()
            and (d.os_type, d.enroll_status, d.source_name, d.owner) == ("linux", "enrolled", "jamf", "alice")
        ),
    ),
    (
        "combined, no source",
        DeviceFilter(enroll_status="not_enrolled", source_name="", search="c02"),
        lambda d: d.enroll_status == "not_enrolled" and d.source_name is None and "c02" in d.asset_tag.lower(),
    ),
]


@pytest.mark.parametrize(("where", "keep"), [(f, k) for _, f, k in FILTERS], ids=[name for name, _, _ in FILTERS])
@pytest.mark.parametrize("page_size", [1, 4, 1000])
def test_each_filter_keeps_exactly_the_matching_devices_in_order(
    backend: Backend, fleet: list[Seeded], where: DeviceFilter, keep: Callable[[Seeded], bool], page_size: int
) -> None:
    expected = sorted((d.asset_tag, d.id) for d in fleet if keep(d))
    seen = _walk(backend, where, page_size)
    assert [(d.asset_tag, d.id) for d in seen] == expected
    # the fleet holds matches for every filter but those meant to match nothing, or the test would prove little
    assert bool(expected) == (where not in (DeviceFilter(owner="Alice"), DeviceFilter(search="zzz")))


def test_no_filter_and_an_empty_filter_list_everything(backend: Backend, fleet: list[Seeded]) -> None:
    everything = sorted((d.asset_tag, d.id) for d in fleet)
    assert [(d.asset_tag, d.id) for d in _walk(backend, None, 7)] == everything
    assert [(d.asset_tag, d.id) for d in _walk(backend, DeviceFilter(), 7)] == everything


def test_source_name_argument_still_narrows_and_combines(backend: Backend, fleet: list[Seeded]) -> None:
    with backend.begin() as store:
        page, _ = store.devices.list_page(page_size=1000, source_name="jamf", where=DeviceFilter(owner="bob"))
    assert {(d.source_name, d.owner) for d in page} == {("jamf", "bob")}
    assert len(page) == sum(1 for d in fleet if (d.source_name, d.owner) == ("jamf", "bob"))


@pytest.mark.parametrize("page_size", [1, 5, 1000])
@pytest.mark.parametrize("where", [None, DeviceFilter(search="c02ab0"), DeviceFilter(source_name="")])
def test_json_pages_hold_the_stored_documents_and_the_same_tokens(
    backend: Backend, fleet: list[Seeded], where: DeviceFilter | None, page_size: int
) -> None:
    token: str | None = None
    while True:
        with backend.begin() as store:
            records, next_token = store.devices.list_page(page_size=page_size, page_token=token, where=where)
            page = store.devices.list_page_json(page_size=page_size, page_token=token, where=where)
        assert [json.loads(item) for item in page.items] == [record.body for record in records]
        # one document per line: nothing the database writes may break a line
        assert not any("\n" in item for item in page.items)
        assert page.next_page_token == next_token
        token = next_token
        if token is None:
            break


def test_json_summaries_carry_the_listing_columns(backend: Backend, fleet: list[Seeded]) -> None:
    by_id = {d.id: d for d in fleet}
    with backend.begin() as store:
        page = store.devices.list_page_json(page_size=1000, summary=True)
    assert page.next_page_token is None
    summaries = [json.loads(item) for item in page.items]
    assert len(summaries) == len(fleet)
    for summary in summaries:
        device = by_id[summary["id"]]
        assert summary == {
            "id": device.id,
            "os_type": device.os_type,
            "asset_tag": device.asset_tag,
            "enroll_status": device.enroll_status,
            "owner": device.owner,
            "source": device.source_name or "",
        }


def test_json_page_size_is_capped_and_checked(backend: Backend, fleet: list[Seeded]) -> None:
    with backend.begin() as store:
        first = store.devices.list_page_json(page_size=10)
        rest = store.devices.list_page_json(page_size=10_000, page_token=first.next_page_token)
        assert (len(first.items), len(rest.items), rest.next_page_token) == (10, len(fleet) - 10, None)
        with pytest.raises(ValidationError, match="page size must be at least 1"):
            store.devices.list_page_json(page_size=0)


# SQLite's planner is deterministic for a given schema, so the plan shows whether a filter reads its index;
# PostgreSQL chooses by statistics, which a test fleet does not make representative.
@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("owner = 'alice'", "ix_devices_owner_asset_tag_id"),
        ("enroll_status = 'enrolled'", "ix_devices_enroll_status_asset_tag_id"),
        ("source_name = 'jamf'", "ix_devices_source_name_asset_tag_id"),
        # the unique (os_type, asset_tag) constraint's own index
        ("os_type = 'linux'", "(os_type=? AND"),
        (
            "(lower(asset_tag) LIKE '%x%' OR lower(owner) LIKE '%x%' OR lower(id) LIKE '%x%')",
            "COVERING INDEX ix_devices_asset_tag_id_owner",
        ),
    ],
)
def test_filters_read_their_index_on_sqlite(tmp_path: Path, where: str, index: str) -> None:
    url = f"sqlite:///{tmp_path / 'plans.sqlite'}"
    with Backend.open(url) as backend:
        backend.migrate()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            plan = conn.execute(
                sa.text(
                    # the conditions are this test's own constants
                    f"EXPLAIN QUERY PLAN SELECT asset_tag, id FROM devices WHERE {where} "  # noqa: S608
                    "AND (asset_tag, id) > ('A', '') ORDER BY asset_tag, id LIMIT 101"
                )
            ).all()
    finally:
        engine.dispose()
    details = " ".join(str(row[-1]) for row in plan)
    assert index in details
    assert "TEMP B-TREE" not in details  # the index gives the order: no sort of all matches
