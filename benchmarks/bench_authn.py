"""bench_authn: full device-authentication ceremonies (begin + finish, augmented certificates issued) from C
concurrent clients with the unsafe software key backend, against a real daemon on SQLite, then PostgreSQL.

Reported in the same run: ceremonies/s, latency, the server's CPU time per ceremony (the daemon and its auth
workers), the load generator's own CPU time, and the crypto-only rate (the same ECDSA verify + SSH and X.509
certificate signing in a tight loop, one core) with the ratio between the two. Each figure is printed with its
target (issue 11) and "ok" or "short".
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from tests.integration.ceremony_helpers import SoftwareDevice, authenticate_device, enroll_software_device

from benchmarks.harness import LeanClient, RunningCluster, cluster, percentile, summary_ms
from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.certs import issue_ssh_user_cert, issue_x509_client_cert
from devicetrust.crypto.identity import DeviceExtensions, Identity
from devicetrust.crypto.keys import generate_private_key, public_key_to_openssh

PASSWORD = "benchmark password 1"
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
DURATION_SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: Targets on a 2-core machine with the load generator on the same machine.
TARGET_RATE = {"sqlite": 600.0, "postgres": 500.0}
TARGET_SERVER_CPU_MS = 2.5
TARGET_P99_MS = 50.0
TARGET_RATIO = 0.25


def verdict(ok: bool) -> str:
    return "ok" if ok else "short"


@dataclass
class SimulatedUser:
    client: LeanClient
    device: SoftwareDevice
    ssh_cert: str


def _allow_software_keys(admin: LeanClient) -> None:
    cap = admin.call("GET", "/v1/resources/cap/cluster-auth-preference")
    cap["spec"]["device_trust"] = {"mode": "optional", "allow_unsafe_software_keys": True}
    admin.call("PUT", "/v1/resources", {"resource": cap, "force": True})


def _make_user(running: RunningCluster, index: int) -> SimulatedUser:
    admin = running.admin()
    name = f"bench{index}"
    invite = admin.call("POST", "/v1/users", {"name": name, "roles": ["access"], "traits": {"logins": [name]}})
    anonymous = running.anonymous()
    anonymous.call("POST", "/v1/signup", {"token": invite["invite_token"], "password": PASSWORD})
    user_key = generate_private_key()
    login = anonymous.call(
        "POST",
        "/v1/login",
        {"user": name, "password": PASSWORD, "public_key": public_key_to_openssh(user_key.public_key())},
    )
    serial = f"BENCH-{index:04d}-{secrets.token_hex(2)}"
    client = anonymous.with_token(login["session_token"])
    device = enroll_software_device(admin, client, serial, f"bench-credential-{index}")
    admin.close()
    return SimulatedUser(client, device, login["ssh_cert"])


def _ceremony(user: SimulatedUser) -> None:
    assert authenticate_device(user.client, user.device, user.ssh_cert)


def crypto_only_rate(seconds: float = 3.0) -> float:
    """The ceremony's unavoidable crypto, single-threaded: verify one ECDSA signature, sign one SSH and one
    X.509 certificate."""
    now = datetime.now(UTC)
    ca = CertAuthority.generate("user", "bench.cluster", now)
    device_key = generate_private_key()
    user_key = generate_private_key().public_key()
    challenge = secrets.token_bytes(32)
    signature = device_key.sign(challenge, ec.ECDSA(hashes.SHA256()))
    identity = Identity(
        username="bench",
        roles=("access",),
        logins=("bench",),
        traits={},
        not_before=now,
        not_after=now + timedelta(hours=12),
        device=DeviceExtensions("00000000-0000-4000-8000-000000000000", "BENCH", "credential"),
    )
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        device_key.public_key().verify(signature, challenge, ec.ECDSA(hashes.SHA256()))
        issue_ssh_user_cert(ca, user_key, identity)
        issue_x509_client_cert(ca, user_key, identity)
        done += 1
    return done / (time.perf_counter() - started)


def run_against(label: str, crypto: float, storage_url: str = "") -> None:
    with cluster(storage_url) as running:
        admin = running.admin()
        _allow_software_keys(admin)
        admin.close()
        users = [_make_user(running, i) for i in range(CLIENTS)]
        for user in users:  # warm up connections and caches
            _ceremony(user)
        latencies: list[list[float]] = [[] for _ in users]
        errors: list[BaseException] = []
        deadline = time.perf_counter() + DURATION_SECONDS

        def worker(index: int) -> None:
            user = users[index]
            try:
                while time.perf_counter() < deadline:
                    begun = time.perf_counter()
                    _ceremony(user)
                    latencies[index].append(time.perf_counter() - begun)
            except BaseException as err:
                errors.append(err)

        cpu_before = running.server_cpu_seconds()
        client_cpu_before = time.process_time()
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(users))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu = running.server_cpu_seconds() - cpu_before
        client_cpu = time.process_time() - client_cpu_before
        for user in users:
            user.client.close()
    if errors:
        raise RuntimeError(f"{label}: {len(errors)} client errors, first: {errors[0]}")
    samples = [s for per_client in latencies for s in per_client]
    rate = len(samples) / elapsed
    cpu_ms = cpu / len(samples) * 1000
    p99_ms = percentile(samples, 0.99) * 1000
    print(
        f"bench_authn[{label}]: {len(samples)} ceremonies in {elapsed:.1f} s with {CLIENTS} clients: "
        f"{rate:.0f} ceremonies/s (target >= {TARGET_RATE[label]:.0f}: {verdict(rate >= TARGET_RATE[label])}); "
        f"{summary_ms(samples)} (p99 target <= {TARGET_P99_MS:.0f} ms: {verdict(p99_ms <= TARGET_P99_MS)})"
    )
    print(
        f"bench_authn[{label}]: server CPU {cpu_ms:.2f} ms/ceremony (target <= {TARGET_SERVER_CPU_MS}: "
        f"{verdict(cpu_ms <= TARGET_SERVER_CPU_MS)}); load generator CPU "
        f"{client_cpu / len(samples) * 1000:.2f} ms/ceremony ({client_cpu / elapsed:.0%} of one core)"
    )
    ratio = rate / crypto
    print(
        f"bench_authn[{label}]: ratio to crypto-only {ratio:.3f} (target >= {TARGET_RATIO}: "
        f"{verdict(ratio >= TARGET_RATIO)})"
    )


def main() -> None:
    crypto = crypto_only_rate()
    print(f"bench_authn[crypto-only]: {crypto:.0f} verify+SSH cert+X.509 cert per second (one core)")
    run_against("sqlite", crypto)
    try:
        import psycopg

        schema = f"dt_bench_{secrets.token_hex(4)}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        try:
            run_against("postgres", crypto, f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
    except (ImportError, OSError) as err:
        print(f"bench_authn[postgres]: skipped ({err})")


if __name__ == "__main__":
    main()
