"""The daemon itself: configuration, restarts, graceful shutdown, PostgreSQL storage."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from devicetrust.config import load_config, parse_config
from tests.integration.cluster import BIN, Cluster, start_cluster

pytestmark = pytest.mark.integration

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def test_restart_keeps_cluster_identity_and_pinned_ca(tmp_path: Path) -> None:
    first = start_cluster(tmp_path / "c")
    try:
        first.signup_and_login("alice")
    finally:
        assert first.stop() == 0
    assert "auth service stopped" in first.log_path.read_text()
    port = int(first.proxy.rsplit(":", 1)[1])
    second = start_cluster(tmp_path / "c", port=port)
    try:
        # Same CA after restart: the pinned CA still verifies, the old session still works.
        second.homes = first.homes
        result = second.tsh("alice", "status", "--format=json")
        assert result.returncode == 0, result.stderr
        assert second.login("alice").returncode == 0
        assert second.tctl_as("alice", "get", "roles").returncode != 0  # access role: no admin rights
    finally:
        assert second.stop() == 0


def test_configure_prints_a_complete_valid_config(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(BIN / "devicetrust"),
            "configure",
            "--cluster-name=acme",
            f"--data-dir={tmp_path}",
            "--listen-addr=0.0.0.0:3080",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = yaml.safe_load(result.stdout)
    assert set(doc) == {"version", "devicetrust", "auth_service", "ssh_service"}
    config = parse_config(doc)
    assert config.auth_service.cluster_name == "acme"
    assert config.data_dir == tmp_path
    assert config.storage.type == "sqlite"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("auth_service:\n  listen: 1\n", "auth_service.listen: unknown key (did you mean listen_addr?)"),
        ("auth_service:\n  listen_adr: 1\n", "auth_service.listen_adr: unknown key (did you mean listen_addr?)"),
        ("ssh_service:\n  enabled: false\nssh_service:\n  enabled: true\n", 'line 3: duplicate key "ssh_service"'),
        ("jamf_service:\n  inventory:\n    - filter: x\n", "jamf_service.inventory[0].filter: unknown key"),
        ("ssh_service:\n  enabled: maybe\n", "ssh_service.enabled: expected true or false, got 'maybe'"),
        ("devicetrust:\n  storage:\n    type: mysql\n", "devicetrust.storage.type"),
        ("devicetrust:\n  storage:\n    type: postgres\n", "devicetrust.storage.conn_string"),
        ("auth_service:\n  listen_addr: nowhere\n", "auth_service.listen_addr"),
        ("version: v9\n", "version"),
        ("auth_service: [\n", "line"),
        ("auth_service:\n  enabled: true\n  enabled: false\n", 'line 3: duplicate key "enabled"'),
        (
            'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
            + "".join(f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)),
            "values once aliases are expanded",
        ),
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "devicetrust.yaml"
    config.write_text(text)
    result = subprocess.run(
        [str(BIN / "devicetrust"), "start", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("ERROR: ") and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_bad_environment_variable_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "devicetrust.yaml"
    config.write_text("auth_service:\n  listen_addr: 127.0.0.1:3080\n")
    result = subprocess.run(
        [str(BIN / "devicetrust"), "start"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), "DEVICETRUST_CONFIG": str(config), "DEVICETRUST_LISTEN_ADDR": "x"},
    )
    assert result.returncode == 2
    assert result.stderr == "ERROR: DEVICETRUST_LISTEN_ADDR: expected HOST:PORT, got 'x'\n"


def test_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "devicetrust.yaml"
    config.write_bytes("auth_service:\n  cluster_name: caf\xe9\n".encode("latin-1"))
    result = subprocess.run(
        [str(BIN / "devicetrust"), "start", "--config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr == f"ERROR: {config}: line 2: not UTF-8 text (byte 0xe9); save the file as UTF-8\n"


def test_config_booleans_take_yaml_1_1_words_while_off_stays_a_string_elsewhere(tmp_path: Path) -> None:
    config = tmp_path / "devicetrust.yaml"
    config.write_text("auth_service:\n  enabled: yes\nssh_service:\n  enabled: off\n")
    loaded = load_config(config)
    assert loaded.auth_service.enabled and not loaded.ssh_service.enabled


@pytest.fixture
def postgres_schema(postgres_admin: psycopg.Connection[tuple[object, ...]]) -> Iterator[str]:
    schema = f"dt_daemon_{secrets.token_hex(4)}"
    postgres_admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        postgres_admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.postgres
def test_cluster_on_postgresql(tmp_path: Path, postgres_schema: str) -> None:
    url = f"{POSTGRES_ADMIN_URL}?options=-csearch_path%3D{postgres_schema}"
    cluster: Cluster = start_cluster(tmp_path / "pg", storage_url=url)
    try:
        status = cluster.signup_and_login("alice", logins="alice")
        assert status["logins"] == ["alice"]
        assert not (tmp_path / "pg" / "data" / "backend.sqlite").exists()
        events = json.loads(cluster.tctl("audit", "ls", "--format=json").stdout)
        assert any(e["event"] == "user.login" for e in events)
    finally:
        assert cluster.stop() == 0
    with psycopg.connect(POSTGRES_ADMIN_URL) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (postgres_schema,)
            )
        }
    assert {"users", "audit_events", "certificate_authorities", "sessions"} <= tables
