"""audit delete, result summaries for lists, and model versions sharing their bytes

audits.deleted_at: a deleted audit leaves lists, compare and gates (its report stays).
audits.summary: the result's summary, so a list page never reads whole results.
models.variant: the hash of a model's metadata; the same bytes with other metadata are a new
model row (a version), so (tenant, sha256) is no longer unique, (tenant, sha256, variant) is.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 17:00:00
"""

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _variant(row: Any) -> str:
    """service.catalog.model_variant as of this revision (frozen here, as migrations are)."""
    meta = {
        "name": row.name,
        "version": row.version,
        "input_range": [float(v) for v in row.input_range],
        "output": row.requested_output,
        "class_names": row.class_names,
    }
    if row.preprocessing is not None:  # 0007's column; absent from the hash when not declared
        meta["preprocessing"] = row.preprocessing
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("summary", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("variant", sa.String(length=64), nullable=False, server_default="")
        )
    models = sa.table(
        "models",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("version", sa.String),
        sa.column("input_range", sa.JSON),
        sa.column("requested_output", sa.String),
        sa.column("class_names", sa.JSON),
        sa.column("preprocessing", sa.JSON),
        sa.column("variant", sa.String),
    )
    conn = op.get_bind()
    for row in conn.execute(sa.select(models)).all():
        conn.execute(models.update().where(models.c.id == row.id).values(variant=_variant(row)))
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.alter_column("variant", server_default=None)
        batch_op.drop_constraint("uq_models_tenant_id_sha256", type_="unique")
        batch_op.create_unique_constraint(
            "uq_models_tenant_id_sha256_variant", ["tenant_id", "sha256", "variant"]
        )


def downgrade() -> None:
    # Versions that share bytes cannot all survive the old constraint: keep the oldest.
    conn = op.get_bind()
    conn.execute(
        sa.text(
            "DELETE FROM models WHERE id IN (SELECT m.id FROM models m JOIN models o "
            "ON o.tenant_id = m.tenant_id AND o.sha256 = m.sha256 "
            "AND (o.created_at < m.created_at OR (o.created_at = m.created_at AND o.id < m.id)))"
        )
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint("uq_models_tenant_id_sha256_variant", type_="unique")
        batch_op.create_unique_constraint("uq_models_tenant_id_sha256", ["tenant_id", "sha256"])
        batch_op.drop_column("variant")
    with op.batch_alter_table("audits", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("summary")
