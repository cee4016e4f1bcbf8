"""Indexes for filtered device listings (``tctl devices ls --owner/--enroll-status/--source/--search``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Each exact filter gets an index that also holds the paging order (asset_tag, id), so a filtered page reads only
its own rows. The paging index gains ``owner``: a substring search over asset tag, owner and id then scans that
index alone, not the documents.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_devices_asset_tag_id_owner", "devices", ["asset_tag", "id", "owner"])
    op.drop_index("ix_devices_asset_tag_id", table_name="devices")
    op.create_index("ix_devices_owner_asset_tag_id", "devices", ["owner", "asset_tag", "id"])
    op.create_index("ix_devices_enroll_status_asset_tag_id", "devices", ["enroll_status", "asset_tag", "id"])
    op.create_index("ix_devices_source_name_asset_tag_id", "devices", ["source_name", "asset_tag", "id"])


def downgrade() -> None:
    op.drop_index("ix_devices_source_name_asset_tag_id", table_name="devices")
    op.drop_index("ix_devices_enroll_status_asset_tag_id", table_name="devices")
    op.drop_index("ix_devices_owner_asset_tag_id", table_name="devices")
    op.create_index("ix_devices_asset_tag_id", "devices", ["asset_tag", "id"])
    op.drop_index("ix_devices_asset_tag_id_owner", table_name="devices")
