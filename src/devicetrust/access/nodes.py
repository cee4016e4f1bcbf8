"""Which node a user means: ``tsh ssh`` and the auth service resolve a name the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from devicetrust.errors import NotFoundError

__all__ = ["NamedNode", "names_node", "resolve_node"]


class NamedNode(Protocol):
    @property
    def host_id(self) -> str: ...

    @property
    def hostname(self) -> str: ...


NodeT = TypeVar("NodeT", bound=NamedNode)


def _short_name(name: str, cluster_name: str) -> str:
    suffix = f".{cluster_name}"
    return name[: -len(suffix)] if name.endswith(suffix) else name


def names_node(name: str, cluster_name: str, *, host_id: str, hostname: str) -> bool:
    """Whether ``name`` could mean the node: its host id, its host name, or ``<hostname>.<cluster>``."""
    return name in (host_id, hostname) or hostname == _short_name(name, cluster_name)


def resolve_node(nodes: Sequence[NodeT], name: str, cluster_name: str) -> NodeT:
    """The node called ``name`` among ``nodes``: its host id, its host name, or ``<hostname>.<cluster>``.
    Raises NotFoundError when none or several nodes carry the name."""
    by_id = [node for node in nodes if node.host_id == name]
    if by_id:
        return by_id[0]
    short = _short_name(name, cluster_name)
    matching = [node for node in nodes if node.hostname in (name, short)]
    if not matching:
        raise NotFoundError(f'no node named "{name}" (see tsh ls)')
    if len(matching) > 1:
        ids = ", ".join(node.host_id for node in matching)
        raise NotFoundError(f'several nodes are named "{name}"; give one of their host ids ({ids}, see tsh ls)')
    return matching[0]
