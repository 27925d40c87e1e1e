"""destination lifecycle: disabled reason and time, previous secret during rotation

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("destinations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_reason", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("disabled_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("previous_secret", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("previous_secret_expires_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("destinations", schema=None) as batch_op:
        batch_op.drop_column("previous_secret_expires_at")
        batch_op.drop_column("previous_secret")
        batch_op.drop_column("disabled_at")
        batch_op.drop_column("disabled_reason")
