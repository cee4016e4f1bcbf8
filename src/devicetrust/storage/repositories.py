"""Repositories bound to one transaction's connection; :class:`Store` bundles them (``Backend.begin()``).

Rules that hold for every repository:

- Writes that may collide use ``INSERT … ON CONFLICT`` (both dialects), never "read, then write", so two auth
  servers racing on the same row agree, and a refused insert never aborts a PostgreSQL transaction.
- Single-use things (tokens, pending ceremonies) are spent with one ``DELETE … RETURNING``: of two concurrent
  consumers exactly one gets the row.
- Time comes from the caller (``now``) where it decides validity, else from the backend's clock.
"""

from __future__ import annotations

import base64
import builtins
import functools
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, ClassVar

import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Row

from devicetrust.errors import AlreadyExistsError, ConflictError, NotFoundError, ValidationError
from devicetrust.storage import schema
from devicetrust.storage.driver import DriverStatement, JsonText
from devicetrust.storage.records import (
    AuditEntry,
    AuditRecord,
    DeviceFilter,
    DeviceFingerprint,
    DeviceIdentity,
    DeviceRecord,
    DeviceSourceParts,
    DeviceSourceUpdate,
    DeviceUpsert,
    JsonPage,
    LockRecord,
    PendingRecord,
    ResourceRecord,
    SessionRecord,
    TokenRecord,
    UpsertResult,
    UserRecord,
)
from devicetrust.types.mdm_parts import MDM_PART_PATHS, credential_id, fingerprint, spec_fingerprint, with_mdm_parts

__all__ = [
    "CACHED_RESOURCE_KINDS",
    "CLUSTER_NAME_KEY",
    "DEFAULT_PAGE_SIZE",
    "DEVICE_ENROLL_TOKEN_KIND",
    "INVALID_PAGE_TOKEN_MESSAGE",
    "INVALID_PENDING_MESSAGE",
    "INVALID_SESSION_MESSAGE",
    "INVALID_TOKEN_MESSAGE",
    "MAX_IDENTITY_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "SESSION_KINDS",
    "STREAM_CHUNK_SIZE",
    "AuditRepository",
    "CARepository",
    "Clock",
    "ClusterRepository",
    "DeviceRepository",
    "LockRepository",
    "PendingRepository",
    "RateLimitRepository",
    "ResourceRepository",
    "SessionRepository",
    "SpentCeremonyRepository",
    "StateGenerationRepository",
    "Store",
    "TokenRepository",
    "UserRepository",
]

Clock = Callable[[], datetime]

#: audit search and device list page size when the caller names none
DEFAULT_PAGE_SIZE = 100
#: largest audit search or device list page; bigger requests are cut to it (keeps one response bounded)
MAX_PAGE_SIZE = 1000
#: rows per query when streaming devices (``DeviceRepository.list_by_source``)
STREAM_CHUNK_SIZE = 1000
#: largest page of ``DeviceRepository.identities_page`` (its rows carry no document: a few dozen bytes each)
MAX_IDENTITY_PAGE_SIZE = 5000
#: values per ``IN (…)`` list in batched lookups (well under both dialects' bind-parameter limits)
_IN_LIST_SIZE = 1000

SESSION_KINDS = ("user", "bot", "admin", "node", "db", "kube", "mdm")
#: resource kinds that servers cache: writing one moves the state generation on
CACHED_RESOURCE_KINDS = frozenset({"role", "cluster_auth_preference", "bot"})
#: the cluster key/value entry holding the cluster's name (set at the first start)
CLUSTER_NAME_KEY = "cluster_name"
#: the token kind of a device's enrollment token; the auth service mints it, a device's removal deletes it
DEVICE_ENROLL_TOKEN_KIND = "device_enroll"

# One message per family, whatever failed (missing, expired, wrong kind): nothing to learn from it.
INVALID_TOKEN_MESSAGE = "invalid token"
INVALID_SESSION_MESSAGE = "session not found or expired"
INVALID_PENDING_MESSAGE = "ceremony not found or expired"
INVALID_PAGE_TOKEN_MESSAGE = "invalid page token"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: enroll_status of a device until it enrolls
_NEW_DEVICE_STATUS = "not_enrolled"
_Insert = postgresql.Insert | sqlite.Insert


def _insert(conn: Connection, table: sa.Table) -> _Insert:
    # Both dialects have ON CONFLICT; SQLAlchemy spells it per dialect.
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class _Repository:
    def __init__(self, conn: Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock

    def _cached_state_changed(self) -> None:
        StateGenerationRepository(self._conn, self._clock).bump()


_GENERATION = schema.state_generation
_SELECT_GENERATION = sa.select(_GENERATION.c.generation).where(_GENERATION.c.id == 1)
_BUMP_GENERATION = sa.update(_GENERATION).where(_GENERATION.c.id == 1).values(generation=_GENERATION.c.generation + 1)


class StateGenerationRepository(_Repository):
    """The generation of what servers cache (roles, the auth preference, bots, users, locks). Every write to
    those moves it on in the same transaction, so a cache filled at generation N is current while N is read."""

    def current(self) -> int:
        generation: int = self._conn.execute(_SELECT_GENERATION).scalar_one()
        return generation

    def bump(self) -> None:
        self._conn.execute(_BUMP_GENERATION)


class SpentCeremonyRepository(_Repository):
    """Ids of finished device-authentication ceremonies, kept until the ceremony would have expired anyway."""

    _t = schema.spent_ceremonies

    #: the statement, built once per dialect
    _spend_by_dialect: ClassVar[dict[str, DriverStatement]] = {}

    def spend(self, id: str, expires: datetime) -> None:
        """Record ``id`` as spent; NotFoundError if it already was (a replay, or a concurrent finish)."""
        dialect = self._conn.dialect.name
        stmt = self._spend_by_dialect.get(dialect)
        if stmt is None:
            stmt = DriverStatement(
                _insert(self._conn, self._t).on_conflict_do_nothing(index_elements=["id"]).returning(self._t.c.id)
            )
            self._spend_by_dialect[dialect] = stmt
        if stmt.one_or_none(self._conn, {"id": id, "expires": expires}) is None:
            raise NotFoundError(INVALID_PENDING_MESSAGE)

    def purge_expired(self, now: datetime) -> int:
        return self._conn.execute(sa.delete(self._t).where(self._t.c.expires <= now)).rowcount


class ClusterRepository(_Repository):
    """Cluster-wide key/value settings (cluster name, first-start markers)."""

    _t = schema.cluster_state

    def get(self, key: str) -> str | None:
        value: str | None = self._conn.execute(
            sa.select(self._t.c.value).where(self._t.c.key == key)
        ).scalar_one_or_none()
        return value

    def set(self, key: str, value: str) -> None:
        stmt = _insert(self._conn, self._t).values(key=key, value=value)
        self._conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": stmt.excluded.value}))

    def insert_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` unless the key is set; return what is stored (the first writer's value wins)."""
        self._conn.execute(
            _insert(self._conn, self._t).values(key=key, value=value).on_conflict_do_nothing(index_elements=["key"])
        )
        stored = self.get(key)
        assert stored is not None  # nothing deletes cluster keys
        return stored


class CARepository(_Repository):
    """Certificate authority records by kind ("user", "host"): opaque string fields (keys, certificates)."""

    _t = schema.certificate_authorities

    def get(self, kind: str) -> dict[str, str] | None:
        record: dict[str, str] | None = self._conn.execute(
            sa.select(self._t.c.record).where(self._t.c.kind == kind)
        ).scalar_one_or_none()
        return record

    def insert_if_absent(self, kind: str, record: Mapping[str, str]) -> dict[str, str]:
        """Store ``record`` unless a CA of this kind exists; return the stored one: racing servers agree."""
        stmt = _insert(self._conn, self._t).values(kind=kind, record=dict(record), created=self._clock())
        self._conn.execute(stmt.on_conflict_do_nothing(index_elements=["kind"]))
        stored = self.get(kind)
        assert stored is not None  # nothing deletes CAs
        return stored


def _resource(row: Row[Any]) -> ResourceRecord:
    return ResourceRecord(row.kind, row.name, row.body, row.revision, row.created, row.updated)


class ResourceRepository(_Repository):
    """JSON documents keyed by (kind, name), with a revision for optimistic concurrency."""

    _t = schema.resources

    def find(self, kind: str, name: str) -> ResourceRecord | None:
        t = self._t
        row = self._conn.execute(sa.select(t).where(t.c.kind == kind, t.c.name == name)).one_or_none()
        return None if row is None else _resource(row)

    def get(self, kind: str, name: str) -> ResourceRecord:
        record = self.find(kind, name)
        if record is None:
            raise NotFoundError(f'{kind} "{name}" not found')
        return record

    def list(self, kind: str) -> builtins.list[ResourceRecord]:
        t = self._t
        rows = self._conn.execute(sa.select(t).where(t.c.kind == kind).order_by(t.c.name))
        return [_resource(row) for row in rows]

    def create(self, kind: str, name: str, body: Mapping[str, object]) -> ResourceRecord:
        now = self._clock()
        stmt = _insert(self._conn, self._t).values(
            kind=kind, name=name, body=dict(body), revision=1, created=now, updated=now
        )
        row = self._conn.execute(
            stmt.on_conflict_do_nothing(index_elements=["kind", "name"]).returning(*self._t.c)
        ).one_or_none()
        if row is None:
            raise AlreadyExistsError(f'{kind} "{name}" already exists')
        if kind in CACHED_RESOURCE_KINDS:
            self._cached_state_changed()
        return _resource(row)

    def upsert(self, kind: str, name: str, body: Mapping[str, object]) -> ResourceRecord:
        t = self._t
        now = self._clock()
        stmt = _insert(self._conn, t).values(
            kind=kind, name=name, body=dict(body), revision=1, created=now, updated=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["kind", "name"],
            set_={"body": stmt.excluded.body, "revision": t.c.revision + 1, "updated": stmt.excluded.updated},
        )
        record = _resource(self._conn.execute(stmt.returning(*t.c)).one())
        if kind in CACHED_RESOURCE_KINDS:
            self._cached_state_changed()
        return record

    def update(
        self, kind: str, name: str, body: Mapping[str, object], expected_revision: int | None = None
    ) -> ResourceRecord:
        """Replace the body. With ``expected_revision``, ConflictError if someone wrote in between."""
        t = self._t
        stmt = sa.update(t).where(t.c.kind == kind, t.c.name == name)
        if expected_revision is not None:
            stmt = stmt.where(t.c.revision == expected_revision)
        stmt = stmt.values(body=dict(body), revision=t.c.revision + 1, updated=self._clock())
        row = self._conn.execute(stmt.returning(*t.c)).one_or_none()
        if row is None:
            current = self.get(kind, name)
            raise ConflictError(
                f'{kind} "{name}" was changed by someone else (revision {current.revision}, '
                f"expected {expected_revision}); read it again and retry"
            )
        if kind in CACHED_RESOURCE_KINDS:
            self._cached_state_changed()
        return _resource(row)

    def delete(self, kind: str, name: str) -> None:
        t = self._t
        if self._conn.execute(sa.delete(t).where(t.c.kind == kind, t.c.name == name)).rowcount == 0:
            raise NotFoundError(f'{kind} "{name}" not found')
        if kind in CACHED_RESOURCE_KINDS:
            self._cached_state_changed()


def _user(row: Row[Any]) -> UserRecord:
    return UserRecord(row.name, row.body, row.password_hash, row.created, row.updated)


class UserRepository(_Repository):
    """Local users. Deleting one deletes their sessions (foreign key, ON DELETE CASCADE)."""

    _t = schema.users

    def find(self, name: str) -> UserRecord | None:
        row = self._conn.execute(sa.select(self._t).where(self._t.c.name == name)).one_or_none()
        return None if row is None else _user(row)

    def get(self, name: str) -> UserRecord:
        record = self.find(name)
        if record is None:
            raise NotFoundError(f'user "{name}" not found')
        return record

    def list(self) -> builtins.list[UserRecord]:
        return [_user(row) for row in self._conn.execute(sa.select(self._t).order_by(self._t.c.name))]

    def create(self, name: str, body: Mapping[str, object], password_hash: str | None = None) -> UserRecord:
        now = self._clock()
        stmt = _insert(self._conn, self._t).values(
            name=name, body=dict(body), password_hash=password_hash, created=now, updated=now
        )
        row = self._conn.execute(
            stmt.on_conflict_do_nothing(index_elements=["name"]).returning(*self._t.c)
        ).one_or_none()
        if row is None:
            raise AlreadyExistsError(f'user "{name}" already exists')
        self._cached_state_changed()
        return _user(row)

    def update(self, name: str, body: Mapping[str, object]) -> UserRecord:
        return self._update(name, body=dict(body))

    def set_password_hash(self, name: str, password_hash: str | None) -> UserRecord:
        """Set (or with None, clear) the password hash."""
        return self._update(name, password_hash=password_hash)

    def _update(self, name: str, **values: Any) -> UserRecord:
        t = self._t
        stmt = sa.update(t).where(t.c.name == name).values(updated=self._clock(), **values).returning(*t.c)
        row = self._conn.execute(stmt).one_or_none()
        if row is None:
            raise NotFoundError(f'user "{name}" not found')
        if "body" in values:
            self._cached_state_changed()
        return _user(row)

    def delete(self, name: str) -> None:
        if self._conn.execute(sa.delete(self._t).where(self._t.c.name == name)).rowcount == 0:
            raise NotFoundError(f'user "{name}" not found')
        self._cached_state_changed()


def _token(row: Row[Any]) -> TokenRecord:
    return TokenRecord(row.token_hash, row.kind, row.subject, row.body, row.expires, row.single_use, row.created)


class TokenRepository(_Repository):
    """Join and invite tokens, stored only by hash. Single-use ones are spent atomically."""

    _t = schema.tokens

    def create(
        self,
        token_hash: str,
        kind: str,
        subject: str,
        body: Mapping[str, object],
        expires: datetime,
        *,
        single_use: bool,
    ) -> TokenRecord:
        stmt = _insert(self._conn, self._t).values(
            token_hash=token_hash,
            kind=kind,
            subject=subject,
            body=dict(body),
            expires=expires,
            single_use=single_use,
            created=self._clock(),
        )
        row = self._conn.execute(
            stmt.on_conflict_do_nothing(index_elements=["token_hash"]).returning(*self._t.c)
        ).one_or_none()
        if row is None:
            raise AlreadyExistsError("token already exists")
        return _token(row)

    def consume(self, token_hash: str, kind: str, now: datetime) -> TokenRecord:
        """Spend a single-use token (of concurrent callers exactly one wins) or check a multi-use one.

        Missing, expired and wrong-kind tokens all raise the same NotFoundError.
        """
        t = self._t
        valid = (t.c.token_hash == token_hash, t.c.kind == kind, t.c.expires > now)
        row = self._conn.execute(sa.delete(t).where(*valid, t.c.single_use).returning(*t.c)).one_or_none()
        if row is None:
            row = self._conn.execute(sa.select(t).where(*valid, sa.not_(t.c.single_use))).one_or_none()
        if row is None:
            raise NotFoundError(INVALID_TOKEN_MESSAGE)
        return _token(row)

    def list(self, now: datetime) -> builtins.list[TokenRecord]:
        """Unexpired tokens, oldest first."""
        t = self._t
        rows = self._conn.execute(sa.select(t).where(t.c.expires > now).order_by(t.c.created, t.c.token_hash))
        return [_token(row) for row in rows]

    def delete(self, token_hash: str) -> None:
        if self._conn.execute(sa.delete(self._t).where(self._t.c.token_hash == token_hash)).rowcount == 0:
            raise NotFoundError("token not found")

    def delete_by_subject(self, kind: str, subject: str) -> int:
        t = self._t
        return self._conn.execute(sa.delete(t).where(t.c.kind == kind, t.c.subject == subject)).rowcount

    def purge_expired(self, now: datetime) -> int:
        return self._conn.execute(sa.delete(self._t).where(self._t.c.expires <= now)).rowcount


# Statements on every request's path are built once: building one costs more than running it.
_SESSION_AT_GENERATION = DriverStatement(
    sa.select(schema.sessions, _SELECT_GENERATION.scalar_subquery().label("state_generation")).where(
        schema.sessions.c.token_hash == sa.bindparam("token_hash"), schema.sessions.c.expires > sa.bindparam("now")
    )
)


def _session(row: Row[Any] | SimpleNamespace) -> SessionRecord:
    return SessionRecord(row.token_hash, row.username, row.kind, row.body, row.expires, row.created)


class SessionRepository(_Repository):
    """API sessions, stored only by hash.

    ``user`` is free text ("admin@host", a bot's identity); for kind "user" it must name a row of ``users``,
    and deleting that user deletes the session (foreign key). Other kinds are removed with
    :meth:`delete_for_user`.
    """

    _t = schema.sessions

    def create(
        self, token_hash: str, user: str, kind: str, body: Mapping[str, object], expires: datetime
    ) -> SessionRecord:
        """Raises NotFoundError for kind "user" when the user does not exist (on PostgreSQL the transaction is
        then unusable: let it roll back)."""
        if kind not in SESSION_KINDS:
            raise ValueError(f"session kind {kind!r} is not one of {SESSION_KINDS}")
        stmt = _insert(self._conn, self._t).values(
            token_hash=token_hash,
            username=user,
            user_ref=user if kind == "user" else None,
            kind=kind,
            body=dict(body),
            expires=expires,
            created=self._clock(),
        )
        try:
            row = self._conn.execute(
                stmt.on_conflict_do_nothing(index_elements=["token_hash"]).returning(*self._t.c)
            ).one_or_none()
        except sa.exc.IntegrityError:
            # the primary key is handled by ON CONFLICT; what is left is the users foreign key
            raise NotFoundError(f'user "{user}" not found') from None
        if row is None:
            raise AlreadyExistsError("session already exists")
        return _session(row)

    def get_valid(self, token_hash: str, now: datetime) -> SessionRecord:
        t = self._t
        row = self._conn.execute(sa.select(t).where(t.c.token_hash == token_hash, t.c.expires > now)).one_or_none()
        if row is None:
            raise NotFoundError(INVALID_SESSION_MESSAGE)
        return _session(row)

    def get_valid_at_generation(self, token_hash: str, now: datetime) -> tuple[SessionRecord, int]:
        """The session and, read by the same statement, the state generation (what a request needs first)."""
        row = _SESSION_AT_GENERATION.one_or_none(self._conn, {"token_hash": token_hash, "now": now})
        if row is None:
            raise NotFoundError(INVALID_SESSION_MESSAGE)
        return _session(row), int(row.state_generation)

    def delete(self, token_hash: str) -> bool:
        """End one session; True if it existed. Ending a gone session is not an error (logout twice)."""
        return self._conn.execute(sa.delete(self._t).where(self._t.c.token_hash == token_hash)).rowcount > 0

    def delete_for_user(self, user: str) -> int:
        return self._conn.execute(sa.delete(self._t).where(self._t.c.username == user)).rowcount

    def purge_expired(self, now: datetime) -> int:
        return self._conn.execute(sa.delete(self._t).where(self._t.c.expires <= now)).rowcount


def _window_start(now: datetime, window: timedelta) -> datetime:
    if window <= timedelta(0):
        raise ValueError(f"rate-limit window must be positive, got {window}")
    return _EPOCH + (now - _EPOCH) // window * window


class RateLimitRepository(_Repository):
    """Fixed-window counters (windows aligned to the Unix epoch), shared by every auth server.

    A hit from a server whose clock lags into an earlier window counts toward the newer stored window instead
    of resetting it.
    """

    _t = schema.rate_limits

    def hit(self, key: str, now: datetime, window: timedelta) -> int:
        """Count one event; return the number of events in the current window, this one included."""
        t = self._t
        start = _window_start(now, window)
        stmt = _insert(self._conn, t).values(key=key, window_start=start, window_end=start + window, count=1)
        current = t.c.window_start >= stmt.excluded.window_start
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "count": sa.case((current, t.c.count + 1), else_=1),
                "window_start": sa.case((current, t.c.window_start), else_=stmt.excluded.window_start),
                "window_end": sa.case((current, t.c.window_end), else_=stmt.excluded.window_end),
            },
        )
        count: int = self._conn.execute(stmt.returning(t.c.count)).scalar_one()
        return count

    def count(self, key: str, now: datetime, window: timedelta) -> int:
        t = self._t
        start = _window_start(now, window)
        count: int | None = self._conn.execute(
            sa.select(t.c.count).where(t.c.key == key, t.c.window_start >= start)
        ).scalar_one_or_none()
        return count or 0

    def release(self, key: str, now: datetime, window: timedelta) -> None:
        """Take back one event counted in the current window (an attempt that turned out to be legitimate)."""
        t = self._t
        start = _window_start(now, window)
        self._conn.execute(
            sa.update(t).where(t.c.key == key, t.c.window_start >= start, t.c.count > 0).values(count=t.c.count - 1)
        )

    def reset(self, key: str) -> None:
        self._conn.execute(sa.delete(self._t).where(self._t.c.key == key))

    def purge_expired(self, now: datetime) -> int:
        return self._conn.execute(sa.delete(self._t).where(self._t.c.window_end <= now)).rowcount


def _pending(row: Row[Any]) -> PendingRecord:
    return PendingRecord(row.id, row.kind, row.subject, row.body, row.expires, row.created)


class PendingRepository(_Repository):
    """Short-lived ceremony state between ``begin`` and ``finish``, so any auth server can finish it."""

    _t = schema.pending_ceremonies

    def create(self, id: str, kind: str, subject: str, body: Mapping[str, object], expires: datetime) -> PendingRecord:
        stmt = _insert(self._conn, self._t).values(
            id=id, kind=kind, subject=subject, body=dict(body), expires=expires, created=self._clock()
        )
        row = self._conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]).returning(*self._t.c)).one_or_none()
        if row is None:
            raise AlreadyExistsError("ceremony already exists")
        return _pending(row)

    def consume(self, id: str, kind: str, now: datetime) -> PendingRecord:
        """Take the record out: a replayed or concurrent finish gets NotFoundError (one message for all)."""
        t = self._t
        stmt = sa.delete(t).where(t.c.id == id, t.c.kind == kind, t.c.expires > now).returning(*t.c)
        row = self._conn.execute(stmt).one_or_none()
        if row is None:
            raise NotFoundError(INVALID_PENDING_MESSAGE)
        return _pending(row)

    def purge_expired(self, now: datetime) -> int:
        return self._conn.execute(sa.delete(self._t).where(self._t.c.expires <= now)).rowcount


def _device(row: Row[Any] | SimpleNamespace, body: dict[str, JsonValue] | None = None) -> DeviceRecord:
    """The record of ``row``; with ``body``, the one just written (the row then does not return it)."""
    return DeviceRecord(
        row.id,
        row.os_type,
        row.asset_tag,
        row.enroll_status,
        row.owner,
        row.source_name,
        row.source_origin,
        row.external_id,
        row.body if body is None else body,
        row.revision,
        row.created,
        row.updated,
    )


def _canonical_body(body: Mapping[str, object]) -> dict[str, JsonValue]:
    # Keys sorted at every depth: SQLite keeps JSON as text, and upsert_many spots unchanged bodies by comparing
    # it (PostgreSQL's JSONB compares by value anyway). Also a deep copy, so callers cannot alter it afterwards.
    canonical: dict[str, JsonValue] = json.loads(_canonical_text(body))
    return canonical


def _canonical_text(body: Mapping[str, object]) -> str:
    """The JSON text of :func:`_canonical_body` (which encodes back to the very same text)."""
    return json.dumps(body, sort_keys=True)


_FINGERPRINT_MODULUS = 1 << 64
_FINGERPRINT_SIGN = 1 << 63


def _fingerprint_column(value: int) -> int:
    """An (unsigned 64-bit) fingerprint as the column holds it: a signed 64-bit integer (BIGINT)."""
    return value - _FINGERPRINT_MODULUS if value >= _FINGERPRINT_SIGN else value


def _stored_fingerprint(body: Mapping[str, object]) -> int:
    """The column value for a document being written: the one place a write computes its fingerprint."""
    return _fingerprint_column(spec_fingerprint(body))


def _page_token(asset_tag: str, id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([asset_tag, id]).encode()).decode()


def _page_limit(page_size: int) -> int:
    if page_size < 1:
        raise ValidationError(f"page size must be at least 1 (at most {MAX_PAGE_SIZE})")
    return min(page_size, MAX_PAGE_SIZE)


def _page_key(token: str) -> tuple[str, str]:
    try:
        key = json.loads(base64.b64decode(token, altchars=b"-_", validate=True))
    except ValueError:  # binascii.Error, UnicodeDecodeError, JSONDecodeError
        raise ValidationError(INVALID_PAGE_TOKEN_MESSAGE) from None
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(part, str) for part in key)):
        raise ValidationError(INVALID_PAGE_TOKEN_MESSAGE)
    return key[0], key[1]


_DEVICE_BY_ID_QUERY = sa.select(schema.devices).where(schema.devices.c.id == sa.bindparam("id"))
_DEVICE_BY_ID = DriverStatement(_DEVICE_BY_ID_QUERY)
_DEVICE_BY_ID_FOR_UPDATE = DriverStatement(_DEVICE_BY_ID_QUERY.with_for_update())
_DEVICE_BY_ASSET_TAG = DriverStatement(
    sa.select(schema.devices).where(
        schema.devices.c.os_type == sa.bindparam("os_type"), schema.devices.c.asset_tag == sa.bindparam("asset_tag")
    )
)
#: what a device update sets besides the revisions
_DEVICE_UPDATE_COLUMNS = (
    "body",
    "enroll_status",
    "owner",
    "source_name",
    "source_origin",
    "external_id",
    "updated",
    "mdm_fingerprint",
)
_DEVICE_UPDATE_QUERY = (
    sa.update(schema.devices)
    .where(schema.devices.c.id == sa.bindparam("device_id"))
    .values(revision=schema.devices.c.revision + 1, mdm_fingerprint_revision=schema.devices.c.revision + 1)
    # everything but the body, which the writer has already: decoding it back would cost as much as encoding it
    .returning(*(column for column in schema.devices.c if column.name != "body"))
)
_DEVICE_UPDATE = DriverStatement(_DEVICE_UPDATE_QUERY, _DEVICE_UPDATE_COLUMNS)
_DEVICE_UPDATE_AT_REVISION = DriverStatement(
    _DEVICE_UPDATE_QUERY.where(schema.devices.c.revision == sa.bindparam("expected_revision")), _DEVICE_UPDATE_COLUMNS
)


class DeviceRepository(_Repository):
    """Registered devices: the device document plus the columns looked up by (id, os/asset tag, MDM source).

    ``id`` and (os_type, asset_tag) are fixed at creation; lists run in (asset_tag, id) order, resumable with a
    keyset, so concurrent writes never make a page walk skip or repeat a device.

    Every write of a document also stores the fingerprint of its MDM-owned parts and the revision it is written
    at (``mdm_fingerprint``, ``mdm_fingerprint_revision``); it is used only while that is still the row's revision,
    so a write that does not keep it (a script, a row from before 0005) makes it stale, never wrong.
    """

    _t = schema.devices

    def create(
        self,
        id: str,
        os_type: str,
        asset_tag: str,
        body: Mapping[str, object],
        *,
        enroll_status: str = _NEW_DEVICE_STATUS,
        owner: str = "",
        source_name: str | None = None,
        source_origin: str | None = None,
        external_id: str | None = None,
    ) -> DeviceRecord:
        """AlreadyExistsError if the (os_type, asset_tag) or the id is taken."""
        now = self._clock()
        canonical = _canonical_body(body)
        stmt = _insert(self._conn, self._t).values(
            id=id,
            os_type=os_type,
            asset_tag=asset_tag,
            enroll_status=enroll_status,
            owner=owner,
            source_name=source_name,
            source_origin=source_origin,
            external_id=external_id,
            body=canonical,
            revision=1,
            created=now,
            updated=now,
            mdm_fingerprint=_stored_fingerprint(canonical),
            mdm_fingerprint_revision=1,
        )
        # no conflict target: the primary key and the (os_type, asset_tag) constraint both count
        row = self._conn.execute(stmt.on_conflict_do_nothing().returning(*self._t.c)).one_or_none()
        if row is None:
            raise AlreadyExistsError(f'device "{os_type}/{asset_tag}" already exists')
        return _device(row)

    def find(self, id: str, *, for_update: bool = False) -> DeviceRecord | None:
        """With ``for_update``, the row stays locked until the transaction ends (PostgreSQL; SQLite's write
        transactions hold the whole database already)."""
        stmt = _DEVICE_BY_ID_FOR_UPDATE if for_update else _DEVICE_BY_ID
        row = stmt.one_or_none(self._conn, {"id": id})
        return None if row is None else _device(row)

    def get(self, id: str, *, for_update: bool = False) -> DeviceRecord:
        record = self.find(id, for_update=for_update)
        if record is None:
            raise NotFoundError(f'device "{id}" not found')
        return record

    def find_by_asset_tag(self, os_type: str, asset_tag: str) -> DeviceRecord | None:
        row = _DEVICE_BY_ASSET_TAG.one_or_none(self._conn, {"os_type": os_type, "asset_tag": asset_tag})
        return None if row is None else _device(row)

    def find_all_by_asset_tag(self, asset_tag: str) -> builtins.list[DeviceRecord]:
        """The devices with this asset tag, whatever their OS (ordered by OS)."""
        t = self._t
        rows = self._conn.execute(sa.select(t).where(t.c.asset_tag == asset_tag).order_by(t.c.os_type))
        return [_device(row) for row in rows]

    def update(
        self,
        id: str,
        body: Mapping[str, object],
        *,
        enroll_status: str,
        owner: str,
        source_name: str | None,
        source_origin: str | None,
        external_id: str | None,
        expected_revision: int | None = None,
    ) -> DeviceRecord:
        """Replace the body and the columns. With ``expected_revision``, ConflictError if someone wrote in between."""
        # the text stored is the canonical document's (what SQLAlchemy's JSON type would write of it)
        text = JsonText(_canonical_text(body))
        canonical: dict[str, JsonValue] = json.loads(text)
        values = {
            "device_id": id,
            "body": text,
            "enroll_status": enroll_status,
            "owner": owner,
            "source_name": source_name,
            "source_origin": source_origin,
            "external_id": external_id,
            "updated": self._clock(),
            "mdm_fingerprint": _stored_fingerprint(canonical),
        }
        if expected_revision is None:
            row = _DEVICE_UPDATE.one_or_none(self._conn, values)
        else:
            row = _DEVICE_UPDATE_AT_REVISION.one_or_none(self._conn, {**values, "expected_revision": expected_revision})
        if row is None:
            current = self.get(id)
            raise ConflictError(
                f'device "{current.os_type}/{current.asset_tag}" was changed by someone else (revision '
                f"{current.revision}, expected {expected_revision}); read it again and retry"
            )
        return _device(row, canonical)

    def delete(self, id: str) -> DeviceRecord:
        """Remove the device; return what was stored."""
        t = self._t
        row = self._conn.execute(sa.delete(t).where(t.c.id == id).returning(*t.c)).one_or_none()
        if row is None:
            raise NotFoundError(f'device "{id}" not found')
        return _device(row)

    def count(self, source_name: str | None = None) -> int:
        """All devices, or those of one MDM source."""
        t = self._t
        stmt = sa.select(sa.func.count()).select_from(t)
        if source_name is not None:
            stmt = stmt.where(t.c.source_name == source_name)
        count: int = self._conn.execute(stmt).scalar_one()
        return count

    def list_page(
        self,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
        source_name: str | None = None,
        where: DeviceFilter | None = None,
    ) -> tuple[builtins.list[DeviceRecord], str | None]:
        """One page in (asset_tag, id) order and the token of the next one (None on the last page).

        ``page_size`` above MAX_PAGE_SIZE is cut to it. A page walk sees every device that exists throughout it
        exactly once; devices added or removed meanwhile may or may not show. ``where`` keeps only the matching
        devices (``source_name`` is short for ``where=DeviceFilter(source_name=…)``).
        """
        limit = _page_limit(page_size)
        after = None if page_token is None else _page_key(page_token)
        if source_name is not None:
            where = replace(where or DeviceFilter(), source_name=source_name)
        # one row more than asked: tells whether there is a next page without another query
        records = self._after(after, limit + 1, where)
        if len(records) <= limit:
            return records, None
        del records[limit:]
        return records, _page_token(records[-1].asset_tag, records[-1].id)

    def list_page_json(
        self,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
        where: DeviceFilter | None = None,
        summary: bool = False,
    ) -> JsonPage:
        """The page :meth:`list_page` would return, each device as JSON text made by the database: the stored
        document, or with ``summary`` an object of the listing's columns (``id``, ``os_type``, ``asset_tag``,
        ``enroll_status``, ``owner``, ``source``: the source name or ""). Nothing is parsed in Python, so a big
        page costs little more than its bytes. Keys come in the database's order.
        """
        t = self._t
        limit = _page_limit(page_size)
        after = None if page_token is None else _page_key(page_token)
        postgres = self._conn.dialect.name == "postgresql"
        text: sa.ColumnElement[str]
        if summary:
            pairs: builtins.list[Any] = []
            for key, column in (
                ("id", t.c.id),
                ("os_type", t.c.os_type),
                ("asset_tag", t.c.asset_tag),
                ("enroll_status", t.c.enroll_status),
                ("owner", t.c.owner),
                ("source", sa.func.coalesce(t.c.source_name, "")),
            ):
                pairs += [sa.literal(key), column]
            built = sa.func.json_build_object(*pairs) if postgres else sa.func.json_object(*pairs)
            text = sa.cast(built, sa.Text) if postgres else sa.type_coerce(built, sa.Text)
        else:
            # SQLite keeps the document as JSON text already; PostgreSQL renders its JSONB
            text = sa.cast(t.c.body, sa.Text) if postgres else sa.type_coerce(t.c.body, sa.Text)
        stmt = self._filtered(sa.select(t.c.asset_tag, t.c.id, text), after, limit + 1, where)
        rows = self._conn.execute(stmt).all()
        if len(rows) <= limit:
            return JsonPage([row[2] for row in rows], None)
        return JsonPage([row[2] for row in rows[:limit]], _page_token(rows[limit - 1][0], rows[limit - 1][1]))

    def list_by_source(self, source_name: str, *, chunk_size: int = STREAM_CHUNK_SIZE) -> Iterator[DeviceRecord]:
        """The devices of one MDM source in (asset_tag, id) order, read ``chunk_size`` rows per query.

        Iterate inside the transaction. Each chunk is read whole before it is handed out, so the caller may
        write devices (upsert, delete) between items; the iteration neither skips nor repeats a device.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk size must be positive, got {chunk_size}")
        after: tuple[str, str] | None = None
        where = DeviceFilter(source_name=source_name)
        while True:
            records = self._after(after, chunk_size, where)
            yield from records
            if len(records) < chunk_size:
                return
            after = (records[-1].asset_tag, records[-1].id)

    def _after(
        self, after: tuple[str, str] | None, limit: int, where: DeviceFilter | None
    ) -> builtins.list[DeviceRecord]:
        stmt = self._filtered(sa.select(self._t), after, limit, where)
        return [_device(row) for row in self._conn.execute(stmt)]

    def _filtered(
        self, stmt: sa.Select[Any], after: tuple[str, str] | None, limit: int, where: DeviceFilter | None
    ) -> sa.Select[Any]:
        t = self._t
        stmt = stmt.order_by(t.c.asset_tag, t.c.id).limit(limit)
        if after is not None:
            # a row-value comparison: both dialects walk the (asset_tag, id) index from there
            stmt = stmt.where(sa.tuple_(t.c.asset_tag, t.c.id) > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])))
        if where is None:
            return stmt
        exact = (
            (t.c.asset_tag, where.asset_tag),
            (t.c.os_type, where.os_type),
            (t.c.enroll_status, where.enroll_status),
            (t.c.owner, where.owner),
        )
        for column, value in exact:
            if value is not None:
                stmt = stmt.where(column == value)
        if where.source_name is not None:
            # a device of no source has none stored (a source's name is never empty)
            stmt = stmt.where(t.c.source_name == where.source_name if where.source_name else t.c.source_name.is_(None))
        if where.search:
            # lower(…) LIKE lower(…) on SQLite, ILIKE on PostgreSQL; % and _ in the text match themselves
            stmt = stmt.where(
                sa.or_(
                    *(column.icontains(where.search, autoescape=True) for column in (t.c.asset_tag, t.c.owner, t.c.id))
                )
            )
        return stmt

    def upsert_many(self, rows: Sequence[DeviceUpsert]) -> UpsertResult:
        """Write an MDM sync batch: insert new (os_type, asset_tag)s, update the others' body and source.

        An existing device keeps its id, enroll_status, owner and created; it is written (revision + 1) only if
        its body, source_name, source_origin or external_id differ, else counted unchanged. Sent as a few
        multi-row statements. ValidationError if the batch names a device or an id twice; AlreadyExistsError if
        a new device's id belongs to another device (on PostgreSQL the transaction is then unusable: let it roll
        back).
        """
        if not rows:
            return UpsertResult(0, 0, 0)
        keys: set[tuple[str, str]] = set()
        ids: set[str] = set()
        for row in rows:
            key = (row.os_type, row.asset_tag)
            if key in keys:
                raise ValidationError(f'device "{row.os_type}/{row.asset_tag}" appears twice in one batch')
            if row.id in ids:
                raise ValidationError(f'device id "{row.id}" appears twice in one batch')
            keys.add(key)
            ids.add(row.id)
        t = self._t
        now = self._clock()
        stmt: _Insert
        values: builtins.list[dict[str, object]] | None = None
        if self._conn.dialect.name == "postgresql":
            stmt = postgresql.insert(t).from_select([column.name for column in t.c], self._unnested(rows, now))
        else:
            # executemany: SQLAlchemy's "insertmanyvalues" sends multi-row INSERTs, as many rows per statement as
            # SQLite's bind-parameter limit allows
            stmt = sqlite.insert(t)
            values = [
                {
                    "id": row.id,
                    "os_type": row.os_type,
                    "asset_tag": row.asset_tag,
                    "enroll_status": _NEW_DEVICE_STATUS,
                    "owner": "",
                    "source_name": row.source_name,
                    "source_origin": row.source_origin,
                    "external_id": row.external_id,
                    "body": canonical,
                    "revision": 1,
                    "created": now,
                    "updated": now,
                    "mdm_fingerprint": _stored_fingerprint(canonical),
                    "mdm_fingerprint_revision": 1,
                }
                for row, canonical in ((row, _canonical_body(row.body)) for row in rows)
            ]
        written = ("body", "source_name", "source_origin", "external_id")
        stmt = stmt.on_conflict_do_update(
            index_elements=["os_type", "asset_tag"],
            set_={
                **{name: stmt.excluded[name] for name in written},
                "updated": stmt.excluded.updated,
                "revision": t.c.revision + 1,
                "mdm_fingerprint": stmt.excluded.mdm_fingerprint,
                "mdm_fingerprint_revision": t.c.revision + 1,
            },
            where=sa.or_(*(t.c[name].is_distinct_from(stmt.excluded[name]) for name in written)),
        )
        try:
            # unchanged rows return nothing; inserted ones revision 1, updated ones more
            revisions = self._conn.execute(stmt.returning(t.c.revision), values).scalars().all()
        except sa.exc.IntegrityError:
            # (os_type, asset_tag) is handled by ON CONFLICT; what is left is the primary key
            raise AlreadyExistsError("a new device's id belongs to another device") from None
        created = sum(1 for revision in revisions if revision == 1)
        return UpsertResult(created, len(revisions) - created, len(rows) - len(revisions))

    def _unnested(self, rows: Sequence[DeviceUpsert], now: datetime) -> sa.Select[Any]:
        # PostgreSQL: the batch as one JSON parameter, turned into rows by the server. A single statement of one
        # parameter, whatever the batch size (a multi-row VALUES of thousands of rows is slow to build and parse).
        batch = _json_rows(
            [
                {
                    "id": row.id,
                    "os_type": row.os_type,
                    "asset_tag": row.asset_tag,
                    "source_name": row.source_name,
                    "source_origin": row.source_origin,
                    "external_id": row.external_id,
                    "body": row.body,
                    "mdm_fingerprint": _stored_fingerprint(row.body),
                }
                for row in rows
            ],
            {
                "id": sa.Text,
                "os_type": sa.Text,
                "asset_tag": sa.Text,
                "source_name": sa.Text,
                "source_origin": sa.Text,
                "external_id": sa.Text,
                "body": postgresql.JSONB,
                "mdm_fingerprint": sa.BigInteger,
            },
            "batch",
        )
        # in the table's column order (the insert names them all)
        return sa.select(
            batch.c.id,
            batch.c.os_type,
            batch.c.asset_tag,
            sa.literal(_NEW_DEVICE_STATUS, sa.String),
            sa.literal("", sa.String),
            batch.c.source_name,
            batch.c.source_origin,
            batch.c.external_id,
            batch.c.body,
            sa.literal(1, sa.Integer),
            sa.literal(now, schema.UTCDateTime),
            sa.literal(now, schema.UTCDateTime),
            batch.c.mdm_fingerprint,
            sa.literal(1, sa.Integer),
        )

    # -- MDM sync batches -------------------------------------------------------------------------------------
    def find_fingerprints_by_asset_tag(self, keys: Iterable[tuple[str, str]]) -> builtins.list[DeviceFingerprint]:
        """The devices among these (os_type, asset_tag) identities that exist, in a query per _IN_LIST_SIZE,
        without their documents: each device's columns and the fingerprint of its MDM-owned parts — the stored one
        where it was computed at the row's current revision, else computed from the parts (only those are read and
        decoded, never the whole document)."""
        t = self._t
        columns = (t.c.id, t.c.os_type, t.c.asset_tag, t.c.source_name, t.c.source_origin, t.c.external_id)
        current = t.c.mdm_fingerprint_revision == t.c.revision
        stmt = sa.select(
            *columns,
            t.c.revision,
            sa.case((current, t.c.mdm_fingerprint), else_=sa.null()),
            # the parts only where the stored fingerprint cannot be used
            *(sa.case((current, sa.null()), else_=t.c.body[path]) for path in MDM_PART_PATHS),
        )
        found: builtins.list[DeviceFingerprint] = []
        # rows unpacked, not read by name: a sync reads 100k of them
        for row in self._by_identity(stmt, keys):
            fields: tuple[Any, ...] = tuple(row)
            id, os_type, asset_tag, source_name, source_origin, external_id, revision, stored, *parts = fields
            # the column is signed: modulo 2**64 gives the unsigned fingerprint back
            value = fingerprint(*parts) if stored is None else stored % _FINGERPRINT_MODULUS
            found.append(
                DeviceFingerprint(
                    id, os_type, asset_tag, source_name, source_origin, external_id, revision, value, stored is not None
                )
            )
        return found

    def store_fingerprints(self, devices: Iterable[DeviceFingerprint]) -> None:
        """Keep these fingerprints (computed from the documents by :meth:`find_fingerprints_by_asset_tag`) for the
        devices still at the revision they were computed at; the revision is not bumped (the document is
        unchanged)."""
        t = self._t
        values = [
            {
                "match_id": device.id,
                "match_revision": device.revision,
                "new_mdm_fingerprint": _fingerprint_column(device.fingerprint),
            }
            # in update_source_parts' order: a sync's batch written meanwhile locks its rows in the same order
            for device in sorted(devices, key=lambda device: device.id)
        ]
        if not values:
            return
        stmt = (
            sa.update(t)
            .where(t.c.id == sa.bindparam("match_id"), t.c.revision == sa.bindparam("match_revision"))
            .values(mdm_fingerprint=sa.bindparam("new_mdm_fingerprint"), mdm_fingerprint_revision=t.c.revision)
        )
        self._conn.execute(stmt, values)

    def _by_identity(self, stmt: sa.Select[Any], keys: Iterable[tuple[str, str]]) -> Iterator[Row[Any]]:
        """The rows of ``stmt`` (a select from the devices table) for these (os_type, asset_tag) identities."""
        t = self._t
        wanted = sorted(set(keys))
        for start in range(0, len(wanted), _IN_LIST_SIZE):
            chunk = wanted[start : start + _IN_LIST_SIZE]
            if self._conn.dialect.name == "postgresql":
                # a join with the identities, probing the (os_type, asset_tag) unique index once each: the plan holds
                # even before the table has statistics (a large IN list then looks like most of the table)
                pairs = _json_rows(
                    [{"os_type": o, "asset_tag": a} for o, a in chunk], {"os_type": sa.Text, "asset_tag": sa.Text}, "k"
                )
                on = sa.and_(t.c.os_type == pairs.c.os_type, t.c.asset_tag == pairs.c.asset_tag)
                yield from self._conn.execute(stmt.join_from(t, pairs, on))
                continue
            identities = set(chunk)
            rows = self._conn.execute(stmt.where(t.c.asset_tag.in_(sorted({a for _, a in chunk}))))
            # an asset tag may be registered under several OSes: keep only the identities asked for
            yield from (row for row in rows if (row.os_type, row.asset_tag) in identities)

    def find_many(self, ids: Iterable[str]) -> builtins.list[DeviceRecord]:
        """The devices among these ids that exist, in a query per _IN_LIST_SIZE ids."""
        t = self._t
        wanted = sorted(set(ids))
        found: builtins.list[DeviceRecord] = []
        for start in range(0, len(wanted), _IN_LIST_SIZE):
            rows = self._conn.execute(sa.select(t).where(t.c.id.in_(wanted[start : start + _IN_LIST_SIZE])))
            found.extend(_device(row) for row in rows)
        return found

    def update_from_source(self, updates: Sequence[DeviceSourceUpdate]) -> builtins.set[str]:
        """Replace the body and the source columns of several devices, each only if it still has its expected
        revision (revision + 1; enroll_status and owner untouched). Returns the ids written: a device missing from
        it was changed or removed by someone else since it was read. A statement per device (an MDM sync writes
        through :meth:`update_source_parts`, one statement on PostgreSQL)."""
        if not updates:
            return set()
        if len({update.id for update in updates}) != len(updates):
            raise ValidationError("a device appears twice in one update batch")
        # a fixed order: two batches over the same devices lock their rows in the same order
        ordered = sorted(updates, key=lambda update: update.id)
        now = self._clock()
        t = self._t
        stmt = (
            sa.update(t)
            .where(t.c.id == sa.bindparam("match_id"), t.c.revision == sa.bindparam("match_revision"))
            .values(
                body=sa.bindparam("new_body", type_=t.c.body.type),
                source_name=sa.bindparam("new_source_name"),
                source_origin=sa.bindparam("new_source_origin"),
                external_id=sa.bindparam("new_external_id"),
                revision=t.c.revision + 1,
                updated=sa.bindparam("new_updated", type_=schema.UTCDateTime),
                mdm_fingerprint=sa.bindparam("new_mdm_fingerprint"),
                mdm_fingerprint_revision=t.c.revision + 1,
            )
            .returning(t.c.id)
        )
        written: builtins.set[str] = set()
        for update in ordered:
            canonical = _canonical_body(update.body)
            row = self._conn.execute(
                stmt,
                {
                    "match_id": update.id,
                    "match_revision": update.expected_revision,
                    "new_body": canonical,
                    "new_mdm_fingerprint": _stored_fingerprint(canonical),
                    "new_source_name": update.source_name,
                    "new_source_origin": update.source_origin,
                    "new_external_id": update.external_id,
                    "new_updated": now,
                },
            ).first()
            if row is not None:
                written.add(row.id)
        return written

    def update_source_parts(self, updates: Sequence[DeviceSourceParts]) -> dict[str, str]:
        """Write the MDM-owned parts and the source columns of several devices onto their documents as stored,
        each only if it still has its expected revision (revision + 1; enroll_status, owner and the rest of the
        document untouched). Returns the ids written, each with the id of the credential its document holds ("" for
        none): a device missing from it was changed or removed by someone else since it was read. PostgreSQL: one
        statement, the server merging each document (none is read or decoded here)."""
        if not updates:
            return {}
        if len({update.id for update in updates}) != len(updates):
            raise ValidationError("a device appears twice in one update batch")
        ordered = sorted(updates, key=lambda update: update.id)
        if self._conn.dialect.name == "postgresql":
            return self._update_source_parts_in_place(ordered)
        # SQLite: the write transaction holds the database's lock from this read to the write
        current = {record.id: record for record in self.find_many(update.id for update in ordered)}
        merged = [
            DeviceSourceUpdate(
                id=update.id,
                body=with_mdm_parts(record.body, update.source, update.profile, update.update_time),
                source_name=update.source_name,
                source_origin=update.source_origin,
                external_id=update.external_id,
                expected_revision=update.expected_revision,
            )
            for update in ordered
            if (record := current.get(update.id)) is not None and record.revision == update.expected_revision
        ]
        written = self.update_from_source(merged)
        return {update.id: credential_id(update.body) for update in merged if update.id in written}

    def _update_source_parts_in_place(self, updates: Sequence[DeviceSourceParts]) -> dict[str, str]:
        t = self._t
        batch = _json_rows(
            [
                {
                    "id": update.id,
                    "expected_revision": update.expected_revision,
                    "source": update.source,
                    "profile": update.profile,
                    "update_time": update.update_time,
                    "source_name": update.source_name,
                    "source_origin": update.source_origin,
                    "external_id": update.external_id,
                    "mdm_fingerprint": _fingerprint_column(fingerprint(update.source, update.profile)),
                }
                for update in updates
            ],
            {
                "id": sa.Text,
                "expected_revision": sa.Integer,
                "source": postgresql.JSONB,
                "profile": postgresql.JSONB,
                "update_time": sa.Text,
                "source_name": sa.Text,
                "source_origin": sa.Text,
                "external_id": sa.Text,
                "mdm_fingerprint": sa.BigInteger,
            },
            "batch",
        )
        # with_mdm_parts, in SQL: body || {"spec": (the stored spec if an object, else {}) || the parts}
        body = sa.type_coerce(t.c.body, postgresql.JSONB)
        stored_spec = body["spec"]
        spec = sa.case(
            (sa.func.jsonb_typeof(stored_spec) == "object", stored_spec),
            else_=sa.cast(sa.literal("{}"), postgresql.JSONB),
        ).op("||", return_type=postgresql.JSONB)(
            sa.func.jsonb_build_object(
                "source", batch.c.source, "profile", batch.c.profile, "update_time", batch.c.update_time
            )
        )
        merged = body.op("||", return_type=postgresql.JSONB)(sa.func.jsonb_build_object("spec", spec))
        # RETURNING reads the row as written
        held = body["spec"]["credential"]["id"]
        stmt = (
            sa.update(t)
            .where(t.c.id == batch.c.id, t.c.revision == batch.c.expected_revision)
            .values(
                body=merged,
                source_name=batch.c.source_name,
                source_origin=batch.c.source_origin,
                external_id=batch.c.external_id,
                revision=t.c.revision + 1,
                updated=sa.literal(self._clock(), schema.UTCDateTime),
                mdm_fingerprint=batch.c.mdm_fingerprint,
                mdm_fingerprint_revision=t.c.revision + 1,
            )
            .returning(t.c.id, sa.case((sa.func.jsonb_typeof(held) == "string", held.astext), else_=""))
        )
        return {id: credential for id, credential in self._conn.execute(stmt)}

    def identities_page(
        self, *, source_name: str, page_size: int = MAX_IDENTITY_PAGE_SIZE, page_token: str | None = None
    ) -> tuple[builtins.list[DeviceIdentity], str | None]:
        """One page of a source's devices without their documents, in (asset_tag, id) order, and the token of the
        next page (None on the last). ``page_size`` above MAX_IDENTITY_PAGE_SIZE is cut to it; the tokens are
        those of :meth:`list_page`."""
        if page_size < 1:
            raise ValidationError(f"page size must be at least 1 (at most {MAX_IDENTITY_PAGE_SIZE})")
        limit = min(page_size, MAX_IDENTITY_PAGE_SIZE)
        t = self._t
        stmt = (
            sa.select(t.c.id, t.c.os_type, t.c.asset_tag, t.c.source_name, t.c.source_origin, t.c.external_id)
            # an expression, not the column: the planner then walks the (asset_tag, id) index in order instead of
            # collecting all of the source's rows through its own index and sorting them again for every page
            .where(sa.func.coalesce(t.c.source_name, "") == source_name)
            .order_by(t.c.asset_tag, t.c.id)
            .limit(limit + 1)
        )
        if page_token is not None:
            tag, id = _page_key(page_token)
            stmt = stmt.where(sa.tuple_(t.c.asset_tag, t.c.id) > sa.tuple_(sa.literal(tag), sa.literal(id)))
        identities = [DeviceIdentity(*row) for row in self._conn.execute(stmt)]
        if len(identities) <= limit:
            return identities, None
        del identities[limit:]
        return identities, _page_token(identities[-1].asset_tag, identities[-1].id)


def _json_rows(rows: Sequence[Mapping[str, object]], columns: Mapping[str, Any], name: str) -> Any:
    """PostgreSQL: ``jsonb_to_recordset(:name::jsonb) AS name(column type, …)``, one row per mapping. The batch
    travels as one JSON text, encoded by the json module in C: psycopg's text arrays escape each element in Python,
    which for thousands of JSON documents took most of a batch's time."""
    return (
        sa.func.jsonb_to_recordset(sa.cast(sa.bindparam(name, json.dumps(rows), type_=sa.Text), postgresql.JSONB))
        .table_valued(*(sa.column(column, type_) for column, type_ in columns.items()))
        .render_derived(name=name, with_types=True)
    )


def _lock(row: Row[Any]) -> LockRecord:
    return LockRecord(row.name, row.target_kind, row.target_value, row.body, row.expires, row.created)


class LockRepository(_Repository):
    """Locks by name. ``expires`` None: until deleted; an expired lock stays until purged but no longer counts."""

    _t = schema.locks

    def create(
        self, name: str, target_kind: str, target_value: str, body: Mapping[str, object], expires: datetime | None
    ) -> LockRecord:
        stmt = _insert(self._conn, self._t).values(
            name=name,
            target_kind=target_kind,
            target_value=target_value,
            body=dict(body),
            expires=expires,
            created=self._clock(),
        )
        row = self._conn.execute(
            stmt.on_conflict_do_nothing(index_elements=["name"]).returning(*self._t.c)
        ).one_or_none()
        if row is None:
            raise AlreadyExistsError(f'lock "{name}" already exists')
        self._cached_state_changed()
        return _lock(row)

    def find(self, name: str) -> LockRecord | None:
        row = self._conn.execute(sa.select(self._t).where(self._t.c.name == name)).one_or_none()
        return None if row is None else _lock(row)

    def get(self, name: str) -> LockRecord:
        record = self.find(name)
        if record is None:
            raise NotFoundError(f'lock "{name}" not found')
        return record

    def list(self, now: datetime | None = None) -> builtins.list[LockRecord]:
        """Every lock by name, or with ``now`` only those in force then (no expiry, or expiring later)."""
        t = self._t
        stmt = sa.select(t).order_by(t.c.name)
        if now is not None:
            stmt = stmt.where(sa.or_(t.c.expires.is_(None), t.c.expires > now))
        return [_lock(row) for row in self._conn.execute(stmt)]

    def delete(self, name: str) -> None:
        if self._conn.execute(sa.delete(self._t).where(self._t.c.name == name)).rowcount == 0:
            raise NotFoundError(f'lock "{name}" not found')
        self._cached_state_changed()

    def purge_expired(self, now: datetime) -> int:
        return self._conn.execute(sa.delete(self._t).where(self._t.c.expires <= now)).rowcount


def _audit(row: Row[Any]) -> AuditRecord:
    return AuditRecord(row.id, row.uid, row.event, row.code, row.time, row.username, row.success, row.body)


_AUDIT_INSERT = sa.insert(schema.audit_events).returning(*schema.audit_events.c)
_AUDIT_INSERT_ALL = DriverStatement(
    sa.insert(schema.audit_events).inline(), ("uid", "event", "code", "time", "username", "success", "body")
)


class AuditRepository(_Repository):
    """Append-only event log; the database itself refuses UPDATE and DELETE (triggers)."""

    _t = schema.audit_events

    def append(
        self, event: str, code: str, time: datetime, user: str, success: bool, body: Mapping[str, object]
    ) -> AuditRecord:
        values = {
            "uid": str(uuid.uuid4()),
            "event": event,
            "code": code,
            "time": time,
            "username": user,
            "success": success,
            "body": dict(body),
        }
        return _audit(self._conn.execute(_AUDIT_INSERT, values).one())

    def append_many(self, events: Sequence[AuditEntry]) -> None:
        """Append ``events`` in their order, in one batch (an agent's, say: no records read back)."""
        if events:
            _AUDIT_INSERT_ALL.execute_many(
                self._conn,
                [
                    {
                        "uid": str(uuid.uuid4()),
                        "event": entry.event,
                        "code": entry.code,
                        "time": entry.time,
                        "username": entry.user,
                        "success": entry.success,
                        "body": dict(entry.body),
                    }
                    for entry in events
                ],
            )

    def search(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        event_types: Sequence[str] = (),
        user: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        after_id: int | None = None,
        newest: bool = False,
    ) -> builtins.list[AuditRecord]:
        """Events with ``since <= time < until``, oldest first; page on with ``after_id`` = the last id seen.
        With ``newest`` the page is the latest ``limit`` matching events (still returned oldest first).

        ``limit`` above MAX_PAGE_SIZE is cut to it. On PostgreSQL ids are taken at insert, not at commit: a
        reader tailing the log with ``after_id`` can miss an event whose transaction commits late.
        """
        if limit < 1:
            raise ValidationError(f"limit must be at least 1 (at most {MAX_PAGE_SIZE})")
        t = self._t
        stmt = sa.select(t).order_by(t.c.id.desc() if newest else t.c.id).limit(min(limit, MAX_PAGE_SIZE))
        if since is not None:
            stmt = stmt.where(t.c.time >= since)
        if until is not None:
            stmt = stmt.where(t.c.time < until)
        if event_types:
            stmt = stmt.where(t.c.event.in_(event_types))
        if user is not None:
            stmt = stmt.where(t.c.username == user)
        if after_id is not None:
            stmt = stmt.where(t.c.id > after_id)
        records = [_audit(row) for row in self._conn.execute(stmt)]
        return records[::-1] if newest else records


class Store:
    """The repositories, all bound to one transaction. Obtain it from ``Backend.begin()``. Each repository is made
    when first used: most transactions use one or two of them."""

    def __init__(self, conn: Connection, clock: Clock) -> None:
        self._conn = conn
        self._clock = clock

    @functools.cached_property
    def cluster(self) -> ClusterRepository:
        return ClusterRepository(self._conn, self._clock)

    @functools.cached_property
    def cas(self) -> CARepository:
        return CARepository(self._conn, self._clock)

    @functools.cached_property
    def resources(self) -> ResourceRepository:
        return ResourceRepository(self._conn, self._clock)

    @functools.cached_property
    def users(self) -> UserRepository:
        return UserRepository(self._conn, self._clock)

    @functools.cached_property
    def tokens(self) -> TokenRepository:
        return TokenRepository(self._conn, self._clock)

    @functools.cached_property
    def sessions(self) -> SessionRepository:
        return SessionRepository(self._conn, self._clock)

    @functools.cached_property
    def rate_limits(self) -> RateLimitRepository:
        return RateLimitRepository(self._conn, self._clock)

    @functools.cached_property
    def pending(self) -> PendingRepository:
        return PendingRepository(self._conn, self._clock)

    @functools.cached_property
    def audit(self) -> AuditRepository:
        return AuditRepository(self._conn, self._clock)

    @functools.cached_property
    def devices(self) -> DeviceRepository:
        return DeviceRepository(self._conn, self._clock)

    @functools.cached_property
    def locks(self) -> LockRepository:
        return LockRepository(self._conn, self._clock)

    @functools.cached_property
    def generation(self) -> StateGenerationRepository:
        return StateGenerationRepository(self._conn, self._clock)

    @functools.cached_property
    def spent_ceremonies(self) -> SpentCeremonyRepository:
        return SpentCeremonyRepository(self._conn, self._clock)
