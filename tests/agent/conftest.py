from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.agent.harness import Cluster, require_root_login, start_daemon


@pytest.fixture(scope="session")
def login() -> str:
    return require_root_login()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, login: str) -> Iterator[Cluster]:
    """A daemon running auth (no node of its own: the tests run theirs in-process against it)."""
    daemon = start_daemon(tmp_path_factory.mktemp("agent-cluster"), ssh=False)
    attached = None
    try:
        attached = Cluster.attach(daemon)
        yield attached
    finally:
        if attached is not None:
            attached.close()
        daemon.stop()
