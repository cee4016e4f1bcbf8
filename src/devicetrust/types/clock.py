"""Time as every part of devicetrust reads it: timezone-aware UTC, from a clock that tests can replace."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "utcnow"]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Now, in UTC (timezone-aware): the default clock."""
    return datetime.now(UTC)
