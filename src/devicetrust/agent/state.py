"""The cluster state a node enforces by itself: roles, the cluster auth preference and the locks in force.

Why poll (every :data:`STATE_POLL_SECONDS`) rather than watch a stream: a poll is one plain HTTPS GET, so it
works through any load balancer or proxy in front of several stateless auth servers (no long-lived stream to
pin to one server, no resume protocol after a failover), and it needs nothing on the auth side but the state
endpoint. The cost is bounded staleness: a new lock reaches the node at most ``STATE_POLL_SECONDS`` plus one
request time (≤ :data:`~devicetrust.agent.api.NODE_REQUEST_TIMEOUT_SECONDS`) after it is created, and live
sessions it targets end then.

The state is replaced atomically and only by a document that parses completely: skipping one unreadable role
could drop its deny rules (fail open), so an update with anything unreadable is refused and the node keeps
enforcing the last good state. If the auth service is unreachable the last state stays in force; a node that
never had one refuses every session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from devicetrust.agent.api import NodeAPI
from devicetrust.errors import DevicetrustError, ValidationError
from devicetrust.types import ClusterAuthPreference, Lock, Role, parse_resource

__all__ = ["STATE_POLL_SECONDS", "ClusterState", "StateCache"]

log = logging.getLogger(__name__)

_T = TypeVar("_T", Role, Lock, ClusterAuthPreference)

#: How often the node asks the auth service for roles, settings and locks.
STATE_POLL_SECONDS = 2.0
#: Largest state document the node accepts, in roles and locks (bounds memory and decision time).
MAX_STATE_ROLES = 10_000
MAX_STATE_LOCKS = 100_000


@dataclass(frozen=True)
class ClusterState:
    roles: Mapping[str, Role]
    auth_preference: ClusterAuthPreference
    locks: tuple[Lock, ...]
    user_ca_ssh: str
    generated: str

    @property
    def device_trust_mode(self) -> str:
        return self.auth_preference.device_trust.mode

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ClusterState:
        """Parse a ``GET /v1/nodes/state`` reply. ValidationError if any part of it is unreadable."""
        if not isinstance(doc, Mapping):
            raise ValidationError("cluster state: expected a JSON object")
        roles_doc, locks_doc = doc.get("roles"), doc.get("locks")
        if not isinstance(roles_doc, list) or not isinstance(locks_doc, list):
            raise ValidationError("cluster state: roles and locks must be lists")
        if len(roles_doc) > MAX_STATE_ROLES or len(locks_doc) > MAX_STATE_LOCKS:
            raise ValidationError(
                f"cluster state: at most {MAX_STATE_ROLES} roles and {MAX_STATE_LOCKS} locks are supported"
            )
        roles = {role.name: role for role in _parse_all(roles_doc, Role)}
        locks = tuple(_parse_all(locks_doc, Lock))
        (cap,) = _parse_all([doc.get("cluster_auth_preference")], ClusterAuthPreference)
        user_ca = doc.get("user_ca_ssh")
        if not isinstance(user_ca, str) or not user_ca:
            raise ValidationError("cluster state: user_ca_ssh is missing")
        return cls(roles, cap, locks, user_ca, str(doc.get("generated", "")))


def _parse_all(docs: Sequence[Any], cls: type[_T]) -> list[_T]:
    parsed: list[_T] = []
    for doc in docs:
        resource = parse_resource(doc)
        if not isinstance(resource, cls):
            raise ValidationError(f"cluster state: expected {cls.__name__} documents, got {type(resource).__name__}")
        parsed.append(resource)
    return parsed


class StateCache:
    """Holds the last good :class:`ClusterState` and refreshes it from the auth service."""

    def __init__(self, api: NodeAPI, on_update: Callable[[ClusterState], None], clock: Callable[[], datetime]) -> None:
        self._api = api
        self._on_update = on_update
        self._clock = clock
        self.current: ClusterState | None = None
        #: When the current state was fetched (node clock); None before the first.
        self.fetched: datetime | None = None
        self._failing = False

    async def refresh(self) -> bool:
        """Fetch and install the state once; False (and the old state kept) if that failed."""
        try:
            state = ClusterState.from_json((await self._api.state()).model_dump())
        except DevicetrustError as err:
            if not self._failing:
                log.warning(
                    "cannot refresh cluster state; enforcing the last known state"
                    if self.current is not None
                    else "no cluster state yet; refusing every session",
                    extra={"error": str(err)},
                )
            self._failing = True
            return False
        if self._failing:
            log.info("cluster state refreshed again")
        self._failing = False
        self.current = state
        self.fetched = self._clock()
        try:
            self._on_update(state)
        except Exception:
            log.exception("applying the new cluster state failed")
        return True

    async def run(self, interval: float = STATE_POLL_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.refresh()
