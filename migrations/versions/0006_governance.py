"""governance: key expiry, last use and quotas; source quotas; suppressions; room for
encrypted secrets

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rate_limit", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rate_burst", sa.Integer(), nullable=True))
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("rate_limit", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rate_burst", sa.Integer(), nullable=True))
    with op.batch_alter_table("destinations") as batch:
        batch.alter_column("secret", type_=sa.String(length=500), existing_nullable=False)
        batch.alter_column("previous_secret", type_=sa.String(length=500), existing_nullable=True)
    op.create_table(
        "suppressions",
        sa.Column("identifier_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("identifier_hash", name=op.f("pk_suppressions")),
    )


def downgrade() -> None:
    op.drop_table("suppressions")
    with op.batch_alter_table("destinations") as batch:
        batch.alter_column("previous_secret", type_=sa.String(length=200), existing_nullable=True)
        batch.alter_column("secret", type_=sa.String(length=200), existing_nullable=False)
    with op.batch_alter_table("sources") as batch:
        batch.drop_column("rate_burst")
        batch.drop_column("rate_limit")
    with op.batch_alter_table("api_keys") as batch:
        for column in ("rate_burst", "rate_limit", "last_used_at", "expires_at"):
            batch.drop_column(column)
