"""The identity carried by user certificates, and the names it is encoded under.

SSH user certificates carry it as:
    key id = username, principals = logins, extensions ``teleport-roles`` / ``teleport-traits`` /
    ``teleport-bot-name`` / ``teleport-device-*`` (same names as Teleport, so its tooling reads them).

X.509 client certificates carry it in the subject:
    CN = username; one ``O=`` per role (as Teleport does: readable in ``openssl x509 -text``);
    one :data:`OID_LOGINS` attribute per login; :data:`OID_TRAITS` = traits as JSON; :data:`OID_BOT_NAME`;
    device data under :data:`OID_DEVICE_ID` / :data:`OID_DEVICE_ASSET_TAG` / :data:`OID_DEVICE_CREDENTIAL_ID`.
An X.509 certificate for a database (``tsh db login``) also carries the route to it, under Teleport's numbers and
with their meaning: :data:`OID_DB_SERVICE` (the database's name), :data:`OID_DB_PROTOCOL`, :data:`OID_DB_USER`
and :data:`OID_DB_NAME` (the defaults for the database user and name; the PostgreSQL startup message decides).
A session certificate also carries the session-time device proof (:class:`SessionProof`) as JSON, in the SSH
extension :data:`EXT_SESSION_PROOF` or the X.509 attribute :data:`OID_SESSION_PROOF`.
The 1.3.9999.1.1xx numbers deliberately avoid Teleport's own 1.3.9999.1.x assignments (kube users, …) so
a Teleport certificate can never be misread as ours.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from cryptography import x509

from devicetrust.errors import ValidationError

__all__ = [
    "EXT_BOT_NAME",
    "EXT_DEVICE_ASSET_TAG",
    "EXT_DEVICE_CREDENTIAL_ID",
    "EXT_DEVICE_ID",
    "EXT_ROLES",
    "EXT_SESSION_PROOF",
    "EXT_TRAITS",
    "OID_BOT_NAME",
    "OID_DB_NAME",
    "OID_DB_PROTOCOL",
    "OID_DB_SERVICE",
    "OID_DB_USER",
    "OID_DEVICE_ASSET_TAG",
    "OID_DEVICE_CREDENTIAL_ID",
    "OID_DEVICE_ID",
    "OID_LOGINS",
    "OID_SESSION_PROOF",
    "OID_TRAITS",
    "PROOF_TARGET_KINDS",
    "DatabaseRoute",
    "DeviceExtensions",
    "Identity",
    "SessionProof",
    "require_utc",
]

EXT_DEVICE_ID = "teleport-device-id"
EXT_DEVICE_ASSET_TAG = "teleport-device-asset-tag"
EXT_DEVICE_CREDENTIAL_ID = "teleport-device-credential-id"
EXT_ROLES = "teleport-roles"
EXT_TRAITS = "teleport-traits"
EXT_BOT_NAME = "teleport-bot-name"
EXT_SESSION_PROOF = "devicetrust-session-proof"

OID_DEVICE_ID = x509.ObjectIdentifier("1.3.9999.3.1")
OID_DEVICE_ASSET_TAG = x509.ObjectIdentifier("1.3.9999.3.2")
OID_DEVICE_CREDENTIAL_ID = x509.ObjectIdentifier("1.3.9999.3.3")
OID_SESSION_PROOF = x509.ObjectIdentifier("1.3.9999.3.4")
OID_LOGINS = x509.ObjectIdentifier("1.3.9999.1.101")
OID_TRAITS = x509.ObjectIdentifier("1.3.9999.1.102")
OID_BOT_NAME = x509.ObjectIdentifier("1.3.9999.1.103")
OID_DB_SERVICE = x509.ObjectIdentifier("1.3.9999.2.1")
OID_DB_PROTOCOL = x509.ObjectIdentifier("1.3.9999.2.2")
OID_DB_USER = x509.ObjectIdentifier("1.3.9999.2.3")
OID_DB_NAME = x509.ObjectIdentifier("1.3.9999.2.4")


def require_utc(value: object, what: str) -> datetime:
    """Return ``value`` as a tz-aware UTC datetime; naive datetimes are refused (ambiguous)."""
    if not isinstance(value, datetime):
        raise ValidationError(f"{what}: expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{what}: datetime must be timezone-aware (UTC)")
    return value.astimezone(UTC)


_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f]")


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what}: must be a non-empty string")
    # control characters would corrupt ssh-keygen/openssl output and log lines
    if _CONTROL_CHARACTER.search(value):
        raise ValidationError(f"{what}: must not contain control characters")
    return value


def _window(start: object, end: object, start_name: str, end_name: str) -> tuple[datetime, datetime]:
    """``start`` < ``end``, both UTC whole seconds (what certificates carry)."""
    first = require_utc(start, start_name).replace(microsecond=0)
    last = require_utc(end, end_name).replace(microsecond=0)
    if last <= first:
        raise ValidationError(f"{end_name}: must be later than {start_name}")
    return first, last


def _text_tuple(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        # a bare string would otherwise silently become a tuple of characters
        raise ValidationError(f"{what}: expected a list of strings, got a string")
    return tuple(_check_text(v, f"{what} entry") for v in values)


@dataclass(frozen=True)
class DeviceExtensions:
    """The three device values; a certificate is device-verified only when all three are present."""

    device_id: str
    asset_tag: str
    credential_id: str

    def __post_init__(self) -> None:
        _check_text(self.device_id, "device_id")
        _check_text(self.asset_tag, "asset_tag")
        _check_text(self.credential_id, "credential_id")


@dataclass(frozen=True)
class DatabaseRoute:
    """Which database an X.509 certificate is for: ``service_name`` is the database's name in the cluster;
    ``username`` and ``database`` are the defaults ``tsh db login`` was given ("" when none)."""

    service_name: str
    protocol: str
    username: str = ""
    database: str = ""

    def __post_init__(self) -> None:
        _check_text(self.service_name, "database route service name")
        _check_text(self.protocol, "database route protocol")
        for name in ("username", "database"):
            value = getattr(self, name)
            if value:
                _check_text(value, f"database route {name}")
            elif value != "":
                raise ValidationError(f"database route {name}: must be a string")


#: What a session proof can be bound to: an SSH node (host id), a database service's database, a Kubernetes cluster.
PROOF_TARGET_KINDS = ("ssh", "db", "kube")


@dataclass(frozen=True)
class SessionProof:
    """A device proven at session time, for one target: the enrolled device answered a challenge at ``time``
    for the target ``kind``/``target`` (SSH: the node's host id), and the proof admits a session until
    ``expires``. ``id`` names the ceremony (audit correlates the session with its ``device.authenticate``)."""

    kind: str
    target: str
    time: datetime
    expires: datetime
    id: str

    def __post_init__(self) -> None:
        if self.kind not in PROOF_TARGET_KINDS:
            raise ValidationError(f"session proof kind: expected one of {', '.join(PROOF_TARGET_KINDS)}")
        _check_text(self.target, "session proof target")
        _check_text(self.id, "session proof id")
        time, expires = _window(self.time, self.expires, "session proof time", "session proof expiry")
        object.__setattr__(self, "time", time)
        object.__setattr__(self, "expires", expires)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "target": self.target,
                "time": int(self.time.timestamp()),
                "expires": int(self.expires.timestamp()),
                "id": self.id,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> SessionProof:
        """ValidationError unless ``text`` is exactly what :meth:`to_json` writes."""
        try:
            doc = json.loads(text)
        except ValueError:
            raise ValidationError("session proof: not JSON") from None
        fields = ("expires", "id", "kind", "target", "time")
        if not isinstance(doc, dict) or sorted(doc) != list(fields):
            raise ValidationError(f"session proof: expected exactly the fields {', '.join(fields)}")
        times = (doc["time"], doc["expires"])
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**37 for t in times):
            raise ValidationError("session proof: times must be Unix seconds")
        if not all(isinstance(doc[name], str) for name in ("kind", "target", "id")):
            raise ValidationError("session proof: kind, target and id must be strings")
        return cls(
            kind=doc["kind"],
            target=doc["target"],
            time=datetime.fromtimestamp(doc["time"], UTC),
            expires=datetime.fromtimestamp(doc["expires"], UTC),
            id=doc["id"],
        )


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for. Times are normalised to UTC whole seconds (what certs can carry)."""

    username: str
    roles: tuple[str, ...]
    logins: tuple[str, ...]
    traits: Mapping[str, tuple[str, ...]]
    not_before: datetime
    not_after: datetime
    bot_name: str | None = None
    device: DeviceExtensions | None = field(default=None)
    #: Set only on session certificates: the device proof taken for one session target.
    session_proof: SessionProof | None = field(default=None)
    #: Set only on database certificates (X.509): the database they are for.
    db_route: DatabaseRoute | None = field(default=None)

    def __post_init__(self) -> None:
        _check_text(self.username, "username")
        object.__setattr__(self, "roles", _text_tuple(self.roles, "roles"))
        object.__setattr__(self, "logins", _text_tuple(self.logins, "logins"))
        if not isinstance(self.traits, Mapping):
            raise ValidationError("traits: expected a mapping of name to list of values")
        traits: dict[str, tuple[str, ...]] = {}
        for name in sorted(self.traits):
            _check_text(name, "trait name")
            values: object = self.traits[name]
            # lists are accepted (YAML/JSON decoders produce them); a bare string is not
            if not isinstance(values, tuple | list) or not all(isinstance(v, str) for v in values):
                raise ValidationError(f"traits.{name}: expected a list of strings")
            traits[name] = tuple(str(v) for v in values)
        # read-only view so a frozen Identity really cannot change
        object.__setattr__(self, "traits", MappingProxyType(traits))
        not_before, not_after = _window(self.not_before, self.not_after, "not_before", "not_after")
        object.__setattr__(self, "not_before", not_before)
        object.__setattr__(self, "not_after", not_after)
        if self.bot_name is not None:
            _check_text(self.bot_name, "bot_name")
        if self.device is not None and not isinstance(self.device, DeviceExtensions):
            raise ValidationError("device: expected DeviceExtensions")
        if self.session_proof is not None:
            if not isinstance(self.session_proof, SessionProof):
                raise ValidationError("session_proof: expected SessionProof")
            if self.device is None:
                raise ValidationError("session_proof: a session proof needs the device values")
        if self.db_route is not None and not isinstance(self.db_route, DatabaseRoute):
            raise ValidationError("db_route: expected DatabaseRoute")

    @property
    def is_bot(self) -> bool:
        return self.bot_name is not None

    def with_device(self, device: DeviceExtensions) -> Identity:
        """The device-augmented copy. Refuses an identity that already carries device data."""
        if self.device is not None:
            raise ValidationError("identity already carries device extensions; refusing to augment it again")
        return dataclasses.replace(self, device=device)

    def for_session(self, device: DeviceExtensions, proof: SessionProof) -> Identity:
        """The session certificate's identity: this identity (device values from login dropped) with the device
        and the proof of this session's ceremony."""
        return dataclasses.replace(self, device=device, session_proof=proof)
