"""tsh kube: reach the cluster's Kubernetes clusters through their kube services, with the real kubectl.

``tsh kube ls`` lists what the user's roles grant; ``tsh kube login NAME`` writes a kubeconfig entry (the file
``$KUBECONFIG`` names first, else ``~/.kube/config``) whose user runs ``tsh kube credentials`` as a
``client.authentication.k8s.io/v1`` exec plugin. Each run proves the device for the cluster (where device trust
uses session proofs) and hands kubectl the session certificate with ``expirationTimestamp`` set to the end of the
proof's window: kubectl caches it until then and runs the plugin again, so the device is proven again at every
refresh. A device that cannot prove itself still gets credentials (the login certificate, for one minute): the
kube service gives its verdict, ``access to resource requires a trusted device``, as kubectl shows it.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypedDict

import click
import yaml
from cryptography import x509

from devicetrust.cli.common import emit, format_option, labels_text, print_table, warn
from devicetrust.cli.device_proof import enrolled_backend, prove_for_session, wants_session_proof
from devicetrust.cli.profile import Profile, ProfileStore, session_client
from devicetrust.errors import DevicetrustError, NotFoundError, ValidationError
from devicetrust.files import write_atomic
from devicetrust.protocol import KubeCluster

__all__ = ["COMMANDS", "exec_credential", "kubeconfig_path", "remove_kubeconfig_entries", "write_kubeconfig"]

EXEC_API_VERSION = "client.authentication.k8s.io/v1"
#: How long kubectl may keep credentials that carry no session proof before asking again.
UNPROVEN_CREDENTIALS_TTL = timedelta(minutes=1)


def fetch_kube_clusters(store: ProfileStore, profile: Profile) -> list[KubeCluster]:
    with session_client(store, profile) as client:
        return client.list_kube_clusters().items


def resolve_kube_cluster(clusters: list[KubeCluster], name: str) -> KubeCluster:
    for cluster in clusters:
        if cluster.name == name:
            return cluster
    raise NotFoundError(f"kubernetes cluster \"{name}\" not found; run 'tsh kube ls' to see the clusters you may reach")


# ------------------------------------------------------------------------------------------- kubeconfig
def kubeconfig_path() -> Path:
    """The kubeconfig kubectl reads first: the first entry of ``$KUBECONFIG``, else ``~/.kube/config``."""
    configured = [part for part in os.environ.get("KUBECONFIG", "").split(os.pathsep) if part]
    return Path(configured[0]) if configured else Path.home() / ".kube" / "config"


def context_name(profile: Profile, name: str) -> str:
    return f"{profile.cluster_name}-{name}"


def _tsh_command() -> str:
    program = Path(sys.argv[0])
    return str(program.resolve()) if program.name.startswith("tsh") and program.exists() else "tsh"


class _ExecConfig(TypedDict, total=False):
    """A kubeconfig user's ``exec``: the fields of client.authentication.k8s.io/v1's ExecConfig written here."""

    apiVersion: str
    command: str
    args: list[str]
    interactiveMode: str
    provideClusterInfo: bool
    env: list[dict[str, str]]


class _ExecCredentialStatus(TypedDict):
    clientCertificateData: str
    clientKeyData: str
    expirationTimestamp: str


class ExecCredential(TypedDict):
    """What a client.authentication.k8s.io/v1 exec plugin prints for kubectl."""

    apiVersion: str
    kind: str
    status: _ExecCredentialStatus


def _upsert(entries: Sequence[object], name: str, key: str, value: Mapping[str, object]) -> list[object]:
    kept = [entry for entry in entries if isinstance(entry, dict) and entry.get("name") != name]
    return [*kept, {"name": name, key: value}]


def write_kubeconfig(path: Path, profile: Profile, cluster: KubeCluster, host_ca_pem: str) -> str:
    """Add (or replace) the cluster, user and context for ``cluster`` in the kubeconfig at ``path`` and make
    the context current; other entries are kept. Returns the context name."""
    try:
        doc = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError) as err:
        raise ValidationError(f"cannot read kubeconfig {path}: {err}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ValidationError(f"kubeconfig {path}: expected a mapping")
    name = context_name(profile, cluster.name)
    env = [{"name": "TSH_HOME", "value": os.environ["TSH_HOME"]}] if os.environ.get("TSH_HOME") else []
    doc.setdefault("apiVersion", "v1")
    doc.setdefault("kind", "Config")
    doc["clusters"] = _upsert(
        list(doc.get("clusters") or []),
        name,
        "cluster",
        {
            "server": f"https://{cluster.service.addr}/kube/{cluster.name}",
            "certificate-authority-data": base64.b64encode(host_ca_pem.encode()).decode(),
            # the kube service's certificate is from the cluster's host CA and names its host id
            "tls-server-name": cluster.service.host_id,
        },
    )
    plugin: _ExecConfig = {
        "apiVersion": EXEC_API_VERSION,
        "command": _tsh_command(),
        "args": ["kube", "credentials", f"--kube-cluster={cluster.name}", f"--proxy={profile.proxy}"],
        "interactiveMode": "IfAvailable",
        "provideClusterInfo": False,
    }
    if env:
        plugin["env"] = env
    doc["users"] = _upsert(list(doc.get("users") or []), name, "user", {"exec": plugin})
    doc["contexts"] = _upsert(list(doc.get("contexts") or []), name, "context", {"cluster": name, "user": name})
    doc["current-context"] = name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode(), 0o600)
    return name


def remove_kubeconfig_entries(path: Path, profile: Profile) -> list[str]:
    """Remove from the kubeconfig at ``path`` the users ``tsh kube login`` wrote for ``profile`` (their exec
    plugin is ``tsh kube credentials --proxy=<the profile's proxy>``) and the clusters and contexts of the same
    names; nothing else. The current context is unset if it was one of them. Returns the context names removed."""
    if not path.exists():
        return []
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValidationError(f"cannot read kubeconfig {path}: {err}") from None
    if not isinstance(doc, dict):
        return []
    names = {
        str(user["name"])
        for user in doc.get("users") or []
        if isinstance(user, dict) and _written_for(user.get("user"), profile)
    }
    if not names:
        return []
    for section in ("clusters", "users", "contexts"):
        doc[section] = [
            entry for entry in doc.get(section) or [] if not (isinstance(entry, dict) and entry.get("name") in names)
        ]
    if doc.get("current-context") in names:
        doc["current-context"] = ""
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode(), 0o600)
    return sorted(names)


def _written_for(user: object, profile: Profile) -> bool:
    plugin = user.get("exec") if isinstance(user, dict) else None
    if not isinstance(plugin, dict) or plugin.get("apiVersion") != EXEC_API_VERSION:
        return False
    args = plugin.get("args")
    return isinstance(args, list) and args[:2] == ["kube", "credentials"] and f"--proxy={profile.proxy}" in args


# ------------------------------------------------------------------------------------------- credentials
def exec_credential(cert_pem: str, key_pem: str, expires: datetime) -> ExecCredential:
    """An ExecCredential (``client.authentication.k8s.io/v1``) with a client certificate kubectl keeps until
    ``expires``."""
    return {
        "apiVersion": EXEC_API_VERSION,
        "kind": "ExecCredential",
        "status": {
            "clientCertificateData": cert_pem,
            "clientKeyData": key_pem,
            "expirationTimestamp": expires.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def kube_credentials(store: ProfileStore, profile: Profile, name: str) -> ExecCredential:
    key_pem = store.key_path(profile.proxy, profile.user).read_text()
    if wants_session_proof(profile) and enrolled_backend(store) is not None:
        try:
            proof = prove_for_session(store, profile, "kube", name)
        except DevicetrustError as err:
            warn(f"this device could not prove itself for the session: {err}")
        else:
            return exec_credential(proof.tls_cert_pem, key_pem, proof.proof.expires)
    cert_pem = store.tls_cert_path(profile).read_text()
    not_after = x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc
    expires = min(not_after, datetime.now(UTC) + UNPROVEN_CREDENTIALS_TTL)
    return exec_credential(cert_pem, key_pem, expires)


# ---------------------------------------------------------------------------------------------- commands
@click.group("kube")
def kube() -> None:
    """Kubernetes clusters: list them, log in to one for kubectl."""


@kube.command("ls")
@format_option()
def kube_ls(fmt: str) -> None:
    """List the Kubernetes clusters you may reach, with the users and groups your roles grant there."""
    store = ProfileStore()
    clusters = fetch_kube_clusters(store, store.require_current())
    emit(
        [cluster.model_dump() for cluster in clusters],
        fmt,
        lambda _: print_table(
            ["Kube Cluster Name", "Labels", "Kubernetes Users", "Kubernetes Groups"],
            [
                (
                    c.name,
                    labels_text(c.labels),
                    ", ".join(c.kubernetes_users) or "(none)",
                    ", ".join(c.kubernetes_groups) or "(none)",
                )
                for c in clusters
            ],
        ),
    )


@kube.command("login")
@click.argument("name")
@format_option()
def kube_login(name: str, fmt: str) -> None:
    """Write a kubeconfig context for Kubernetes cluster NAME and make it current.

    kubectl then gets its credentials from 'tsh kube credentials', which proves this device for the cluster
    each time they expire."""
    store = ProfileStore()
    profile = store.require_current()
    cluster = resolve_kube_cluster(fetch_kube_clusters(store, profile), name)
    host_ca = store.pinned_ca(profile.proxy)
    if host_ca is None:
        raise ValidationError(f"no pinned CA for {profile.proxy}; run 'tsh login'")
    path = kubeconfig_path()
    context = write_kubeconfig(path, profile, cluster, host_ca)

    def text(_: object) -> None:
        click.echo(f"Logged into Kubernetes cluster \"{name}\". Try 'kubectl version' to test the connection.")

    emit({"kube_cluster": name, "context": context, "kubeconfig": str(path)}, fmt, text)


@kube.command("credentials")
@click.option("--kube-cluster", "name", required=True, help="The Kubernetes cluster to prove this device for.")
@click.option("--proxy", default="", help="The profile's proxy address (default: the current profile).")
def kube_credentials_command(name: str, proxy: str) -> None:
    """Print an ExecCredential for kubectl (run by kubectl as its exec plugin; see 'tsh kube login')."""
    store = ProfileStore()
    profile = store.load(proxy) if proxy else store.require_current()
    if profile is None:
        raise NotFoundError(f"no profile for {proxy}; run 'tsh login --proxy={proxy}'")
    click.echo(json.dumps(kube_credentials(store, profile, name)))


COMMANDS = (kube,)
