"""Parsing stored documents, memoized.

Every request re-reads roles, the auth preference and devices from the backend (auth servers keep no state),
and validating a document costs far more than serializing it. Resources are immutable, so a parse can be shared:
the cache key is the document's canonical JSON, which changes whenever the stored document does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, TypeVar

from devicetrust.errors import ValidationError
from devicetrust.types import Resource, parse_resource

_R = TypeVar("_R", bound=Resource)

#: Enough for every role, the auth preference and the devices in active use on a busy auth server.
PARSE_CACHE_ENTRIES = 4096


@lru_cache(maxsize=PARSE_CACHE_ENTRIES)
def _parse_canonical(canonical: str) -> Resource:
    return parse_resource(json.loads(canonical))


def parse_stored(body: Mapping[str, Any]) -> Resource:
    return _parse_canonical(json.dumps(body, sort_keys=True, separators=(",", ":")))


def parse_as(body: Mapping[str, Any], cls: type[_R]) -> _R:
    """A stored document as the resource class it must be."""
    resource = parse_stored(body)
    if not isinstance(resource, cls):
        raise ValidationError(f"stored resource is a {type(resource).__name__}, expected {cls.__name__}")
    return resource
