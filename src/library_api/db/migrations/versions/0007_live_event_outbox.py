"""Live event outbox: the events of a change, written in the change's own transaction and relayed from there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Expand-only: the previous release never reads the table (it publishes from memory), so it can run beside this
one during a rolling deploy; the events of its changes are simply not in the outbox.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the outbox; its primary key is the order the relay reads it in, so it needs no other index."""
    op.create_table(
        "live_event_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("key", sa.String(32), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("routes", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop the outbox (events still in it are lost)."""
    op.drop_table("live_event_outbox")
