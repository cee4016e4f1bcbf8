"""The daemon's configuration, read in one place.

Precedence: command-line flags > environment (``DEVICETRUST_*``) > ``devicetrust.yaml`` > defaults. Every value
has a default, so ``devicetrust start`` with no file runs the embedded cluster: auth on loopback, SQLite under
the data dir.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from devicetrust.errors import ConfigError, ValidationError
from devicetrust.types.yaml_io import load_yaml_config

CONFIG_VERSION = "v1"
DEFAULT_CLUSTER_NAME = "devicetrust.local"
DEFAULT_AUTH_LISTEN_ADDR = "127.0.0.1:3080"
DEFAULT_SSH_LISTEN_ADDR = "127.0.0.1:3022"
SQLITE_FILE_NAME = "backend.sqlite"
ENV_CONFIG = "DEVICETRUST_CONFIG"
ENV_DATA_DIR = "DEVICETRUST_DATA_DIR"

_CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_SSH_FIELDS = ("enabled", "listen_addr", "labels", "hostname", "auth_server", "join_token", "token_file", "ca_file")


def default_data_dir() -> Path:
    """``/var/lib/devicetrust`` for root (as a service runs), else a directory in the user's home."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR])
    if os.geteuid() == 0:
        return Path("/var/lib/devicetrust")
    return Path.home() / ".local" / "share" / "devicetrust"


@dataclass(frozen=True)
class StorageConfig:
    type: str = "sqlite"
    path: Path | None = None
    conn_string: str = ""

    def url(self, data_dir: Path) -> str:
        if self.type == "postgres":
            return self.conn_string
        path = self.path or data_dir / SQLITE_FILE_NAME
        return f"sqlite:///{path.resolve()}"


@dataclass(frozen=True)
class AuthServiceConfig:
    enabled: bool = True
    listen_addr: str = DEFAULT_AUTH_LISTEN_ADDR
    cluster_name: str = DEFAULT_CLUSTER_NAME
    public_addrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class SSHServiceConfig:
    """``ssh_service``: an SSH node. Enabled unless the config says otherwise (the embedded default runs one)."""

    enabled: bool = True
    listen_addr: str = DEFAULT_SSH_LISTEN_ADDR
    labels: Mapping[str, str] = field(default_factory=dict)
    #: The name the node joins under; "" means this machine's host name.
    hostname: str = ""
    #: HOST:PORT of the auth service; "" means the auth service in this process.
    auth_server: str = ""
    #: A node join token ("tctl tokens add --type=node"), inline or in a file; not needed once joined, nor when
    #: the auth service runs in the same process.
    join_token: str = ""
    token_file: Path | None = None
    #: The cluster's host CA (PEM) to verify the auth service with on first join, when it runs elsewhere.
    ca_file: Path | None = None

    def effective_hostname(self) -> str:
        return self.hostname or socket.gethostname()

    def read_join_token(self) -> str:
        """The configured join token ("" if none); the file wins over the inline value."""
        if self.token_file is None:
            return self.join_token
        try:
            return self.token_file.read_text().strip()
        except OSError as err:
            raise ConfigError(f"ssh_service.token_file: cannot read {self.token_file}: {err.strerror}") from None


@dataclass(frozen=True)
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    storage: StorageConfig = field(default_factory=StorageConfig)
    log_severity: str = "INFO"
    auth_service: AuthServiceConfig = field(default_factory=AuthServiceConfig)
    ssh_service: SSHServiceConfig = field(default_factory=SSHServiceConfig)
    #: the raw ``jamf_service`` section, validated by devicetrust.mdm.jamf when the daemon starts
    jamf_service: Mapping[str, Any] | None = None
    source: Path | None = None

    @property
    def storage_url(self) -> str:
        return self.storage.url(self.data_dir)

    @property
    def admin_identity_path(self) -> Path:
        return self.data_dir / "admin" / "identity.json"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def node_dir(self) -> Path:
        return self.data_dir / "node"

    def node_auth_server(self) -> str:
        """Where the SSH node reaches the auth service: configured, else this process's auth service."""
        if self.ssh_service.auth_server:
            return self.ssh_service.auth_server
        if not self.auth_service.enabled:
            raise ConfigError("ssh_service.auth_server: required when auth_service is disabled")
        host, port = split_host_port(self.auth_service.listen_addr, what="auth_service.listen_addr")
        if host in ("0.0.0.0", ""):  # noqa: S104 - listening on all: reach it on loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class AdminIdentity:
    """What tctl on the auth host needs to act as the cluster's administrator (``<data_dir>/admin/identity.json``,
    mode 0600, rewritten at every start)."""

    auth_addr: str
    cluster_name: str
    token: str
    host_ca_pem: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> AdminIdentity:
        try:
            data = json.loads(text)
            return cls(**{k: str(data[k]) for k in ("auth_addr", "cluster_name", "token", "host_ca_pem")})
        except (ValueError, KeyError, TypeError):
            raise ConfigError("the admin identity file is damaged; restart devicetrust to rewrite it") from None


def split_host_port(addr: str, *, what: str) -> tuple[str, int]:
    host, sep, port_text = addr.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{what}: expected HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port_text)


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_KNOWN_SECTIONS = {
    "version",
    "devicetrust",
    "auth_service",
    "ssh_service",
    "db_service",
    "kube_service",
    "jamf_service",
}


def _section(doc: Mapping[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    value = doc.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{name}: unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def parse_config(doc: Mapping[str, Any], *, source: Path | None = None) -> Config:
    """Turn a parsed ``devicetrust.yaml`` into a :class:`Config`, naming the field of any mistake."""
    unknown = sorted(set(doc) - _KNOWN_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown top-level field {unknown[0]!r}")
    version = doc.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"version: unsupported {version!r}, expected {CONFIG_VERSION!r}")
    config = Config(source=source)

    main = _section(doc, "devicetrust", {"data_dir", "storage", "log"})
    if "data_dir" in main:
        config = replace(config, data_dir=Path(_str(main["data_dir"], "devicetrust.data_dir")))
    if "storage" in main:
        storage = _section(main, "storage", {"type", "path", "conn_string"})
        kind = storage.get("type", "sqlite")
        if kind not in ("sqlite", "postgres"):
            raise ConfigError(f"devicetrust.storage.type: expected sqlite or postgres, got {kind!r}")
        conn = storage.get("conn_string", "")
        if kind == "postgres" and not (isinstance(conn, str) and conn.startswith("postgres")):
            raise ConfigError("devicetrust.storage.conn_string: expected postgresql://… for type postgres")
        path = storage.get("path")
        config = replace(
            config,
            storage=StorageConfig(
                type=kind,
                path=Path(_str(path, "devicetrust.storage.path")) if path is not None else None,
                conn_string=conn,
            ),
        )
    if "log" in main:
        log = _section(main, "log", {"severity"})
        severity = str(log.get("severity", "INFO")).upper()
        if severity not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"devicetrust.log.severity: unknown level {severity!r}")
        config = replace(config, log_severity=severity)

    auth = _section(doc, "auth_service", {"enabled", "listen_addr", "cluster_name", "public_addr"})
    if auth:
        cluster_name = auth.get("cluster_name", DEFAULT_CLUSTER_NAME)
        if not isinstance(cluster_name, str) or not _CLUSTER_NAME_RE.match(cluster_name):
            raise ConfigError(f"auth_service.cluster_name: invalid name {cluster_name!r}")
        listen = _str(auth.get("listen_addr", DEFAULT_AUTH_LISTEN_ADDR), "auth_service.listen_addr")
        split_host_port(listen, what="auth_service.listen_addr")
        public = auth.get("public_addr", [])
        if isinstance(public, str):
            public = [public]
        if not isinstance(public, list) or not all(isinstance(p, str) for p in public):
            raise ConfigError("auth_service.public_addr: expected a list of host names or addresses")
        config = replace(
            config,
            auth_service=AuthServiceConfig(
                enabled=_bool(auth.get("enabled", True), "auth_service.enabled"),
                listen_addr=listen,
                cluster_name=cluster_name,
                public_addrs=tuple(public),
            ),
        )

    ssh = _section(doc, "ssh_service", set(_SSH_FIELDS))
    if ssh:
        labels = ssh.get("labels", {}) or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise ConfigError("ssh_service.labels: expected a mapping of strings")
        listen = _str(ssh.get("listen_addr", DEFAULT_SSH_LISTEN_ADDR), "ssh_service.listen_addr")
        split_host_port(listen, what="ssh_service.listen_addr")
        hostname = ssh.get("hostname", "")
        if hostname and (not isinstance(hostname, str) or not _HOSTNAME_RE.match(hostname)):
            raise ConfigError(f"ssh_service.hostname: invalid host name {hostname!r}")
        auth_server = ssh.get("auth_server", "")
        if auth_server:
            split_host_port(_str(auth_server, "ssh_service.auth_server"), what="ssh_service.auth_server")
        join_token = ssh.get("join_token", "")
        if join_token and not isinstance(join_token, str):
            raise ConfigError("ssh_service.join_token: expected a string")
        if join_token and "token_file" in ssh:
            raise ConfigError("ssh_service: give join_token or token_file, not both")
        token_file, ca_file = (
            Path(_str(ssh[name], f"ssh_service.{name}")) if ssh.get(name) is not None else None
            for name in ("token_file", "ca_file")
        )
        config = replace(
            config,
            ssh_service=SSHServiceConfig(
                enabled=_bool(ssh.get("enabled", True), "ssh_service.enabled"),
                listen_addr=listen,
                labels=labels,
                hostname=hostname or "",
                auth_server=auth_server or "",
                join_token=join_token or "",
                token_file=token_file,
                ca_file=ca_file,
            ),
        )
    jamf = doc.get("jamf_service")
    if jamf is not None:
        if not isinstance(jamf, dict):
            raise ConfigError("jamf_service: expected a mapping")
        config = replace(config, jamf_service=jamf)
    return config


def load_config(path: Path | None) -> Config:
    """Read the config file (``path``, else ``$DEVICETRUST_CONFIG``); no file means all defaults."""
    if path is None and os.environ.get(ENV_CONFIG):
        path = Path(os.environ[ENV_CONFIG])
    if path is None:
        return Config()
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        doc = load_yaml_config(data, str(path))
    except ValidationError as err:
        raise ConfigError(err.message) from None
    return parse_config(doc, source=path)


def render_default_config(
    *,
    cluster_name: str = DEFAULT_CLUSTER_NAME,
    data_dir: Path | None = None,
    listen_addr: str = "",
    ssh_listen_addr: str = "",
) -> str:
    """A complete, commented ``devicetrust.yaml`` with every default spelled out."""
    data = data_dir or default_data_dir()
    listen = listen_addr or DEFAULT_AUTH_LISTEN_ADDR
    split_host_port(listen, what="--listen-addr")
    ssh_listen = ssh_listen_addr or DEFAULT_SSH_LISTEN_ADDR
    split_host_port(ssh_listen, what="--ssh-listen-addr")
    return f"""\
# devicetrust.yaml — run with: devicetrust start --config devicetrust.yaml
version: {CONFIG_VERSION}
devicetrust:
  data_dir: {data}
  storage:
    type: sqlite            # or: postgres
    # path: {data / SQLITE_FILE_NAME}
    # conn_string: postgresql://devicetrust@db.example.com:5432/devicetrust
  log:
    severity: INFO
auth_service:
  enabled: true
  listen_addr: {listen}
  cluster_name: {cluster_name}
  # public_addr: [auth.example.com]
ssh_service:
  enabled: true
  listen_addr: {ssh_listen}
  labels:
    env: dev
  # hostname: node-1                  # default: this machine's host name
  # auth_server: auth.example.com:3080  # default: the auth service above
  # join_token: <tctl tokens add --type=node>   # or token_file: /path/to/token
  # ca_file: /path/to/host-ca.pem     # the cluster's host CA, to join a remote auth service
"""
