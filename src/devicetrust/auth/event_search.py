"""Searching the audit log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from devicetrust.auth.context import RES_EVENT, AuthContext, Caller
from devicetrust.protocol import AuditEvent


class EventSearch:
    def __init__(self, context: AuthContext) -> None:
        self.context = context

    def search(
        self,
        caller: Caller,
        *,
        since: datetime | None,
        until: datetime | None,
        event_types: Sequence[str],
        user: str | None,
        limit: int,
        after_id: int | None,
        newest: bool = False,
    ) -> list[AuditEvent]:
        caller.check(RES_EVENT, "list")
        caller.check(RES_EVENT, "read")
        with self.context.backend.read() as store:
            records = store.audit.search(
                since=since,
                until=until,
                event_types=event_types,
                user=user,
                limit=limit,
                after_id=after_id,
                newest=newest,
            )
        return [
            {
                "id": r.id,
                "uid": r.uid,
                "event": r.event,
                "code": r.code,
                "time": r.time.isoformat(),
                "user": r.user,
                "success": r.success,
                **r.body,
            }
            for r in records
        ]
