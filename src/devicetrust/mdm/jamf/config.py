"""The ``jamf_service:`` section of devicetrust.yaml, validated once at start.

The daemon passes the raw mapping (``parse_jamf_service_config(doc.get("jamf_service"))``); every mistake is one
:class:`~devicetrust.errors.ConfigError` line naming the field. Secrets are read here, from files only, so a
missing or unreadable secret stops the service at start rather than at the first sync::

    jamf_service:
      enabled: true
      name: jamf                                   # the devices' source name (tctl devices ls: Source)
      api_endpoint: https://yourtenant.jamfcloud.com
      client_id: 0b8f…                             # API client (Read Computers) …
      client_secret_file: /var/lib/devicetrust/jamf_secret
      # username: sync  / password_file: …         # … or a Jamf user (legacy bearer tokens)
      # ca_file: /etc/ssl/private-ca.pem           # a private CA, added to the system trust store
      # auth_server: auth.example.com:3025         # run apart from the auth service (a jamf-only daemon):
      # join_token: …  / token_file: …             #   join it with a `tctl tokens add --type=mdm` token,
      # auth_ca_file: /etc/devicetrust/host-ca.pem #   verifying it with the cluster's host CA (pinned)
      sync_delay: 30s                              # random extra delay before each sync (0 = none)
      inventory:
        - filter_rsql: 'general.remoteManagement.managed==true'
          sync_period_partial: 6h
          sync_period_full: 24h
          on_missing: DELETE                       # or NOOP
          page_size: 500
        - kind: mobile_devices                     # iPhones and iPads: opt-in
          filter_rsql: 'managed==true'
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal, TypedDict
from urllib.parse import urlsplit

from devicetrust.config import (
    JAMF_INVENTORY_KEYS,
    JAMF_SERVICE_KEYS,
    config_bool,
    split_host_port,
    unknown_key_error,
)
from devicetrust.errors import ConfigError
from devicetrust.types import parse_duration

__all__ = [
    "COMPUTERS",
    "DEFAULT_COMPUTER_FILTER",
    "DEFAULT_MOBILE_FILTER",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_SERVICE_NAME",
    "DEFAULT_SYNC_DELAY",
    "DEFAULT_SYNC_PERIOD_FULL",
    "DEFAULT_SYNC_PERIOD_PARTIAL",
    "INVENTORY_KINDS",
    "JAMF_MAX_PAGE_SIZE",
    "MAX_INVENTORY_ENTRIES",
    "MAX_SECRET_BYTES",
    "MOBILE_DEVICES",
    "ON_MISSING_ACTIONS",
    "InventoryEntry",
    "JamfServiceConfig",
    "OAuthCredentials",
    "PasswordCredentials",
    "parse_jamf_service_config",
]

SECTION = "jamf_service"
DEFAULT_SERVICE_NAME = "jamf"
COMPUTERS: Final = "computers"
MOBILE_DEVICES: Final = "mobile_devices"
INVENTORY_KINDS = (COMPUTERS, MOBILE_DEVICES)
InventoryKind = Literal["computers", "mobile_devices"]
#: only devices Jamf manages, unless the admin says otherwise
DEFAULT_COMPUTER_FILTER = "general.remoteManagement.managed==true"
#: the mobile-device inventory names its fields flat
DEFAULT_MOBILE_FILTER = "managed==true"
DEFAULT_SYNC_PERIOD_PARTIAL = timedelta(hours=6)
DEFAULT_SYNC_PERIOD_FULL = timedelta(hours=24)
#: a partial sync more often than this would only re-read what the last one read
MIN_SYNC_PERIOD = timedelta(seconds=1)
#: spreads the syncs of several auth servers (and a restart storm) over this much random delay
DEFAULT_SYNC_DELAY = timedelta(seconds=30)
ON_MISSING_ACTIONS = ("NOOP", "DELETE")
DEFAULT_ON_MISSING = "DELETE"
DEFAULT_PAGE_SIZE = 500
#: Jamf Pro silently serves at most this many records per page, whatever is asked for
JAMF_MAX_PAGE_SIZE = 2000
#: one sync walks its entries one after the other; more entries than this is a mistake, not a fleet
MAX_INVENTORY_ENTRIES = 32
#: a client secret or password is a few dozen bytes; a big file is the wrong file
MAX_SECRET_BYTES = 4096
#: longest RSQL filter taken (Jamf puts it in the query string)
MAX_FILTER_CHARS = 2048

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOP_FIELDS = JAMF_SERVICE_KEYS
_ENTRY_FIELDS = JAMF_INVENTORY_KEYS


@dataclass(frozen=True)
class OAuthCredentials:
    """An API client (Jamf Pro ≥ 10.49): ``POST /api/oauth/token`` with client credentials."""

    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True)
class PasswordCredentials:
    """A Jamf user: ``POST /api/v1/auth/token`` with basic auth, kept alive with ``/api/v1/auth/keep-alive``."""

    username: str
    password: str = field(repr=False)


Credentials = OAuthCredentials | PasswordCredentials


@dataclass(frozen=True)
class InventoryEntry:
    """One ``inventory:`` item: which devices (kind + filter), how often, and what a vanished device means."""

    kind: InventoryKind = COMPUTERS
    filter_rsql: str = DEFAULT_COMPUTER_FILTER
    sync_period_partial: timedelta = DEFAULT_SYNC_PERIOD_PARTIAL
    sync_period_full: timedelta = DEFAULT_SYNC_PERIOD_FULL
    on_missing: str = DEFAULT_ON_MISSING
    page_size: int = DEFAULT_PAGE_SIZE

    @property
    def key(self) -> str:
        """Stable across restarts and reorderings: the state (partial-sync cut) of an entry is stored under it."""
        return hashlib.sha256(f"{self.kind}\n{self.filter_rsql}".encode()).hexdigest()[:16]

    @property
    def deletes_missing(self) -> bool:
        return self.on_missing == "DELETE"

    def describe(self) -> str:
        return f"{self.kind} {self.filter_rsql!r}" if self.filter_rsql else f"{self.kind} (no filter)"


@dataclass(frozen=True)
class JamfServiceConfig:
    enabled: bool = False
    name: str = DEFAULT_SERVICE_NAME
    api_endpoint: str = ""
    credentials: Credentials | None = None
    ca_file: Path | None = None
    sync_delay: timedelta = DEFAULT_SYNC_DELAY
    inventory: tuple[InventoryEntry, ...] = (InventoryEntry(),)
    #: HOST:PORT of the auth service when this service runs apart from it (joins with an mdm token); "" = in-process
    auth_server: str = ""
    #: the mdm join token (from join_token or token_file)
    join_token: str = field(default="", repr=False)
    token_file: Path | None = None
    #: the cluster's host CA (PEM file), the only trust anchor for auth_server
    auth_ca_file: Path | None = None
    auth_ca_pem: str | None = field(default=None, repr=False)


def _where(*parts: str | int) -> str:
    text = SECTION
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _duration(value: object, where: str, *, allow_zero: bool = False) -> timedelta:
    if allow_zero and value in (0, "0", "0s"):
        return timedelta(0)
    if not isinstance(value, str):
        raise ConfigError(f'{where}: expected a duration such as "6h" or "30m", got {value!r}')
    try:
        return parse_duration(value.strip())
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def _read_secret(path_value: object, where: str) -> str:
    path = Path(_text(path_value, where))
    try:
        data = path.read_bytes()[: MAX_SECRET_BYTES + 1]
    except OSError as err:
        raise ConfigError(f"{where}: cannot read {path}: {err.strerror or err}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(f"{where}: {path} is larger than {MAX_SECRET_BYTES} bytes; is it the right file?")
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"{where}: {path} is empty")
    return secret


def _endpoint(value: object) -> str:
    where = _where("api_endpoint")
    text = _text(value, where).rstrip("/")
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises on a bad port
    except ValueError:
        raise ConfigError(f"{where}: invalid URL {text!r}") from None
    if parts.scheme != "https":
        raise ConfigError(f"{where}: must be an https:// URL, got {text!r} (the Jamf API is only ever used over TLS)")
    if not parts.hostname:
        raise ConfigError(f"{where}: no host in {text!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{where}: expected https://HOST[:PORT][/PATH] without credentials, query or fragment")
    return text


def _ca_file(value: object, name: str = "ca_file") -> Path:
    where = _where(name)
    path = Path(_text(value, where))
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:  # an OSError too: first
        raise ConfigError(f"{where}: {path} holds no PEM CA certificate") from None
    except OSError as err:
        raise ConfigError(f"{where}: cannot read {path}: {err.strerror or err}") from None
    return path


class _RemoteFields(TypedDict, total=False):
    """The :class:`JamfServiceConfig` fields of a service that runs apart from the auth service."""

    auth_server: str
    join_token: str
    token_file: Path | None
    auth_ca_file: Path
    auth_ca_pem: str


def _remote(section: Mapping[str, object]) -> _RemoteFields:
    """auth_server, join_token/token_file, auth_ca_file: all or nothing."""
    remote_fields = ("auth_server", "join_token", "token_file", "auth_ca_file")
    if not any(section.get(name) is not None for name in remote_fields):
        return {}
    if section.get("auth_server") is None:
        raise ConfigError(f"{_where('auth_server')}: required with join_token, token_file or auth_ca_file")
    auth_server = _text(section["auth_server"], _where("auth_server"))
    split_host_port(auth_server, what=_where("auth_server"))
    has_token, has_file = section.get("join_token") is not None, section.get("token_file") is not None
    if has_token == has_file:
        raise ConfigError(f"{SECTION}: with auth_server, give one of join_token or token_file (an mdm join token)")
    token_file = Path(_text(section["token_file"], _where("token_file"))) if has_file else None
    token = (
        _read_secret(section["token_file"], _where("token_file"))
        if has_file
        else _text(section["join_token"], _where("join_token"))
    )
    if section.get("auth_ca_file") is None:
        raise ConfigError(f"{_where('auth_ca_file')}: required with auth_server (the cluster's host CA, PEM)")
    ca_path = _ca_file(section["auth_ca_file"], "auth_ca_file")
    return {
        "auth_server": auth_server,
        "join_token": token,
        "token_file": token_file,
        "auth_ca_file": ca_path,
        "auth_ca_pem": ca_path.read_text(),
    }


def _credentials(section: Mapping[str, Any]) -> Credentials:
    oauth = "client_id" in section or "client_secret_file" in section
    legacy = "username" in section or "password_file" in section
    if oauth and legacy:
        raise ConfigError(
            f"{SECTION}: set client_id + client_secret_file (an API client) or username + password_file, not both"
        )
    if oauth:
        if "client_id" not in section or "client_secret_file" not in section:
            raise ConfigError(f"{SECTION}: client_id and client_secret_file go together")
        return OAuthCredentials(
            _text(section["client_id"], _where("client_id")),
            _read_secret(section["client_secret_file"], _where("client_secret_file")),
        )
    if legacy:
        if "username" not in section or "password_file" not in section:
            raise ConfigError(f"{SECTION}: username and password_file go together")
        return PasswordCredentials(
            _text(section["username"], _where("username")),
            _read_secret(section["password_file"], _where("password_file")),
        )
    raise ConfigError(
        f"{SECTION}: credentials missing: set client_id + client_secret_file (or username + password_file)"
    )


def _entry(value: object, index: int) -> InventoryEntry:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{_where('inventory', index)}: expected a mapping, got {value!r}")
    unknown = [key for key in value if key not in _ENTRY_FIELDS]
    if unknown:
        raise unknown_key_error(_where("inventory", index), unknown[0], _ENTRY_FIELDS)
    kind = value.get("kind", COMPUTERS)
    if kind not in INVENTORY_KINDS:
        raise ConfigError(
            f"{_where('inventory', index, 'kind')}: expected one of {', '.join(INVENTORY_KINDS)}, got {kind!r}"
        )
    default_filter = DEFAULT_COMPUTER_FILTER if kind == COMPUTERS else DEFAULT_MOBILE_FILTER
    filter_rsql = value.get("filter_rsql", default_filter)
    if filter_rsql is None:
        filter_rsql = ""
    if not isinstance(filter_rsql, str) or len(filter_rsql) > MAX_FILTER_CHARS:
        raise ConfigError(
            f"{_where('inventory', index, 'filter_rsql')}: expected an RSQL string of at most {MAX_FILTER_CHARS} "
            f"characters ('' for every device)"
        )
    partial = _duration(value.get("sync_period_partial", "6h"), _where("inventory", index, "sync_period_partial"))
    full = _duration(value.get("sync_period_full", "24h"), _where("inventory", index, "sync_period_full"))
    if partial < MIN_SYNC_PERIOD:
        raise ConfigError(f"{_where('inventory', index, 'sync_period_partial')}: at least {MIN_SYNC_PERIOD.seconds}s")
    if partial >= full:
        raise ConfigError(
            f"{_where('inventory', index)}: sync_period_partial ({value.get('sync_period_partial', '6h')}) must be "
            f"shorter than sync_period_full ({value.get('sync_period_full', '24h')})"
        )
    on_missing = value.get("on_missing", DEFAULT_ON_MISSING)
    if not isinstance(on_missing, str) or on_missing.upper() not in ON_MISSING_ACTIONS:
        raise ConfigError(
            f"{_where('inventory', index, 'on_missing')}: expected {' or '.join(ON_MISSING_ACTIONS)}, "
            f"got {on_missing!r}"
        )
    page_size = value.get("page_size", DEFAULT_PAGE_SIZE)
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= JAMF_MAX_PAGE_SIZE:
        raise ConfigError(
            f"{_where('inventory', index, 'page_size')}: expected a number from 1 to {JAMF_MAX_PAGE_SIZE} "
            f"(Jamf's largest page), got {page_size!r}"
        )
    return InventoryEntry(
        kind=COMPUTERS if kind == COMPUTERS else MOBILE_DEVICES,
        filter_rsql=filter_rsql.strip(),
        sync_period_partial=partial,
        sync_period_full=full,
        on_missing=on_missing.upper(),
        page_size=page_size,
    )


def parse_jamf_service_config(section: Mapping[str, Any] | None) -> JamfServiceConfig:
    """The validated ``jamf_service`` section (None or empty: the service is off). ConfigError names the field."""
    if not section:
        return JamfServiceConfig()
    if not isinstance(section, Mapping):
        raise ConfigError(f"{SECTION}: expected a mapping")
    unknown = [key for key in section if key not in _TOP_FIELDS]
    if unknown:
        raise unknown_key_error(SECTION, unknown[0], _TOP_FIELDS)
    enabled = config_bool(section.get("enabled", False), _where("enabled"))
    if not enabled:
        return JamfServiceConfig()
    name = section.get("name", DEFAULT_SERVICE_NAME)
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{_where('name')}: expected 1-64 letters, digits, '.', '_' or '-' (it names the devices' source), "
            f"got {name!r}"
        )
    if "api_endpoint" not in section:
        raise ConfigError(f"{_where('api_endpoint')}: required (https://yourtenant.jamfcloud.com)")
    endpoint = _endpoint(section["api_endpoint"])
    credentials = _credentials(section)
    ca_file = _ca_file(section["ca_file"]) if section.get("ca_file") is not None else None
    sync_delay = _duration(section.get("sync_delay", "30s"), _where("sync_delay"), allow_zero=True)
    remote = _remote(section)
    raw_inventory = section.get("inventory")
    if raw_inventory is None:
        inventory: tuple[InventoryEntry, ...] = (InventoryEntry(),)
    else:
        if not isinstance(raw_inventory, list) or not raw_inventory:
            raise ConfigError(f"{_where('inventory')}: expected a list of at least one entry")
        if len(raw_inventory) > MAX_INVENTORY_ENTRIES:
            raise ConfigError(f"{_where('inventory')}: at most {MAX_INVENTORY_ENTRIES} entries")
        inventory = tuple(_entry(item, index) for index, item in enumerate(raw_inventory))
        keys: dict[str, int] = {}
        for index, entry in enumerate(inventory):
            if entry.key in keys:
                raise ConfigError(
                    f"{_where('inventory', index)}: same kind and filter_rsql as inventory[{keys[entry.key]}]"
                )
            keys[entry.key] = index
    return JamfServiceConfig(
        enabled=True,
        name=name,
        api_endpoint=endpoint,
        credentials=credentials,
        ca_file=ca_file,
        sync_delay=sync_delay,
        inventory=inventory,
        **remote,
    )
