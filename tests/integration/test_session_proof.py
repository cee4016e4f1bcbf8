"""Session-time device proof end to end: a real daemon (auth service + SSH node), a laptop with its own swtpm, the
real tsh, the real OpenSSH client, and a thief holding a copy of the owner's profile but not the laptop's TPM.

The user's role requires a trusted device. The owner notices nothing; the copied profile opens nothing, by any
path; a captured session certificate is good for one node and one minute only; a locked, unenrolled or deleted
device is refused at the next session.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from devicetrust.access.decision import NO_SESSION_PROOF, PROOF_EXPIRED, PROOF_FOR_ANOTHER_TARGET
from tests.agent.harness import require_root_login
from tests.integration.ceremony_helpers import LOGIN, NodeInfo, run_command
from tests.integration.cluster import start_cluster
from tests.integration.laptops import StolenProfile, copy_profile, enrolled_laptop
from tests.integration.test_cluster_cli import ok, require_tool
from tests.integration.test_devices import Laptop, _require_swtpm, set_device_trust

pytestmark = pytest.mark.integration

SEED_REJECTION = "ERROR: ssh: rejected: administratively prohibited (unauthorized device)"
SERIAL = "SN-PROOF-1"


@dataclass
class World(StolenProfile):
    node: NodeInfo
    host_ca_ssh: str

    def thief(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.run("tsh", *args, env=self.thief_env())

    @property
    def target(self) -> str:
        return f"{LOGIN}@{self.node.hostname}"

    def present(self, home: Path, cert: bytes) -> asyncssh.SSHCompletedProcess:
        """A raw SSH client presenting ``cert`` with the profile's key from ``home``."""
        key = asyncssh.read_private_key(str(home / "keys" / self.cluster.proxy / "alice"))
        return asyncio.run(run_command(self.node, self.host_ca_ssh, (key, asyncssh.import_certificate(cert))))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root_login()
    _require_swtpm()
    root = tmp_path_factory.mktemp("session-proof")
    cluster = start_cluster(root)
    laptop: Laptop | None = None
    try:
        laptop = enrolled_laptop(cluster, root, "alice", SERIAL, roles="access,require-trusted-device", logins=LOGIN)
        nodes: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while not nodes:
            nodes = json.loads(ok(laptop.tsh("ls", "--format=json")))
            if not nodes:
                assert time.monotonic() < deadline, "the cluster's node did not join"
                time.sleep(0.2)
        host, _, port = str(nodes[0]["addr"]).rpartition(":")
        node = NodeInfo(str(nodes[0]["host_id"]), str(nodes[0]["hostname"]), host, int(port))
        profile = json.loads((laptop.home / "profiles" / f"{cluster.proxy}.json").read_text())
        yield World(cluster, laptop, copy_profile(laptop, root), node, profile["host_ca_ssh"])
    finally:
        if laptop is not None:
            laptop.stop()
        cluster.stop()


def test_the_owner_proves_the_device_for_each_session(world: World) -> None:
    status = world.laptop.status()
    assert status["device"]["asset_tag"] == SERIAL  # type: ignore[index]  # login-time values, as before
    lookups = _node_lookups(world)
    first = ok(world.laptop.tsh("ssh", world.target, 'echo "$DEVICETRUST_SESSION_ID"')).strip()
    second = ok(world.laptop.tsh("ssh", world.target, 'echo "$DEVICETRUST_SESSION_ID"')).strip()
    assert first and second and first != second
    # the ceremony's first request resolved the node: tsh did not look it up beforehand
    assert _node_lookups(world) == lookups
    # an interactive session (a terminal) takes the same path
    terminal = ok(world.laptop.tsh("ssh", "-t", world.target, "tty"))
    assert terminal.startswith("/dev/pts/"), terminal
    start = world.wait_for_event("session.start", lambda e: e.get("sid") == second)
    assert start["device"]["asset_tag"] == SERIAL and start["device"]["os"] == "Linux", start
    # the session's device block comes from its own ceremony, which names this node as its target
    proof_id = start["device_proof"]["id"]
    authn = world.wait_for_event("device.authenticate", lambda e: e.get("proof", {}).get("id") == proof_id)
    assert authn["target"] == {"kind": "ssh", "id": world.node.host_id} and authn["success"] is True


def _node_lookups(world: World) -> int:
    """How many ``GET /v1/nodes`` the auth service has answered (its request log)."""
    lines = world.cluster.log_path.read_text().splitlines()
    return sum(1 for line in lines if '"path": "/v1/nodes"' in line and json.loads(line).get("method") == "GET")


def test_a_copied_profile_is_rejected_by_tsh_ssh(world: World) -> None:
    result = world.thief("ssh", world.target, "echo pwned")
    assert result.returncode != 0 and "pwned" not in result.stdout
    assert result.stderr.strip().splitlines()[-1] == SEED_REJECTION, result.stderr
    rejected = world.wait_for_event("session.rejected", lambda e: e.get("reason") == NO_SESSION_PROOF)
    assert rejected["success"] is False
    # the thief cannot mint a session certificate either: the key lives in the laptop's TPM
    assert world.thief("device", "session-cert", f"--ssh-node={world.node.host_id}").returncode != 0


def test_a_raw_client_presenting_the_login_certificate_is_rejected(world: World) -> None:
    login_cert = (world.thief_home / "keys" / world.cluster.proxy / "alice-cert.pub").read_bytes()
    with pytest.raises(asyncssh.ChannelOpenError) as refused:
        world.present(world.thief_home, login_cert)
    assert refused.value.reason == "unauthorized device"


def test_a_captured_session_certificate_is_good_for_its_node_only(world: World) -> None:
    other = ok(world.laptop.tsh("device", "session-cert", "--ssh-node=another-node-host-id"))
    with pytest.raises(asyncssh.ChannelOpenError) as refused:
        world.present(world.thief_home, other.encode())
    assert refused.value.reason == "unauthorized device"
    world.wait_for_event("session.rejected", lambda e: e.get("reason") == PROOF_FOR_ANOTHER_TARGET)
    # the control: one for this node opens a session for whoever holds the key, within its window
    mine = ok(world.laptop.tsh("device", "session-cert", f"--ssh-node={world.node.host_id}"))
    assert world.present(world.thief_home, mine.encode()).exit_status == 0


def test_a_captured_session_certificate_is_refused_after_its_window(world: World, tmp_path: Path) -> None:
    set_device_trust(world.cluster, tmp_path, session_proof_ttl="5s")
    try:
        assert "session proof per_session (5s)" in ok(world.cluster.tctl("status"))
        captured = ok(world.laptop.tsh("device", "session-cert", f"--ssh-node={world.node.host_id}"))
    finally:
        set_device_trust(world.cluster, tmp_path)
    time.sleep(6)
    with pytest.raises(asyncssh.ChannelOpenError) as refused:
        world.present(world.thief_home, captured.encode())
    assert refused.value.reason == "unauthorized device"
    world.wait_for_event("session.rejected", lambda e: e.get("reason") == PROOF_EXPIRED)


def _openssh(
    world: World, env: dict[str, str], home: Path, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / f"ssh_config-{home.name}"
    text = ok(world.cluster.run("tsh", "config", env=env))
    # the device proof runs while ssh reads its configuration, before it loads certificate files
    assert f"Match originalhost {world.node.hostname}," in text and "device session-cert" in text, text
    config.write_text(text + "\n")
    env = {key: value for key, value in env.items() if key != "SSH_AUTH_SOCK"}
    argv = [require_tool("ssh"), "-F", str(config), "-o", "BatchMode=yes", *args]
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60, check=False
    )


def test_openssh_through_tsh_config_works_for_the_owner_only(world: World, tmp_path: Path) -> None:
    owner = _openssh(world, world.laptop.env(), world.laptop.home, tmp_path, world.target, "echo from-openssh")
    assert (owner.returncode, owner.stdout) == (0, "from-openssh\n"), owner.stderr
    again = _openssh(world, world.laptop.env(), world.laptop.home, tmp_path, world.target, "exit 3")
    assert again.returncode == 3, again.stderr
    thief = _openssh(world, world.thief_env(), world.thief_home, tmp_path, world.target, "echo pwned")
    assert thief.returncode == 255 and "pwned" not in thief.stdout
    assert "administratively prohibited" in thief.stderr.lower() and "unauthorized device" in thief.stderr, thief.stderr


def test_a_profile_from_before_the_cluster_required_session_proofs_proves_on_demand(
    world: World, tmp_path: Path
) -> None:
    """Logged in under ``session_proof: login``, the profile skips the proof; once the cluster switches to
    per_session, the node's refusal makes tsh prove the device and retry, so the owner notices nothing."""
    set_device_trust(world.cluster, tmp_path, session_proof="login")
    try:
        ok(world.laptop.login())
    finally:
        set_device_trust(world.cluster, tmp_path)
    deadline = time.monotonic() + 10
    while world.thief("ssh", world.target, "true").returncode == 0:  # until the node enforces per_session again
        assert time.monotonic() < deadline, "the node did not pick up session_proof: per_session"
        time.sleep(0.3)
    session_id = ok(world.laptop.tsh("ssh", world.target, 'echo "$DEVICETRUST_SESSION_ID"')).strip()
    start = world.wait_for_event("session.start", lambda e: e.get("sid") == session_id)
    assert start["device_proof"]["id"], start
    ok(world.laptop.login())


def test_a_locked_then_unenrolled_then_deleted_device_is_refused_at_the_next_session(world: World) -> None:
    cluster, laptop = world.cluster, world.laptop
    ok(cluster.tctl("devices", "lock", f"--asset-tag={SERIAL}", "--message=reported stolen"))
    locked = laptop.tsh("ssh", world.target, "true")
    assert locked.returncode != 0 and "reported stolen" in locked.stderr, locked.stderr
    locks = json.loads(ok(cluster.tctl("get", "locks", "--format=json")))
    for lock in locks:
        ok(cluster.tctl("rm", f"lock/{lock['metadata']['name']}"))
    deadline = time.monotonic() + 10
    while laptop.tsh("ssh", world.target, "true").returncode != 0:
        assert time.monotonic() < deadline, "the lock's removal did not reach the node"
        time.sleep(0.5)

    ok(cluster.tctl("devices", "unenroll", f"--asset-tag={SERIAL}"))
    unenrolled = laptop.tsh("ssh", world.target, "true")
    assert unenrolled.returncode != 0
    assert unenrolled.stderr.strip().splitlines()[-1] == SEED_REJECTION, unenrolled.stderr
    assert "device is not enrolled" in unenrolled.stderr

    ok(cluster.tctl("devices", "rm", f"--asset-tag={SERIAL}"))
    deleted = laptop.tsh("ssh", world.target, "true")
    assert deleted.returncode != 0
    assert deleted.stderr.strip().splitlines()[-1] == SEED_REJECTION, deleted.stderr
    assert "not registered" in deleted.stderr
