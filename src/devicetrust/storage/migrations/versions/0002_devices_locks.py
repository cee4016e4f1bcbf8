"""Devices (inventory, enrollment state, MDM source) and locks.

Revision ID: 0002
Revises: 0001
Create Date: 2025-12-02

Spelled out here rather than taken from ``devicetrust.storage.schema``: this revision must create the same
tables forever, whatever that module says later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("os_type", sa.String, nullable=False),
        sa.Column("asset_tag", sa.String, nullable=False),
        sa.Column("enroll_status", sa.String, nullable=False),
        sa.Column("owner", sa.String, nullable=False),
        sa.Column("source_name", sa.String, nullable=True),
        sa.Column("source_origin", sa.String, nullable=True),
        sa.Column("external_id", sa.String, nullable=True),
        sa.Column("body", _json(), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.Column("updated", _time(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("os_type", "asset_tag", name="uq_devices_os_type_asset_tag"),
    )
    # (asset_tag, id) is the paging order; it also serves lookups by asset tag on any OS
    op.create_index("ix_devices_asset_tag_id", "devices", ["asset_tag", "id"])
    op.create_index("ix_devices_source_name_external_id", "devices", ["source_name", "external_id"])
    op.create_table(
        "locks",
        sa.Column("name", sa.String, nullable=False),
        sa.Column("target_kind", sa.String, nullable=False),
        sa.Column("target_value", sa.String, nullable=False),
        sa.Column("body", _json(), nullable=False),
        sa.Column("expires", _time(), nullable=True),
        sa.Column("created", _time(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_locks"),
    )
    op.create_index("ix_locks_expires", "locks", ["expires"])


def downgrade() -> None:
    op.drop_table("locks")
    op.drop_table("devices")
