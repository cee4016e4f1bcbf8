"""Databases end to end: a real daemon (auth service + database service in front of the machine's PostgreSQL), a
laptop with its own swtpm, the real tsh, psql and psycopg, and a thief holding a copy of the owner's profile but
not the laptop's TPM.

The user's role requires a trusted device: every connection proves the device for the database; the copied
profile gets PostgreSQL's own error with "access to resource requires a trusted device"; a lock ends a live psql.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devicetrust.access import DB_ACCESS_DENIED, TRUSTED_DEVICE_REQUIRED
from devicetrust.access.decision import NO_SESSION_PROOF
from tests.db.harness import ensure_db_users, require_psql
from tests.integration.cluster import BIN, free_port, start_cluster
from tests.integration.laptops import StolenProfile, copy_profile, enrolled_laptop
from tests.integration.test_cluster_cli import ok
from tests.integration.test_devices import Laptop, _require_swtpm

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

SERIAL = "SN-DB-1"
DATABASE = "pg-prod"
PROXY_START_SECONDS = 30.0


class World(StolenProfile):
    def psql(self, env: dict[str, str], *args: str, input: str) -> subprocess.CompletedProcess[str]:
        return self.cluster.run("tsh", "db", "connect", DATABASE, *args, input=input, env=env)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, postgres_admin: psycopg.Connection[Any]) -> Iterator[World]:
    _require_swtpm()
    require_psql()
    ensure_db_users(postgres_admin)
    root = tmp_path_factory.mktemp("db-access")
    extra = (
        "db_service:\n"
        "  enabled: true\n"
        f"  listen_addr: 127.0.0.1:{free_port()}\n"
        "  databases:\n"
        f"    - name: {DATABASE}\n"
        "      protocol: postgres\n"
        "      uri: postgres://127.0.0.1:5432\n"
        "      labels:\n"
        "        env: prod\n"
    )
    cluster = start_cluster(root, extra_config=extra)
    laptop: Laptop | None = None
    try:
        laptop = enrolled_laptop(cluster, root, "alice", SERIAL, roles="access,require-trusted-device")
        deadline = time.monotonic() + 20
        while DATABASE not in ok(laptop.tsh("db", "ls")):
            assert time.monotonic() < deadline, "the database service did not announce its database"
            time.sleep(0.2)
        yield World(cluster, laptop, copy_profile(laptop, root))
    finally:
        if laptop is not None:
            laptop.stop()
        cluster.stop()


def test_tsh_db_ls_shows_the_database_and_what_the_roles_allow(world: World) -> None:
    listed = json.loads(ok(world.laptop.tsh("db", "ls", "--format=json")))
    assert [(d["name"], d["protocol"], d["labels"]) for d in listed] == [(DATABASE, "postgres", {"env": "prod"})]
    assert listed[0]["allowed_users"] == ["*"]  # require-trusted-device grants any database user
    text = ok(world.laptop.tsh("db", "ls"))
    assert "Allowed Users" in text and "env=prod" in text


def test_the_owner_runs_psql_from_the_trusted_device(world: World) -> None:
    result = world.psql(
        world.laptop.env(), "--db-user=alice", "--db-name=test", input="SELECT 'hello from ' || current_user;\n"
    )
    assert result.returncode == 0, result.stderr
    assert "hello from alice" in result.stdout
    start = world.wait_for_event("db.session.start", lambda e: e["success"] and e.get("db_user") == "alice")
    assert start["device"]["asset_tag"] == SERIAL and start["device"]["os"] == "Linux", start
    assert (start["db_service"], start["db_name"], start["code"]) == (DATABASE, "test", "TDB00I")
    proof_id = start["device_proof"]["id"]
    authn = world.wait_for_event("device.authenticate", lambda e: e.get("proof", {}).get("id") == proof_id)
    assert authn["target"] == {"kind": "db", "id": DATABASE}


def test_a_copied_profile_gets_a_postgres_error(world: World) -> None:
    result = world.psql(world.thief_env(), "--db-user=alice", "--db-name=test", input="SELECT 'pwned';\n")
    assert result.returncode != 0 and "pwned" not in result.stdout
    assert f"FATAL:  {TRUSTED_DEVICE_REQUIRED}" in result.stderr, result.stderr
    world.wait_for_event("db.session.start", lambda e: not e["success"] and e.get("error") == NO_SESSION_PROOF)


def test_a_database_user_the_roles_do_not_grant_is_refused(world: World) -> None:
    ok(world.cluster.tctl("users", "update", "alice", "--set-roles=access", "--set-db-users=alice"))
    try:
        ok(world.laptop.login())
        result = world.psql(world.laptop.env(), "--db-user=postgres", "--db-name=test", input="SELECT 1;\n")
        assert result.returncode != 0
        assert f"FATAL:  {DB_ACCESS_DENIED}" in result.stderr, result.stderr
    finally:
        ok(world.cluster.tctl("users", "update", "alice", "--set-roles=access,require-trusted-device"))
        ok(world.laptop.login())


@pytest.fixture
def local_proxy(world: World) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "tsh"), "proxy", "db", DATABASE, f"--port={port}"],
        env=world.laptop.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line.strip() != f"Started DB proxy on 127.0.0.1:{port}":
            process.kill()
            raise AssertionError(f"tsh proxy db did not start: {line}{process.communicate()[1]}")
        yield port
    finally:
        process.terminate()
        process.communicate(timeout=10)


def test_psycopg_through_tsh_proxy_db_proves_the_device_per_connection(world: World, local_proxy: int) -> None:
    before = len(world.events("device.authenticate"))
    for round_trip in range(2):
        with psycopg.connect(
            host="127.0.0.1", port=local_proxy, user="alice", dbname="test", sslmode="disable", connect_timeout=30
        ) as conn:
            assert conn.execute("SELECT %s::int + 1", (round_trip,)).fetchone() == (round_trip + 1,)
    proofs = [e for e in world.events("device.authenticate")[before:] if e.get("target", {}).get("kind") == "db"]
    assert len(proofs) == 2 and all(e["success"] for e in proofs)


def test_tsh_db_config_lets_psycopg_speak_tls_straight_to_the_service(world: World) -> None:
    before = len(world.events("device.authenticate"))
    config = json.loads(
        ok(world.laptop.tsh("db", "config", DATABASE, "--db-user=alice", "--db-name=test", "--format=json"))
    )
    assert config["sslmode"] == "verify-full" and ":" not in config["sslkey"]
    with psycopg.connect(**config, connect_timeout=30) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("alice",)
    proofs = [e for e in world.events("device.authenticate")[before:] if e.get("target", {}).get("kind") == "db"]
    assert len(proofs) == 1 and proofs[0]["success"]
    ok(world.laptop.tsh("db", "logout", DATABASE))  # forgets the copy of the key made for libpq too
    assert not Path(config["sslkey"]).exists() and not Path(config["sslcert"]).exists()
    # the copied profile has no TPM: its configuration carries no proof and the service refuses it
    stolen = world.cluster.run(
        "tsh", "db", "config", DATABASE, "--db-user=alice", "--db-name=test", "--format=json", env=world.thief_env()
    )
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(**json.loads(ok(stolen)), connect_timeout=30).close()
    assert TRUSTED_DEVICE_REQUIRED in str(refused.value)


def test_a_lock_ends_a_live_psql_session(world: World, local_proxy: int) -> None:
    psql = require_psql()
    process = subprocess.Popen(
        [psql, f"host=127.0.0.1 port={local_proxy} user=alice dbname=test sslmode=disable", "-X", "-A", "-t"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGCONNECT_TIMEOUT": "30"},
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        process.stdin.write("SELECT 'before the lock';\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "before the lock"
        ok(world.cluster.tctl("lock", "--user=alice", "--message=stolen laptop reported"))
        time.sleep(4)  # the service polls the cluster state every 2 s
        process.stdin.write("SELECT 'after the lock';\n")
        process.stdin.flush()
        _, stderr = process.communicate(timeout=15)
        assert "FATAL:  locked: stolen laptop reported" in stderr, stderr
        end = world.wait_for_event("db.session.end", lambda e: e.get("reason") == "locked: stolen laptop reported")
        assert end["db_service"] == DATABASE
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
        for lock in json.loads(ok(world.cluster.tctl("get", "locks", "--format=json"))):
            ok(world.cluster.tctl("rm", f"lock/{lock['metadata']['name']}"))
