"""The backend's tables (SQLAlchemy Core), shared by the repositories and by Alembic's autogenerate.

``migrations/versions/*`` spell the DDL out on their own: a revision must keep creating what it created on
the day it was written, whatever this module says later. A test compares the migrated database with this
metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

__all__ = [
    "AUDIT_APPEND_ONLY_MESSAGE",
    "NAMING_CONVENTION",
    "JSONBody",
    "UTCDateTime",
    "audit_events",
    "certificate_authorities",
    "cluster_state",
    "devices",
    "locks",
    "metadata",
    "pending_ceremonies",
    "rate_limits",
    "resources",
    "sessions",
    "spent_ceremonies",
    "state_generation",
    "tokens",
    "users",
]

#: raised by the audit table's triggers; tests look for it
AUDIT_APPEND_ONLY_MESSAGE = "audit events are append-only"

# Deterministic constraint names, so later migrations can refer to them on both dialects.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out. SQLite has no time zones: it stores naive UTC. Naive input is a bug."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: storage takes timezone-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: JSON documents; JSONB on PostgreSQL (compact, indexable later)
JSONBody = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# SQLite only aliases the rowid (monotonic with AUTOINCREMENT) for a column typed exactly INTEGER.
_BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def _expiring_body(*, expires_nullable: bool = False) -> tuple[sa.Column[Any], ...]:
    """The columns that end a table of expiring JSON documents: the document, when it expires, when it was made."""
    return (
        sa.Column("body", JSONBody, nullable=False),
        sa.Column("expires", UTCDateTime, nullable=expires_nullable, index=True),
        sa.Column("created", UTCDateTime, nullable=False),
    )


cluster_state = sa.Table(
    "cluster_state",
    metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

certificate_authorities = sa.Table(
    "certificate_authorities",
    metadata,
    sa.Column("kind", sa.String, primary_key=True),
    sa.Column("record", JSONBody, nullable=False),
    sa.Column("created", UTCDateTime, nullable=False),
)

resources = sa.Table(
    "resources",
    metadata,
    sa.Column("kind", sa.String, primary_key=True),
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("body", JSONBody, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("updated", UTCDateTime, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("body", JSONBody, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=True),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("updated", UTCDateTime, nullable=False),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("token_hash", sa.String, primary_key=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("subject", sa.String, nullable=False),
    sa.Column("body", JSONBody, nullable=False),
    sa.Column("expires", UTCDateTime, nullable=False, index=True),
    sa.Column("single_use", sa.Boolean, nullable=False),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Index(None, "kind", "subject"),
)

# ``username`` is free text: "admin@host" and bot identities are not rows of ``users``. ``user_ref`` repeats
# it for kind "user" only, with a foreign key, so deleting a user drops their sessions even against a
# concurrent login (the FK check locks the user row): a session never outlives its user.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("token_hash", sa.String, primary_key=True),
    sa.Column("username", sa.String, nullable=False, index=True),
    sa.Column("user_ref", sa.String, sa.ForeignKey("users.name", ondelete="CASCADE"), nullable=True, index=True),
    sa.Column("kind", sa.String, nullable=False),
    *_expiring_body(),
    sa.CheckConstraint(
        "(kind = 'user' AND user_ref IS NOT NULL AND user_ref = username) OR (kind <> 'user' AND user_ref IS NULL)",
        name="user_ref",
    ),
)

# One row per key: the current fixed window. ``window_end`` lets the janitor purge finished windows.
rate_limits = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("window_start", UTCDateTime, nullable=False),
    sa.Column("window_end", UTCDateTime, nullable=False, index=True),
    sa.Column("count", sa.Integer, nullable=False),
)

pending_ceremonies = sa.Table(
    "pending_ceremonies",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("subject", sa.String, nullable=False),
    *_expiring_body(),
)

# Append-only: the migration installs triggers that reject UPDATE and DELETE.
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", _BigIntId, primary_key=True, autoincrement=True),
    sa.Column("uid", sa.String, nullable=False, unique=True),
    sa.Column("event", sa.String, nullable=False, index=True),
    sa.Column("code", sa.String, nullable=False),
    sa.Column("time", UTCDateTime, nullable=False, index=True),
    sa.Column("username", sa.String, nullable=False, index=True),
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Column("body", JSONBody, nullable=False),
    sqlite_autoincrement=True,
)

# Registered devices. ``body`` is the whole device document; the columns repeat the fields the server looks up
# or filters by. ``id`` and (os_type, asset_tag) never change once written, so they make a stable paging key.
devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("os_type", sa.String, nullable=False),
    sa.Column("asset_tag", sa.String, nullable=False),
    sa.Column("enroll_status", sa.String, nullable=False),
    #: "" when nobody owns the device
    sa.Column("owner", sa.String, nullable=False),
    sa.Column("source_name", sa.String, nullable=True),
    sa.Column("source_origin", sa.String, nullable=True),
    #: the MDM's id for the device
    sa.Column("external_id", sa.String, nullable=True),
    sa.Column("body", JSONBody, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("created", UTCDateTime, nullable=False),
    sa.Column("updated", UTCDateTime, nullable=False),
    #: the fingerprint of the document's MDM-owned parts (devicetrust.types.mdm_parts, as a signed 64-bit integer)
    #: and the revision it was computed at: valid only while that is still the row's revision
    sa.Column("mdm_fingerprint", sa.BigInteger, nullable=True),
    sa.Column("mdm_fingerprint_revision", sa.Integer, nullable=True),
    sa.UniqueConstraint("os_type", "asset_tag"),
    # the paging order, lookups by asset tag on any OS, and substring searches (asset tag, owner, id) that read
    # this index alone
    sa.Index(None, "asset_tag", "id", "owner"),
    sa.Index(None, "source_name", "external_id"),
    # filtered listings: each exact filter, then the paging order (the OS has the unique constraint)
    sa.Index(None, "owner", "asset_tag", "id"),
    sa.Index(None, "enroll_status", "asset_tag", "id"),
    sa.Index(None, "source_name", "asset_tag", "id"),
)

# Locks: ``expires`` NULL means until deleted.
locks = sa.Table(
    "locks",
    metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("target_kind", sa.String, nullable=False),
    sa.Column("target_value", sa.String, nullable=False),
    *_expiring_body(expires_nullable=True),
)

# One row. Its ``generation`` grows with every write to what servers cache (roles, the auth preference, bots,
# users, locks), in the writing transaction: a server whose cache was filled at the generation it reads now may
# use its cache.
state_generation = sa.Table(
    "state_generation",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("generation", sa.BigInteger, nullable=False),
)

# Device authentication ceremonies keep their pending state with the client, sealed; finishing one inserts its
# id here, so the primary key makes each ceremony single-use across every server. Rows outlive the ceremony's
# expiry only until the janitor purges them.
spent_ceremonies = sa.Table(
    "spent_ceremonies",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("expires", UTCDateTime, nullable=False, index=True),
)
