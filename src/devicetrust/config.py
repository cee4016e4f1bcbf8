"""The daemon's configuration, read in one place.

Precedence: command-line flags > environment (``DEVICETRUST_*``, see :data:`ENVIRONMENT`) > ``devicetrust.yaml``
> defaults. Every value has a default, so ``devicetrust start`` with no file runs the embedded cluster: auth on
loopback, SQLite under the data dir.

The file is read with the same strict YAML loader as resources (only ``true``/``false`` are booleans, a key given
twice is an error), and every key is checked against :data:`CONFIG_KEYS`, so a misspelt key is refused with the
path of the key and the closest known one.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import socket
from collections.abc import Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypedDict

from devicetrust.errors import ConfigError, ValidationError
from devicetrust.types.yaml_io import load_yaml_documents

CONFIG_VERSION = "v1"
DEFAULT_CLUSTER_NAME = "devicetrust.local"
DEFAULT_AUTH_LISTEN_ADDR = "127.0.0.1:3080"
#: Upper bound on auth_service.workers: far beyond any machine the daemon should share with others.
MAX_AUTH_WORKERS = 64
DEFAULT_SSH_LISTEN_ADDR = "127.0.0.1:3022"
DEFAULT_DB_LISTEN_ADDR = "127.0.0.1:5433"
DEFAULT_KUBE_LISTEN_ADDR = "127.0.0.1:3026"
DB_PROTOCOLS = ("postgres",)
SQLITE_FILE_NAME = "backend.sqlite"
ENV_CONFIG = "DEVICETRUST_CONFIG"
ENV_DATA_DIR = "DEVICETRUST_DATA_DIR"
ENV_LISTEN_ADDR = "DEVICETRUST_LISTEN_ADDR"
ENV_CLUSTER_NAME = "DEVICETRUST_CLUSTER_NAME"


@dataclass(frozen=True)
class EnvironmentVariable:
    name: str
    #: the flag it stands in for, or "" when it has none
    flag: str
    #: who reads it: the daemon and tctl (here, in :func:`load_config`) or tsh and the device code (where noted)
    read_by: str
    meaning: str


#: Every ``DEVICETRUST_*`` variable. The daemon's are read only by :func:`environment_settings`; a flag beats
#: them and they beat the file. The rest describe the device tsh runs on, not the daemon, and are read where
#: they are used (the module named in ``read_by``).
ENVIRONMENT: tuple[EnvironmentVariable, ...] = (
    EnvironmentVariable(ENV_CONFIG, "--config", "devicetrust, tctl", "the devicetrust.yaml to read"),
    EnvironmentVariable(ENV_DATA_DIR, "--data-dir", "devicetrust, tctl", "devicetrust.data_dir"),
    EnvironmentVariable(ENV_LISTEN_ADDR, "--listen-addr", "devicetrust", "auth_service.listen_addr"),
    EnvironmentVariable(ENV_CLUSTER_NAME, "--cluster-name", "devicetrust", "auth_service.cluster_name"),
    EnvironmentVariable(
        "DEVICETRUST_DEVICE_KEY",
        "--device-key",
        "tsh (devicetrust.cli.device_proof)",
        "the device key backend: tpm, secure-enclave or unsafe-software",
    ),
    EnvironmentVariable(
        "DEVICETRUST_TPM_TCTI", "", "tsh (devicetrust.device.keys)", "how to reach the TPM (e.g. swtpm:host=…)"
    ),
    EnvironmentVariable(
        "DEVICETRUST_TPM_EVENT_LOG", "", "tsh (devicetrust.device.keys)", "the TPM's measured-boot event log file"
    ),
    EnvironmentVariable(
        "DEVICETRUST_ASSET_TAG",
        "",
        "tsh (devicetrust.device.collect)",
        "the serial number to report instead of the one the machine reports (a simulated device)",
    ),
    EnvironmentVariable(
        "DEVICETRUST_SESSION_ID", "", "set by the SSH node for the session's shell", "the audit session id"
    ),
    EnvironmentVariable("DEVICETRUST_USER", "", "set by the SSH node for the session's shell", "the cluster user"),
)

_CLUSTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_SSH_FIELDS = ("enabled", "listen_addr", "labels", "hostname", "auth_server", "join_token", "token_file", "ca_file")
_DB_FIELDS = ("enabled", "listen_addr", "hostname", "auth_server", "join_token", "token_file", "ca_file")
_DATABASE_FIELDS = ("name", "protocol", "uri", "labels", "ca_file")
_DATABASE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_KUBE_FIELDS = _DB_FIELDS
_KUBE_CLUSTER_FIELDS = ("name", "api_server", "ca_file", "token_file", "kubeconfig", "context", "labels")


def default_data_dir() -> Path:
    """``/var/lib/devicetrust`` for root (as a service runs), else a directory in the user's home."""
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
    #: Processes serving the auth API. 1 serves it inside the daemon's own process; more start that many worker
    #: processes on one listening socket (auth servers keep no state of their own, so any worker serves any
    #: request).
    workers: int = field(default_factory=lambda: default_auth_workers())


def default_auth_workers() -> int:
    """One auth worker per CPU this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@dataclass(frozen=True)
class _AgentSection:
    """What the agents' sections share: where the agent listens and how it joins."""

    SECTION = ""

    enabled: bool
    listen_addr: str
    #: The name the agent joins under; "" means this machine's host name.
    hostname: str = ""
    #: HOST:PORT of the auth service; "" means the auth service in this process.
    auth_server: str = ""
    #: A join token of the agent's type ("tctl tokens add --type=node|db|kube"), inline or in a file; not needed
    #: once joined, nor when the auth service runs in the same process.
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
            raise ConfigError(f"{self.SECTION}.token_file: cannot read {self.token_file}: {err.strerror}") from None


@dataclass(frozen=True)
class SSHServiceConfig(_AgentSection):
    """``ssh_service``: an SSH node. Enabled unless the config says otherwise (the embedded default runs one)."""

    enabled: bool = True
    listen_addr: str = DEFAULT_SSH_LISTEN_ADDR
    labels: Mapping[str, str] = field(default_factory=dict)

    SECTION = "ssh_service"


@dataclass(frozen=True)
class DatabaseEntry:
    """One entry of ``db_service.databases``: a PostgreSQL server at ``uri`` (``postgres://HOST:PORT``), reached
    over TLS verified with ``ca_file`` when it is set, plainly otherwise."""

    name: str
    uri: str
    protocol: str = "postgres"
    labels: Mapping[str, str] = field(default_factory=dict)
    ca_file: Path | None = None


@dataclass(frozen=True)
class DBServiceConfig(_AgentSection):
    """``db_service``: databases behind device trust. Disabled unless the config enables it."""

    enabled: bool = False
    listen_addr: str = DEFAULT_DB_LISTEN_ADDR
    databases: tuple[DatabaseEntry, ...] = ()

    SECTION = "db_service"


@dataclass(frozen=True)
class KubeClusterEntry:
    """One entry of ``kube_service.kubernetes_clusters``: an API server at ``api_server`` (``https://HOST:PORT``)
    verified with ``ca_file``, which the service calls with the bearer token in ``token_file`` (a service
    account allowed to impersonate users and groups); or, instead of those three, a ``kubeconfig`` whose current
    context (or the one ``context`` names) says all of it (read when the service starts)."""

    name: str
    api_server: str = ""
    ca_file: Path | None = None
    token_file: Path | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    kubeconfig: Path | None = None
    context: str = ""


@dataclass(frozen=True)
class KubeServiceConfig(_AgentSection):
    """``kube_service``: Kubernetes clusters behind device trust. Disabled unless the config enables it."""

    enabled: bool = False
    listen_addr: str = DEFAULT_KUBE_LISTEN_ADDR
    kubernetes_clusters: tuple[KubeClusterEntry, ...] = ()

    SECTION = "kube_service"


@dataclass(frozen=True)
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    storage: StorageConfig = field(default_factory=StorageConfig)
    log_severity: str = "INFO"
    auth_service: AuthServiceConfig = field(default_factory=AuthServiceConfig)
    ssh_service: SSHServiceConfig = field(default_factory=SSHServiceConfig)
    db_service: DBServiceConfig = field(default_factory=DBServiceConfig)
    kube_service: KubeServiceConfig = field(default_factory=KubeServiceConfig)
    #: the raw ``jamf_service`` section, validated by devicetrust.mdm.jamf when the daemon starts
    jamf_service: Mapping[str, object] | None = None
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

    @property
    def db_service_dir(self) -> Path:
        return self.data_dir / "db"

    @property
    def kube_service_dir(self) -> Path:
        return self.data_dir / "kube"

    def kube_auth_server(self) -> str:
        """Where the kube service reaches the auth service: configured, else this process's auth service."""
        return self._agent_auth_server(self.kube_service.auth_server, "kube_service")

    def node_auth_server(self) -> str:
        """Where the SSH node reaches the auth service: configured, else this process's auth service."""
        return self._agent_auth_server(self.ssh_service.auth_server, "ssh_service")

    def db_auth_server(self) -> str:
        """Where the database service reaches the auth service: configured, else this process's auth service."""
        return self._agent_auth_server(self.db_service.auth_server, "db_service")

    def _agent_auth_server(self, configured: str, section: str) -> str:
        if configured:
            return configured
        if not self.auth_service.enabled:
            raise ConfigError(f"{section}.auth_server: required when auth_service is disabled")
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


#: The keys of the jamf_service section and of each of its ``inventory`` entries (validated by
#: devicetrust.mdm.jamf.config; listed here so the whole file is checked when it is read).
JAMF_SERVICE_KEYS = frozenset(
    {
        "enabled",
        "name",
        "api_endpoint",
        "client_id",
        "client_secret_file",
        "username",
        "password_file",
        "ca_file",
        "sync_delay",
        "inventory",
        "auth_server",
        "join_token",
        "token_file",
        "auth_ca_file",
    }
)
JAMF_INVENTORY_KEYS = frozenset(
    {"kind", "filter_rsql", "sync_period_partial", "sync_period_full", "on_missing", "page_size"}
)

#: Every key devicetrust.yaml may hold: None is a value, a mapping a nested section, ``[mapping]`` a list of
#: sections. The values themselves are checked by :func:`parse_config` (and the jamf_service parser).
CONFIG_KEYS: Mapping[str, object] = {
    "version": None,
    "devicetrust": {
        "data_dir": None,
        "storage": dict.fromkeys(("type", "path", "conn_string")),
        "log": {"severity": None},
    },
    "auth_service": dict.fromkeys(("enabled", "listen_addr", "cluster_name", "public_addr", "workers")),
    "ssh_service": dict.fromkeys(_SSH_FIELDS),
    "db_service": {**dict.fromkeys(_DB_FIELDS), "databases": [dict.fromkeys(_DATABASE_FIELDS)]},
    "kube_service": {**dict.fromkeys(_KUBE_FIELDS), "kubernetes_clusters": [dict.fromkeys(_KUBE_CLUSTER_FIELDS)]},
    "jamf_service": {**dict.fromkeys(JAMF_SERVICE_KEYS), "inventory": [dict.fromkeys(JAMF_INVENTORY_KEYS)]},
}


def unknown_key_error(where: str, key: object, known: Collection[str]) -> ConfigError:
    """``<where>.<key>: unknown key (did you mean <closest>?)``, or the known keys when none is close."""
    path = f"{where}.{key}" if where else str(key)
    close = difflib.get_close_matches(key, sorted(known), n=1) if isinstance(key, str) else []
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known))}"
    return ConfigError(f"{path}: unknown key ({hint})")


def check_keys(value: object, schema: object, where: str = "") -> None:
    """Refuse the first key of ``value`` (in document order) that ``schema`` does not know."""
    if isinstance(schema, list):
        if isinstance(value, list):
            for index, item in enumerate(value):
                check_keys(item, schema[0], f"{where}[{index}]")
        return
    if not isinstance(schema, Mapping) or not isinstance(value, Mapping):
        return  # a value of the wrong type is reported by the parser, naming the field
    for key, item in value.items():
        if key not in schema:
            raise unknown_key_error(where, key, schema)
        check_keys(item, schema[key], f"{where}.{key}" if where else key)


def _section(doc: Mapping[str, object], name: str) -> dict[str, object]:
    value = doc.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping")
    return value


#: YAML 1.1's boolean words, accepted where a setting is a boolean. The file is read with YAML 1.2 booleans, so
#: these stay strings everywhere else (``mode: off`` is the mode "off", not False).
_BOOLEAN_WORDS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


def config_bool(value: object, where: str) -> bool:
    """A boolean setting: true/false, or one of YAML 1.1's yes/no/on/off."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[value.lower()]
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _str(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _cluster_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not _CLUSTER_NAME_RE.match(value):
        raise ConfigError(f"{where}: invalid name {value!r}")
    return value


def parse_config(doc: Mapping[str, object], *, source: Path | None = None) -> Config:
    """Turn a parsed ``devicetrust.yaml`` into a :class:`Config`, naming the field of any mistake."""
    check_keys(doc, CONFIG_KEYS)
    version = doc.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"version: unsupported {version!r}, expected {CONFIG_VERSION!r}")
    config = Config(source=source)

    main = _section(doc, "devicetrust")
    if "data_dir" in main:
        config = replace(config, data_dir=Path(_str(main["data_dir"], "devicetrust.data_dir")))
    if "storage" in main:
        storage = _section(main, "storage")
        kind = storage.get("type", "sqlite")
        if not isinstance(kind, str) or kind not in ("sqlite", "postgres"):
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
                # only postgres reads it, and checks it above
                conn_string=conn if isinstance(conn, str) else "",
            ),
        )
    if "log" in main:
        log = _section(main, "log")
        severity = str(log.get("severity", "INFO")).upper()
        if severity not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"devicetrust.log.severity: unknown level {severity!r}")
        config = replace(config, log_severity=severity)

    auth = _section(doc, "auth_service")
    if auth:
        cluster_name = _cluster_name(auth.get("cluster_name", DEFAULT_CLUSTER_NAME), "auth_service.cluster_name")
        listen = _str(auth.get("listen_addr", DEFAULT_AUTH_LISTEN_ADDR), "auth_service.listen_addr")
        split_host_port(listen, what="auth_service.listen_addr")
        public = auth.get("public_addr", [])
        if isinstance(public, str):
            public = [public]
        if not isinstance(public, list) or not all(isinstance(p, str) for p in public):
            raise ConfigError("auth_service.public_addr: expected a list of host names or addresses")
        workers = auth.get("workers", default_auth_workers())
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_AUTH_WORKERS:
            raise ConfigError(f"auth_service.workers: expected a whole number from 1 to {MAX_AUTH_WORKERS}")
        config = replace(
            config,
            auth_service=AuthServiceConfig(
                enabled=config_bool(auth.get("enabled", True), "auth_service.enabled"),
                listen_addr=listen,
                cluster_name=cluster_name,
                public_addrs=tuple(public),
                workers=workers,
            ),
        )

    ssh = _section(doc, "ssh_service")
    if ssh:
        join = _agent_join_settings(ssh, "ssh_service", DEFAULT_SSH_LISTEN_ADDR)
        config = replace(
            config,
            ssh_service=SSHServiceConfig(
                enabled=config_bool(ssh.get("enabled", True), "ssh_service.enabled"),
                labels=_labels(ssh.get("labels"), "ssh_service.labels"),
                **join,
            ),
        )
    db = _section(doc, "db_service")
    if db:
        config = replace(config, db_service=_db_service(db))
    kube = _section(doc, "kube_service")
    if kube:
        config = replace(config, kube_service=_kube_service(kube))
    jamf = doc.get("jamf_service")
    if jamf is not None:
        if not isinstance(jamf, dict):
            raise ConfigError("jamf_service: expected a mapping")
        config = replace(config, jamf_service=jamf)
    return config


def _labels(value: object, where: str) -> dict[str, str]:
    labels = value or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ConfigError(f"{where}: expected a mapping of strings")
    return labels


def _optional_path(section: Mapping[str, object], name: str, where: str) -> Path | None:
    return Path(_str(section[name], f"{where}.{name}")) if section.get(name) is not None else None


class _JoinSettings(TypedDict):
    """An agent section's settings but ``enabled`` (see :class:`_AgentSection`)."""

    listen_addr: str
    hostname: str
    auth_server: str
    join_token: str
    token_file: Path | None
    ca_file: Path | None


def _agent_join_settings(section: Mapping[str, object], where: str, default_listen: str) -> _JoinSettings:
    """An agent section's listen address and join settings."""
    listen = _str(section.get("listen_addr", default_listen), f"{where}.listen_addr")
    split_host_port(listen, what=f"{where}.listen_addr")
    hostname = section.get("hostname") or ""
    if not isinstance(hostname, str) or (hostname and not _HOSTNAME_RE.match(hostname)):
        raise ConfigError(f"{where}.hostname: invalid host name {hostname!r}")
    auth_server = _str(section["auth_server"], f"{where}.auth_server") if section.get("auth_server") else ""
    if auth_server:
        split_host_port(auth_server, what=f"{where}.auth_server")
    join_token = section.get("join_token") or ""
    if not isinstance(join_token, str):
        raise ConfigError(f"{where}.join_token: expected a string")
    if join_token and "token_file" in section:
        raise ConfigError(f"{where}: give join_token or token_file, not both")
    return {
        "listen_addr": listen,
        "hostname": hostname,
        "auth_server": auth_server,
        "join_token": join_token,
        "token_file": _optional_path(section, "token_file", where),
        "ca_file": _optional_path(section, "ca_file", where),
    }


def _named_entries(section: Mapping[str, object], key: str, where: str) -> Iterator[tuple[str, str, dict[str, object]]]:
    """The entries of the list ``where.key`` (each a mapping with a name no other entry has), each with its path
    and its name."""
    entries = section.get(key, []) or []
    if not isinstance(entries, list):
        raise ConfigError(f"{where}.{key}: expected a list")
    names: set[str] = set()
    for index, entry in enumerate(entries):
        path = f"{where}.{key}[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: expected a mapping")
        name = _str(entry.get("name"), f"{path}.name")
        if not _DATABASE_NAME_RE.match(name):
            raise ConfigError(f"{path}.name: invalid name {name!r} (letters, digits, '.', '_', '-')")
        if name in names:
            raise ConfigError(f"{path}.name: {name!r} is already configured")
        names.add(name)
        yield path, name, entry


def _enabled_with_entries(section: Mapping[str, object], where: str, entries: tuple[object, ...], missing: str) -> bool:
    """``where.enabled`` (true unless it says otherwise); ConfigError ``missing`` if enabled without entries."""
    enabled = config_bool(section.get("enabled", True), f"{where}.enabled")
    if enabled and not entries:
        raise ConfigError(missing)
    return enabled


def _db_service(db: Mapping[str, object]) -> DBServiceConfig:
    join = _agent_join_settings(db, "db_service", DEFAULT_DB_LISTEN_ADDR)
    databases = tuple(_database(*named) for named in _named_entries(db, "databases", "db_service"))
    missing = "db_service.databases: list at least one database (name, protocol, uri)"
    enabled = _enabled_with_entries(db, "db_service", databases, missing)
    return DBServiceConfig(enabled=enabled, databases=databases, **join)


def _database(where: str, name: str, entry: Mapping[str, object]) -> DatabaseEntry:
    protocol = _str(entry.get("protocol", "postgres"), f"{where}.protocol")
    if protocol not in DB_PROTOCOLS:
        raise ConfigError(f"{where}.protocol: expected one of {', '.join(DB_PROTOCOLS)}, got {protocol!r}")
    uri = _str(entry.get("uri"), f"{where}.uri")
    _check_database_uri(uri, f"{where}.uri")
    return DatabaseEntry(
        name=name,
        uri=uri,
        protocol=protocol,
        labels=_labels(entry.get("labels"), f"{where}.labels"),
        ca_file=_optional_path(entry, "ca_file", where),
    )


def _kube_service(kube: Mapping[str, object]) -> KubeServiceConfig:
    join = _agent_join_settings(kube, "kube_service", DEFAULT_KUBE_LISTEN_ADDR)
    clusters = tuple(_kube_cluster(*named) for named in _named_entries(kube, "kubernetes_clusters", "kube_service"))
    missing = "kube_service.kubernetes_clusters: list at least one cluster (name, kubeconfig or api_server, ...)"
    enabled = _enabled_with_entries(kube, "kube_service", clusters, missing)
    return KubeServiceConfig(enabled=enabled, kubernetes_clusters=clusters, **join)


def _kube_cluster(where: str, name: str, entry: Mapping[str, object]) -> KubeClusterEntry:
    labels = _labels(entry.get("labels"), f"{where}.labels")
    kubeconfig = _optional_path(entry, "kubeconfig", where)
    if kubeconfig is not None:
        if any(entry.get(key) is not None for key in ("api_server", "ca_file", "token_file")):
            raise ConfigError(f"{where}: either kubeconfig or api_server + ca_file + token_file, not both")
        context = _str(entry["context"], f"{where}.context") if entry.get("context") is not None else ""
        return KubeClusterEntry(name=name, labels=labels, kubeconfig=kubeconfig, context=context)
    if entry.get("context") is not None:
        raise ConfigError(f"{where}.context: only with kubeconfig")
    if entry.get("api_server") is None:
        raise ConfigError(f"{where}: give kubeconfig, or api_server + ca_file + token_file")
    api_server = _str(entry.get("api_server"), f"{where}.api_server")
    scheme, sep, rest = api_server.partition("://")
    if scheme != "https" or not sep:
        raise ConfigError(f"{where}.api_server: expected https://HOST:PORT, got {api_server!r}")
    split_host_port(rest.split("/", 1)[0], what=f"{where}.api_server")
    ca_file = _optional_path(entry, "ca_file", where)
    token_file = _optional_path(entry, "token_file", where)
    if ca_file is None or token_file is None:
        raise ConfigError(f"{where}: ca_file and token_file are required (the API server's CA, a bearer token)")
    return KubeClusterEntry(
        name=name,
        api_server=api_server.rstrip("/"),
        ca_file=ca_file,
        token_file=token_file,
        labels=labels,
    )


def _check_database_uri(uri: str, where: str) -> None:
    """``postgres://HOST:PORT`` or ``postgresql://…`` (an optional path is ignored), or ``HOST:PORT``."""
    scheme, sep, rest = uri.partition("://")
    if sep and scheme not in ("postgres", "postgresql"):
        raise ConfigError(f"{where}: expected postgres://HOST:PORT, got {uri!r}")
    address = (rest if sep else uri).split("/", 1)[0]
    if "@" in address:
        raise ConfigError(f"{where}: no user or password in the URI (the client's StartupMessage names the user)")
    split_host_port(address if ":" in address.strip("[]") or "]:" in address else f"{address}:5432", what=where)


@dataclass(frozen=True)
class Overrides:
    """Settings given as flags or in the environment, which beat the file; None: not given."""

    config: Path | None = None
    data_dir: Path | None = None
    listen_addr: str | None = None
    cluster_name: str | None = None


#: what an error calls a value given as a flag or in the environment
_FLAG_NAMES = {"listen_addr": "--listen-addr", "cluster_name": "--cluster-name"}
_ENV_NAMES = {"listen_addr": ENV_LISTEN_ADDR, "cluster_name": ENV_CLUSTER_NAME}


def environment_settings(environ: Mapping[str, str] | None = None) -> Overrides:
    """The daemon's ``DEVICETRUST_*`` variables (see :data:`ENVIRONMENT`); an empty one is not set."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        return env.get(name, "").strip() or None

    config, data_dir = get(ENV_CONFIG), get(ENV_DATA_DIR)
    return Overrides(
        config=Path(config) if config else None,
        data_dir=Path(data_dir) if data_dir else None,
        listen_addr=get(ENV_LISTEN_ADDR),
        cluster_name=get(ENV_CLUSTER_NAME),
    )


def _apply(config: Config, given: Overrides, names: Mapping[str, str]) -> Config:
    if given.data_dir is not None:
        config = replace(config, data_dir=given.data_dir)
    auth = config.auth_service
    if given.listen_addr is not None:
        split_host_port(given.listen_addr, what=names["listen_addr"])
        auth = replace(auth, listen_addr=given.listen_addr)
    if given.cluster_name is not None:
        auth = replace(auth, cluster_name=_cluster_name(given.cluster_name, names["cluster_name"]))
    return replace(config, auth_service=auth)


def read_config_file(path: Path) -> Config:
    """One devicetrust.yaml; every mistake is one ConfigError line starting with the file's name."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    try:
        documents = load_yaml_documents(data, str(path))
    except ValidationError as err:
        raise ConfigError(str(err)) from None
    if len(documents) > 1:
        raise ConfigError(f"{path}: expected one YAML document, found {len(documents)}")
    try:
        return parse_config(documents[0] if documents else {}, source=path)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def load_config(
    path: Path | None = None, *, flags: Overrides | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """The daemon's configuration: ``flags`` (``path`` is ``--config``) > environment > file > defaults.

    No file (neither ``--config`` nor ``$DEVICETRUST_CONFIG``) means all defaults.
    """
    given = flags or Overrides()
    if path is not None:
        given = replace(given, config=path)
    env = environment_settings(environ)
    source = given.config or env.config
    config = Config() if source is None else read_config_file(source)
    return _apply(_apply(config, env, _ENV_NAMES), given, _FLAG_NAMES)


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
  # Processes serving the auth API (default: one per CPU; 1 serves it inside this process).
  # workers: 2
ssh_service:
  enabled: true
  listen_addr: {ssh_listen}
  labels:
    env: dev
  # hostname: node-1                  # default: this machine's host name
  # auth_server: auth.example.com:3080  # default: the auth service above
  # join_token: <tctl tokens add --type=node>   # or token_file: /path/to/token
  # ca_file: /path/to/host-ca.pem     # the cluster's host CA, to join a remote auth service
# db_service:                         # PostgreSQL behind device trust (tsh db, tsh proxy db)
#   enabled: true
#   listen_addr: {DEFAULT_DB_LISTEN_ADDR}
#   databases:
#     - name: pg-prod
#       protocol: postgres
#       uri: postgres://127.0.0.1:5432
#       labels:
#         env: prod
#       # ca_file: /path/to/db-ca.pem   # speak TLS to the database, verified with this CA
# kube_service:                       # Kubernetes API servers behind device trust (tsh kube, kubectl)
#   enabled: true
#   listen_addr: {DEFAULT_KUBE_LISTEN_ADDR}
#   kubernetes_clusters:
#     - name: prod
#       api_server: https://10.0.0.1:6443
#       ca_file: /path/to/cluster-ca.pem
#       token_file: /path/to/service-account-token  # may impersonate users and groups
#       labels:
#         env: prod
#     - name: staging                 # or: the server, CA and token of a kubeconfig's current context
#       kubeconfig: /path/to/kubeconfig
#       # context: staging-admin      # another context than the current one
"""
