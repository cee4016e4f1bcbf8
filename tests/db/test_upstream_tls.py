"""The database service reaches a database over TLS when its entry has a ``ca_file``: against a private
PostgreSQL with ``ssl=on`` and a server certificate of its own, verified with that CA, and refused with another
CA (or by a database without TLS) with a one-line PostgreSQL error that reaches the client before any relay."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devicetrust.config import DatabaseEntry
from tests.agent.harness import Cluster
from tests.db.harness import (
    PG_URI,
    PrivatePostgres,
    ServiceThread,
    client_files,
    private_postgres,
    require_psql,
    running_service,
)
from tests.fakes.pki import TestPKI, make_test_pki
from tests.integration.cluster import free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

TRUSTED = "pg-tls"
WRONG_CA = "pg-tls-wrong-ca"
NO_TLS = "pg-no-tls"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_test_pki(tmp_path_factory.mktemp("postgres-pki"), hosts=("127.0.0.1",), name="Test PostgreSQL CA")


@pytest.fixture(scope="module")
def tls_postgres(pki: TestPKI) -> Iterator[PrivatePostgres]:
    settings = {"ssl": "on", "ssl_cert_file": "'../server.pem'", "ssl_key_file": "'../server-key.pem'"}
    with private_postgres(free_port(), settings=settings, files=(pki.cert_file, pki.key_file)) as server:
        with psycopg.connect(server.admin_url, autocommit=True, connect_timeout=10) as admin:
            admin.execute('CREATE ROLE "alice" LOGIN')
            admin.execute('CREATE DATABASE "test" OWNER "alice"')
        yield server


@pytest.fixture(scope="module")
def service(
    cluster: Cluster,
    db_users: None,
    tls_postgres: PrivatePostgres,
    pki: TestPKI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceThread]:
    other = make_test_pki(tmp_path_factory.mktemp("other-pki"), hosts=("127.0.0.1",), name="Another CA")
    uri = f"postgres://127.0.0.1:{tls_postgres.port}"
    databases = [
        DatabaseEntry(name=TRUSTED, uri=uri, ca_file=pki.ca_file),
        DatabaseEntry(name=WRONG_CA, uri=uri, ca_file=other.ca_file),
        DatabaseEntry(name=NO_TLS, uri=PG_URI, ca_file=pki.ca_file),
    ]
    cluster.set_cluster_mode("optional")
    with running_service(cluster, tmp_path_factory.mktemp("db-service-tls"), databases) as running:
        yield running


def _conninfo(service: ServiceThread, where: Path, cluster: Cluster, route: str) -> dict[str, Any]:
    files = client_files(cluster, where, route=route)
    return files.conninfo(service.service.port, user="alice", dbname="test")


def test_the_service_verifies_the_database_with_its_ca_file(
    cluster: Cluster, service: ServiceThread, tmp_path: Path
) -> None:
    with psycopg.connect(**_conninfo(service, tmp_path, cluster, TRUSTED), autocommit=True) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)  # the server saw TLS from the service


def test_a_database_certificate_from_another_ca_is_refused_with_a_postgres_error(
    cluster: Cluster, service: ServiceThread, tmp_path: Path
) -> None:
    conninfo = _conninfo(service, tmp_path, cluster, WRONG_CA)
    psql = require_psql()
    line = " ".join(f"{key}={value}" for key, value in conninfo.items())
    result = subprocess.run(
        [psql, "-X", line, "-c", "SELECT 1"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert (
        f"FATAL:  TLS to database {WRONG_CA} failed: its certificate does not verify with the service's ca_file"
        in errors[0]
    )
    assert "Traceback" not in result.stderr


def test_a_database_without_tls_is_refused_when_its_ca_file_is_set(
    cluster: Cluster, service: ServiceThread, tmp_path: Path
) -> None:
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(**_conninfo(service, tmp_path, cluster, NO_TLS)).close()
    assert f"database {NO_TLS} does not accept TLS (its ca_file is set)" in str(refused.value)
