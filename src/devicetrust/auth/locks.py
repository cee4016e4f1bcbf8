"""Locks: refusing certificates (and, on nodes, sessions) to a user, role or device until lifted or expired."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from devicetrust import audit as events
from devicetrust.auth.context import RES_LOCK, AuthContext, Caller
from devicetrust.errors import AccessDeniedError
from devicetrust.protocol import ResourceDocument
from devicetrust.storage.repositories import Store
from devicetrust.types import Lock, resource_to_dict


def require_unlocked(context: AuthContext, store: Store, now: datetime, username: str, roles: Sequence[str]) -> None:
    """No certificates for a locked user or role."""
    in_force = context.locks_in_force(store, now, user=username, roles=roles)
    if in_force:
        raise AccessDeniedError(f"{in_force[0].target} is locked: {in_force[0].message or 'by an administrator'}")


class LockService:
    def __init__(self, context: AuthContext) -> None:
        self.context = context

    def list_all(self) -> list[ResourceDocument]:
        with self.context.backend.read() as store:
            return [record.body for record in store.locks.list(self.context.clock())]

    def get(self, name: str) -> ResourceDocument:
        with self.context.backend.read() as store:
            return store.locks.get(name).body

    def create(self, caller: Caller, lock: Lock) -> str:
        caller.check(RES_LOCK, "create")
        now = self.context.clock()
        lock = dataclasses.replace(lock, created=lock.created or now, created_by=lock.created_by or caller.name)
        with self.context.backend.begin() as store:
            store.locks.create(lock.name, lock.target.kind, lock.target.value, resource_to_dict(lock), lock.expires)
            self.context.audit(
                store,
                events.LOCK_CREATE,
                caller.name,
                True,
                name=lock.name,
                target={lock.target.kind: lock.target.value},
                message=lock.message,
            )
        return "created"

    def delete(self, caller: Caller, name: str) -> None:
        caller.check(RES_LOCK, "delete")
        with self.context.backend.begin() as store:
            store.locks.delete(name)
            self.context.audit(store, events.LOCK_DELETE, caller.name, True, name=name)
