"""`tctl devices ls` against a real daemon: streamed columns, JSON and YAML, --limit and --page-token round
trips, every filter flag, one-line errors, an early-closing reader, and the list permission."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable

import pytest
import yaml

from devicetrust.storage.backend import Backend
from devicetrust.types import os_display_name
from tests.fleet import Seeded, seed
from tests.integration.cluster import Cluster

HEADERS = ("Asset Tag", "OS", "Source", "Enroll Status", "Owner", "Device ID")
#: more than the first page (100) and than one page after it, so listings span several pages
FLEET_SIZE = 260


def _fleet() -> list[Seeded]:
    devices = []
    for index in range(FLEET_SIZE):
        enrolled = index % 5 == 0
        devices.append(
            Seeded(
                id=str(uuid.UUID(int=index + 1)),
                os_type=("macos", "windows", "linux", "ios")[index % 4],
                asset_tag=f"FLEET{index:05d}",
                enrolled=enrolled,
                owner=("alice", "bob", "carol")[index // 5 % 3] if enrolled else "",
                source=("jamf", "intune", "")[index % 3],
            )
        )
    return devices


@pytest.fixture(scope="module")
def fleet(cluster: Cluster) -> list[Seeded]:
    devices = _fleet()
    with Backend.open(f"sqlite:///{cluster.root / 'data' / 'backend.sqlite'}") as backend, backend.begin() as store:
        seed(store, devices)
    return devices


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def _columns(text: str) -> list[tuple[str, ...]]:
    """The rows of a listing, cut where the header's columns start (blank cells stay blank)."""
    header, *rows = text.splitlines()
    starts = [header.index(name) for name in HEADERS]
    assert header.split() == " ".join(HEADERS).split()
    bounds = [*zip(starts, [*starts[1:], None], strict=True)]
    return [tuple(row[start:end].strip() for start, end in bounds) for row in rows]


def _row(device: Seeded) -> tuple[str, ...]:
    status = "enrolled" if device.enrolled else "not enrolled"
    return (device.asset_tag, os_display_name(device.os_type), device.source, status, device.owner, device.id)


def test_text_lists_every_device_in_aligned_columns(cluster: Cluster, fleet: list[Seeded]) -> None:
    result = cluster.tctl("devices", "ls")
    assert _columns(ok(result)) == [_row(d) for d in fleet]
    assert result.stderr == ""
    # plain columns two blanks apart, no trailing blanks
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Asset Tag   OS       Source  Enroll Status  Owner  Device ID")
    assert not any(line.endswith(" ") for line in lines)


def test_limit_and_page_token_walk_the_whole_fleet_in_text(cluster: Cluster, fleet: list[Seeded]) -> None:
    seen: list[tuple[str, ...]] = []
    args = ["devices", "ls", "--limit=70"]
    for _ in range(10):
        result = cluster.tctl(*args)
        rows = _columns(ok(result))
        seen.extend(rows)
        if not result.stderr:
            assert len(rows) == FLEET_SIZE % 70
            break
        assert len(rows) == 70
        prefix = "Next page: --page-token="
        assert result.stderr.startswith(prefix) and result.stderr.count("\n") == 1
        args = ["devices", "ls", "--limit=70", f"--page-token={result.stderr.strip().removeprefix(prefix)}"]
    assert seen == [_row(d) for d in fleet]


def test_json_is_one_array_of_the_device_documents(cluster: Cluster, fleet: list[Seeded]) -> None:
    documents = json.loads(ok(cluster.tctl("devices", "ls", "--format=json")))
    assert [d["metadata"]["name"] for d in documents] == [d.id for d in fleet]
    assert {d["kind"] for d in documents} == {"device"}
    enrolled = next(d for d in documents if d["spec"]["enroll_status"] == "enrolled")
    assert enrolled["spec"]["credential"]["attestation_type"] == "unsafe_software"


def test_json_pages_carry_the_next_token_until_the_last(cluster: Cluster, fleet: list[Seeded]) -> None:
    ids: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        args = ["devices", "ls", "--format=json", "--limit=120"] + ([f"--page-token={token}"] if token else [])
        page = json.loads(ok(cluster.tctl(*args)))
        assert set(page) == {"items", "next_page_token"}
        ids.extend(d["metadata"]["name"] for d in page["items"])
        pages += 1
        token = page["next_page_token"]
        if token is None:
            break
    assert pages == 3
    assert ids == [d.id for d in fleet]


def test_yaml_is_a_stream_of_documents(cluster: Cluster, fleet: list[Seeded]) -> None:
    documents = list(yaml.safe_load_all(ok(cluster.tctl("devices", "ls", "--format=yaml"))))
    assert [d["metadata"]["name"] for d in documents] == [d.id for d in fleet]
    assert list(documents[0]) == ["kind", "version", "metadata", "spec"]
    page = yaml.safe_load(ok(cluster.tctl("devices", "ls", "--format=yaml", "--limit=3")))
    assert [d["spec"]["asset_tag"] for d in page["items"]] == [d.asset_tag for d in fleet[:3]]
    assert page["next_page_token"]


@pytest.mark.parametrize(
    ("flags", "keep"),
    [
        (["--os=macOS"], lambda d: d.os_type == "macos"),
        (["--os", "IOS"], lambda d: d.os_type == "ios"),
        (["--enroll-status=not enrolled"], lambda d: not d.enrolled),
        (["--enroll-status=Enrolled"], lambda d: d.enrolled),
        (["--source=jamf"], lambda d: d.source == "jamf"),
        (["--source="], lambda d: d.source == ""),
        (["--owner=carol"], lambda d: d.owner == "carol"),
        (["--owner="], lambda d: d.owner == ""),
        (["--search=fleet0012"], lambda d: "FLEET0012" in d.asset_tag),
        (["--search=CAR"], lambda d: "car" in d.owner),
        (
            ["--os=windows", "--enroll-status=enrolled", "--source=intune", "--search=0"],
            lambda d: (d.os_type, d.enrolled, d.source) == ("windows", True, "intune"),
        ),
    ],
)
def test_filter_flags(cluster: Cluster, fleet: list[Seeded], flags: list[str], keep: Callable[[Seeded], bool]) -> None:
    expected = [d for d in fleet if keep(d)]
    assert expected
    documents = json.loads(ok(cluster.tctl("devices", "ls", "--format=json", *flags)))
    assert [d["metadata"]["name"] for d in documents] == [d.id for d in expected]
    assert _columns(ok(cluster.tctl("devices", "ls", *flags))) == [_row(d) for d in expected]


def test_nothing_found_prints_the_header_and_an_empty_array(cluster: Cluster, fleet: list[Seeded]) -> None:
    assert ok(cluster.tctl("devices", "ls", "--search=no-such-device")).splitlines() == ["  ".join(HEADERS)]
    assert json.loads(ok(cluster.tctl("devices", "ls", "--search=no-such-device", "--format=json"))) == []
    page = json.loads(ok(cluster.tctl("devices", "ls", "--owner=nobody", "--format=json", "--limit=5")))
    assert page == {"items": [], "next_page_token": None}


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--os=beos"], 2, "'--os': \"beos\" is not one of linux, macos, windows, ios, ipados"),
        (["--enroll-status=maybe"], 2, "'--enroll-status': \"maybe\" is not one of not_enrolled, enrolled"),
        (["--limit=0"], 2, "'--limit'"),
        (["--page-token=garbage"], 1, "invalid page token"),
        (["--page-token=WyJ4Il0="], 1, "invalid page token"),
    ],
)
def test_mistakes_are_one_line_errors(
    cluster: Cluster, fleet: list[Seeded], flags: list[str], code: int, message: str
) -> None:
    for fmt in ("text", "json"):
        result = cluster.tctl("devices", "ls", f"--format={fmt}", *flags)
        assert result.returncode == code
        assert result.stderr.startswith("ERROR: ") and result.stderr.count("\n") == 1, result.stderr
        assert message in result.stderr
        # nothing printed that a script could take for (part of) a listing
        assert result.stdout == ""


def test_a_reader_that_stops_early_is_no_error(cluster: Cluster, fleet: list[Seeded]) -> None:
    # far more than a pipe holds, so tctl is still writing when head exits
    result = subprocess.run(
        ["bash", "-c", "set -o pipefail; tctl devices ls --format=json | head -c 100 >/dev/null"],
        capture_output=True,
        text=True,
        env=cluster.env(DEVICETRUST_CONFIG=str(cluster.config_path)),
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_listing_needs_the_list_permission(cluster: Cluster, fleet: list[Seeded]) -> None:
    cluster.signup_and_login("erin")
    for fmt in ("text", "json", "yaml"):
        result = cluster.tctl_as("erin", "devices", "ls", f"--format={fmt}")
        assert result.returncode == 1
        assert result.stderr == 'ERROR: access denied: missing permission "list" on "device"\n'


def test_help_explains_filters_and_paging(cluster: Cluster) -> None:
    text = ok(cluster.tctl("devices", "ls", "--help"))
    for flag in ("--search", "--os", "--enroll-status", "--source", "--owner", "--limit", "--page-token"):
        assert flag in text
    words = " ".join(text.split())
    assert 'on stderr, as "Next page: --page-token=TOKEN"' in words and "next_page_token" in words
