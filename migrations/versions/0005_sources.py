"""sources: registered Segment write keys and platform webhooks

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("write_key_hash", sa.String(length=64), nullable=True),
        sa.Column("write_key_prefix", sa.String(length=20), nullable=True),
        sa.Column("secret", sa.String(length=500), nullable=True),
        sa.Column("allowed_origins", sa.Text(), nullable=False),
        sa.Column("signal", sa.String(length=64), nullable=True),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sources")),
        sa.UniqueConstraint("write_key_hash", name=op.f("uq_sources_write_key_hash")),
    )


def downgrade() -> None:
    op.drop_table("sources")
