"""idempotency keys in their own table, bound to the audit that answered them

A key answered by reusing an identical succeeded audit must be bound too, and that audit may
answer many keys: one column of the audit cannot hold them. The key's row also records the
request's `force`, part of what a replay must repeat. Keys of existing audits are copied
(`force` unknown: null), and `audits.idempotency_key` goes: one place holds a key. (On SQLite
the drop rebuilds `audits`; migrations run with foreign keys off, so no shard goes with it.)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("audit_id", sa.String(length=36), nullable=False),
        sa.Column("force", sa.Boolean(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["audit_id"],
            ["audits.id"],
            name=op.f("fk_idempotency_keys_audit_id_audits"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_idempotency_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        op.f("ix_idempotency_keys_audit_id"), "idempotency_keys", ["audit_id"], unique=False
    )
    op.execute(
        "INSERT INTO idempotency_keys (tenant_id, key, audit_id, force, created_at) "
        "SELECT tenant_id, idempotency_key, id, NULL, created_at FROM audits "
        "WHERE idempotency_key IS NOT NULL"
    )
    with op.batch_alter_table("audits") as batch:
        batch.drop_constraint("uq_audits_tenant_id_idempotency_key", type_="unique")
        batch.drop_column("idempotency_key")


def downgrade() -> None:
    # Back into the audit's column: an audit reused for several keys keeps one of them (the
    # column holds one), so the others are lost, as before this revision.
    with op.batch_alter_table("audits") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.create_unique_constraint(
            "uq_audits_tenant_id_idempotency_key", ["tenant_id", "idempotency_key"]
        )
    op.execute(
        "UPDATE audits SET idempotency_key = (SELECT min(k.key) FROM idempotency_keys k "
        "WHERE k.audit_id = audits.id)"
    )
    op.drop_index(op.f("ix_idempotency_keys_audit_id"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
