"""The ``lock`` resource (v2): blocks one user, role, device, login or node until it expires or is removed.

A lock in force stops certificate issuance and device augmentation for what it targets, refuses new sessions
and ends live ones. Deleting a device does not revoke the certificates it was issued; locking it does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar

from devicetrust.types._validation import FieldError, as_instance, as_str, check_name, show
from devicetrust.types.device import as_timestamp, check_device_id
from devicetrust.types.metadata import Metadata

LOCK_TARGET_KINDS: tuple[str, ...] = ("user", "role", "device", "login", "node")
#: The message is shown to whoever the lock stops, on one line.
MAX_LOCK_MESSAGE_CHARS = 1024
MAX_LOGIN_CHARS = 253


def _check_login(value: object, field: str) -> str:
    login = as_str(value, field, allow_empty=False)
    if len(login) > MAX_LOGIN_CHARS:
        raise FieldError(field, f"is {len(login)} characters long, the limit is {MAX_LOGIN_CHARS}")
    if not login.isprintable() or any(char.isspace() for char in login):
        raise FieldError(field, f"invalid login {show(login)}: no spaces or control characters")
    return login


@dataclass(frozen=True, slots=True)
class LockTarget:
    """What a lock blocks: ``kind`` is one of :data:`LOCK_TARGET_KINDS`, ``value`` its name (a device's id)."""

    kind: str
    value: str

    def __post_init__(self) -> None:
        kind = as_str(self.kind, "kind")
        if kind not in LOCK_TARGET_KINDS:
            raise FieldError("kind", f"unknown lock target {show(kind)} (valid: {', '.join(LOCK_TARGET_KINDS)})")
        # Errors name the value by its kind, as the document does: spec.target.user.
        if kind == "device":
            object.__setattr__(self, "value", check_device_id(self.value, kind))
        elif kind == "login":
            _check_login(self.value, kind)
        else:
            check_name(self.value, kind)

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"


@dataclass(frozen=True, slots=True)
class Lock:
    """A lock named ``name`` on ``target``. With no ``expires`` it holds until removed."""

    kind: ClassVar[str] = "lock"
    version: ClassVar[str] = "v2"

    name: str
    target: LockTarget
    message: str = ""
    expires: datetime | None = None
    created_by: str = ""
    created: datetime | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "metadata.name")
        as_instance(self.target, LockTarget, "spec.target")
        message = as_str(self.message, "spec.message")
        if len(message) > MAX_LOCK_MESSAGE_CHARS:
            raise FieldError(
                "spec.message", f"is {len(message)} characters long, the limit is {MAX_LOCK_MESSAGE_CHARS}"
            )
        if not message.isprintable():
            raise FieldError("spec.message", "must be one line of printable characters")
        if self.expires is not None:
            object.__setattr__(self, "expires", as_timestamp(self.expires, "spec.expires"))
        if as_str(self.created_by, "spec.created_by"):
            check_name(self.created_by, "spec.created_by")
        if self.created is not None:
            object.__setattr__(self, "created", as_timestamp(self.created, "spec.created"))

    @property
    def metadata(self) -> Metadata:
        return Metadata(name=self.name)

    def is_active(self, now: datetime) -> bool:
        """Whether the lock holds at ``now`` (timezone-aware): until ``expires``, exclusive, or forever."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be a timezone-aware datetime")
        return self.expires is None or now < self.expires


def locks_in_force(
    locks: Iterable[Lock],
    now: datetime,
    *,
    user: str,
    roles: Sequence[str],
    device_id: str | None = None,
    login: str | None = None,
    node: str | None = None,
) -> tuple[Lock, ...]:
    """The locks, in their given order, that are active at ``now`` and target any of the given names.

    ``device_id``, ``login`` and ``node`` are only matched when given: a session without a verified device
    is not stopped by a device lock (it is stopped by a lock on its user).
    """
    targets: set[tuple[str, str]] = {("user", user), *(("role", role) for role in roles)}
    if device_id is not None:
        targets.add(("device", device_id.lower()))
    if login is not None:
        targets.add(("login", login))
    if node is not None:
        targets.add(("node", node))
    return tuple(lock for lock in locks if (lock.target.kind, lock.target.value) in targets and lock.is_active(now))
