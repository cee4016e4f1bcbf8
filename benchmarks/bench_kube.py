"""bench_kube: what the Kubernetes path costs a kubectl-like client.

One real daemon (auth service + kube service in front of the fake Kubernetes API server of the tests, in this
process), one human whose role requires a trusted device, a device whose key lives in a swtpm TPM, and the
credentials kubectl would get from ``tsh kube credentials`` (a session certificate, proven by the TPM).

- Request round trip: ``GET /api/v1/namespaces/default/pods`` (what ``kubectl get pods`` asks, as a Table) on ONE
  keep-alive HTTPS connection, through the kube service (mutual TLS, the decision, impersonation, a second TLS
  connection to the API server) and directly to the API server with its bearer token, in alternating rounds
  (ABBA) to cancel drift. Reported: p50 and p99 of each, the ratio of the p50s (target ≤ 1.3) and requests/s
  through the service. The API server is the same fake both ways, so the ratio isolates the service's cost.
- Reference: the same requests through ``socat`` (a relay in C) that ends the client's TLS and opens its own to the
  API server, parsing nothing: the least any service that must read the client's certificate and re-encrypt can
  add. Its ratio to direct is the floor of the target's ratio on this machine (where socat is installed).
- Server CPU per request through the service: the daemon's and its auth workers' CPU time over the service's
  rounds, each until the daemon is idle again (so the audit events' delivery is billed), per request. On a shared
  machine it is steadier than the latencies.

Needs swtpm.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.fakes.kube_apiserver import FakeKubeAPIServer, running_kube_apiserver
from tests.fakes.pki import TestPKI, make_test_pki
from tests.integration.cluster import free_port, start_cluster
from tests.integration.laptops import enrolled_laptop
from tests.integration.test_devices import Laptop

from benchmarks.harness import percentile, socat_relay, tree_cpu_seconds, wait_idle

ROUND_REQUESTS = int(os.environ.get("BENCH_KUBE_REQUESTS", "300"))
#: Many short alternating rounds: a round lasts a fraction of a second, and drift on a shared machine is slower.
ROUNDS = int(os.environ.get("BENCH_KUBE_ROUNDS", "16"))
WARMUP_REQUESTS = 50
TARGET_RATIO = 1.3
KUBE_CLUSTER = "bench"
SERIAL = "SN-BENCH-KUBE"
PODS = "/api/v1/namespaces/default/pods?limit=500"
ACCEPT_TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or result.stdout.strip())
    return result.stdout


class _Client:
    """One keep-alive HTTPS connection, as kubectl keeps one to its server."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, prefix: str, headers: dict[str, str]) -> None:
        self.conn = http.client.HTTPSConnection(host, port, context=context, timeout=30)
        self.prefix, self.headers = prefix, headers

    def round(self, requests: int) -> list[float]:
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            self.conn.request("GET", self.prefix + PODS, headers=self.headers)
            response = self.conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            samples.append(time.perf_counter() - started)
        return samples

    def close(self) -> None:
        self.conn.close()


def _us(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1e6:.0f} µs, p99 {percentile(samples, 0.99) * 1e6:.0f} µs"


def _through_service(laptop: Laptop, root: Path, addr: str, host_ca: str) -> _Client:
    """A connection with fresh credentials from ``tsh kube credentials`` (the session proof lasts a minute)."""
    credential = json.loads(_ok(laptop.tsh("kube", "credentials", f"--kube-cluster={KUBE_CLUSTER}")))["status"]
    cert, key = root / "kube-cert.pem", root / "kube-key.pem"
    cert.write_text(credential["clientCertificateData"])
    key.write_text(credential["clientKeyData"])
    context = ssl.create_default_context(cadata=host_ca)
    context.load_cert_chain(cert, key)
    host, _, port = addr.rpartition(":")
    # the service's certificate names its host id and, as here, the IP address it joined with
    return _Client(host, int(port), context, f"/kube/{KUBE_CLUSTER}", {"Accept": ACCEPT_TABLE})


def _socat_tls_relay(api: FakeKubeAPIServer, pki: TestPKI) -> contextlib.AbstractContextManager[int | None]:
    """A TLS-terminating relay in C in front of the API server (None without socat)."""
    listen = (
        "OPENSSL-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay,"
        + f"cert={pki.cert_file},key={pki.key_file},verify=0"
    )
    return socat_relay(listen, f"OPENSSL:127.0.0.1:{api.port},cafile={api.ca_file},nodelay,commonname=127.0.0.1")


def _measure(api: FakeKubeAPIServer, laptop: Laptop, root: Path, daemon_cpu: Callable[[], float]) -> None:
    listed = json.loads(_ok(laptop.tsh("kube", "ls", "--format=json")))
    service = listed[0]["service"]
    host_ca = (laptop.home / "known_cas.json").read_text()
    host_ca = next(iter(json.loads(host_ca).values()))
    direct_context = ssl.create_default_context(cafile=str(api.ca_file))
    direct = _Client(
        "127.0.0.1", api.port, direct_context, "", {"Accept": ACCEPT_TABLE, "Authorization": f"Bearer {api.token}"}
    )
    samples: dict[str, list[float]] = {"direct": [], "service": [], "socat": []}
    service_cpu = 0.0
    relay_pki = make_test_pki(root / "relay-tls", name="bench_kube relay CA")
    with contextlib.ExitStack() as closing:
        closing.callback(direct.close)
        relay_port = closing.enter_context(_socat_tls_relay(api, relay_pki))
        reference: _Client | None = None
        if relay_port is not None:
            relay_context = ssl.create_default_context(cafile=str(relay_pki.ca_file))
            headers = {"Accept": ACCEPT_TABLE, "Authorization": f"Bearer {api.token}"}
            reference = _Client("127.0.0.1", relay_port, relay_context, "", headers)
            closing.callback(reference.close)
            reference.round(WARMUP_REQUESTS)
        direct.round(WARMUP_REQUESTS)
        for index in range(ROUNDS):
            proxied = _through_service(laptop, root, service["addr"], host_ca)
            try:
                proxied.round(WARMUP_REQUESTS)
                order = [("direct", direct), ("service", proxied)]
                if reference is not None:
                    order.append(("socat", reference))
                for name, client in order if index % 2 == 0 else list(reversed(order)):
                    if name != "service":
                        samples[name] += client.round(ROUND_REQUESTS)
                        continue
                    # billed: the daemon's work for the round, until it is idle again (audit delivery included)
                    wait_idle(daemon_cpu)
                    before = daemon_cpu()
                    samples[name] += client.round(ROUND_REQUESTS)
                    wait_idle(daemon_cpu)
                    service_cpu += daemon_cpu() - before
            finally:
                proxied.close()
    ratio = statistics.median(samples["service"]) / statistics.median(samples["direct"])
    per_second = len(samples["service"]) / sum(samples["service"])
    print(f"bench_kube[get pods direct]: round trip, {len(samples['direct'])} requests: {_us(samples['direct'])}")
    print(
        f"bench_kube[get pods via kube service]: round trip, {len(samples['service'])} requests: "
        f"{_us(samples['service'])}, {per_second:.0f} requests/s"
    )
    print(
        f"bench_kube[server CPU]: {service_cpu / len(samples['service']) * 1e6:.0f} µs per request through the "
        "service (the daemon and its auth workers, audit delivery included)"
    )
    print(
        f"bench_kube[ratio]: p50 service/direct {ratio:.2f} "
        f"({'ok' if ratio <= TARGET_RATIO else 'short'}, target <= {TARGET_RATIO})"
    )
    if samples["socat"]:
        floor = statistics.median(samples["socat"]) / statistics.median(samples["direct"])
        print(
            f"bench_kube[reference: TLS ended and re-opened by socat, a relay in C parsing nothing]: "
            f"{_us(samples['socat'])}, ratio {floor:.2f} (the floor of any such service on this machine)"
        )


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-kube-"))
    with running_kube_apiserver(root / "apiserver") as api:
        extra = api.kube_service_config(KUBE_CLUSTER, free_port(), root / "sa-token")
        cluster = start_cluster(root / "cluster", extra_config=extra)
        laptop: Laptop | None = None
        try:
            laptop = enrolled_laptop(cluster, root, "alice", SERIAL, roles="access,require-trusted-device")
            deadline = time.monotonic() + 30
            while KUBE_CLUSTER not in _ok(laptop.tsh("kube", "ls")):
                if time.monotonic() > deadline:
                    raise RuntimeError("the kube service did not announce its cluster")
                time.sleep(0.2)
            pid = cluster.process.pid
            _measure(api, laptop, root, lambda: tree_cpu_seconds(pid))
        finally:
            if laptop is not None:
                laptop.stop()
            cluster.stop()


if __name__ == "__main__":
    main()
