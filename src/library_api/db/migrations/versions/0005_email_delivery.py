"""E-mail delivery that ends delivered: a stable Message-ID per row, refusals counted apart, requeues dated.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Expand-only: columns with defaults, which the previous release ignores.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``message_id`` (set once), ``refusals`` (4xx replies) and ``requeued_at`` (the age limit's new start)."""
    with op.batch_alter_table("email_outbox") as batch:
        batch.add_column(sa.Column("refusals", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("message_id", sa.String(255), nullable=True))
        batch.add_column(sa.Column("requeued_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop the two columns."""
    with op.batch_alter_table("email_outbox") as batch:
        batch.drop_column("requeued_at")
        batch.drop_column("message_id")
        batch.drop_column("refusals")
