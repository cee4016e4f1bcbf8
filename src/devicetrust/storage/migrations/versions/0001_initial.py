"""Initial schema: cluster state, CAs, resources, users, tokens, sessions, rate limits, ceremonies, audit.

Revision ID: 0001
Revises:
Create Date: 2025-11-25

Spelled out here rather than taken from ``devicetrust.storage.schema``: this revision must create the same
tables forever, whatever that module says later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_APPEND_ONLY = "audit events are append-only"


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cluster_state",
        sa.Column("key", sa.String, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_cluster_state"),
    )
    op.create_table(
        "certificate_authorities",
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("record", _json(), nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.PrimaryKeyConstraint("kind", name="pk_certificate_authorities"),
    )
    op.create_table(
        "resources",
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.Column("updated", _time(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "name", name="pk_resources"),
    )
    op.create_table(
        "users",
        sa.Column("name", sa.String, nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=True),
        sa.Column("created", _time(), nullable=False),
        sa.Column("updated", _time(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_users"),
    )
    op.create_table(
        "tokens",
        sa.Column("token_hash", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("subject", sa.String, nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.Column("expires", _time(), nullable=False),
        sa.Column("single_use", sa.Boolean, nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_tokens"),
    )
    op.create_index("ix_tokens_expires", "tokens", ["expires"])
    op.create_index("ix_tokens_kind_subject", "tokens", ["kind", "subject"])
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String, nullable=False),
        sa.Column("username", sa.String, nullable=False),
        sa.Column("user_ref", sa.String, nullable=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.Column("expires", _time(), nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_sessions"),
        sa.ForeignKeyConstraint(["user_ref"], ["users.name"], name="fk_sessions_user_ref_users", ondelete="CASCADE"),
        sa.CheckConstraint(
            "(kind = 'user' AND user_ref IS NOT NULL AND user_ref = username) OR (kind <> 'user' AND user_ref IS NULL)",
            name="ck_sessions_user_ref",
        ),
    )
    op.create_index("ix_sessions_username", "sessions", ["username"])
    op.create_index("ix_sessions_user_ref", "sessions", ["user_ref"])
    op.create_index("ix_sessions_expires", "sessions", ["expires"])
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String, nullable=False),
        sa.Column("window_start", _time(), nullable=False),
        sa.Column("window_end", _time(), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_rate_limits"),
    )
    op.create_index("ix_rate_limits_window_end", "rate_limits", ["window_end"])
    op.create_table(
        "pending_ceremonies",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("subject", sa.String, nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.Column("expires", _time(), nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pending_ceremonies"),
    )
    op.create_index("ix_pending_ceremonies_expires", "pending_ceremonies", ["expires"])
    op.create_table(
        "audit_events",
        # SQLite aliases the rowid only for a column typed exactly INTEGER; AUTOINCREMENT keeps ids monotonic
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("uid", sa.String, nullable=False),
        sa.Column("event", sa.String, nullable=False),
        sa.Column("code", sa.String, nullable=False),
        sa.Column("time", _time(), nullable=False),
        sa.Column("username", sa.String, nullable=False),
        sa.Column("success", sa.Boolean, nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_events"),
        sa.UniqueConstraint("uid", name="uq_audit_events_uid"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_audit_events_event", "audit_events", ["event"])
    op.create_index("ix_audit_events_time", "audit_events", ["time"])
    op.create_index("ix_audit_events_username", "audit_events", ["username"])
    _create_audit_triggers()


def _create_audit_triggers() -> None:
    # Append-only in the database itself, so no code path (a bug, a careless script) can rewrite history.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END; $$"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
        )
    else:
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_events_no_{action.lower()} BEFORE {action} ON audit_events "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )


def downgrade() -> None:
    # Dropping the table drops its triggers on both dialects.
    for table in (
        "audit_events",
        "pending_ceremonies",
        "rate_limits",
        "sessions",
        "tokens",
        "users",
        "resources",
        "certificate_authorities",
        "cluster_state",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_events_append_only()")
