"""Storage: SQLAlchemy Core over SQLite or PostgreSQL, Alembic migrations, repositories (docs/architecture.md, Storage).

Stores plain values (str, bytes, datetimes, JSON bodies) and knows nothing of ``devicetrust.types``::

    backend = Backend.open(url)
    backend.migrate()
    with backend.begin() as store:  # one transaction
        store.resources.create("role", "access", body)
"""

from devicetrust.storage.backend import Backend
from devicetrust.storage.records import (
    AuditRecord,
    DeviceIdentity,
    DeviceParts,
    DeviceRecord,
    DeviceSourceUpdate,
    DeviceUpsert,
    LockRecord,
    PendingRecord,
    ResourceRecord,
    SessionRecord,
    TokenRecord,
    UpsertResult,
    UserRecord,
)
from devicetrust.storage.repositories import (
    CLUSTER_NAME_KEY,
    DEFAULT_PAGE_SIZE,
    DEVICE_ENROLL_TOKEN_KIND,
    INVALID_PAGE_TOKEN_MESSAGE,
    INVALID_PENDING_MESSAGE,
    INVALID_SESSION_MESSAGE,
    INVALID_TOKEN_MESSAGE,
    MAX_IDENTITY_PAGE_SIZE,
    MAX_PAGE_SIZE,
    SESSION_KINDS,
    STREAM_CHUNK_SIZE,
    AuditRepository,
    CARepository,
    Clock,
    ClusterRepository,
    DeviceRepository,
    LockRepository,
    PendingRepository,
    RateLimitRepository,
    ResourceRepository,
    SessionRepository,
    Store,
    TokenRepository,
    UserRepository,
)

__all__ = [
    "CLUSTER_NAME_KEY",
    "DEFAULT_PAGE_SIZE",
    "DEVICE_ENROLL_TOKEN_KIND",
    "INVALID_PAGE_TOKEN_MESSAGE",
    "INVALID_PENDING_MESSAGE",
    "INVALID_SESSION_MESSAGE",
    "INVALID_TOKEN_MESSAGE",
    "MAX_IDENTITY_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "SESSION_KINDS",
    "STREAM_CHUNK_SIZE",
    "AuditRecord",
    "AuditRepository",
    "Backend",
    "CARepository",
    "Clock",
    "ClusterRepository",
    "DeviceIdentity",
    "DeviceParts",
    "DeviceRecord",
    "DeviceRepository",
    "DeviceSourceUpdate",
    "DeviceUpsert",
    "LockRecord",
    "LockRepository",
    "PendingRecord",
    "PendingRepository",
    "RateLimitRepository",
    "ResourceRecord",
    "ResourceRepository",
    "SessionRecord",
    "SessionRepository",
    "Store",
    "TokenRecord",
    "TokenRepository",
    "UpsertResult",
    "UserRecord",
    "UserRepository",
]
