"""The fake Kubernetes API server, checked with the real kubectl talking to it directly: what the kube service's
tests rely on it for must be what kubectl sees from a real API server."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.kube_apiserver import SERVICE_ACCOUNT, FakeKubeAPIServer, running_kube_apiserver
from tests.kube.harness import kubectl, require_kubectl


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubeAPIServer]:
    require_kubectl()
    with running_kube_apiserver(tmp_path_factory.mktemp("fake-kube")) as server:
        yield server


@pytest.fixture
def kubeconfig(api: FakeKubeAPIServer, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


def test_get_pods_prints_the_servers_table(kubeconfig: Path) -> None:
    result = kubectl(kubeconfig, "get", "pods", "-n", "default")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [line.split()[0] for line in lines[1:]] == ["web-0", "web-1"]


def test_get_pods_as_json_and_namespaces(kubeconfig: Path) -> None:
    pods = json.loads(kubectl(kubeconfig, "get", "pods", "-n", "kube-system", "-o", "json").stdout)
    assert [pod["metadata"]["name"] for pod in pods["items"]] == ["coredns-0"]
    namespaces = kubectl(kubeconfig, "get", "namespaces", "-o", "name")
    assert namespaces.stdout.split() == ["namespace/default", "namespace/kube-system"]


def test_errors_are_status_objects(kubeconfig: Path, tmp_path: Path, api: FakeKubeAPIServer) -> None:
    missing = kubectl(kubeconfig, "get", "pod", "nope", "-n", "default")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "nope" not found'
    wrong = tmp_path / "wrong"
    wrong.write_text(kubeconfig.read_text().replace(api.token, "not-the-token"))
    refused = kubectl(wrong, "get", "pods")
    assert "You must be logged in to the server (Unauthorized)" in refused.stderr


def test_whoami_echoes_the_impersonated_user_and_groups(kubeconfig: Path) -> None:
    own = kubectl(kubeconfig, "auth", "whoami", "-o", "json")
    assert json.loads(own.stdout)["status"]["userInfo"]["username"] == SERVICE_ACCOUNT
    other = kubectl(kubeconfig, "auth", "whoami", "--as=bob", "--as-group=devs", "-o", "json")
    assert json.loads(other.stdout)["status"]["userInfo"] == {
        "username": "bob",
        "groups": ["devs", "system:authenticated"],
    }


def test_a_watch_streams_new_pods(kubeconfig: Path, api: FakeKubeAPIServer) -> None:
    process = subprocess.Popen(
        [require_kubectl(), "get", "pods", "-n", "default", "-w", "--no-headers"],
        env={"KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    try:
        assert [process.stdout.readline().split()[0] for _ in range(2)] == ["web-0", "web-1"]
        deadline = time.monotonic() + 10
        while not any(r.query.endswith("watch=true") or "watch=true" in r.query for r in api.requests):
            assert time.monotonic() < deadline, "kubectl never started watching"
            time.sleep(0.1)
        api.add_pod("default", "watched-0")
        assert process.stdout.readline().split()[0] == "watched-0"
    finally:
        process.terminate()
        process.communicate(timeout=10)
