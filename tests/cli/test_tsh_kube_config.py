"""The kubeconfig entries tsh writes (``tsh kube login``) and removes (``tsh logout``): its own, and nothing
else of the user's kubeconfig."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from devicetrust.cli.profile import Profile
from devicetrust.cli.tsh_kube import remove_kubeconfig_entries, write_kubeconfig
from devicetrust.protocol import DatabaseService, KubeCluster

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
THEIRS = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "kind", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "users": [{"name": "kind-admin", "user": {"token": "t"}}],
    "contexts": [{"name": "kind", "context": {"cluster": "kind", "user": "kind-admin"}}],
    "current-context": "kind",
    "preferences": {"colors": True},
}


def profile(proxy: str) -> Profile:
    return Profile(proxy, "alice", proxy.split(":")[0], "user", "ssh-ca", CA, "host-ca")


def cluster(name: str) -> KubeCluster:
    return KubeCluster(
        name=name,
        labels={},
        service=DatabaseService(host_id="host-1", hostname="kube-1", addr="127.0.0.1:3026"),
        kubernetes_users=[],
        kubernetes_groups=["developers"],
        last_seen="2026-12-05T00:00:00Z",
    )


@pytest.fixture(autouse=True)
def no_tsh_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TSH_HOME", raising=False)


def names(doc: dict[str, object], section: str) -> list[str]:
    entries = doc[section]
    assert isinstance(entries, list)
    return [entry["name"] for entry in entries]


def test_logout_removes_only_what_login_wrote_for_that_proxy(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(THEIRS))
    mine, other = profile("teleport.example:3025"), profile("other.example:3025")
    write_kubeconfig(path, other, cluster("dev"), CA)
    write_kubeconfig(path, mine, cluster("prod"), CA)
    write_kubeconfig(path, mine, cluster("staging"), CA)
    assert remove_kubeconfig_entries(path, mine) == ["teleport.example-prod", "teleport.example-staging"]
    doc = yaml.safe_load(path.read_text())
    for section, theirs in (("clusters", "kind"), ("users", "kind-admin"), ("contexts", "kind")):
        assert names(doc, section) == [theirs, "other.example-dev"]
    assert doc["current-context"] == ""  # it was one of those removed
    assert doc["preferences"] == {"colors": True}
    assert remove_kubeconfig_entries(path, mine) == []


def test_the_users_current_context_stays(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, profile("teleport.example:3025"), cluster("prod"), CA)
    doc = yaml.safe_load(path.read_text())
    doc["current-context"] = "elsewhere"
    path.write_text(yaml.safe_dump(doc))
    remove_kubeconfig_entries(path, profile("teleport.example:3025"))
    assert yaml.safe_load(path.read_text())["current-context"] == "elsewhere"


def test_no_kubeconfig_nothing_to_do(tmp_path: Path) -> None:
    assert remove_kubeconfig_entries(tmp_path / "absent", profile("teleport.example:3025")) == []
    assert not (tmp_path / "absent").exists()
