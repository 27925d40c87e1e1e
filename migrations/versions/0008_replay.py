"""replay: recorded batches (the clock and order a replay needs), replay jobs and their
decisions

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", BIG, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=True),
        sa.Column("accounts", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_batches_at", "batches", ["at"])
    for table in ("events", "decisions"):
        with op.batch_alter_table(table) as t:
            t.add_column(sa.Column("batch_id", sa.BigInteger(), nullable=True))
            t.add_column(sa.Column("batch_pos", sa.Integer(), nullable=True))
    op.create_index("ix_events_batch", "events", ["batch_id", "batch_pos"])
    op.create_table(
        "replays",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("policy_version", sa.Integer(), nullable=True),
        sa.Column("policy_text", sa.Text(), nullable=True),
        sa.Column("since", sa.Float(), nullable=True),
        sa.Column("until", sa.Float(), nullable=True),
        sa.Column("start", sa.String(length=20), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("progress", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("cursor", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replays")),
    )
    op.create_index("ix_replays_status", "replays", ["status"])
    op.create_table(
        "replay_decisions",
        sa.Column("replay_id", sa.String(length=40), nullable=False),
        sa.Column("lane", sa.String(length=20), nullable=False),
        sa.Column("pos", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("batch_id", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("lead_id", sa.String(length=320), nullable=True),
        sa.Column("account_domain", sa.String(length=255), nullable=True),
        sa.Column("rule", sa.String(length=200), nullable=False),
        sa.Column("team", sa.String(length=200), nullable=False),
        sa.Column("assignee", sa.String(length=320), nullable=True),
        sa.Column("band", sa.String(length=40), nullable=True),
        sa.Column("tier", sa.String(length=20), nullable=True),
        sa.Column("source", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("trigger_event_id", sa.String(length=200), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("replay_id", "lane", "pos", name=op.f("pk_replay_decisions")),
    )


def downgrade() -> None:
    op.drop_table("replay_decisions")
    op.drop_index("ix_replays_status", table_name="replays")
    op.drop_table("replays")
    op.drop_index("ix_events_batch", table_name="events")
    for table in ("events", "decisions"):
        with op.batch_alter_table(table) as t:
            t.drop_column("batch_pos")
            t.drop_column("batch_id")
    op.drop_index("ix_batches_at", table_name="batches")
    op.drop_table("batches")
