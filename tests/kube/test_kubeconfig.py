"""Where the kube service finds an API server's URL, CA and token: the explicit form or a kubeconfig, read as
kubectl reads it, with one-line errors naming the entry."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from devicetrust.agent.kube.kubeconfig import APIServerAccess, api_server_access
from devicetrust.config import KubeClusterEntry
from devicetrust.errors import ConfigError

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def kubeconfig(tmp_path: Path, cluster: dict[str, object], user: dict[str, object], **extra: object) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c1", "cluster": cluster}],
        "users": [{"name": "u1", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c1", "user": "u1"}}],
        "current-context": "ctx",
        **extra,
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def entry(path: Path, context: str = "") -> KubeClusterEntry:
    return KubeClusterEntry("prod", kubeconfig=path, context=context)


def test_the_explicit_form(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(CA)
    (tmp_path / "token").write_text("sa-token\n")
    explicit = KubeClusterEntry("prod", "https://10.0.0.1:6443", tmp_path / "ca.pem", tmp_path / "token")
    assert api_server_access(explicit) == APIServerAccess("https://10.0.0.1:6443", CA, "sa-token")


def test_inline_data_and_token(tmp_path: Path) -> None:
    data = base64.b64encode(CA.encode()).decode()
    path = kubeconfig(tmp_path, {"server": "https://k:6443/", "certificate-authority-data": data}, {"token": "t1"})
    assert api_server_access(entry(path)) == APIServerAccess("https://k:6443", CA, "t1")


def test_files_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(CA)
    (tmp_path / "sa").write_text("t2\n")
    path = kubeconfig(tmp_path, {"server": "https://k:6443", "certificate-authority": "ca.pem"}, {"tokenFile": "sa"})
    assert api_server_access(entry(path)) == APIServerAccess("https://k:6443", CA, "t2")


def test_without_a_ca_the_systems_trusted_ones(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"server": "https://k:6443"}, {"token": "t"})
    assert api_server_access(entry(path)).ca_pem is None


def test_a_named_context_rather_than_the_current_one(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path, {"server": "https://k:6443"}, {"token": "t"}, **{"current-context": ""})
    assert api_server_access(entry(path, "ctx")).server == "https://k:6443"


WHERE = "kube_service.kubernetes_clusters[prod].kubeconfig "


@pytest.mark.parametrize(
    ("cluster", "user", "extra", "context", "message"),
    [
        ({"server": "https://k"}, {"token": "t"}, {"current-context": ""}, "", "no current-context; name one"),
        ({"server": "https://k"}, {"token": "t"}, {}, "other", 'no context "other" in contexts (there: ctx)'),
        ({"server": "http://k"}, {"token": "t"}, {}, "", "cluster \"c1\" has no https:// server, got 'http://k'"),
        (
            {"server": "https://k", "insecure-skip-tls-verify": True},
            {"token": "t"},
            {},
            "",
            'cluster "c1" skips TLS verification',
        ),
        (
            {"server": "https://k"},
            {"client-certificate": "c.pem", "client-key": "k.pem"},
            {},
            "",
            'user "u1" has no token or tokenFile',
        ),
        (
            {"server": "https://k", "certificate-authority-data": "!!"},
            {"token": "t"},
            {},
            "",
            "certificate-authority-data is not base64 PEM",
        ),
        (
            {"server": "https://k", "certificate-authority": "missing.pem"},
            {"token": "t"},
            {},
            "",
            "cannot read",
        ),
    ],
)
def test_mistakes_are_one_line_errors(
    tmp_path: Path,
    cluster: dict[str, object],
    user: dict[str, object],
    extra: dict[str, object],
    context: str,
    message: str,
) -> None:
    path = kubeconfig(tmp_path, cluster, user, **extra)
    with pytest.raises(ConfigError) as raised:
        api_server_access(entry(path, context))
    text = str(raised.value)
    assert text.startswith(WHERE + str(path)) and message in text and "\n" not in text, text


def test_unreadable_or_not_a_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        api_server_access(entry(tmp_path / "absent"))
    (tmp_path / "list").write_text("- a\n")
    with pytest.raises(ConfigError, match="not a kubeconfig"):
        api_server_access(entry(tmp_path / "list"))
    (tmp_path / "bad").write_text("a: [\n")
    with pytest.raises(ConfigError, match=r"invalid YAML \(line"):
        api_server_access(entry(tmp_path / "bad"))
