"""bench_jamf_sync: a full Jamf sync of 100,000 computers from the fake Jamf Pro (HTTPS, page size 2000) into
SQLite, then PostgreSQL (the first import, then again with nothing changed: the steady state, which looks every
page up and then reads the stored inventory to find what is missing); then a partial sync after 1% of the fleet
reported a change.

Targets, each printed with its figure ("ok" or "short"):
- first import (issue 5): <= 60 s, peak RSS <= 250 MB;
- steady state (issue 11): peak RSS <= 120 MB, and no slower than before the batched sync on this machine
  (BENCH_JAMF_STEADY_BASELINE: "sqlite=14.4,postgres=21.6", seconds; measure it on the machine at hand);
- partial sync, 1% changed (issue 11): <= 0.6 s.

The fake serves from this process (a uvicorn thread); each sync runs in a child process (``--child``) that
reports its own wall time and peak RSS (VmHWM), so the numbers are the sync's alone. The fake's query order is
computed before the clock starts (``FakeJamf.warm``), as a real Jamf has its indexes ready.

Environment: BENCH_JAMF_DEVICES (100000), BENCH_JAMF_PAGE_SIZE (2000), BENCH_JAMF_CHANGED (0.01),
BENCH_JAMF_BACKENDS ("sqlite,postgres"), BENCH_JAMF_STEADY_BASELINE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEVICES = int(os.environ.get("BENCH_JAMF_DEVICES", "100000"))
PAGE_SIZE = int(os.environ.get("BENCH_JAMF_PAGE_SIZE", "2000"))
CHANGED_FRACTION = float(os.environ.get("BENCH_JAMF_CHANGED", "0.01"))
BACKENDS = tuple(os.environ.get("BENCH_JAMF_BACKENDS", "sqlite,postgres").split(","))
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
FILTER = "general.remoteManagement.managed==true"
TARGET_FULL_S = 60.0
TARGET_FULL_RSS_MB = 250.0
TARGET_STEADY_RSS_MB = 120.0
#: the steady state's time before per-page lookups replaced the whole-inventory index (issue 11's figures)
STEADY_BASELINE_S = {
    backend: float(seconds)
    for backend, _, seconds in (
        item.partition("=")
        for item in os.environ.get("BENCH_JAMF_STEADY_BASELINE", "sqlite=14.4,postgres=21.6").split(",")
    )
}
TARGET_PARTIAL_S = 0.6
CHILD_TIMEOUT_S = 600


def _peak_rss_mb() -> float:
    """The process's high-water mark of resident memory (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the child: one sync, measured ------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    from devicetrust.mdm.jamf.config import parse_jamf_service_config
    from devicetrust.mdm.jamf.service import JamfService
    from devicetrust.mdm.sink import BackendSink
    from devicetrust.storage.backend import Backend

    config = parse_jamf_service_config(
        {
            "enabled": True,
            "api_endpoint": args.endpoint,
            "client_id": args.client_id,
            "client_secret_file": args.secret_file,
            "ca_file": args.ca_file,
            "sync_delay": "0s",
            "inventory": [{"filter_rsql": FILTER, "page_size": PAGE_SIZE}],
        }
    )
    backend = Backend.open(args.storage_url)
    try:
        started = time.perf_counter()
        reports = asyncio.run(JamfService(config, BackendSink(backend)).sync_once(full=args.full))
        wall = time.perf_counter() - started
    finally:
        backend.close()
    report = reports[0]
    print(
        json.dumps(
            {
                "wall_s": wall,
                "sync_s": report.duration_s,
                "records": report.records,
                "created": report.created,
                "updated": report.updated,
                "unchanged": report.unchanged,
                "deleted": report.deleted,
                "error": report.error,
                "kind": report.kind,
                "peak_rss_mb": _peak_rss_mb(),
            }
        )
    )


def _run_child(common: list[str], storage_url: str, *, full: bool) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.bench_jamf_sync", "--child", "--storage-url", storage_url, *common]
    if full:
        argv.append("--full")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sync child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["error"]:
        raise RuntimeError(f"sync failed: {result['error']}")
    return result


# -- the parent: fake Jamf, databases, report ---------------------------------------------------------------


@contextmanager
def _database(kind: str, directory: Path) -> Any:
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'bench.sqlite'}"
        return
    import psycopg

    schema = f"dt_bench_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _line(label: str, result: dict[str, Any], *, target_s: float, target_rss_mb: float) -> str:
    """One figure with each of its targets and whether it is met ("ok") or not ("short")."""
    seconds, rss = result["sync_s"], result["peak_rss_mb"]
    rate = result["records"] / seconds if seconds else 0.0
    return (
        f"{label}: {result['records']} devices in {seconds:.2f} s [target <= {target_s:.1f} s: "
        f"{_verdict(seconds <= target_s)}], peak RSS {rss:.0f} MB [target <= {target_rss_mb:.0f} MB: "
        f"{_verdict(rss <= target_rss_mb)}] ({rate:,.0f} devices/s; process wall {result['wall_s']:.2f} s; created "
        f"{result['created']}, updated {result['updated']}, unchanged {result['unchanged']})"
    )


def _verdict(met: bool) -> str:
    return "ok" if met else "short"


def _partial_since(storage_url: str) -> str:
    """The filter the next partial sync will send (from the cut the full sync stored)."""
    from devicetrust.mdm.jamf.config import InventoryEntry
    from devicetrust.mdm.jamf.engine import PARTIAL_SYNC_OVERLAP, cut_state_key, since_filter
    from devicetrust.mdm.sink import STATE_KEY_PREFIX
    from devicetrust.storage.backend import Backend

    entry = InventoryEntry(filter_rsql=FILTER, page_size=PAGE_SIZE)
    with Backend.open(storage_url) as backend, backend.begin() as store:
        cut = store.cluster.get(STATE_KEY_PREFIX + cut_state_key("jamf", entry))
    assert cut is not None, "the full sync stored no cut"
    return since_filter(entry, datetime.fromisoformat(cut) - PARTIAL_SYNC_OVERLAP)


def _touch(fake: Any, count: int) -> None:
    """``count`` computers, spread over the fleet, send a new inventory report with a new OS version."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    step = max(DEVICES // max(count, 1), 1)
    for jamf_id in range(1, DEVICES + 1, step)[:count]:
        fake.computers.patch(jamf_id, "general", {"reportDate": now, "lastContactTime": now})
        fake.computers.patch(jamf_id, "operatingSystem", {"version": "15.1.1", "build": "24B91"})


def _parent() -> None:
    from tests.fakes.jamf.server import FakeJamf, FakeJamfServer, Inventory
    from tests.fakes.pki import make_test_pki

    from devicetrust.mdm.jamf.mapping import FULL_SORT, PARTIAL_SORT

    with tempfile.TemporaryDirectory(prefix="dt-bench-jamf-") as tmp:
        root = Path(tmp)
        pki = make_test_pki(root / "tls")
        secret = secrets.token_urlsafe(24)
        (root / "secret").write_text(secret)
        for backend in BACKENDS:
            fake = FakeJamf(
                computers=Inventory(synthetic=DEVICES), oauth_clients={"bench": secret}, token_lifetime_s=60
            )
            started = time.perf_counter()
            fake.warm("computers", FILTER, FULL_SORT["computers"])
            print(f"fake Jamf: {DEVICES} synthetic computers ordered in {time.perf_counter() - started:.1f} s")
            with FakeJamfServer(fake, pki) as server, _database(backend, root) as url:
                if backend == "sqlite":
                    Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
                from devicetrust.storage.backend import Backend

                with Backend.open(url) as opened:
                    opened.migrate()
                common = [
                    "--endpoint",
                    server.url,
                    "--client-id",
                    "bench",
                    "--secret-file",
                    str(root / "secret"),
                    "--ca-file",
                    str(pki.ca_file),
                ]
                full = _run_child(common, url, full=True)
                label = f"jamf full sync ({backend}, first import)"
                print(_line(label, full, target_s=TARGET_FULL_S, target_rss_mb=TARGET_FULL_RSS_MB), flush=True)
                steady = _run_child(common, url, full=True)
                label = f"jamf full sync ({backend}, nothing changed)"
                baseline = STEADY_BASELINE_S.get(backend, TARGET_FULL_S)
                print(_line(label, steady, target_s=baseline, target_rss_mb=TARGET_STEADY_RSS_MB), flush=True)
                changed = int(DEVICES * CHANGED_FRACTION)
                _touch(fake, changed)
                # what the partial sync will ask: the start-up filter check, then devices reported since the cut
                fake.warm("computers", FILTER, FULL_SORT["computers"])
                since = _partial_since(url)
                fake.warm("computers", since, FULL_SORT["computers"])
                fake.warm("computers", since, PARTIAL_SORT["computers"])
                partial = _run_child(common, url, full=False)
                label = f"jamf partial sync ({backend}, {changed} changed)"
                print(_line(label, partial, target_s=TARGET_PARTIAL_S, target_rss_mb=TARGET_FULL_RSS_MB), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_jamf_sync")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--storage-url", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    parser.add_argument("--secret-file", help=argparse.SUPPRESS)
    parser.add_argument("--ca-file", help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None and "--child" in sys.argv else (argv or []))
    if args.child:
        _child(args)
    else:
        _parent()


if __name__ == "__main__":
    main()
