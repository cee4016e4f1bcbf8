"""The SSH node end to end: a real asyncssh server (ours) joined to a real auth daemon, real asyncssh clients
presenting certificates from the cluster's user CA, sessions run as a real OS account."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest

from devicetrust.access import UNAUTHORIZED_DEVICE
from devicetrust.access.decision import NO_SESSION_PROOF, PROOF_EXPIRED, PROOF_FOR_ANOTHER_TARGET
from devicetrust.agent.server import SSHNode
from devicetrust.agent.state import STATE_POLL_SECONDS
from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.identity import DeviceExtensions
from devicetrust.types import Metadata, Role, RoleConditions, RoleOptions
from tests.agent.harness import DEVICE, LOGIN, ClientKey, Cluster, start_daemon, wait_for

pytestmark = pytest.mark.integration

ADMIN_PROHIBITED = asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_exec_runs_as_the_login_with_output_and_exit_status(cluster: Cluster, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node, cluster.connect(node.port, cluster.client_key()) as conn:
            result = await conn.run('id -un; echo "$HOME:$USER:$DEVICETRUST_USER"; pwd; echo oops >&2; exit 7')
            assert result.exit_status == 7
            assert result.stdout == f"{LOGIN}\n/home/{LOGIN}:{LOGIN}:alice\n/home/{LOGIN}\n"
            assert result.stderr == "oops\n"
            # stdin reaches the command, and its EOF ends it
            result = await conn.run("tr a-z A-Z", input="hello node\n")
            assert (result.stdout, result.exit_status) == ("HELLO NODE\n", 0)
            # root's supplementary groups are not inherited
            result = await conn.run("id -G")
            assert "0" not in str(result.stdout).split()

    run(scenario())


def test_pty_shell_with_window_changes(cluster: Cluster, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node, cluster.connect(node.port, cluster.client_key()) as conn:
            process = await conn.create_process(term_type="xterm", term_size=(80, 24))
            process.stdin.write("tty; stty size\n")
            await asyncio.sleep(0.3)
            process.change_terminal_size(132, 43)
            await asyncio.sleep(0.1)
            process.stdin.write("stty size; echo done-$((40+2)); exit 3\n")
            result = await asyncio.wait_for(process.wait(), 10)
            output = str(result.stdout)
            assert result.exit_status == 3
            assert "/dev/pts/" in output
            assert "24 80\r\n" in output
            assert "43 132\r\n" in output
            assert "done-42" in output
            # exec with a PTY: one command, the terminal size it asked for
            result = await conn.run("stty size", term_type="xterm", term_size=(100, 30))
            assert result.stdout == "30 100\r\n"

    run(scenario())


def test_device_required_rejects_with_unauthorized_device(cluster: Cluster, tmp_path: Path) -> None:
    roles = ("access", "require-trusted-device")

    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node:
            async with cluster.connect(node.port, cluster.client_key("dave", roles=roles)) as conn:
                with pytest.raises(asyncssh.ChannelOpenError) as denied:
                    await conn.run("true")
            assert (denied.value.code, denied.value.reason) == (ADMIN_PROHIBITED, UNAUTHORIZED_DEVICE)
            assert node.identity is not None
            proven = cluster.client_key("dave", roles=roles, device=DEVICE, proof_for=node.identity.host_id)
            async with cluster.connect(node.port, proven) as conn:
                result = await conn.run("echo trusted")
                assert result.stdout == "trusted\n"
            assert await node.audit.flush(5) if node.audit else False

    run(scenario())
    rejected = [e for e in cluster.events("session.rejected") if e["user"] == "dave"]
    assert rejected and rejected[-1]["reason"] == NO_SESSION_PROOF and rejected[-1]["success"] is False
    assert "device" not in rejected[-1]  # no verified device to report
    started = [e for e in cluster.events("session.start") if e["user"] == "dave"]
    assert started[-1]["device"] == {
        "asset_tag": DEVICE.asset_tag,
        "device_id": DEVICE.device_id,
        "os": "",
        "credential_id": DEVICE.credential_id,
    }
    ended = cluster.events("session.end", session_id=started[-1]["session_id"])
    assert ended[0]["exit_status"] == 0 and ended[0]["device"] == started[-1]["device"]


def test_only_a_fresh_session_proof_for_this_node_opens_a_session(cluster: Cluster, tmp_path: Path) -> None:
    """Login-time device values (a copied profile), a proof for another node, a proof replayed after its window:
    each refused as "unauthorized device", each with its precise reason in the audit."""
    roles = ("access", "require-trusted-device")

    async def attempt(node: SSHNode, key: ClientKey) -> str | None:
        async with cluster.connect(node.port, key) as conn:
            try:
                await conn.run("true", check=True)
            except asyncssh.ChannelOpenError as err:
                assert err.code == ADMIN_PROHIBITED
                return str(err.reason)
        return None

    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node, cluster.node(tmp_path / "other", hostname="other") as other:
            assert node.identity is not None and other.identity is not None and node.audit is not None
            here, there = node.identity.host_id, other.identity.host_id
            login_only = cluster.client_key("fay", roles=roles, device=DEVICE)
            assert await attempt(node, login_only) == UNAUTHORIZED_DEVICE
            for_other = cluster.client_key("fay", roles=roles, device=DEVICE, proof_for=there)
            assert await attempt(node, for_other) == UNAUTHORIZED_DEVICE
            assert await attempt(other, for_other) is None  # the control: it is good where it was meant
            stale = cluster.client_key(
                "fay", roles=roles, device=DEVICE, proof_for=here, proof_age=timedelta(minutes=2)
            )
            assert await attempt(node, stale) == UNAUTHORIZED_DEVICE
            assert await attempt(node, cluster.client_key("fay", roles=roles, device=DEVICE, proof_for=here)) is None
            assert await node.audit.flush(5)

    run(scenario())
    reasons = [e["reason"] for e in cluster.events("session.rejected") if e["user"] == "fay"]
    assert reasons[-3:] == [NO_SESSION_PROOF, PROOF_FOR_ANOTHER_TARGET, PROOF_EXPIRED]
    started = [e for e in cluster.events("session.start") if e["user"] == "fay"]
    assert started[-1]["device"]["device_id"] == DEVICE.device_id and started[-1]["device_proof"]["id"]


def test_session_proof_login_admits_login_time_device_values(cluster: Cluster, tmp_path: Path) -> None:
    """``session_proof: login``: the cluster's choice for plain OpenSSH clients, today's behaviour."""
    roles = ("access", "require-trusted-device")

    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node:
            assert node.state is not None
            cluster.set_cluster_mode("optional", session_proof="login")
            try:
                await node.state.refresh()
                async with cluster.connect(node.port, cluster.client_key("gus", roles=roles, device=DEVICE)) as conn:
                    assert (await conn.run("echo in")).stdout == "in\n"
                async with cluster.connect(node.port, cluster.client_key("gus", roles=roles)) as conn:
                    with pytest.raises(asyncssh.ChannelOpenError) as denied:
                        await conn.run("true")
                    assert denied.value.reason == UNAUTHORIZED_DEVICE
            finally:
                cluster.set_cluster_mode("optional")
                await node.state.refresh()

    run(scenario())


def test_session_events_have_the_product_shape(cluster: Cluster, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node:
            assert node.audit is not None
            async with cluster.connect(node.port, cluster.client_key("hal")) as conn:
                await conn.run("true")
            assert await node.audit.flush(5)

    run(scenario())
    start = next(e for e in cluster.events("session.start") if e["user"] == "hal")
    assert start["code"] == "T2000I" and start["ei"] == 0 and start["namespace"] == "default"
    assert start["proto"] == "ssh" and start["user_kind"] == 1 and start["login"] == LOGIN
    assert start["sid"] == start["session_id"] and start["server_id"] and start["server_hostname"] == "prod-server"
    assert start["addr.remote"].startswith("127.0.0.1:") and start["addr.local"].startswith("127.0.0.1:")
    assert start["server_addr"] == start["addr.local"]
    end = next(e for e in cluster.events("session.end") if e.get("sid") == start["sid"])
    assert end["code"] == "T2004I" and end["ei"] == 1


def test_no_device_data_in_audit_when_device_trust_is_off(cluster: Cluster, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node:
            assert node.state is not None and node.audit is not None
            cluster.set_cluster_mode("off")
            try:
                await node.state.refresh()
                async with cluster.connect(node.port, cluster.client_key("erin", device=DEVICE)) as conn:
                    await conn.run("true")
            finally:
                cluster.set_cluster_mode("optional")
                await node.state.refresh()
            async with cluster.connect(node.port, cluster.client_key("erin", device=DEVICE)) as conn:
                await conn.run("true")
            assert await node.audit.flush(5)

    run(scenario())
    off, optional = [e for e in cluster.events("session.start") if e["user"] == "erin"]
    assert "device" not in off
    assert optional["device"]["device_id"] == DEVICE.device_id


@pytest.mark.parametrize("case", ["other-ca", "expired", "not-a-principal", "plain-key"])
def test_certificates_the_node_cannot_trust_are_refused_at_auth(cluster: Cluster, tmp_path: Path, case: str) -> None:
    key: ClientKey | asyncssh.SSHKey
    if case == "other-ca":
        key = cluster.client_key(ca=CertAuthority.generate("user", "evil.example", datetime.now(UTC)))
    elif case == "expired":
        key = cluster.client_key(expired=True)
    elif case == "not-a-principal":
        key = cluster.client_key(logins=("someone-else",))
    else:
        key = asyncssh.generate_private_key("ecdsa-sha2-nistp256")

    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node:
            with pytest.raises(asyncssh.PermissionDenied):
                async with cluster.connect(node.port, key):
                    pass

    run(scenario())


def test_login_missing_on_the_host_is_rejected_with_a_clear_reason(cluster: Cluster, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node:
            key = cluster.client_key(logins=("no-such-account",))
            async with cluster.connect(node.port, key, login="no-such-account") as conn:
                with pytest.raises(asyncssh.ChannelOpenError) as denied:
                    await conn.run("true")
            assert denied.value.code == ADMIN_PROHIBITED
            assert denied.value.reason == 'login "no-such-account" does not exist on prod-server'

    run(scenario())


def test_roles_that_do_not_grant_the_node_deny(cluster: Cluster, tmp_path: Path) -> None:
    cluster.put_role(
        Role(
            metadata=Metadata(name="dev-only"),
            allow=RoleConditions(logins=("{{internal.logins}}",), node_labels={"env": ("dev",)}),
        )
    )

    async def scenario() -> None:
        key = cluster.client_key("frank", roles=("dev-only",))
        async with cluster.node(tmp_path / "prod") as node, cluster.connect(node.port, key) as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as denied:
                await conn.run("true")
            assert denied.value.reason == "access denied to frank connecting to prod-server"
        async with (
            cluster.node(tmp_path / "dev", hostname="dev-server", labels={"env": "dev"}) as node,
            cluster.connect(node.port, key) as conn,
        ):
            assert (await conn.run("true")).exit_status == 0

    run(scenario())


def test_a_lock_ends_the_live_session_and_refuses_new_ones(cluster: Cluster, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with (
            cluster.node(tmp_path / "node") as node,
            cluster.connect(node.port, cluster.client_key("mallory")) as conn,
        ):
            process = await conn.create_process("echo started; sleep 60")
            assert await process.stdout.readline() == "started\n"
            locked_at = time.monotonic()
            cluster.lock("lock-mallory", "user", "mallory", "laptop reported stolen")
            result = await asyncio.wait_for(process.wait(), STATE_POLL_SECONDS + 5)
            # Ended by the next state poll: within the poll interval plus one request.
            assert time.monotonic() - locked_at < STATE_POLL_SECONDS + 2
            assert result.exit_status == 255
            assert "locked: laptop reported stolen" in str(result.stderr)
        async with (
            cluster.node(tmp_path / "node") as node,
            cluster.connect(node.port, cluster.client_key("mallory")) as conn,
        ):
            with pytest.raises(asyncssh.ChannelOpenError) as denied:
                await conn.run("true")
            assert denied.value.reason == "locked: laptop reported stolen"

    run(scenario())
    ended = [e for e in cluster.events("session.end") if e["user"] == "mallory"]
    assert ended and ended[0]["reason"] == "locked: laptop reported stolen"


def test_a_device_lock_ends_only_sessions_from_that_device(cluster: Cluster, tmp_path: Path) -> None:
    other = DeviceExtensions(device_id="0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", asset_tag="OTHER", credential_id="c2")

    async def scenario() -> None:
        async with (
            cluster.node(tmp_path / "node") as node,
            cluster.connect(node.port, cluster.client_key("gina", device=DEVICE)) as on_locked,
            cluster.connect(node.port, cluster.client_key("gina", device=other)) as on_other,
        ):
            assert node.state is not None
            locked = await on_locked.create_process("sleep 60")
            fine = await on_other.create_process("sleep 60")
            cluster.lock("lock-device", "device", DEVICE.device_id, "device compromised")
            await node.state.refresh()
            result = await asyncio.wait_for(locked.wait(), 5)
            assert result.exit_status == 255
            assert not fine.is_closing()
            fine.terminate()
            await asyncio.wait_for(fine.wait(), 5)

    run(scenario())


def test_port_forwarding_only_when_a_granting_role_allows_it(cluster: Cluster, tmp_path: Path) -> None:
    cluster.put_role(
        Role(
            metadata=Metadata(name="forwarder"),
            options=RoleOptions(port_forwarding=True),
            allow=RoleConditions(logins=("{{internal.logins}}",), node_labels={"*": ("*",)}),
        )
    )
    auth_host, auth_port = cluster.daemon.auth_addr.rsplit(":", 1)

    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node:
            async with cluster.connect(node.port, cluster.client_key()) as conn:
                with pytest.raises(asyncssh.ChannelOpenError) as denied:
                    await conn.open_connection(auth_host, int(auth_port))
                assert denied.value.code == ADMIN_PROHIBITED
                assert denied.value.reason == "port forwarding is not permitted by your roles"
                with pytest.raises(asyncssh.ChannelListenError):
                    await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 9)
            async with cluster.connect(node.port, cluster.client_key(roles=("access", "forwarder"))) as conn:
                _reader, writer = await conn.open_connection(auth_host, int(auth_port))
                writer.close()

    run(scenario())


def test_agent_forwarding_only_when_a_granting_role_allows_it(cluster: Cluster, tmp_path: Path) -> None:
    cluster.put_role(
        Role(
            metadata=Metadata(name="agent-forwarder"),
            options=RoleOptions(forward_agent=True),
            allow=RoleConditions(logins=("{{internal.logins}}",), node_labels={"*": ("*",)}),
        )
    )
    # The client only needs an agent path to ask for forwarding; nothing connects to it in this test.
    dummy_agent = str(tmp_path / "agent.sock")

    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node:
            key = cluster.client_key()
            async with cluster.connect(node.port, key, agent_path=dummy_agent, agent_forwarding=True) as conn:
                result = await conn.run('echo "sock=${SSH_AUTH_SOCK:-none}"')
                assert result.stdout == "sock=none\n"
            key = cluster.client_key(roles=("access", "agent-forwarder"))
            async with cluster.connect(node.port, key, agent_path=dummy_agent, agent_forwarding=True) as conn:
                result = await conn.run('test -O "$SSH_AUTH_SOCK" && echo owned')
                assert result.stdout == "owned\n"

    run(scenario())


def test_auth_down_keeps_the_last_state_and_buffers_audit(tmp_path: Path, login: str) -> None:
    daemon = start_daemon(tmp_path / "auth", ssh=False)
    own = Cluster.attach(daemon)
    try:
        own.put_role(
            Role(
                metadata=Metadata(name="prod-devices"),
                options=RoleOptions(device_trust_mode="required"),
                allow=RoleConditions(logins=("{{internal.logins}}",), node_labels={"env": ("prod",)}),
            )
        )

        async def scenario() -> None:
            async with own.node(tmp_path / "node") as node:
                assert node.state is not None and node.audit is not None
                assert node.state.current is not None
                # In a thread: the node on this loop must keep answering while the daemon shuts down.
                await asyncio.to_thread(daemon.stop)
                assert not await node.state.refresh()
                # Last state still enforced: allowed stays allowed, required stays required.
                async with own.connect(node.port, own.client_key("hank")) as conn:
                    assert (await conn.run("echo still-here")).stdout == "still-here\n"
                async with own.connect(node.port, own.client_key("hank", roles=("prod-devices",))) as conn:
                    with pytest.raises(asyncssh.ChannelOpenError) as denied:
                        await conn.run("true")
                    assert denied.value.reason == UNAUTHORIZED_DEVICE
                assert len(node.audit) >= 3  # start, end, rejected: buffered
                await asyncio.to_thread(daemon.start)
                assert await node.audit.flush(15)
                assert await node.state.refresh()

            # A node that never had state refuses everything, even with its stored identity.
            daemon.stop()
            async with own.node(tmp_path / "node") as node:
                assert node.state is not None and node.state.current is None
                async with own.connect(node.port, own.client_key("hank")) as conn:
                    with pytest.raises(asyncssh.ChannelOpenError) as denied:
                        await conn.run("true")
                    assert "has not received the cluster's access policy" in denied.value.reason

        run(scenario())
        daemon.start()
        starts = [e for e in own.events("session.start", "session.end", "session.rejected") if e["user"] == "hank"]
        assert [e["event"] for e in starts] == ["session.start", "session.end", "session.rejected"]
    finally:
        own.close()
        daemon.stop()


def test_state_poll_is_what_picks_up_changes(cluster: Cluster, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster.node(tmp_path / "node") as node:
            assert node.state is not None
            first = node.state.fetched
            assert await wait_for(
                lambda: node.state is not None and node.state.fetched != first, STATE_POLL_SECONDS + 3
            )

    run(scenario())


def test_stopping_the_node_ends_live_sessions(cluster: Cluster, tmp_path: Path) -> None:
    async def scenario() -> None:
        node = SSHNode(cluster.node_config(tmp_path / "node"))
        await node.start()
        try:
            async with cluster.connect(node.port, cluster.client_key("ivan")) as conn:
                process = await conn.create_process("echo up; sleep 60")
                assert await process.stdout.readline() == "up\n"
                started = time.monotonic()
                await node.stop()
                assert time.monotonic() - started < 5
                result = await asyncio.wait_for(process.wait(), 5)
                assert result.exit_status == 255
                assert "the node is shutting down" in str(result.stderr)
        finally:
            await node.stop()

    run(scenario())
    ended = [e for e in cluster.events("session.end") if e["user"] == "ivan"]
    assert ended and ended[0]["reason"] == "the node is shutting down"
