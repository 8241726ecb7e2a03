"""What an operator does with the e-mail outbox: list mails by state, requeue the ones that failed.

A requeued mail is pending again at once, with its temporary-refusal count reset and its age limit counted
from the requeue (``requeued_at``); it keeps its Message-ID, so a recipient who somehow got it before sees the
same message again. Only failed mails can be requeued: a sent one would be a duplicate, a pending one is
already on its way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from library_api.db.base import utcnow
from library_api.db.engine import Database, begin_write
from library_api.notifications.models import EmailStatus, OutboxEmail


@dataclass(slots=True)
class RequeueResult:
    """The ids requeued, and those that could not be (unknown, or not failed) with why."""

    requeued: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)


async def list_emails(database: Database, *, status: EmailStatus | None = None, limit: int = 100) -> list[OutboxEmail]:
    """Mails of the outbox, newest first, optionally only those in ``status``."""
    statement = select(OutboxEmail).order_by(OutboxEmail.id.desc()).limit(limit)
    if status is not None:
        statement = statement.where(OutboxEmail.status == status.value)
    async with database.sessionmaker() as session:
        return list((await session.execute(statement)).scalars())


async def requeue(
    database: Database, ids: Sequence[int] | None = None, *, now: datetime | None = None
) -> RequeueResult:
    """Make failed mails pending again: those of ``ids``, or every failed one when ``ids`` is ``None``."""
    moment = now or utcnow()
    result = RequeueResult()
    async with database.sessionmaker() as session:
        await begin_write(session)
        statement = select(OutboxEmail).where(OutboxEmail.status == EmailStatus.FAILED.value)
        if ids is not None:
            statement = select(OutboxEmail).where(OutboxEmail.id.in_(list(ids)))
        rows = {row.id: row for row in (await session.execute(statement)).scalars()}
        for email_id in ids if ids is not None else sorted(rows):
            row = rows.get(email_id)
            if row is None:
                result.refused[email_id] = "no such mail"
            elif row.status != EmailStatus.FAILED:
                result.refused[email_id] = f"not failed ({row.status})"
            else:
                row.status = EmailStatus.PENDING.value
                row.refusals = 0
                row.next_attempt_at = moment
                row.requeued_at = moment
                result.requeued.append(email_id)
        await session.commit()
    return result
