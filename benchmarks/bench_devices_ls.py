"""bench_devices_ls: `tctl devices ls` against a real daemon holding a fleet of 94,552 devices, on SQLite, then
PostgreSQL.

The fleet looks Jamf-synced: mostly macOS from Jamf, Windows from Intune, a few hand-registered Linux machines
and phones; a third enrolled (with an owner, a credential and up to 11 collected-data records), the rest only
registered. It is written straight into the backend (an import through the API would take minutes) after the
daemon has migrated it.

Figures (issue 11): the text listing's first screen — the first 50 lines on tctl's stdout, counted from the moment
tctl is started — <= 0.5 s; the whole `--format=json` output <= 3 s. Each run also reports the whole text
listing, filtered listings (owner, search, OS, enroll status), and the CPU time of the daemon and of tctl
(tctl's is the child's rusage).

Environment: BENCH_DEVICES_LS_DEVICES (94552), BENCH_DEVICES_LS_BACKENDS ("sqlite,postgres").
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from tests.integration.cluster import BIN
from tests.storage.raw import raw_engine

from benchmarks.harness import RunningCluster, cluster
from devicetrust.storage import schema
from devicetrust.types import Device, DeviceCredential, DeviceProfile, DeviceSource, resource_to_dict

DEVICES = int(os.environ.get("BENCH_DEVICES_LS_DEVICES", "94552"))
BACKENDS = tuple(os.environ.get("BENCH_DEVICES_LS_BACKENDS", "sqlite,postgres").split(","))
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
FIRST_SCREEN_LINES = 50
TARGET_FIRST_SCREEN_S = 0.5
TARGET_JSON_S = 3.0
SEED = 11
INSERT_CHUNK = 5000
EMPLOYEES = 10_000
RUN_TIMEOUT_S = 600

_SERIAL_CHARS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
_MODELS = {
    "macos": ["MacBookPro18,3", "MacBookAir10,1", "Mac14,2", "Mac15,3", "iMac21,1"],
    "windows": ["Latitude 7440", "ThinkPad T14 Gen 4", "EliteBook 840 G10"],
    "linux": ["ThinkPad X1 Carbon Gen 11", "XPS 13 9320"],
    "ios": ["iPhone15,2", "iPhone16,1"],
    "ipados": ["iPad13,18", "iPad14,3"],
}
_OS_VERSIONS = {
    "macos": [("14.4.1", "23E224"), ("14.5", "23F79"), ("13.6.7", "22G720")],
    "windows": [("10.0.22631", "22631.3447"), ("10.0.19045", "19045.4291")],
    "linux": [("Ubuntu 22.04.4 LTS", "6.5.0-28"), ("Fedora 40", "6.8.7")],
    "ios": [("17.4.1", "21E236")],
    "ipados": [("17.4.1", "21E236")],
}


def _serial(rng: random.Random, prefix: str, length: int) -> str:
    return prefix + "".join(rng.choice(_SERIAL_CHARS) for _ in range(length))


def _fleet_os(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.55:
        return "macos"
    if roll < 0.85:
        return "windows"
    if roll < 0.93:
        return "linux"
    return "ios" if roll < 0.98 else "ipados"


def _source(os_type: str, rng: random.Random) -> DeviceSource | None:
    if os_type in ("macos", "ios", "ipados"):
        return DeviceSource(name="jamf", origin="jamf") if rng.random() < 0.97 else None
    if os_type == "windows":
        return DeviceSource(name="intune", origin="intune") if rng.random() < 0.9 else None
    return None


def _credential(os_type: str, rng: random.Random) -> DeviceCredential:
    if os_type in ("macos", "ios", "ipados"):
        return DeviceCredential(
            id=str(uuid.UUID(int=rng.getrandbits(128))),
            attestation_type="macos_secure_enclave",
            public_key_der=rng.randbytes(91),
        )
    return DeviceCredential(
        id=str(uuid.UUID(int=rng.getrandbits(128))),
        attestation_type="tpm_ekcert",
        tpm_ak_public=rng.randbytes(280),
        tpm_ekcert_serial=rng.randbytes(16).hex(),
        tpm_ek_public_sha256=rng.randbytes(32).hex(),
    )


def _collected(os_type: str, serial: str, owner: str, when: datetime, model: str, count: int) -> list[dict[str, str]]:
    version, build = _OS_VERSIONS[os_type][0]
    records = []
    for index in range(count):
        stamp = (when + timedelta(hours=index)).isoformat()
        records.append(
            {
                "collect_time": stamp,
                "os_type": os_type,
                "serial_number": serial,
                "model_identifier": model,
                "os_version": version,
                "os_build": build,
                "os_username": owner,
                "system_serial_number": serial,
                "record_time": stamp,
                "event_log": "verified" if os_type in ("linux", "windows") else "none",
            }
        )
    return records


def fleet(count: int) -> list[dict[str, Any]]:
    """``count`` devices table rows, the same every run."""
    rng = random.Random(SEED)
    base = datetime(2025, 1, 1, tzinfo=UTC)
    owners = [f"employee{n:05d}" for n in range(EMPLOYEES)]
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    while len(rows) < count:
        os_type = _fleet_os(rng)
        prefix, length = {"macos": ("C02", 9), "windows": ("5CG", 7), "linux": ("PF", 8)}.get(os_type, ("F", 10))
        serial = _serial(rng, prefix, length)
        if (os_type, serial) in seen:
            continue
        seen.add((os_type, serial))
        device_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        created = base + timedelta(minutes=rng.randrange(500_000))
        source = _source(os_type, rng)
        model = rng.choice(_MODELS[os_type])
        version, build = rng.choice(_OS_VERSIONS[os_type])
        profile = None
        if source is not None:
            profile = DeviceProfile(
                model_identifier=model,
                os_version=version,
                os_build=build,
                os_usernames=(rng.choice(owners),),
                jamf_binary_version="11.4.1-t1712591696" if source.origin == "jamf" else "",
                external_id=str(rng.randrange(1, 10_000_000)),
                update_time=created,
            )
        enrolled = rng.random() < 0.33
        owner = rng.choice(owners) if enrolled else ""
        device = Device(
            id=device_id,
            os_type=os_type,
            asset_tag=serial,
            enroll_status="enrolled" if enrolled else "not_enrolled",
            credential=_credential(os_type, rng) if enrolled else None,
            collected_data=tuple(_collected(os_type, serial, owner, created, model, rng.randint(1, 11)))
            if enrolled
            else (),
            source=source,
            profile=profile,
            owner=owner,
            create_time=created,
            update_time=created,
        )
        rows.append(
            {
                "id": device.id,
                "os_type": os_type,
                "asset_tag": serial,
                "enroll_status": device.enroll_status,
                "owner": owner,
                "source_name": source.name if source else None,
                "source_origin": source.origin if source else None,
                "external_id": profile.external_id if profile else None,
                "body": resource_to_dict(device),
                "revision": 1,
                "created": created,
                "updated": created,
            }
        )
    return rows


def seed(storage_url: str, rows: list[dict[str, Any]]) -> None:
    with raw_engine(storage_url) as engine, engine.begin() as conn:
        for start in range(0, len(rows), INSERT_CHUNK):
            conn.execute(sa.insert(schema.devices), rows[start : start + INSERT_CHUNK])
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("ANALYZE devices"))
        else:
            conn.execute(sa.text("ANALYZE"))


@dataclass
class Run:
    first_screen_s: float
    total_s: float
    lines: int
    output: bytes
    client_cpu_s: float
    server_cpu_s: float


def run_tctl(running: RunningCluster, *args: str) -> Run:
    """tctl as a subprocess; the time until its first FIRST_SCREEN_LINES lines, until it ends, and its CPU."""
    env = running.cluster.env(DEVICETRUST_CONFIG=str(running.cluster.config_path))
    server_before = running.server_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen([str(BIN / "tctl"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    chunks: list[bytes] = []
    lines = 0
    first_screen = float("nan")
    while True:
        chunk = process.stdout.read1(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        if lines < FIRST_SCREEN_LINES:
            lines += chunk.count(b"\n")
            if lines >= FIRST_SCREEN_LINES:
                first_screen = time.perf_counter() - started
        else:
            lines += chunk.count(b"\n")
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    total = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"tctl {' '.join(args)} failed ({process.returncode}): {stderr.decode()[-500:]}")
    return Run(
        first_screen,
        total,
        lines,
        b"".join(chunks),
        usage.ru_utime + usage.ru_stime,
        running.server_cpu_seconds() - server_before,
    )


def _verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "short"


def measure(label: str, storage_url: str = "") -> None:
    rows = fleet(DEVICES)
    owner = next(str(row["owner"]) for row in rows if row["owner"])
    search = str(rows[0]["asset_tag"])[:5].lower()
    with cluster(storage_url) as running:
        url = storage_url or f"sqlite:///{(running.cluster.root / 'data' / 'backend.sqlite').resolve()}"
        started = time.perf_counter()
        seed(url, rows)
        del rows
        print(f"bench_devices_ls[{label}]: seeded {DEVICES:,} devices in {time.perf_counter() - started:.1f} s")
        run_tctl(running, "status")  # warm the daemon's and the OS's caches

        text = run_tctl(running, "devices", "ls")
        print(
            f"bench_devices_ls[{label}]: text first screen ({FIRST_SCREEN_LINES} lines) {text.first_screen_s:.2f} s "
            f"(target <= {TARGET_FIRST_SCREEN_S} s) {_verdict(text.first_screen_s, TARGET_FIRST_SCREEN_S)}; "
            f"whole listing {text.lines:,} lines in {text.total_s:.1f} s; "
            f"server CPU {text.server_cpu_s:.2f} s, client CPU {text.client_cpu_s:.2f} s"
        )

        listed = run_tctl(running, "devices", "ls", "--format=json")
        documents = json.loads(listed.output)
        if len(documents) != DEVICES:
            raise RuntimeError(f"--format=json listed {len(documents)} devices, expected {DEVICES}")
        print(
            f"bench_devices_ls[{label}]: --format=json whole output ({len(listed.output) / 1e6:.0f} MB) "
            f"{listed.total_s:.2f} s (target <= {TARGET_JSON_S} s) {_verdict(listed.total_s, TARGET_JSON_S)}; "
            f"server CPU {listed.server_cpu_s:.2f} s, client CPU {listed.client_cpu_s:.2f} s"
        )

        figures = []
        for flag in (f"--owner={owner}", f"--search={search}", "--os=linux", "--enroll-status=enrolled"):
            filtered = run_tctl(running, "devices", "ls", "--format=json", flag)
            figures.append(f"{flag} {len(json.loads(filtered.output)):,} devices in {filtered.total_s:.2f} s")
        print(f"bench_devices_ls[{label}]: filtered: {'; '.join(figures)}")


def main() -> None:
    if "sqlite" in BACKENDS:
        measure("sqlite")
    if "postgres" not in BACKENDS:
        return
    import psycopg

    schema_name = f"dt_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema_name}")
    except (OSError, psycopg.Error) as err:
        print(f"bench_devices_ls[postgres]: skipped ({err})")
        return
    try:
        measure("postgres", f"{POSTGRES_URL}?options=-csearch_path%3D{schema_name}")
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema_name} CASCADE")


if __name__ == "__main__":
    main()
