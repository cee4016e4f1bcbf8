"""What every request consults, cached per process: roles, the auth preference, bots, locks, users and the callers
that session tokens resolve to.

The backend's state generation moves on in every transaction that writes any of these (see
:class:`devicetrust.storage.StateGenerationRepository`). A request reads the generation in its first statement;
the cache is used only when it was filled at that very generation, and refilled otherwise. So a change made
through any auth server is seen by every other one at its next request: nothing is stale, however many server
processes share the backend.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from devicetrust.auth.parsing import parse_as
from devicetrust.storage.repositories import Store
from devicetrust.types import Bot, ClusterAuthPreference, Lock, Role, User

log = logging.getLogger(__name__)

__all__ = ["MAX_CACHED_ENTRIES", "CachedState", "StateCache"]

#: Users and resolved callers kept per generation; past it the oldest half is dropped.
MAX_CACHED_ENTRIES = 10_000

ROLE_KIND = "role"
BOT_KIND = "bot"
CAP_KIND = "cluster_auth_preference"
CAP_NAME = "cluster-auth-preference"


@dataclass(frozen=True)
class CachedState:
    """The cluster's access-control state as of one generation. Immutable except for the memo dicts, which only
    ever gain entries that are correct for this generation."""

    generation: int
    roles: Mapping[str, Role]
    auth_preference: ClusterAuthPreference
    bots: Mapping[str, Bot]
    #: every stored lock, expired ones included: whether one is in force depends on the time of the question
    locks: tuple[Lock, ...]
    users: dict[str, User | None] = field(default_factory=dict, repr=False)
    #: resolved callers by session token hash (kinds whose caller depends only on this state)
    callers: dict[str, object] = field(default_factory=dict, repr=False)

    def roles_named(self, names: object) -> tuple[Role, ...]:
        """The roles of these names that exist; a role deleted after assignment grants nothing."""
        if not isinstance(names, list | tuple):
            return ()
        found = []
        for name in names:
            role = self.roles.get(str(name))
            if role is None:
                log.warning("role %r assigned but missing; ignoring it", name)
                continue
            found.append(role)
        return tuple(found)

    def remember_caller(self, token_hash: str, caller: object) -> None:
        _remember(self.callers, token_hash, caller)

    def user(self, store: Store, name: str) -> User | None:
        """The user named ``name`` (read through ``store`` once per generation), or None."""
        if name in self.users:
            return self.users[name]
        record = store.users.find(name)
        user = None if record is None else parse_as(record.body, User)
        _remember(self.users, name, user)
        return user


def _remember(memo: dict[str, object] | dict[str, User | None], key: str, value: object) -> None:
    if len(memo) >= MAX_CACHED_ENTRIES:
        for stale in list(memo)[: MAX_CACHED_ENTRIES // 2]:
            memo.pop(stale, None)
    memo[key] = value  # type: ignore[assignment]


def load_state(store: Store, generation: int) -> CachedState:
    roles = {record.name: parse_as(record.body, Role) for record in store.resources.list(ROLE_KIND)}
    bots = {record.name: parse_as(record.body, Bot) for record in store.resources.list(BOT_KIND)}
    cap = parse_as(store.resources.get(CAP_KIND, CAP_NAME).body, ClusterAuthPreference)
    locks = tuple(parse_as(record.body, Lock) for record in store.locks.list())
    return CachedState(generation, roles, cap, bots, locks)


class StateCache:
    """One process's :class:`CachedState`, refilled whenever the backend's generation differs from it."""

    def __init__(self) -> None:
        self._current: CachedState | None = None
        self._lock = threading.Lock()

    def at(self, store: Store, generation: int) -> CachedState:
        """The state at ``generation``, which the caller has just read through ``store`` (so a refill reads
        data at least as new as that generation; if newer, the next request's generation differs anyway)."""
        current = self._current
        if current is not None and current.generation == generation:
            return current
        state = load_state(store, generation)
        with self._lock:
            if self._current is None or self._current.generation <= generation:
                self._current = state
        return state

    def current(self, store: Store) -> CachedState:
        return self.at(store, store.generation.current())

    def clear(self) -> None:
        with self._lock:
            self._current = None
