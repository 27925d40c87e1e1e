"""delivery lanes (per-lead order per destination), parked deliveries, failing destinations

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("order_key", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.create_index(
            "ix_deliveries_lane", ["destination_id", "order_key", "seq"], unique=False
        )
        batch_op.create_index(
            "ix_deliveries_destination_due",
            ["destination_id", "status", "next_attempt_at"],
            unique=False,
        )
    with op.batch_alter_table("destinations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failing_since", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("destinations", schema=None) as batch_op:
        batch_op.drop_column("failing_since")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_destination_due")
        batch_op.drop_index("ix_deliveries_lane")
        batch_op.drop_column("seq")
        batch_op.drop_column("order_key")
