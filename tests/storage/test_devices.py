"""Devices: CRUD, uniqueness, keyset pagination, streaming by MDM source and bulk upserts, on both dialects."""

from __future__ import annotations

import base64
import uuid
from collections import Counter
from dataclasses import replace
from datetime import timedelta

import pytest
from pydantic import JsonValue
from tests.storage.conftest import START, FakeClock

from devicetrust.errors import AlreadyExistsError, ConflictError, NotFoundError, ValidationError
from devicetrust.storage.backend import Backend
from devicetrust.storage.records import (
    DeviceIdentity,
    DeviceRecord,
    DeviceSourceParts,
    DeviceSourceUpdate,
    DeviceUpsert,
    UpsertResult,
)
from devicetrust.storage.repositories import INVALID_PAGE_TOKEN_MESSAGE, MAX_IDENTITY_PAGE_SIZE, MAX_PAGE_SIZE, Store
from devicetrust.types.mdm_parts import spec_fingerprint, with_mdm_parts

HOUR = timedelta(hours=1)
DEVICE_ID = "5a2b3c4d-1111-2222-3333-444455556666"


def _body(asset_tag: str, **extra: object) -> dict[str, object]:
    return {"kind": "device", "spec": {"asset_tag": asset_tag, **extra}}


def _enrolled_meanwhile(store: Store, device_id: str, asset_tag: str, credential_id: str) -> None:
    """Someone enrolls the device (owner bob, credential ``credential_id``) after a sync read it at revision 1."""
    store.devices.update(
        device_id,
        _body(asset_tag, credential={"id": credential_id}),
        enroll_status="enrolled",
        owner="bob",
        source_name="jamf",
        source_origin="jamf",
        external_id=f"ext-{asset_tag}",
    )


def _upsert(
    asset_tag: str,
    *,
    os_type: str = "macos",
    source: str | None = "jamf",
    external_id: str | None = None,
    **extra: object,
) -> DeviceUpsert:
    return DeviceUpsert(
        id=str(uuid.uuid4()),
        os_type=os_type,
        asset_tag=asset_tag,
        body=_body(asset_tag, **extra),
        source_name=source,
        source_origin=None if source is None else "jamf",
        external_id=external_id if external_id is not None else (None if source is None else f"ext-{asset_tag}"),
    )


def _seed(store: Store, count: int, *, prefix: str = "T", source: str | None = "jamf") -> list[DeviceUpsert]:
    rows = [_upsert(f"{prefix}{i:05d}", source=source) for i in range(count)]
    assert store.devices.upsert_many(rows) == UpsertResult(count, 0, 0)
    return rows


# ---------------------------------------------------------------------------------------------- CRUD


def test_device_create_get_find(backend: Backend) -> None:
    with backend.begin() as store:
        created = store.devices.create(DEVICE_ID, "macos", "C02XJ0ABHX87", _body("C02XJ0ABHX87"))
    assert created == DeviceRecord(
        id=DEVICE_ID,
        os_type="macos",
        asset_tag="C02XJ0ABHX87",
        enroll_status="not_enrolled",
        owner="",
        source_name=None,
        source_origin=None,
        external_id=None,
        body=_body("C02XJ0ABHX87"),
        revision=1,
        created=START,
        updated=START,
    )
    with backend.begin() as store:
        assert store.devices.get(DEVICE_ID) == created
        assert store.devices.find(DEVICE_ID) == created
        assert store.devices.find("nobody") is None
        assert store.devices.find_by_asset_tag("macos", "C02XJ0ABHX87") == created
        assert store.devices.find_by_asset_tag("windows", "C02XJ0ABHX87") is None
        assert store.devices.find_by_asset_tag("macos", "other") is None


def test_device_create_with_every_column(backend: Backend) -> None:
    with backend.begin() as store:
        created = store.devices.create(
            DEVICE_ID,
            "windows",
            "SN1",
            _body("SN1"),
            enroll_status="enrolled",
            owner="alice",
            source_name="intune",
            source_origin="intune",
            external_id="ext-1",
        )
    with backend.begin() as store:
        stored = store.devices.get(DEVICE_ID)
    assert stored == created
    assert (stored.enroll_status, stored.owner, stored.source_name, stored.source_origin, stored.external_id) == (
        "enrolled",
        "alice",
        "intune",
        "intune",
        "ext-1",
    )


def test_same_asset_tag_is_unique_per_os_only(backend: Backend) -> None:
    with backend.begin() as store:
        mac = store.devices.create(str(uuid.uuid4()), "macos", "SN1", {})
        windows = store.devices.create(str(uuid.uuid4()), "windows", "SN1", {})
        store.devices.create(str(uuid.uuid4()), "linux", "SN2", {})
        with pytest.raises(AlreadyExistsError, match=r'^device "macos/SN1" already exists$'):
            store.devices.create(str(uuid.uuid4()), "macos", "SN1", {})
        # an id conflict reads the same
        with pytest.raises(AlreadyExistsError, match=r'^device "linux/SN9" already exists$'):
            store.devices.create(mac.id, "linux", "SN9", {})
        # the transaction is still usable after refused writes (no aborted PostgreSQL transaction)
        assert store.devices.find_all_by_asset_tag("SN1") == [mac, windows]
    with backend.begin() as store:
        assert store.devices.count() == 3
        assert store.devices.find_all_by_asset_tag("SN9") == []


@pytest.mark.parametrize("operation", ["get", "update", "delete"])
def test_device_not_found(backend: Backend, operation: str) -> None:
    with backend.begin() as store, pytest.raises(NotFoundError, match=r'^device "ghost" not found$'):
        if operation == "get":
            store.devices.get("ghost")
        elif operation == "update":
            store.devices.update(
                "ghost", {}, enroll_status="enrolled", owner="", source_name=None, source_origin=None, external_id=None
            )
        else:
            store.devices.delete("ghost")


def test_device_update_replaces_columns_and_checks_the_expected_revision(backend: Backend, clock: FakeClock) -> None:
    with backend.begin() as store:
        store.devices.create(DEVICE_ID, "macos", "SN1", _body("SN1"), source_name="jamf", external_id="j-1")
    clock.advance(HOUR)
    with backend.begin() as store:
        updated = store.devices.update(
            DEVICE_ID,
            _body("SN1", credential={"id": "c"}),
            enroll_status="enrolled",
            owner="alice",
            source_name=None,
            source_origin=None,
            external_id=None,
            expected_revision=1,
        )
        assert updated == DeviceRecord(
            DEVICE_ID,
            "macos",
            "SN1",
            "enrolled",
            "alice",
            None,
            None,
            None,
            _body("SN1", credential={"id": "c"}),
            2,
            START,
            START + HOUR,
        )
        with pytest.raises(
            ConflictError, match=r'^device "macos/SN1" was changed by someone else \(revision 2, expected 1\)'
        ):
            store.devices.update(
                DEVICE_ID,
                {},
                enroll_status="not_enrolled",
                owner="",
                source_name=None,
                source_origin=None,
                external_id=None,
                expected_revision=1,
            )
        # without expected_revision the write always goes through
        again = store.devices.update(
            DEVICE_ID,
            {"v": 3},
            enroll_status="enrolled",
            owner="bob",
            source_name="s",
            source_origin="o",
            external_id="e",
        )
        assert (again.revision, again.owner, again.body) == (3, "bob", {"v": 3})
    with backend.begin() as store:
        assert store.devices.get(DEVICE_ID) == again


def test_device_delete_returns_the_record(backend: Backend) -> None:
    with backend.begin() as store:
        created = store.devices.create(DEVICE_ID, "macos", "SN1", _body("SN1"))
        store.devices.create(str(uuid.uuid4()), "windows", "SN1", {})
    with backend.begin() as store:
        assert store.devices.delete(DEVICE_ID) == created
        assert store.devices.find(DEVICE_ID) is None
        assert [d.os_type for d in store.devices.find_all_by_asset_tag("SN1")] == ["windows"]
        # the tag is free again on that OS
        store.devices.create(str(uuid.uuid4()), "macos", "SN1", {})


def test_device_bodies_keep_nested_json(backend: Backend) -> None:
    body = {"s": "ü ✓", "n": 1.5, "b": False, "none": None, "list": [1, {"deep": ["x"]}], "empty": {}}
    with backend.begin() as store:
        store.devices.create(DEVICE_ID, "macos", "SN1", body)
    with backend.begin() as store:
        assert store.devices.get(DEVICE_ID).body == body


def test_device_count(backend: Backend) -> None:
    with backend.begin() as store:
        assert store.devices.count() == 0
        _seed(store, 3, prefix="J", source="jamf")
        _seed(store, 2, prefix="I", source="intune")
        store.devices.create(DEVICE_ID, "macos", "manual", {})
        assert store.devices.count() == 6
        assert store.devices.count("jamf") == 3
        assert store.devices.count("intune") == 2
        assert store.devices.count("kandji") == 0


# ---------------------------------------------------------------------------------------------- pages


def _walk(store: Store, page_size: int, source_name: str | None = None) -> list[DeviceRecord]:
    seen: list[DeviceRecord] = []
    token: str | None = None
    while True:
        page, token = store.devices.list_page(page_size=page_size, page_token=token, source_name=source_name)
        assert 0 < len(page) <= page_size
        seen.extend(page)
        if token is None:
            return seen


@pytest.mark.parametrize("page_size", [1, 3, 1000])
def test_page_walk_sees_every_device_once_in_order(backend: Backend, page_size: int) -> None:
    with backend.begin() as store:
        _seed(store, 20)
        # the same tag on several OSes: the id breaks the tie
        for os_type in ("windows", "linux"):
            store.devices.create(str(uuid.uuid4()), os_type, "T00007", {})
    with backend.begin() as store:
        seen = _walk(store, page_size)
    keys = [(d.asset_tag, d.id) for d in seen]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys) == 22


@pytest.mark.parametrize("page_size", [1, 3, 1000])
def test_page_walk_survives_concurrent_inserts_and_deletes(backend: Backend, page_size: int) -> None:
    with backend.begin() as store:
        original = {row.asset_tag for row in _seed(store, 30, prefix="M")}
    seen: list[str] = []
    token: str | None = None
    added: set[str] = set()
    deleted: set[str] = set()
    step = 0
    while True:
        # each page is its own transaction; another writer commits in between
        with backend.begin() as store:
            page, token = store.devices.list_page(page_size=page_size, page_token=token)
        seen.extend(d.asset_tag for d in page)
        with backend.begin() as store:
            # behind the cursor, right after it, and far ahead of it (a few times: the walk must end)
            for tag in (f"A{step:05d}", f"{page[-1].asset_tag}x", f"Z{step:05d}") if step < 3 else ():
                store.devices.create(str(uuid.uuid4()), "macos", tag, {})
                added.add(tag)
            if step == 0:
                for tag in {"M00010", "M00025"} - set(seen):
                    record = store.devices.find_by_asset_tag("macos", tag)
                    assert record is not None
                    deleted.add(store.devices.delete(record.id).asset_tag)
        step += 1
        if token is None:
            break
    assert max(Counter(seen).values()) == 1
    # every device that existed throughout the walk was seen once; those deleted ahead of the cursor were not
    assert set(seen) & original == original - deleted
    assert set(seen) <= original | added
    if token is None and page_size < len(original):
        assert deleted
    # inserts behind the cursor are not seen, those ahead of it are
    assert not {tag for tag in seen if tag.startswith("A")}
    assert ("Z00000" in seen) == (page_size < len(original))


def test_page_size_is_capped_and_must_be_positive(backend: Backend) -> None:
    with backend.begin() as store:
        _seed(store, MAX_PAGE_SIZE + 1)
        page, token = store.devices.list_page(page_size=MAX_PAGE_SIZE * 5)
        assert len(page) == MAX_PAGE_SIZE
        assert token is not None
        rest, last = store.devices.list_page(page_size=MAX_PAGE_SIZE * 5, page_token=token)
        assert (len(rest), last) == (1, None)
        default_page, _ = store.devices.list_page()
        assert len(default_page) == 100
        for size in (0, -1):
            with pytest.raises(ValidationError, match=r"page size must be at least 1"):
                store.devices.list_page(page_size=size)


def test_empty_and_exact_pages(backend: Backend) -> None:
    with backend.begin() as store:
        assert store.devices.list_page() == ([], None)
        _seed(store, 4)
        page, token = store.devices.list_page(page_size=4)
        # no next token when the page holds the last device: no empty trailing page
        assert (len(page), token) == (4, None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not base64!",
        "%%%%",
        _b64(b"\xff\xfe not utf-8"),
        _b64(b"not json"),
        _b64(b'{"asset_tag": "x"}'),
        _b64(b'["only one"]'),
        _b64(b'["x", 1]'),
        _b64(b'["a", "b", "c"]'),
        _b64(b"null"),
    ],
)
def test_invalid_page_token(backend: Backend, token: str) -> None:
    with backend.begin() as store, pytest.raises(ValidationError, match=rf"^{INVALID_PAGE_TOKEN_MESSAGE}$"):
        store.devices.list_page(page_token=token)


def test_page_walk_by_source(backend: Backend) -> None:
    with backend.begin() as store:
        jamf = {row.asset_tag for row in _seed(store, 10, prefix="J", source="jamf")}
        _seed(store, 10, prefix="I", source="intune")
        _seed(store, 5, prefix="N", source=None)
    with backend.begin() as store:
        assert [d.asset_tag for d in _walk(store, 3, "jamf")] == sorted(jamf)
        assert len(_walk(store, 4)) == 25
        assert store.devices.list_page(source_name="kandji") == ([], None)


# ------------------------------------------------------------------------------------------ streaming


def test_list_by_source_streams_all_and_only_that_source(backend: Backend) -> None:
    with backend.begin() as store:
        jamf = _seed(store, 2500, prefix="J", source="jamf")
        _seed(store, 700, prefix="I", source="intune")
        _seed(store, 300, prefix="K", source=None)
    with backend.begin() as store:
        streamed = store.devices.list_by_source("jamf")
        first = next(streamed)
        rest = list(streamed)
    records = [first, *rest]
    assert [d.asset_tag for d in records] == sorted(row.asset_tag for row in jamf)
    assert {d.source_name for d in records} == {"jamf"}
    assert len({d.id for d in records}) == len(jamf)


@pytest.mark.parametrize("chunk_size", [1, 7, 50])
def test_list_by_source_allows_writes_between_items(backend: Backend, chunk_size: int) -> None:
    with backend.begin() as store:
        rows = _seed(store, 40, prefix="J", source="jamf")
        _seed(store, 15, prefix="I", source="intune")
    with backend.begin() as store:
        seen = []
        for record in store.devices.list_by_source("jamf", chunk_size=chunk_size):
            seen.append(record.asset_tag)
            # what a full sync does while diffing: rewrite, delete, add
            if record.asset_tag.endswith("3"):
                store.devices.delete(record.id)
            else:
                store.devices.upsert_many([_upsert(record.asset_tag, synced=True)])
            store.devices.upsert_many([_upsert(f"{record.asset_tag}-new", source="intune")])
        assert seen == sorted(row.asset_tag for row in rows)
        assert store.devices.count("jamf") == 36
    with backend.begin() as store:
        assert list(store.devices.list_by_source("kandji")) == []
        with pytest.raises(ValueError, match="chunk size"):
            next(store.devices.list_by_source("jamf", chunk_size=0))


# ------------------------------------------------------------------------------------------- upserts


def test_upsert_many_counts_and_keeps_what_the_server_owns(backend: Backend, clock: FakeClock) -> None:
    with backend.begin() as store:
        enrolled = store.devices.create(
            DEVICE_ID, "macos", "E1", _body("E1"), enroll_status="enrolled", owner="alice", source_name=None
        )
        rows = _seed(store, 4, prefix="S")
    clock.advance(HOUR)
    batch = [
        # enrolled by hand earlier, now reported by the MDM (a new id is ignored)
        _upsert("E1", external_id="j-e1", model="MacBookPro18,1"),
        _upsert("S00000", model="changed"),  # body changed
        DeviceUpsert(str(uuid.uuid4()), "macos", "S00001", rows[1].body, "jamf", "jamf", "moved-id"),  # source only
        # unchanged, with the body's keys in another order
        DeviceUpsert(
            str(uuid.uuid4()),
            "macos",
            "S00002",
            {"spec": {"asset_tag": "S00002"}, "kind": "device"},
            "jamf",
            "jamf",
            "ext-S00002",
        ),
        rows[3],  # unchanged, same id
        _upsert("S00000", os_type="windows"),  # new: same tag, other OS
        _upsert("NEW"),  # new
    ]
    with backend.begin() as store:
        assert store.devices.upsert_many(batch) == UpsertResult(created=2, updated=3, unchanged=2)
    with backend.begin() as store:
        e1 = store.devices.get(DEVICE_ID)
        assert (e1.id, e1.enroll_status, e1.owner, e1.created) == (DEVICE_ID, "enrolled", "alice", START)
        assert (e1.source_name, e1.source_origin, e1.external_id) == ("jamf", "jamf", "j-e1")
        assert (e1.body, e1.revision, e1.updated) == (batch[0].body, enrolled.revision + 1, START + HOUR)
        s0 = store.devices.find_by_asset_tag("macos", "S00000")
        assert s0 is not None
        assert (s0.id, s0.body, s0.revision, s0.updated) == (rows[0].id, batch[1].body, 2, START + HOUR)
        s1 = store.devices.find_by_asset_tag("macos", "S00001")
        assert s1 is not None
        assert (s1.id, s1.external_id, s1.revision) == (rows[1].id, "moved-id", 2)
        for row in rows[2:]:
            same = store.devices.find_by_asset_tag("macos", row.asset_tag)
            assert same is not None
            assert (same.id, same.revision, same.updated) == (row.id, 1, START)
        new = store.devices.find_by_asset_tag("macos", "NEW")
        assert new is not None
        assert (new.id, new.enroll_status, new.owner, new.revision, new.created) == (
            batch[-1].id,
            "not_enrolled",
            "",
            1,
            START + HOUR,
        )
        assert len(store.devices.find_all_by_asset_tag("S00000")) == 2
        # the same batch again changes nothing
        assert store.devices.upsert_many(batch) == UpsertResult(created=0, updated=0, unchanged=len(batch))


def test_upsert_many_of_an_empty_batch(backend: Backend) -> None:
    with backend.begin() as store:
        assert store.devices.upsert_many([]) == UpsertResult(0, 0, 0)


def test_upsert_many_refuses_duplicates_within_a_batch(backend: Backend) -> None:
    twin = _upsert("SN1")
    with backend.begin() as store:
        with pytest.raises(ValidationError, match=r'^device "macos/SN1" appears twice in one batch$'):
            store.devices.upsert_many([twin, _upsert("SN1")])
        with pytest.raises(ValidationError, match=rf'^device id "{twin.id}" appears twice in one batch$'):
            store.devices.upsert_many([twin, DeviceUpsert(twin.id, "windows", "SN1", {}, None, None, None)])
        assert store.devices.count() == 0


def test_upsert_many_refuses_a_new_device_with_a_taken_id(backend: Backend) -> None:
    with backend.begin() as store:
        store.devices.create(DEVICE_ID, "macos", "SN1", {})
    with (
        pytest.raises(AlreadyExistsError, match="id belongs to another device"),
        backend.begin() as store,
    ):
        store.devices.upsert_many([_upsert("OK"), DeviceUpsert(DEVICE_ID, "macos", "SN2", {}, None, None, None)])
    with backend.begin() as store:
        assert [d.asset_tag for d in _walk(store, 10)] == ["SN1"]


def test_upsert_many_of_a_large_batch(backend: Backend, clock: FakeClock) -> None:
    size = 5000
    rows = [_upsert(f"L{i:05d}", serial=i) for i in range(size)]
    with backend.begin() as store:
        assert store.devices.upsert_many(rows) == UpsertResult(size, 0, 0)
    clock.advance(HOUR)
    # every tenth changes, and a second OS appears for every fifth
    again = [_upsert(row.asset_tag, serial=i + 1) if i % 10 == 0 else row for i, row in enumerate(rows)]
    again += [_upsert(row.asset_tag, os_type="windows") for row in rows[::5]]
    with backend.begin() as store:
        assert store.devices.upsert_many(again) == UpsertResult(size // 5, size // 10, size - size // 10)
    with backend.begin() as store:
        assert store.devices.count() == size + size // 5
        assert store.devices.count("jamf") == size + size // 5
        by_tag = {d.asset_tag: d for d in store.devices.list_by_source("jamf") if d.os_type == "macos"}
    assert len(by_tag) == size
    for i, row in enumerate(rows):
        record = by_tag[row.asset_tag]
        assert record.id == row.id
        assert record.body == _body(row.asset_tag, serial=i + 1 if i % 10 == 0 else i)
        assert record.revision == (2 if i % 10 == 0 else 1)


# ------------------------------------------------------------------------------ MDM sync batches


def test_the_lookup_by_asset_tag_returns_only_the_identities_asked_for(backend: Backend) -> None:
    with backend.begin() as store:
        rows = _seed(store, 2500, prefix="F")  # more tags than one IN list holds
        store.devices.upsert_many([_upsert("F00001", os_type="windows")])
        found = store.devices.find_fingerprints_by_asset_tag(
            [("macos", row.asset_tag) for row in rows[::2]] + [("macos", "NOPE"), ("linux", "F00001")]
        )
        assert sorted(record.id for record in found) == sorted(row.id for row in rows[::2])
        assert store.devices.find_fingerprints_by_asset_tag([]) == []
        # both OSes of one tag when both are asked for
        both = store.devices.find_fingerprints_by_asset_tag([("macos", "F00001"), ("windows", "F00001")])
        assert sorted(record.os_type for record in both) == ["macos", "windows"]
        assert [r.id for r in store.devices.find_many([rows[0].id, rows[0].id, "missing"])] == [rows[0].id]
        # the columns and the fingerprint of each body's MDM parts
        prints = store.devices.find_fingerprints_by_asset_tag(
            [("macos", "F00002"), ("windows", "F00001"), ("macos", "NOPE")]
        )
        assert sorted((p.os_type, p.asset_tag, p.source_name, p.external_id, p.revision, p.stored) for p in prints) == [
            ("macos", "F00002", "jamf", "ext-F00002", 1, True),
            ("windows", "F00001", "jamf", "ext-F00001", 1, True),
        ]
        bodies = {(r.os_type, r.asset_tag): r.body for r in store.devices.find_many(p.id for p in prints)}
        assert {p.fingerprint for p in prints} == {spec_fingerprint(body) for body in bodies.values()}


def test_every_device_write_keeps_the_fingerprint_of_the_document_it_writes(backend: Backend) -> None:
    jamf = {"name": "jamf", "origin": "jamf"}

    def check(store: Store, *tags: str) -> None:
        found = store.devices.find_fingerprints_by_asset_tag([("macos", tag) for tag in tags])
        bodies = {record.id: record.body for record in store.devices.find_many(d.id for d in found)}
        assert len(found) == len(tags)
        assert all(d.stored and d.fingerprint == spec_fingerprint(bodies[d.id]) for d in found)

    with backend.begin() as store:
        created = store.devices.create(DEVICE_ID, "macos", "P1", _body("P1", source=jamf, profile={"model": "a"}))
        store.devices.upsert_many([_upsert("P2", source="jamf", profile={"model": "b"})])  # inserted
        check(store, "P1", "P2")
        # fingerprints are unsigned 64-bit; a document without MDM parts has one above 2**63 (stored as BIGINT)
        assert spec_fingerprint(_body("P3")) >= 1 << 63
        store.devices.create(str(uuid.uuid4()), "macos", "P3", _body("P3"))
        check(store, "P3")
        store.devices.update(
            created.id,
            _body("P1", source=jamf, profile={"model": "c"}),
            enroll_status="enrolled",
            owner="alice",
            source_name="jamf",
            source_origin="jamf",
            external_id=None,
        )
        store.devices.upsert_many([_upsert("P2", source="jamf", profile={"model": "d"})])  # updated
        check(store, "P1", "P2")
        p2 = store.devices.find_by_asset_tag("macos", "P2")
        assert p2 is not None and p2.revision == 2
        body = _body("P2", source=jamf, profile={"model": "e"})
        assert store.devices.update_from_source([DeviceSourceUpdate(p2.id, body, "jamf", "jamf", "x", 2)]) == {p2.id}
        check(store, "P1", "P2", "P3")
        # kept for devices still at the revision it was computed at, never for one written since
        stale = store.devices.find_fingerprints_by_asset_tag([("macos", "P1")])[0]
        store.devices.store_fingerprints([replace(stale, fingerprint=1, revision=stale.revision - 1)])
        check(store, "P1")
        store.devices.store_fingerprints([replace(stale, fingerprint=1)])
        assert store.devices.find_fingerprints_by_asset_tag([("macos", "P1")])[0].fingerprint == 1


def test_update_from_source_writes_only_devices_still_at_their_revision(backend: Backend, clock: FakeClock) -> None:
    with backend.begin() as store:
        rows = _seed(store, 3, prefix="U")
        enrolled = store.devices.create(
            DEVICE_ID, "macos", "E1", _body("E1"), enroll_status="enrolled", owner="alice", source_name="jamf"
        )
        _enrolled_meanwhile(store, rows[1].id, "U00001", "c")
    clock.advance(HOUR)

    def update(device_id: str, tag: str, expected: int) -> DeviceSourceUpdate:
        return DeviceSourceUpdate(device_id, _body(tag, model="new"), "jamf", "jamf", f"new-{tag}", expected)

    batch = [
        update(rows[0].id, "U00000", 1),
        update(rows[1].id, "U00001", 1),
        update(enrolled.id, "E1", 1),
        update(str(uuid.uuid4()), "GONE", 1),
    ]
    with backend.begin() as store:
        assert store.devices.update_from_source(batch) == {rows[0].id, enrolled.id}
        assert store.devices.update_from_source([]) == set()
        with pytest.raises(ValidationError, match="appears twice"):
            store.devices.update_from_source([batch[0], batch[0]])
    with backend.begin() as store:
        u0 = store.devices.get(rows[0].id)
        assert (u0.body, u0.external_id, u0.revision, u0.updated, u0.created) == (
            _body("U00000", model="new"),
            "new-U00000",
            2,
            START + HOUR,
            START,
        )
        e1 = store.devices.get(enrolled.id)
        # the columns the cluster owns are not the update's to change
        assert (e1.enroll_status, e1.owner, e1.source_origin, e1.revision) == ("enrolled", "alice", "jamf", 2)
        u1 = store.devices.get(rows[1].id)
        assert (u1.body, u1.owner, u1.revision) == (_body("U00001", credential={"id": "c"}), "bob", 2)


def test_update_source_parts_merges_the_mdm_parts_onto_each_document_as_stored(
    backend: Backend, clock: FakeClock
) -> None:
    """On both dialects the written document is exactly with_mdm_parts of the stored one (PostgreSQL merges it in
    SQL, SQLite in Python), only devices still at their revision are written, and each comes back with the id of the
    credential its document holds."""
    with backend.begin() as store:
        rows = _seed(store, 2, prefix="M")
        enrolled = store.devices.create(
            DEVICE_ID,
            "macos",
            "E1",
            {
                "kind": "device",
                "metadata": {"name": DEVICE_ID},
                "spec": {"asset_tag": "E1", "credential": {"id": "c1"}},
            },
            enroll_status="enrolled",
            owner="alice",
            source_name="jamf",
        )
        odd = store.devices.create(str(uuid.uuid4()), "macos", "S1", {"kind": "device", "spec": "not an object"})
        _enrolled_meanwhile(store, rows[1].id, "M00001", "c2")
    with backend.begin() as store:
        before = {record.id: record.body for record in store.devices.find_many([rows[0].id, enrolled.id, odd.id])}
    clock.advance(HOUR)
    source = {"name": "jamf", "origin": "jamf"}
    stamp = "2026-11-25T12:00:00Z"

    def parts(device_id: str, expected: int, model: str) -> DeviceSourceParts:
        profile: dict[str, JsonValue] = {"model": model, "os_version": "15.1", "update_time": stamp}
        return DeviceSourceParts(device_id, source, profile, stamp, "jamf", "jamf", f"ext-{model}", expected)

    batch = [
        parts(rows[0].id, 1, "m0"),
        parts(rows[1].id, 1, "m1"),
        parts(enrolled.id, 1, "e1"),
        parts(odd.id, 1, "s1"),
        parts(str(uuid.uuid4()), 1, "gone"),
    ]
    with backend.begin() as store:
        assert store.devices.update_source_parts(batch) == {rows[0].id: "", enrolled.id: "c1", odd.id: ""}
        assert store.devices.update_source_parts([]) == {}
        with pytest.raises(ValidationError, match="appears twice"):
            store.devices.update_source_parts([batch[0], batch[0]])
    with backend.begin() as store:
        for update in (batch[0], batch[2], batch[3]):
            record = store.devices.get(update.id)
            assert record.body == with_mdm_parts(before[update.id], update.source, update.profile, stamp)
            assert (record.external_id, record.source_name, record.revision, record.updated) == (
                update.external_id,
                "jamf",
                2,
                START + HOUR,
            )
            [found] = store.devices.find_fingerprints_by_asset_tag([(record.os_type, record.asset_tag)])
            assert found.stored and found.fingerprint == spec_fingerprint(record.body)
        e1 = store.devices.get(enrolled.id)
        assert (e1.enroll_status, e1.owner, e1.body["spec"]["credential"]) == ("enrolled", "alice", {"id": "c1"})
        m1 = store.devices.get(rows[1].id)
        assert (m1.body, m1.owner, m1.revision) == (_body("M00001", credential={"id": "c2"}), "bob", 2)


def test_identities_page_walks_one_source_without_documents(backend: Backend) -> None:
    with backend.begin() as store:
        rows = _seed(store, 7, prefix="I")
        _seed(store, 3, prefix="H", source=None)
        _seed(store, 2, prefix="O", source="other")
    with backend.begin() as store:
        seen: list[DeviceIdentity] = []
        token: str | None = None
        while True:
            page, token = store.devices.identities_page(source_name="jamf", page_size=3, page_token=token)
            assert len(page) <= 3
            seen.extend(page)
            if token is None:
                break
        assert seen == [DeviceIdentity(row.id, "macos", row.asset_tag, "jamf", "jamf", row.external_id) for row in rows]
        # the tokens are list_page's
        _, token = store.devices.identities_page(source_name="jamf", page_size=3)
        assert token is not None
        records, _ = store.devices.list_page(page_size=3, page_token=token, source_name="jamf")
        assert [r.asset_tag for r in records] == [row.asset_tag for row in rows[3:6]]
        assert store.devices.identities_page(source_name="nobody") == ([], None)
        with pytest.raises(ValidationError, match=f"at most {MAX_IDENTITY_PAGE_SIZE}"):
            store.devices.identities_page(source_name="jamf", page_size=0)
