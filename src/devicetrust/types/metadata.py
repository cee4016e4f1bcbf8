"""``metadata`` shared by every resource."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from devicetrust.types._validation import as_str, as_str_map, check_name, empty_mapping
from devicetrust.types.labels import check_resource_labels


@dataclass(frozen=True, slots=True)
class Metadata:
    """A resource's name (unique per kind), description and labels. Validated on construction."""

    name: str
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        as_str(self.description, "description")
        labels = as_str_map(self.labels, "labels")
        check_resource_labels(labels, "labels")
        object.__setattr__(self, "labels", labels)
