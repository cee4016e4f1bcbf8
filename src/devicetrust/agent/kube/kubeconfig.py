"""How the kube service reaches one API server: its URL, the CA that verifies it and the bearer token it presents,
from a ``kubernetes_clusters`` entry, either ``api_server`` + ``ca_file`` + ``token_file`` or a ``kubeconfig``
(its current context, or the one ``context`` names), read as kubectl reads it: ``certificate-authority`` or
``certificate-authority-data``, ``token`` or ``tokenFile``, relative paths from the kubeconfig's folder.

A kubeconfig whose user authenticates otherwise (client certificate, exec plugin) or that skips TLS verification
is refused: the service impersonates users with a service account's token, and never talks to an unverified
server. Every mistake is a one-line :class:`ConfigError` naming the entry.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from devicetrust.config import KubeClusterEntry
from devicetrust.errors import ConfigError

__all__ = ["APIServerAccess", "api_server_access"]


@dataclass(frozen=True)
class APIServerAccess:
    server: str
    #: PEM of the CA that verifies the API server; None: the system's trusted CAs (as kubectl without one)
    ca_pem: str | None
    token: str


def api_server_access(entry: KubeClusterEntry) -> APIServerAccess:
    """Raises ConfigError (one line, naming the entry) when a file cannot be read or says too little."""
    where = f"kube_service.kubernetes_clusters[{entry.name}]"
    if entry.kubeconfig is not None:
        return _from_kubeconfig(entry.kubeconfig, entry.context, f"{where}.kubeconfig")
    if entry.ca_file is None or entry.token_file is None:
        raise ConfigError(f"{where}: ca_file and token_file are required (the API server's CA, a bearer token)")
    return APIServerAccess(
        entry.api_server,
        _read(entry.ca_file, f"{where}.ca_file"),
        _token(_read(entry.token_file, f"{where}.token_file"), entry.token_file, f"{where}.token_file"),
    )


def _read(path: Path, where: str) -> str:
    try:
        return path.read_text()
    except OSError as err:
        raise ConfigError(f"{where}: cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not text") from None


def _token(text: str, path: Path, where: str) -> str:
    token = text.strip()
    if not token:
        raise ConfigError(f"{where}: {path} is empty")
    return token


def _from_kubeconfig(path: Path, context_name: str, where: str) -> APIServerAccess:
    where = f"{where} {path}"
    try:
        doc = yaml.safe_load(_read(path, where))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{where}: not a kubeconfig: invalid YAML{line}") from None
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: not a kubeconfig (expected a mapping with clusters, users and contexts)")
    name = context_name or doc.get("current-context")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: no current-context; name one with 'context'")
    context = _named(doc, "contexts", "context", name, where)
    cluster_name, user_name = context.get("cluster"), context.get("user")
    if not isinstance(cluster_name, str) or not isinstance(user_name, str):
        raise ConfigError(f'{where}: context "{name}" names no cluster or no user')
    cluster = _named(doc, "clusters", "cluster", cluster_name, where)
    user = _named(doc, "users", "user", user_name, where)
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise ConfigError(f'{where}: cluster "{cluster_name}" has no https:// server, got {server!r}')
    if cluster.get("insecure-skip-tls-verify"):
        raise ConfigError(f'{where}: cluster "{cluster_name}" skips TLS verification, which the kube service refuses')
    base = path.parent
    ca_pem: str | None = None
    if cluster.get("certificate-authority-data"):
        ca_pem = _decoded(cluster["certificate-authority-data"], f'{where}: cluster "{cluster_name}"')
    elif cluster.get("certificate-authority"):
        ca_pem = _read(base / str(cluster["certificate-authority"]), f'{where}: cluster "{cluster_name}"')
    if user.get("token"):
        token = str(user["token"]).strip()
    elif user.get("tokenFile"):
        token_path = base / str(user["tokenFile"])
        token = _token(_read(token_path, f'{where}: user "{user_name}"'), token_path, f'{where}: user "{user_name}"')
    else:
        raise ConfigError(
            f'{where}: user "{user_name}" has no token or tokenFile (the kube service presents a service account '
            "token; client certificates and exec plugins are not supported)"
        )
    return APIServerAccess(server.rstrip("/"), ca_pem, token)


def _named(doc: Mapping[str, object], section: str, key: str, name: str, where: str) -> Mapping[str, object]:
    """The ``key`` mapping of the entry called ``name`` in the kubeconfig's ``section`` list."""
    entries = doc.get(section)
    known: list[str] = []
    for item in entries if isinstance(entries, list) else []:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            known.append(item["name"])
            found = item.get(key)
            if item["name"] == name and isinstance(found, Mapping):
                return {str(k): v for k, v in found.items()}
    listed = ", ".join(known) or "none"
    raise ConfigError(f'{where}: no {key} "{name}" in {section} (there: {listed})')


def _decoded(value: object, where: str) -> str:
    try:
        return base64.b64decode(str(value), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ConfigError(f"{where}: certificate-authority-data is not base64 PEM") from None
