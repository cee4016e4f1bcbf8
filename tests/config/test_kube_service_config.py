"""kube_service in devicetrust.yaml: the Kubernetes clusters, the join settings it shares with the other agents,
and mistakes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devicetrust.config import Config, KubeClusterEntry, read_config_file
from devicetrust.errors import ConfigError

SECTION = """\
kube_service:
  listen_addr: 127.0.0.1:13026
  hostname: kube-1
  join_token: abc
  kubernetes_clusters:
    - name: prod
      api_server: https://10.0.0.1:6443/
      ca_file: /etc/kube/ca.pem
      token_file: /etc/kube/token
      labels:
        env: prod
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "devicetrust.yaml"
    path.write_text(text)
    return read_config_file(path)


def test_the_section_is_read(tmp_path: Path) -> None:
    config = load(tmp_path, SECTION)
    kube = config.kube_service
    assert kube.enabled and kube.listen_addr == "127.0.0.1:13026" and kube.effective_hostname() == "kube-1"
    assert kube.read_join_token() == "abc"
    assert kube.kubernetes_clusters == (
        KubeClusterEntry(
            "prod", "https://10.0.0.1:6443", Path("/etc/kube/ca.pem"), Path("/etc/kube/token"), {"env": "prod"}
        ),
    )
    assert config.kube_service_dir == config.data_dir / "kube"


def test_a_cluster_may_come_from_a_kubeconfig(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "kube_service:\n  kubernetes_clusters:\n    - name: staging\n      kubeconfig: /etc/kube/config\n"
        "      context: admin\n      labels:\n        env: staging\n",
    )
    assert config.kube_service.kubernetes_clusters == (
        KubeClusterEntry("staging", labels={"env": "staging"}, kubeconfig=Path("/etc/kube/config"), context="admin"),
    )


def test_disabled_without_the_section(tmp_path: Path) -> None:
    assert not load(tmp_path, "version: v1\n").kube_service.enabled


CLUSTER = "  kubernetes_clusters:\n    - name: prod\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kube_service:\n  enabled: true\n", "kube_service.kubernetes_clusters: list at least one cluster"),
        (
            "kube_service:\n" + CLUSTER + "      api_server: http://h:6443\n      ca_file: a\n      token_file: b\n",
            "kube_service.kubernetes_clusters[0].api_server: expected https://HOST:PORT",
        ),
        (
            "kube_service:\n" + CLUSTER + "      api_server: https://h:6443\n      ca_file: a\n",
            "kube_service.kubernetes_clusters[0]: ca_file and token_file are required",
        ),
        (
            "kube_service:\n  kubernetes_clusters:\n    - name: 'bad name'\n      api_server: https://h:1\n",
            "kube_service.kubernetes_clusters[0].name: invalid name",
        ),
        (
            "kube_service:\n" + CLUSTER + "      kubeconfig: /k\n      api_server: https://h:1\n",
            "kube_service.kubernetes_clusters[0]: either kubeconfig or api_server + ca_file + token_file, not both",
        ),
        (
            "kube_service:\n" + CLUSTER + "      api_server: https://h:6443\n      context: admin\n",
            "kube_service.kubernetes_clusters[0].context: only with kubeconfig",
        ),
        (
            "kube_service:\n" + CLUSTER + "      labels: {}\n",
            "kube_service.kubernetes_clusters[0]: give kubeconfig, or api_server + ca_file + token_file",
        ),
        (
            "kube_service:\n" + CLUSTER + "      kube_config: /root/.kube/config\n",
            "kube_service.kubernetes_clusters[0].kube_config: unknown key (did you mean kubeconfig?)",
        ),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, text)
