"""Runtime checks shared by the resource dataclasses.

The dataclasses validate themselves on construction, so a resource built in code is as trustworthy as one
parsed from YAML. Every check raises :class:`FieldError` naming the field; the parser prefixes the document
path (``spec.allow``) as the error travels outward.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from types import MappingProxyType
from typing import Never, TypeVar

from devicetrust.errors import ValidationError

T = TypeVar("T")

MAX_NAME_LENGTH = 253
_NAME_RE = re.compile(r"[A-Za-z0-9._@:-]+")


class FieldError(ValidationError):
    """A :class:`ValidationError` about one field: ``"<field>: <problem>"``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem

    def under(self, prefix: str) -> FieldError:
        """The same problem, with the field seen from the enclosing object at ``prefix``."""
        if not prefix:
            return self
        return FieldError(join_path(prefix, self.field), self.problem)


def join_path(prefix: str, name: str) -> str:
    if not prefix:
        return name
    if not name:
        return prefix
    if name.startswith("["):
        return prefix + name
    return f"{prefix}.{name}"


def build(path: str, factory: Callable[..., T], /, **kwargs: object) -> T:
    """Calls ``factory(**kwargs)``, re-raising its field errors with ``path`` prefixed."""
    try:
        return factory(**kwargs)
    except FieldError as err:
        raise err.under(path) from err


def present(**kwargs: object) -> dict[str, object]:
    """The arguments that are not None: a YAML null means "not set", so the dataclass default applies."""
    return {key: value for key, value in kwargs.items() if value is not None}


def describe(value: object) -> str:
    """How a wrong value is named in an error ("got an integer")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (datetime, date)):
        return "a timestamp"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def show(value: object) -> str:
    """A value quoted for an error message: strings in quotes, anything else by its type."""
    if isinstance(value, str):
        return f'"{value}"'
    return describe(value)


def frozen_mapping(values: Mapping[str, T]) -> Mapping[str, T]:
    return MappingProxyType(dict(values))


def empty_mapping() -> Mapping[str, Never]:
    return MappingProxyType({})


def as_str(value: object, field: str, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise FieldError(field, f"expected a string, got {describe(value)}")
    if not allow_empty and not value:
        raise FieldError(field, "must not be empty")
    return value


def as_bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(field, f"expected a boolean (true or false), got {describe(value)}")
    return value


def is_string_list(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def as_str_tuple(value: object, field: str) -> tuple[str, ...]:
    """A list of non-empty strings, as a tuple. A bare string is refused: it is a list of characters."""
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise FieldError(field, f"expected a list of strings, got {describe(value)}")
    items: list[str] = []
    for index, item in enumerate(value):
        items.append(as_str(item, f"{field}[{index}]", allow_empty=False))
    return tuple(items)


def as_str_map(value: object, field: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise FieldError(field, f"expected a mapping, got {describe(value)}")
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise FieldError(field, f"keys must be non-empty strings, got {show(key)}")
        result[key] = as_str(item, join_path(field, key))
    return frozen_mapping(result)


def as_instance(value: object, cls: type[T], field: str) -> T:
    if not isinstance(value, cls):
        raise FieldError(field, f"expected a {cls.__name__}, got {describe(value)}")
    return value


def check_name(value: object, field: str) -> str:
    """A resource name: non-empty, at most 253 characters of ``[A-Za-z0-9._@:-]``, not ``.`` or ``..``."""
    name = as_str(value, field, allow_empty=False)
    if len(name) > MAX_NAME_LENGTH:
        raise FieldError(field, f"is {len(name)} characters long, the limit is {MAX_NAME_LENGTH}")
    if not _NAME_RE.fullmatch(name):
        raise FieldError(field, f'invalid name "{name}": use letters, digits and . _ @ : -')
    if name in (".", ".."):
        raise FieldError(field, f'invalid name "{name}"')
    return name


def check_names(value: object, field: str) -> tuple[str, ...]:
    names = as_str_tuple(value, field)
    for index, name in enumerate(names):
        check_name(name, f"{field}[{index}]")
    return names


def check_unique(values: Sequence[str], field: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise FieldError(field, f'"{value}" is listed twice')
        seen.add(value)


def as_timedelta(value: object, field: str, parse: Callable[[str], timedelta]) -> timedelta:
    if isinstance(value, str):
        try:
            return parse(value)
        except ValueError as err:
            raise FieldError(field, str(err)) from None
    if not isinstance(value, timedelta):
        raise FieldError(field, f'expected a duration such as "8h" or "1h30m", got {describe(value)}')
    return value
