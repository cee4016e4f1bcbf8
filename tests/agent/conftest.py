from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.agent.harness import Cluster, auth_only_cluster, require_root_login


@pytest.fixture(scope="session")
def login() -> str:
    return require_root_login()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, login: str) -> Iterator[Cluster]:
    """A daemon running auth (no node of its own: the tests run theirs in-process against it)."""
    with auth_only_cluster(tmp_path_factory.mktemp("agent-cluster")) as attached:
        yield attached
