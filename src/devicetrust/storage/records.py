"""What the repositories return: plain frozen values, free of the resource model (``devicetrust.types``).

Every ``datetime`` is timezone-aware UTC. Bodies are the JSON documents as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "AuditRecord",
    "PendingRecord",
    "ResourceRecord",
    "SessionRecord",
    "TokenRecord",
    "UserRecord",
]


@dataclass(frozen=True)
class ResourceRecord:
    kind: str
    name: str
    body: dict[str, Any]
    #: starts at 1 and grows by one with every write; pass it back as ``expected_revision``
    revision: int
    created: datetime
    updated: datetime


@dataclass(frozen=True)
class UserRecord:
    name: str
    body: dict[str, Any]
    password_hash: str | None
    created: datetime
    updated: datetime


@dataclass(frozen=True)
class TokenRecord:
    token_hash: str
    kind: str
    subject: str
    body: dict[str, Any]
    expires: datetime
    single_use: bool
    created: datetime


@dataclass(frozen=True)
class SessionRecord:
    token_hash: str
    user: str
    #: "user" | "bot" | "admin"
    kind: str
    body: dict[str, Any]
    expires: datetime
    created: datetime


@dataclass(frozen=True)
class PendingRecord:
    id: str
    kind: str
    subject: str
    body: dict[str, Any]
    expires: datetime
    created: datetime


@dataclass(frozen=True)
class AuditRecord:
    #: ordering key, assigned by the backend
    id: int
    uid: str
    event: str
    code: str
    time: datetime
    user: str
    success: bool
    body: dict[str, Any]
