"""shard leases and the inspection outbox: attempts, heartbeats and sends per shard and model

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_shards", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("worker", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inspected_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("inspect_sent_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("inspect_attempts", sa.Integer(), nullable=False, server_default="0")
        )
    # Models that exist already were inspected (or are being): do not inspect them again.
    op.execute("UPDATE models SET inspected_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("inspect_attempts")
        batch_op.drop_column("inspect_sent_at")
        batch_op.drop_column("inspected_at")
    with op.batch_alter_table("audit_shards", schema=None) as batch_op:
        batch_op.drop_column("last_error")
        batch_op.drop_column("sent_at")
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("worker")
        batch_op.drop_column("attempts")
