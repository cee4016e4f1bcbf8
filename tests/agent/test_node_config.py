"""ssh_service configuration, the node's stored identity and the in-process wiring beside the auth service."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher

from devicetrust.agent.identity import NodeIdentity, load_host_key, load_identity, save_identity
from devicetrust.auth.server import AuthServer
from devicetrust.config import AdminIdentity, Config, parse_config, render_default_config
from devicetrust.crypto.keys import generate_private_key, public_key_to_openssh
from devicetrust.daemon import node_config
from devicetrust.errors import ConfigError
from devicetrust.storage.backend import Backend


def config(ssh: dict[str, Any], auth: dict[str, Any] | None = None) -> Config:
    doc: dict[str, Any] = {"ssh_service": ssh}
    if auth is not None:
        doc["auth_service"] = auth
    return parse_config(doc)


def test_the_embedded_default_runs_a_node_beside_auth_on_loopback() -> None:
    default = Config()
    assert default.ssh_service.enabled
    assert default.ssh_service.listen_addr == "127.0.0.1:3022"
    assert default.node_auth_server() == "127.0.0.1:3080"


def test_configure_output_enables_the_node_with_dev_labels(tmp_path: Path) -> None:
    text = render_default_config(data_dir=tmp_path, ssh_listen_addr="127.0.0.1:4022")
    doc = yaml.safe_load(text)
    assert doc["ssh_service"] == {"enabled": True, "listen_addr": "127.0.0.1:4022", "labels": {"env": "dev"}}
    parsed = parse_config(doc)
    assert parsed.ssh_service.labels == {"env": "dev"}
    assert parsed.node_dir == tmp_path / "node"


def test_ssh_service_fields(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    parsed = config(
        {
            "listen_addr": "0.0.0.0:3022",
            "labels": {"env": "prod", "team": "db"},
            "hostname": "db-1.example.com",
            "auth_server": "auth.example.com:3080",
            "token_file": str(token_file),
            "ca_file": "/etc/devicetrust/host-ca.pem",
        },
        auth={"enabled": False},
    )
    ssh = parsed.ssh_service
    assert ssh.enabled  # a section without "enabled" is on, as in teleport.yaml
    assert ssh.effective_hostname() == "db-1.example.com"
    assert ssh.read_join_token() == "s3cret-token"
    assert ssh.ca_file == Path("/etc/devicetrust/host-ca.pem")
    assert parsed.node_auth_server() == "auth.example.com:3080"


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("0.0.0.0:3080", "127.0.0.1:3080"), ("[::]:3080", "[::1]:3080"), ("10.0.0.5:3443", "10.0.0.5:3443")],
)
def test_the_node_reaches_a_local_auth_service_where_it_listens(listen: str, expected: str) -> None:
    assert config({}, auth={"listen_addr": listen}).node_auth_server() == expected


@pytest.mark.parametrize(
    ("ssh", "auth", "message"),
    [
        ({"listen": "x"}, None, r"ssh_service\.listen: unknown key \(did you mean listen_addr\?\)"),
        ({"listen_addr": "nowhere"}, None, "ssh_service.listen_addr"),
        ({"hostname": "bad host"}, None, "ssh_service.hostname"),
        ({"auth_server": "no-port"}, None, "ssh_service.auth_server"),
        ({"join_token": "a", "token_file": "/t"}, None, "not both"),
        ({"labels": ["env"]}, None, "ssh_service.labels"),
        ({"enabled": "sometimes"}, None, "ssh_service.enabled"),
    ],
)
def test_bad_ssh_service_fields_name_the_field(ssh: dict[str, Any], auth: dict[str, Any] | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(ssh, auth)


def test_a_node_without_local_auth_must_name_its_auth_service() -> None:
    with pytest.raises(ConfigError, match=r"ssh_service\.auth_server: required"):
        config({}, auth={"enabled": False}).node_auth_server()


def test_unreadable_token_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ssh_service\.token_file"):
        config({"token_file": str(tmp_path / "missing")}).ssh_service.read_join_token()


@pytest.fixture
def server(tmp_path: Path) -> Any:
    backend = Backend.open(f"sqlite:///{tmp_path / 'backend.sqlite'}")
    auth = AuthServer(
        backend, cluster_name="unit.test", password_hasher=PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )
    auth.initialize()
    yield auth
    backend.close()


def test_in_process_node_trusts_the_server_and_mints_its_own_token(tmp_path: Path, server: AuthServer) -> None:
    cfg = parse_config({"devicetrust": {"data_dir": str(tmp_path)}, "ssh_service": {"labels": {"env": "dev"}}})

    node = node_config(cfg, server)

    assert node.auth_ca_pem == server.host_ca.certificate_pem().decode()
    assert node.node_dir == tmp_path / "node"
    assert callable(node.join_token)
    token = node.join_token()
    reply = server.nodes.join(token, "node-1", "127.0.0.1:3022", {"env": "dev"}, _public_key())
    assert reply["host_id"]


def test_configured_token_and_ca_file_win(tmp_path: Path, server: AuthServer) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("PEM")
    cfg = parse_config(
        {"devicetrust": {"data_dir": str(tmp_path)}, "ssh_service": {"join_token": "tok", "ca_file": str(ca_file)}}
    )
    node = node_config(cfg, server)
    assert (node.join_token, node.auth_ca_pem) == ("tok", "PEM")


def test_remote_node_on_the_auth_host_pins_the_ca_from_the_admin_identity(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "devicetrust": {"data_dir": str(tmp_path)},
            "auth_service": {"enabled": False},
            "ssh_service": {"auth_server": "auth:3080", "join_token": "tok"},
        }
    )
    cfg.admin_identity_path.parent.mkdir(parents=True)
    cfg.admin_identity_path.write_text(AdminIdentity("auth:3080", "c", "t", "HOST-CA").to_json())
    node = node_config(cfg, None)
    assert (node.auth_server, node.auth_ca_pem, node.join_token) == ("auth:3080", "HOST-CA", "tok")


def _public_key() -> str:
    return public_key_to_openssh(generate_private_key().public_key())


def test_node_identity_round_trip_and_file_modes(tmp_path: Path) -> None:
    node_dir = tmp_path / "node"
    key = load_host_key(node_dir)
    assert load_host_key(node_dir).public_key() == key.public_key()  # kept, not regenerated
    assert load_identity(node_dir) is None
    identity = NodeIdentity(
        host_id="h",
        hostname="n",
        cluster_name="c",
        auth_server="a:1",
        session_token="secret",
        host_ca_pem="P",
        host_ca_ssh="S",
        user_ca_ssh="U",
        host_cert="ecdsa-sha2-nistp256-cert-v01@openssh.com AAAA",
    )
    save_identity(node_dir, identity)
    assert load_identity(node_dir) == identity
    assert stat.S_IMODE((node_dir / "host.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((node_dir / "identity.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(node_dir.stat().st_mode) == 0o700
    (node_dir / "identity.json").write_text("{")
    with pytest.raises(ConfigError, match="damaged"):
        load_identity(node_dir)
