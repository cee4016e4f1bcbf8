"""`devicetrust start` runs the SSH node beside the auth service in one process, and as a node on its own."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from tests.agent.harness import CLUSTER_NAME, LOGIN, Cluster, Daemon, start_daemon
from tests.integration.cluster import free_port

pytestmark = pytest.mark.integration


def ssh_port(daemon: Daemon) -> int:
    return int(daemon.ssh_addr.rsplit(":", 1)[1])


def test_auth_and_node_in_one_process(tmp_path: Path, login: str) -> None:
    daemon = start_daemon(tmp_path / "cluster", ssh=True)
    cluster = Cluster.attach(daemon)
    try:
        node_dir = daemon.data_dir / "node"
        identity = json.loads((node_dir / "identity.json").read_text())
        for name in ("host.key", "identity.json"):
            assert stat.S_IMODE((node_dir / name).stat().st_mode) == 0o600

        async def session() -> str:
            # The host certificate names the address we dial: the client checks it against the host CA.
            async with cluster.connect(ssh_port(daemon), cluster.client_key()) as conn:
                result = await conn.run("id -un")
                return str(result.stdout)

        assert asyncio.run(session()) == f"{LOGIN}\n"

        assert daemon.stop() == 0
        log = daemon.log_path.read_text()
        assert log.index("ssh service stopped") < log.index("auth service stopped")

        # A restart reuses the stored identity: same host id, no second join.
        daemon.start()
        assert json.loads((node_dir / "identity.json").read_text())["host_id"] == identity["host_id"]
        assert asyncio.run(session()) == f"{LOGIN}\n"
        joins = cluster.events("node.join")
        assert [e["host_id"] for e in joins] == [identity["host_id"]]
        nodes = cluster.server.nodes.list_visible(cluster.admin)
        assert [(n["hostname"], n["addr"], n["labels"]) for n in nodes] == [
            (identity["hostname"], daemon.ssh_addr, {"env": "dev"})
        ]
    finally:
        cluster.close()
        daemon.stop()


def test_a_node_on_its_own_joins_a_remote_auth_service(tmp_path: Path, login: str) -> None:
    auth = start_daemon(tmp_path / "auth", ssh=False)
    cluster = Cluster.attach(auth)
    node_root = tmp_path / "node"
    node_root.mkdir()
    ca_file = node_root / "host-ca.pem"
    ca_file.write_bytes(cluster.server.host_ca.certificate_pem())
    token, _ = cluster.server.create_join_token(cluster.admin, "node", None)
    (node_root / "token").write_text(token)
    node = Daemon(node_root, auth.auth_addr, f"127.0.0.1:{free_port()}", ssh_enabled=True)
    node.config_path.write_text(
        f"""\
version: v1
devicetrust:
  data_dir: {node_root / "data"}
auth_service:
  enabled: false
ssh_service:
  listen_addr: {node.ssh_addr}
  hostname: edge-1
  labels: {{env: edge}}
  auth_server: {auth.auth_addr}
  token_file: {node_root / "token"}
  ca_file: {ca_file}
"""
    )
    node.write_config = lambda: None  # type: ignore[method-assign]  # keep the hand-written config
    try:
        node.start()

        async def session() -> str:
            async with cluster.connect(ssh_port(node), cluster.client_key()) as conn:
                return str((await conn.run("hostname >/dev/null && echo edge-ok")).stdout)

        assert asyncio.run(session()) == "edge-ok\n"
        assert node.stop() == 0
        assert not (node_root / "data" / "backend.sqlite").exists()
        assert [n["hostname"] for n in cluster.server.nodes.list_visible(cluster.admin)] == ["edge-1"]
        assert CLUSTER_NAME in (node_root / "data" / "node" / "identity.json").read_text()
    finally:
        node.stop()
        cluster.close()
        auth.stop()
