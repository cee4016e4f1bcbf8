"""bench_db: what the database path costs a PostgreSQL client.

One real daemon (auth service + database service in front of the machine's PostgreSQL), one human whose role
requires a trusted device, a device whose key lives in a swtpm TPM, and the real ``tsh proxy db`` listening on
loopback (a process of its own, as a user runs it).

- Query round trip: ``SELECT 1`` in a loop on ONE psycopg connection, through ``tsh proxy db`` (plain TCP to the
  local listener, TLS to the database service, TCP to PostgreSQL) and directly to PostgreSQL, in alternating
  rounds (ABBA) to cancel drift. Reported: p50 and p99 of each, and the ratio of the p50s (target ≤ 1.3).
- The same round trip on one hop: psycopg speaking TLS straight to the database service with the session
  certificate ``tsh db config`` wrote (what ``tsh db connect`` gives psql), in the same rotation; and, as the floor
  of any relay hop on this machine, through ``socat`` (a plain TCP relay in C) when it is installed.
- Connections: connect, ``SELECT 1``, close, back to back through the proxy, each with its own device proof (the
  TPM quote and the auth service's ceremony) and TLS to the service. Reported: connections/s and p50, with
  direct connections/s as the reference.

Needs swtpm and PostgreSQL at 127.0.0.1:5432 (trust authentication).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from tests.db.harness import ensure_db_users
from tests.integration.cluster import BIN, free_port, start_cluster
from tests.integration.laptops import enrolled_laptop
from tests.integration.test_devices import Laptop

from benchmarks.harness import percentile, socat_relay

ROUND_QUERIES = int(os.environ.get("BENCH_DB_QUERIES", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
CONNECTIONS = int(os.environ.get("BENCH_DB_CONNECTIONS", "20"))
WARMUP_QUERIES = 200
TARGET_RATIO = 1.3
DATABASE = "pg-bench"
SERIAL = "SN-BENCH-DB"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PROXY_START_SECONDS = 30.0


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or result.stdout.strip())
    return result.stdout


def _conninfo(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "user": "alice", "dbname": "test", "sslmode": "disable"}


def _round(conn: psycopg.Connection[Any], queries: int) -> list[float]:
    cursor = conn.cursor()
    samples = []
    for _ in range(queries):
        started = time.perf_counter()
        cursor.execute("SELECT 1")
        cursor.fetchone()
        samples.append(time.perf_counter() - started)
    return samples


def _connections(port: int, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        with psycopg.connect(**_conninfo(port), connect_timeout=30) as conn:
            conn.execute("SELECT 1").fetchone()
        samples.append(time.perf_counter() - started)
    return samples


def _us(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1e6:.0f} µs, p99 {percentile(samples, 0.99) * 1e6:.0f} µs"


def _start_proxy(laptop: Laptop, port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [str(BIN / "tsh"), "proxy", "db", DATABASE, f"--port={port}"],
        env=laptop.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("Started DB proxy"):
        process.kill()
        raise RuntimeError(f"tsh proxy db did not start: {line}{process.communicate()[1]}")
    return process


def _ratio_line(name: str, ratio: float) -> str:
    return f"bench_db[query ratio {name}]: p50 {name}/direct {ratio:.2f} " + (
        f"({'ok' if ratio <= TARGET_RATIO else 'short'}, target <= {TARGET_RATIO})"
    )


def _measure(proxy_port: int, one_hop: dict[str, str], relay_port: int | None) -> None:
    direct_port = 5432
    paths: dict[str, dict[str, Any]] = {
        "direct": _conninfo(direct_port),
        "tsh proxy db": {**_conninfo(proxy_port), "connect_timeout": 30},
        "one hop": {**one_hop, "connect_timeout": 30},
    }
    if relay_port is not None:
        paths["socat"] = _conninfo(relay_port)
    with contextlib.ExitStack() as stack:
        order = [(name, stack.enter_context(psycopg.connect(**info, autocommit=True))) for name, info in paths.items()]
        for _, conn in order:
            _round(conn, WARMUP_QUERIES)
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for index in range(ROUNDS):
            for name, conn in order if index % 2 == 0 else reversed(order):
                samples[name] += _round(conn, ROUND_QUERIES)
    direct = statistics.median(samples["direct"])
    print(f"bench_db[query direct]: SELECT 1 round trip, {len(samples['direct'])} queries: {_us(samples['direct'])}")
    print(
        f"bench_db[query via tsh proxy db]: SELECT 1 round trip, {len(samples['tsh proxy db'])} queries: "
        f"{_us(samples['tsh proxy db'])}"
    )
    print(_ratio_line("proxy", statistics.median(samples["tsh proxy db"]) / direct))
    print(
        f"bench_db[query one hop, TLS straight to the service (tsh db connect/config)]: SELECT 1 round trip, "
        f"{len(samples['one hop'])} queries: {_us(samples['one hop'])}"
    )
    print(_ratio_line("one hop", statistics.median(samples["one hop"]) / direct))
    if relay_port is not None:
        ratio = statistics.median(samples["socat"]) / direct
        print(
            f"bench_db[reference: one plain hop through socat, a relay in C]: {_us(samples['socat'])}, "
            f"ratio {ratio:.2f} (the floor of any relay hop on this machine)"
        )
    proved = _connections(proxy_port, CONNECTIONS)
    plain = _connections(direct_port, CONNECTIONS)
    print(
        f"bench_db[connections via tsh proxy db, device proof each]: {len(proved) / sum(proved):.1f} connections/s, "
        f"p50 {statistics.median(proved) * 1000:.0f} ms (direct: {len(plain) / sum(plain):.0f} connections/s, "
        f"p50 {statistics.median(plain) * 1000:.1f} ms)"
    )


def _socat_relay() -> contextlib.AbstractContextManager[int | None]:
    """A plain TCP relay in C to PostgreSQL, as a reference for what one hop costs; None without socat."""
    return socat_relay("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay", "TCP:127.0.0.1:5432,nodelay")


def _with_world(run: Callable[[int, dict[str, str], int | None], None]) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        ensure_db_users(admin)
    root = Path(tempfile.mkdtemp(prefix="bench-db-"))
    extra = (
        "db_service:\n"
        "  enabled: true\n"
        f"  listen_addr: 127.0.0.1:{free_port()}\n"
        "  databases:\n"
        f"    - name: {DATABASE}\n"
        "      uri: postgres://127.0.0.1:5432\n"
    )
    cluster = start_cluster(root, extra_config=extra)
    laptop: Laptop | None = None
    proxy: subprocess.Popen[str] | None = None
    try:
        laptop = enrolled_laptop(cluster, root, "alice", SERIAL, roles="access,require-trusted-device")
        deadline = time.monotonic() + PROXY_START_SECONDS
        while DATABASE not in [d["name"] for d in json.loads(_ok(laptop.tsh("db", "ls", "--format=json")))]:
            if time.monotonic() > deadline:
                raise RuntimeError("the database service did not announce its database")
            time.sleep(0.2)
        port = free_port()
        proxy = _start_proxy(laptop, port)
        one_hop = json.loads(
            _ok(laptop.tsh("db", "config", DATABASE, "--db-user=alice", "--db-name=test", "--format=json"))
        )
        with _socat_relay() as relay_port:
            run(port, one_hop, relay_port)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.communicate(timeout=10)
        if laptop is not None:
            laptop.stop()
        cluster.stop()


def main() -> None:
    _with_world(_measure)


if __name__ == "__main__":
    main()
