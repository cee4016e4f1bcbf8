"""What the benchmarks share: a real cluster, a lean HTTPS client, percentiles, and the server's CPU time."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.cluster import Cluster, free_port, start_cluster


class LeanClient:
    """One keep-alive HTTPS connection speaking JSON. httpx costs more CPU per request than the server under
    test would, so load is generated with the standard library."""

    def __init__(self, addr: str, ca_pem: str, token: str = "") -> None:
        host, _, port = addr.rpartition(":")
        self._conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cadata=ca_pem))
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else None
        try:
            self._conn.request(method, path, body=payload, headers=self._headers)
            response = self._conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closes idle keep-alive connections; reconnect once (http.client does on the next request).
            self._conn.close()
            self._conn.request(method, path, body=payload, headers=self._headers)
            response = self._conn.getresponse()
        data = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:200]!r}")
        return json.loads(data)

    def with_token(self, token: str) -> LeanClient:
        clone = LeanClient.__new__(LeanClient)
        clone._conn = self._conn
        clone._headers = {**self._headers, "Authorization": f"Bearer {token}"}
        return clone

    def close(self) -> None:
        self._conn.close()


@dataclass
class RunningCluster:
    cluster: Cluster
    admin_token: str
    ca_pem: str

    @property
    def addr(self) -> str:
        return self.cluster.proxy

    def admin(self) -> LeanClient:
        return LeanClient(self.addr, self.ca_pem, self.admin_token)

    def anonymous(self) -> LeanClient:
        return LeanClient(self.addr, self.ca_pem)

    def server_cpu_seconds(self) -> float:
        """User + system CPU time so far of the daemon and the processes it runs (its auth workers)."""
        return tree_cpu_seconds(self.cluster.process.pid, reaped=False)


@contextmanager
def cluster(storage_url: str = "") -> Iterator[RunningCluster]:
    with tempfile.TemporaryDirectory(prefix="dt-bench-") as tmp:
        running = start_cluster(Path(tmp) / "cluster", storage_url=storage_url)
        try:
            identity = json.loads((running.root / "data" / "admin" / "identity.json").read_text())
            yield RunningCluster(running, identity["token"], identity["host_ca_pem"])
        finally:
            running.stop()


def percentile(samples: Sequence[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary_ms(samples: Sequence[float]) -> str:
    return (
        f"p50 {percentile(samples, 0.50) * 1000:.1f} ms, p99 {percentile(samples, 0.99) * 1000:.1f} ms, "
        f"mean {statistics.fmean(samples) * 1000:.1f} ms"
    )


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (Linux /proc). A descendant that exits while the tree is read (a short-lived
    command a daemon runs) is left out."""
    found = [pid]
    for parent in found:
        try:
            for task in Path(f"/proc/{parent}/task").glob("*/children"):
                found.extend(int(child) for child in task.read_text().split())
        except FileNotFoundError:
            continue
    return found


def tree_cpu_seconds(pid: int, *, reaped: bool = True) -> float:
    """CPU time of ``pid``, of its live descendants (a daemon's auth workers) and, with ``reaped``, of the children
    it has reaped (sessions a node ran)."""
    total = 0.0
    for member in process_tree(pid):
        try:
            total += process_cpu_seconds(member, children=reaped and member == pid)
        except FileNotFoundError:  # exited meanwhile: its parent reaps it, and its time counts there
            continue
    return total


def process_cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc); with ``children``, also that of the
    children it has waited for (a forking server such as sshd, or the processes a node runs for sessions)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


#: Before each phase: wait (at most IDLE_WAIT_SECONDS) until the server used < IDLE_CPU_FRACTION of a core over
#: IDLE_SAMPLE_SECONDS.
IDLE_WAIT_SECONDS = 30.0
IDLE_SAMPLE_SECONDS = 0.5
IDLE_CPU_FRACTION = 0.1


def wait_idle(cpu: Callable[[], float]) -> None:
    """Until the server has been (nearly) idle for a moment: work left from the previous phase, such as audit
    events the node still forwards, must not be billed to the next one."""
    deadline = time.monotonic() + IDLE_WAIT_SECONDS
    last = cpu()
    while time.monotonic() < deadline:
        time.sleep(IDLE_SAMPLE_SECONDS)
        now = cpu()
        if now - last < IDLE_SAMPLE_SECONDS * IDLE_CPU_FRACTION:
            return
        last = now


#: How long a reference relay may take to listen.
RELAY_START_SECONDS = 10.0


@contextmanager
def socat_relay(listen: str, connect: str) -> Iterator[int | None]:
    """A relay in C (socat) as a reference for what a hop costs: ``listen``'s ``{port}`` becomes a free loopback
    port, which is yielded once socat accepts connections on it; None where socat is not installed."""
    socat = shutil.which("socat")
    if socat is None:
        yield None
        return
    port = free_port()
    argv = [socat, listen.format(port=port), connect]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + RELAY_START_SECONDS
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("socat did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)
