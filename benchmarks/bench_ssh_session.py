"""bench_ssh_session: what device-trust enforcement costs an SSH session on the node.

One real daemon (auth service + SSH node), one human with a device-augmented certificate (a software-key device
enrolled and authenticated through the real ceremonies). Each sample is one whole exec session as a client sees
it: TCP connect, key exchange, host certificate check, certificate user auth, session channel open (where the
node decides), ``true`` run as the login's account, exit status, disconnect. C concurrent clients (asyncio, one
process) open sessions back to back for a fixed time.

Phases alternate on the SAME node (ROUNDS times each): ``enforced`` (cluster mode required, the trusted device
presented) and ``off`` (cluster mode off, same certificate); the benchmark switches the cluster auth preference
and waits until the node enforces the new mode (a device-less probe flips) and the daemon is idle again (audit
events of the previous phase delivered) before measuring; ABBA order cancels drift. Reported: sessions/s,
p50/p99 latency, the daemon's CPU per session (its auth workers and the session processes it reaps included),
and the ratio enforced/off of time per session (target ≤ 1.05). Then ``enforced+proof``: the same C clients,
but every session carries a session-time device proof (cluster ``session_proof: per_session``): each sample is a
new HTTPS connection to the auth service, the device ceremony bound to the node (software key), then the
session on the session certificate (target ≥ 50 sessions/s). Where Debian's /usr/sbin/sshd exists, the same figure for a
plain sshd on a loopback port trusting the cluster's user CA (TrustedUserCAKeys), as a reference.

Session-time device proof: phases ``per_session`` and ``login`` (cluster mode required, the cluster's
``session_proof`` switched between them, ABBA again) with a device whose key lives in a swtpm TPM. In
both phases each sample is what ``tsh ssh`` does on a new HTTPS connection to the auth service: in ``login``, look
the node up, then the session on the login-time device certificate; in ``per_session``, the device ceremony's
first request names the node as the user did (the auth service resolves it: no separate lookup), then the rest
of the ceremony (the TPM quote, the session certificate) runs on that connection while the SSH connection is
opened, and the session runs on the session certificate. One client, back to back. Reported:
p50 time to open a session in each phase and their ratio (target ≤ 1.25), the daemon's CPU per session
(auth service and node share the process: the difference is the ceremony's cost on the auth service) and the
client's (this process). On busy cores the ratio follows the CPU the ceremony adds on both sides more than how
well it overlaps the SSH handshake.

Needs root (sessions run as the test login ``dt-test``, created when missing).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh
from tests.integration.ceremony_helpers import (
    LOGIN,
    ClientKey,
    NodeInfo,
    SoftwareDevice,
    UserLogin,
    authenticate_device,
    connect_options,
    enroll_software_device,
    put_role,
    run_command,
    set_device_trust,
    signup_and_login,
    wait_for_node,
)
from tests.integration.cluster import free_port

from benchmarks.harness import (
    LeanClient,
    RunningCluster,
    cluster,
    percentile,
    summary_ms,
    tree_cpu_seconds,
    wait_idle,
)
from devicetrust.ceremony.messages import Challenge, CollectedData
from devicetrust.cli.tsh_ssh import SessionProofClient, in_thread, proved_certificate
from devicetrust.client import AuthClient
from devicetrust.device.keys import TPMKey
from devicetrust.device.swtpm import SimulatedTPM, manufacture

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "4"))
PHASE_SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
WARMUP_SESSIONS = 5
MODE_PICKUP_SECONDS = 10.0
SSHD = Path("/usr/sbin/sshd")
SSHD_START_SECONDS = 10.0
PASSWORD = "benchmark password 1"
TARGET_RATIO = 1.05
UNAUTHORIZED_DEVICE = "unauthorized device"


@dataclass
class Phase:
    label: str
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    cpu: float = 0.0
    #: CPU time of the benchmark's own process (the client: tsh's work, the device proof's thread included)
    client_cpu: float = 0.0

    @property
    def sessions(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.sessions / self.elapsed if self.elapsed else 0.0

    def report(self, clients: int) -> str:
        return (
            f"bench_ssh_session[{self.label}]: {self.sessions} sessions in {self.elapsed:.1f} s "
            f"with {clients} clients: {self.rate:.1f} sessions/s; {summary_ms(self.latencies)}; "
            f"server CPU {self.cpu / max(self.sessions, 1) * 1000:.2f} ms/session"
        )


async def _session(options: dict[str, Any]) -> None:
    async with asyncssh.connect(**options) as conn:
        result = await conn.run("true", check=False)
    if result.exit_status != 0:
        raise RuntimeError(f"session exited with {result.exit_status}: {result.stderr!r}")


async def _drive(options: dict[str, Any], seconds: float, clients: int, phase: Phase) -> None:
    for _ in range(WARMUP_SESSIONS):
        await _session(options)
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            begun = time.perf_counter()
            await _session(options)
            phase.latencies.append(time.perf_counter() - begun)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    phase.elapsed += time.perf_counter() - started


def measure(phase: Phase, options: dict[str, Any], cpu: Callable[[], float]) -> None:
    wait_idle(cpu)
    before = cpu()
    asyncio.run(_drive(options, PHASE_SECONDS, CLIENTS, phase))
    phase.cpu += cpu() - before


# ------------------------------------------------------------------------------------------------ the node
@dataclass
class NodeBench:
    running: RunningCluster
    node: NodeInfo
    host_ca_ssh: str
    trusted: ClientKey
    plain: ClientKey

    def _plain_outcome(self) -> str:
        """Either "allowed" or the reason the node refused the device-less user's session."""
        try:
            asyncio.run(run_command(self.node, self.host_ca_ssh, self.plain))
        except asyncssh.ChannelOpenError as err:
            return str(err.reason)
        return "allowed"

    def switch(self, mode: str) -> None:
        """Set the cluster mode and wait until the node enforces it: the device-less user is refused for want of
        a device (required), or admitted (off). Anything else (the node has not seen the role yet) waits too.
        These phases measure the decision alone, so the login-time device certificate is admitted
        (``session_proof: login``); the per-session proof is measured by its own phases."""
        with closing(self.running.admin()) as admin:  # fresh: idle keep-alive connections get closed
            set_device_trust(admin, mode, session_proof="login")
        want = "allowed" if mode == "off" else UNAUTHORIZED_DEVICE
        deadline = time.monotonic() + MODE_PICKUP_SECONDS
        while self._plain_outcome() != want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not enforce cluster mode {mode} within {MODE_PICKUP_SECONDS} s")
            time.sleep(0.1)


def _prepare(admin: LeanClient, anonymous: LeanClient) -> tuple[ClientKey, ClientKey, UserLogin, SoftwareDevice]:
    """A role granting dt-test everywhere (no mode of its own), a user with a trusted device, one without."""
    set_device_trust(admin, "optional")
    put_role(admin, "bench-ssh", None)
    trusted = signup_and_login(admin, anonymous, "bench-trusted", ["bench-ssh"], PASSWORD)
    plain = signup_and_login(admin, anonymous, "bench-plain", ["bench-ssh"], PASSWORD)
    user = anonymous.with_token(trusted.session_token)
    device = enroll_software_device(admin, user, "BENCH-SSH-1", "bench-ssh-credential")
    augmented = authenticate_device(user, device, trusted.ssh_cert)
    return trusted.client_key(augmented), plain.client_key(), trusted, device


#: Sessions/s target once every session carries a session-time device proof.
TARGET_PROOF_SESSIONS_PER_S = 50.0


@dataclass
class ProofThroughput:
    running: RunningCluster
    node: NodeInfo
    host_ca_ssh: str
    login: UserLogin
    device: SoftwareDevice

    def session_cert(self) -> str:
        client = LeanClient(self.running.addr, self.running.ca_pem, self.login.session_token)
        try:
            return authenticate_device(client, self.device, self.login.ssh_cert, ("ssh", self.node.host_id))
        finally:
            client.close()

    async def session(self) -> None:
        cert = await asyncio.to_thread(self.session_cert)
        await _session(connect_options(self.node, self.host_ca_ssh, self.login.client_key(cert)))

    async def drive(self, seconds: float, clients: int, phase: Phase) -> None:
        for _ in range(WARMUP_SESSIONS):
            await self.session()
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                begun = time.perf_counter()
                await self.session()
                phase.latencies.append(time.perf_counter() - begun)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        phase.elapsed += time.perf_counter() - started


def run_node_phases() -> tuple[Phase, Phase, Phase, str, ClientKey]:
    enforced, off, proven = Phase("enforced"), Phase("off"), Phase("enforced+proof")
    with cluster() as running:
        admin, anonymous = running.admin(), running.anonymous()
        try:
            trusted, plain, login, device = _prepare(admin, anonymous)
            cas = anonymous.call("GET", "/v1/cas")
            host_ca_ssh, user_ca_ssh = str(cas["host_ca_ssh"]), str(cas["user_ca_ssh"])
            bench = NodeBench(running, wait_for_node(admin), host_ca_ssh, trusted, plain)
            options = connect_options(bench.node, host_ca_ssh, trusted)
            pid = running.cluster.process.pid

            def daemon_cpu() -> float:
                return tree_cpu_seconds(pid)

            # ABBA order (enforced, off, off, enforced, ...) so that drift over the run favours neither phase
            for index in range(ROUNDS):
                for mode, phase in (("required", enforced), ("off", off))[:: 1 if index % 2 == 0 else -1]:
                    bench.switch(mode)
                    measure(phase, options, daemon_cpu)
            bench.switch("required")
            set_device_trust(admin, "required", session_proof="per_session")
            prover = ProofThroughput(running, bench.node, host_ca_ssh, login, device)
            wait_idle(daemon_cpu)
            before = daemon_cpu()
            asyncio.run(prover.drive(PHASE_SECONDS * ROUNDS, CLIENTS, proven))
            proven.cpu += daemon_cpu() - before
        finally:
            admin.close()
            anonymous.close()
    return enforced, off, proven, user_ca_ssh, trusted


# ------------------------------------------------------------------------------------------------ sshd
@contextmanager
def plain_sshd(user_ca_ssh: str) -> Iterator[tuple[int, asyncssh.SSHKey, int]]:
    """Debian's sshd on a free loopback port, its own config and host key in a temp dir, trusting the
    cluster's user CA and nothing else (no passwords, no authorized_keys). Yields (port, host key, pid)."""
    with tempfile.TemporaryDirectory(prefix="dt-bench-sshd-") as tmp:
        root = Path(tmp)
        host_key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
        host_key.write_private_key(str(root / "host_key"))
        (root / "host_key").chmod(0o600)
        (root / "user_ca.pub").write_text(user_ca_ssh.strip() + "\n")
        port = free_port()
        (root / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\nPidFile {root / 'sshd.pid'}\n"
            f"TrustedUserCAKeys {root / 'user_ca.pub'}\nAuthorizedKeysFile none\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM yes\nPermitRootLogin no\nStrictModes no\nPrintMotd no\nPrintLastLog no\n"
            f"AllowUsers {LOGIN}\nMaxStartups 100:30:200\nMaxSessions 100\nLogLevel ERROR\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # Debian's privilege separation directory
        with (root / "sshd.log").open("wb") as log_file:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(root / "sshd_config")],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        try:
            deadline = time.monotonic() + SSHD_START_SECONDS
            while not _listening(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(root / 'sshd.log').read_text()[-2000:]}")
                time.sleep(0.05)
            yield port, host_key.convert_to_public(), process.pid
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_sshd_phase(user_ca_ssh: str, trusted: ClientKey) -> Phase | None:
    if not SSHD.exists():
        return None
    phase = Phase("sshd")
    with plain_sshd(user_ca_ssh) as (port, host_key, pid):
        options: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "username": LOGIN,
            "client_keys": [trusted],
            "known_hosts": ([host_key], [], []),
            "config": None,
            "agent_path": None,
            "password_auth": False,
            "kbdint_auth": False,
            "gss_auth": False,
            "host_based_auth": False,
            "preferred_auth": "publickey",
            "connect_timeout": 10,
        }
        for _ in range(ROUNDS):
            measure(phase, options, lambda: tree_cpu_seconds(pid))
    return phase


# ---------------------------------------------------------------------------------- session-time device proof
PROOF_SAMPLES = int(os.environ.get("BENCH_PROOF_SAMPLES", "30"))
PROOF_TARGET_RATIO = 1.25
PROOF_SERIAL = "BENCH-SSH-TPM-1"


@dataclass
class ProofBench:
    running: RunningCluster
    node: NodeInfo
    host_ca_ssh: str
    login: UserLogin
    login_device_cert: str
    key: TPMKey
    collected: CollectedData

    def begin(self, client: AuthClient) -> dict[str, Any]:
        """The device ceremony's first request, naming the node as the user does: the auth service resolves it."""
        return client.post(
            "/v1/devices/authenticate/begin",
            {
                "credential_id": self.key.credential_id(),
                "device_data": self.collected.to_dict(),
                "ssh_cert": self.login.ssh_cert,
                "target": {"kind": "ssh", "id": self.node.hostname, "by_name": True},
            },
        )

    def finish(self, client: AuthClient, begin: dict[str, Any]) -> bytes:
        """The device's answer (its TPM quote) and the session certificate."""
        answer = self.key.answer_authentication(Challenge.from_json(begin))
        return str(client.post("/v1/devices/authenticate/finish", answer.to_json())["ssh_cert"]).encode()

    def sample(self, per_session: bool) -> None:
        """What tsh ssh does, on a new HTTPS connection to the auth service: with ``login``, look the node up, then
        the session; with ``per_session``, the ceremony's first request (which resolves the node), then the rest
        of the ceremony in a thread while the SSH connection is opened (tsh's own SessionProofClient offers the
        session certificate at user authentication)."""
        with AuthClient(self.running.addr, ca_pem=self.running.ca_pem, token=self.login.session_token) as client:
            if not per_session:
                client.get("/v1/nodes")
                asyncio.run(self._session(None))
                return
            begin = self.begin(client)
            if begin["node"]["host_id"] != self.node.host_id:
                raise RuntimeError(f"the auth service resolved {self.node.hostname} to {begin['node']}")
            asyncio.run(self._session(in_thread(lambda: self.finish(client, begin))))

    async def _session(self, proof: concurrent.futures.Future[bytes | None] | None) -> None:
        key, login_cert = self.login.client_key(self.login_device_cert)
        options = connect_options(self.node, self.host_ca_ssh, (key, login_cert))
        if proof is not None:
            certificate = proved_certificate(proof, login_cert)
            options |= {"client_keys": None, "client_factory": lambda: SessionProofClient(key, certificate)}
        await _session(options)

    def switch(self, session_proof: str) -> None:
        """Set session_proof and wait until the node enforces it: the login-time certificate opens (login) or not."""
        with closing(self.running.admin()) as admin:
            set_device_trust(admin, "required", session_proof=session_proof)
        want = "allowed" if session_proof == "login" else UNAUTHORIZED_DEVICE
        deadline = time.monotonic() + MODE_PICKUP_SECONDS
        while True:
            try:
                asyncio.run(run_command(self.node, self.host_ca_ssh, self.login.client_key(self.login_device_cert)))
                outcome = "allowed"
            except asyncssh.ChannelOpenError as err:
                outcome = str(err.reason)
            if outcome == want:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not enforce session_proof {session_proof} in {MODE_PICKUP_SECONDS} s")
            time.sleep(0.1)


def _enroll_tpm_device(
    running: RunningCluster, login: UserLogin, state: Path, tcti: str
) -> tuple[TPMKey, tuple[CollectedData, str]]:
    with closing(running.admin()) as admin:
        added = admin.call("POST", "/v1/devices", {"os_type": "linux", "asset_tag": PROOF_SERIAL})
        device_id = added["device"]["metadata"]["name"]
        token = admin.call("POST", f"/v1/devices/{device_id}/enroll-token", {})["enroll_token"]
    collected = CollectedData(collect_time=datetime.now(UTC).isoformat(), os_type="linux", serial_number=PROOF_SERIAL)
    key = TPMKey(state / "tsh", tcti)
    with AuthClient(running.addr, ca_pem=running.ca_pem, token=login.session_token) as client:
        begin = client.post(
            "/v1/devices/enroll/begin",
            {
                "token": token,
                "credential_id": key.credential_id(),
                "device_data": collected.to_dict(),
                **key.enroll_payload(),
            },
        )
        client.post("/v1/devices/enroll/finish", key.answer_enrollment(Challenge.from_json(begin)).to_json())
        begin = client.post(
            "/v1/devices/authenticate/begin",
            {"credential_id": key.credential_id(), "device_data": collected.to_dict(), "ssh_cert": login.ssh_cert},
        )
        augmented = client.post(
            "/v1/devices/authenticate/finish", key.answer_authentication(Challenge.from_json(begin)).to_json()
        )
    return key, (collected, str(augmented["ssh_cert"]))


def run_proof_phases() -> tuple[Phase, Phase]:
    per_session, login_phase = Phase("per_session"), Phase("login")
    with tempfile.TemporaryDirectory(prefix="dt-bench-proof-") as tmp, cluster() as running:
        state = Path(tmp)
        manufacture(state / "tpm")
        with (
            SimulatedTPM(state / "tpm") as simulated,
            closing(running.admin()) as admin,
            closing(running.anonymous()) as anonymous,
        ):
            set_device_trust(admin, "optional")
            put_role(admin, "bench-proof", None)
            login = signup_and_login(admin, anonymous, "bench-proof", ["bench-proof"], PASSWORD)
            key, (collected, device_cert) = _enroll_tpm_device(running, login, state, simulated.tcti)
            cas = anonymous.call("GET", "/v1/cas")
            bench = ProofBench(
                running, wait_for_node(admin), str(cas["host_ca_ssh"]), login, device_cert, key, collected
            )
            pid = running.cluster.process.pid
            try:
                for index in range(ROUNDS):
                    order = (("per_session", per_session), ("login", login_phase))
                    for setting, phase in order[:: 1 if index % 2 == 0 else -1]:
                        bench.switch(setting)
                        bench.sample(setting == "per_session")  # warm-up
                        wait_idle(lambda: tree_cpu_seconds(pid))
                        before, started = tree_cpu_seconds(pid), time.perf_counter()
                        client_before = time.process_time()
                        for _ in range(PROOF_SAMPLES):
                            begun = time.perf_counter()
                            bench.sample(setting == "per_session")
                            phase.latencies.append(time.perf_counter() - begun)
                        phase.elapsed += time.perf_counter() - started
                        phase.cpu += tree_cpu_seconds(pid) - before
                        phase.client_cpu += time.process_time() - client_before
            finally:
                key.close()
    return per_session, login_phase


def main() -> None:
    if os.geteuid() != 0:
        print("bench_ssh_session: skipped (needs root: sessions run as the test login dt-test)")
        return
    from tests.agent.harness import require_root_login

    require_root_login()
    enforced, off, proven, user_ca_ssh, trusted = run_node_phases()
    print(enforced.report(CLIENTS))
    print(off.report(CLIENTS))
    print(proven.report(CLIENTS))
    print(
        f"bench_ssh_session[enforced+proof]: {proven.rate:.1f} sessions/s with a device proof each (target >= "
        f"{TARGET_PROOF_SESSIONS_PER_S:.0f}: {'ok' if proven.rate >= TARGET_PROOF_SESSIONS_PER_S else 'short'})"
    )
    time_ratio = off.rate / enforced.rate if enforced.rate else float("nan")
    p50_ratio = percentile(enforced.latencies, 0.5) / percentile(off.latencies, 0.5)
    cpu_ratio = (enforced.cpu / enforced.sessions) / (off.cpu / off.sessions) if off.cpu else float("nan")
    verdict = "within" if time_ratio <= TARGET_RATIO else "ABOVE"
    print(
        f"bench_ssh_session[ratio]: enforced/off time per session {time_ratio:.3f} ({verdict} the {TARGET_RATIO} "
        f"target); p50 latency {p50_ratio:.3f}; server CPU per session {cpu_ratio:.3f}"
    )
    per_session, login_phase = run_proof_phases()
    print(per_session.report(1))
    print(login_phase.report(1))
    proof_p50 = percentile(per_session.latencies, 0.5) / percentile(login_phase.latencies, 0.5)
    per_cpu = per_session.cpu / max(per_session.sessions, 1)
    login_cpu = login_phase.cpu / max(login_phase.sessions, 1)
    per_client = per_session.client_cpu / max(per_session.sessions, 1)
    login_client = login_phase.client_cpu / max(login_phase.sessions, 1)
    print(
        f"bench_ssh_session[proof]: per_session/login p50 time to open a session {proof_p50:.3f} "
        f"({'ok' if proof_p50 <= PROOF_TARGET_RATIO else 'short'}, target <= {PROOF_TARGET_RATIO}); daemon CPU "
        f"per session {per_cpu * 1000:.2f} / {login_cpu * 1000:.2f} ms, the ceremony's share "
        f"{(per_cpu - login_cpu) * 1000:.2f} ms; client CPU per session {per_client * 1000:.2f} / "
        f"{login_client * 1000:.2f} ms"
    )
    sshd = run_sshd_phase(user_ca_ssh, trusted)
    if sshd is None:
        print(f"bench_ssh_session[sshd]: skipped ({SSHD} not found; Debian's openssh-server is not installed)")
        return
    print(sshd.report(CLIENTS))
    print(
        f"bench_ssh_session[sshd]: node(enforced)/sshd time per session {sshd.rate / enforced.rate:.3f}; "
        f"p50 latency {percentile(enforced.latencies, 0.5) / percentile(sshd.latencies, 0.5):.3f}"
    )


if __name__ == "__main__":
    main()
