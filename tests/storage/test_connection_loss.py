"""PostgreSQL connections that the server dropped (a restart, a failover) are replaced: an idle one before it is
used; a busy one after the one transaction it fails."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa

from devicetrust.errors import NotFoundError
from devicetrust.storage import backend as backend_module
from devicetrust.storage.backend import Backend

pytestmark = pytest.mark.postgres
#: Names this test's connections, so only they are dropped (other tests may share the server).
APPLICATION = f"dt_loss_{secrets.token_hex(4)}"


@pytest.fixture
def pg_backend(request: pytest.FixtureRequest) -> Backend:
    from tests.conftest import postgres_schema_url

    admin = request.getfixturevalue("postgres_admin")
    context = postgres_schema_url(admin, "dt_loss")
    url = context.__enter__()
    request.addfinalizer(lambda: context.__exit__(None, None, None))
    opened = Backend.open(f"{url}&application_name={APPLICATION}")
    request.addfinalizer(opened.close)
    opened.migrate()
    return opened


def drop_connections(admin: psycopg.Connection[tuple[object, ...]], backend: Backend) -> int:
    with backend.read() as store:
        store.generation.current()  # a pooled connection exists, idle in the pool
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (APPLICATION,)
    ).fetchall()
    return len(rows)


def test_an_idle_dropped_connection_is_replaced_before_use(
    pg_backend: Backend, postgres_admin: psycopg.Connection[tuple[object, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend_module, "IDLE_PING_SECONDS", 0.05)
    assert drop_connections(postgres_admin, pg_backend) >= 1
    time.sleep(0.1)
    with pg_backend.read() as store:
        assert store.generation.current() >= 1


def test_a_busy_dropped_connection_fails_one_transaction_only(
    pg_backend: Backend, postgres_admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    assert drop_connections(postgres_admin, pg_backend) >= 1
    with pytest.raises(sa.exc.OperationalError), pg_backend.read() as store:
        store.generation.current()
    with pg_backend.read() as store:
        assert store.generation.current() >= 1


def test_a_dropped_connection_fails_one_transaction_on_the_driver_path_too(
    pg_backend: Backend, postgres_admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The ceremony's statements run on the driver's cursor (storage/driver.py): the failure is SQLAlchemy's
    error all the same, and the dead connection does not come back from the pool."""
    now = datetime.now(UTC)
    assert drop_connections(postgres_admin, pg_backend) >= 1
    with pytest.raises(sa.exc.OperationalError), pg_backend.read() as store:
        store.devices.find_by_asset_tag("linux", "SN-GONE")
    with pg_backend.read() as store:
        assert store.devices.find_by_asset_tag("linux", "SN-GONE") is None
        with pytest.raises(NotFoundError):
            store.sessions.get_valid_at_generation("no such token", now)


def test_a_pinged_connection_is_handed_out_idle(pg_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ping of an idle connection must not leave a transaction open: a read of the latest state switches the
    connection to autocommit, which PostgreSQL's driver refuses inside a transaction."""
    monkeypatch.setattr(backend_module, "IDLE_PING_SECONDS", 0.01)
    for _ in range(3):
        with pg_backend.read() as store:
            store.generation.current()
        time.sleep(0.05)  # idle long enough to be pinged at the next checkout
        with pg_backend.read(latest=True) as store:
            assert store.devices.find_by_asset_tag("linux", "SN-NONE") is None
