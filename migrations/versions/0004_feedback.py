"""feedback: dispositions, decision CRM id / SLA / source, proposed policy versions

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DECISION_COLUMNS = (
    ("source", sa.String(length=200)),
    ("campaign", sa.String(length=200)),
    ("crm_id", sa.String(length=200)),
    ("disposition", sa.String(length=20)),
    ("accepted_at", sa.Float()),
    ("sla_due_at", sa.Float()),
    ("sla_status", sa.String(length=20)),
)


def upgrade() -> None:
    op.create_table(
        "dispositions",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("decision_id", sa.String(length=40), nullable=False),
        sa.Column("lead_id", sa.String(length=320), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=100), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("crm_id", sa.String(length=200), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False, unique=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
    )
    op.create_index("ix_dispositions_decision_id", "dispositions", ["decision_id"])
    op.create_index("ix_dispositions_lead_id", "dispositions", ["lead_id"])
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        for name, type_ in DECISION_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
        batch_op.create_index("ix_decisions_crm_id", ["crm_id"], unique=False)
        batch_op.create_index("ix_decisions_sla", ["sla_status", "sla_due_at"], unique=False)
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("status", sa.String(length=20), nullable=False, server_default="active")
        )
        batch_op.add_column(sa.Column("report", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_column("report")
        batch_op.drop_column("status")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_decisions_sla")
        batch_op.drop_index("ix_decisions_crm_id")
        for name, _ in reversed(DECISION_COLUMNS):
            batch_op.drop_column(name)
    op.drop_index("ix_dispositions_lead_id", table_name="dispositions")
    op.drop_index("ix_dispositions_decision_id", table_name="dispositions")
    op.drop_table("dispositions")
