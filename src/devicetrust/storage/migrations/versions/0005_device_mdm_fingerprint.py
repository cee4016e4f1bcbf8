"""The fingerprint of each device's MDM-owned parts, kept beside its document.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

An MDM sync's lookup compares a stored device with what the MDM reports by a 64-bit fingerprint of
``spec.source`` and ``spec.profile``. Every device write now stores it with the revision it was computed at, so
the lookup reads two integers instead of decoding the parts. Existing rows get none here (computing it takes the
documents through Python): a lookup falls back to the parts for them and stores what it computed.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("mdm_fingerprint", sa.BigInteger, nullable=True))
    op.add_column("devices", sa.Column("mdm_fingerprint_revision", sa.Integer, nullable=True))


def downgrade() -> None:
    op.drop_column("devices", "mdm_fingerprint_revision")
    op.drop_column("devices", "mdm_fingerprint")
