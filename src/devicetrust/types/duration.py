"""Durations as written in resources: ``8h``, ``30m``, ``1h30m``, ``45s`` (a subset of Go's syntax)."""

from __future__ import annotations

import re
from datetime import timedelta

# At most 9 digits per unit keeps every value far below timedelta's limit (999,999,999 days).
_DURATION_RE = re.compile(r"(?:(\d{1,9})h)?(?:(\d{1,9})m)?(?:(\d{1,9})s)?")


def parse_duration(text: str) -> timedelta:
    """``"1h30m"`` -> ``timedelta(hours=1, minutes=30)``. Raises ValueError for anything else or zero."""
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f'invalid duration "{text}": use hours, minutes and seconds such as "8h" or "1h30m"')
    hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    duration = timedelta(hours=hours, minutes=minutes, seconds=seconds)
    if duration <= timedelta(0):
        raise ValueError(f'invalid duration "{text}": must be longer than zero')
    return duration


def format_duration(duration: timedelta) -> str:
    """The shortest text :func:`parse_duration` reads back as ``duration`` (whole seconds, > 0)."""
    if duration <= timedelta(0) or duration.microseconds:
        raise ValueError(f"duration {duration} is not a positive whole number of seconds")
    hours, rest = divmod(duration.days * 86400 + duration.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{seconds}s" if seconds else ""]
    return "".join(parts)
