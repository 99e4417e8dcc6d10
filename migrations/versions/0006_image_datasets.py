"""image datasets: a dataset's format, its class names and its crop fraction

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("format", sa.String(length=16), nullable=False, server_default="arrays")
        )
        batch_op.add_column(sa.Column("class_names", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("crop_fraction", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("crop_fraction")
        batch_op.drop_column("class_names")
        batch_op.drop_column("format")
