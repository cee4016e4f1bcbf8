from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.agent.harness import Cluster, auth_only_cluster
from tests.db.harness import ensure_db_users


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A daemon running auth only; the tests run their database services in-process against it."""
    with auth_only_cluster(tmp_path_factory.mktemp("db-cluster")) as attached:
        yield attached


@pytest.fixture(scope="module")
def db_users(postgres_admin: psycopg.Connection[Any]) -> None:
    ensure_db_users(postgres_admin)
