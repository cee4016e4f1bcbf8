"""The state generation servers check their caches against, and the ids of spent device-authentication
ceremonies (whose pending state travels sealed with the client instead of being stored).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

Spelled out here rather than taken from ``devicetrust.storage.schema``: this revision must create the same
tables forever, whatever that module says later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    generation = op.create_table(
        "state_generation",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_state_generation"),
    )
    op.bulk_insert(generation, [{"id": 1, "generation": 1}])
    op.create_table(
        "spent_ceremonies",
        sa.Column("id", sa.String, nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_spent_ceremonies"),
    )
    op.create_index("ix_spent_ceremonies_expires", "spent_ceremonies", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_spent_ceremonies_expires", table_name="spent_ceremonies")
    op.drop_table("spent_ceremonies")
    op.drop_table("state_generation")
