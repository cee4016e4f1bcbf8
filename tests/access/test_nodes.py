"""Which node a name means (devicetrust.access.nodes): tsh ssh and the auth service resolve names alike."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest

from devicetrust.access import names_node, resolve_node
from devicetrust.errors import NotFoundError

CLUSTER = "example.com"


@dataclass(frozen=True)
class N:
    host_id: str
    hostname: str


WEB = N("11111111-aaaa", "web")
WEB_TWIN = N("22222222-bbbb", "web")
DB = N("33333333-cccc", "db")
#: a host name that is another node's host id: the host id wins
TRICKY = N("44444444-dddd", "11111111-aaaa")
#: a host name that ends in the cluster name
FQDN = N("55555555-eeee", "db.example.com")


@pytest.mark.parametrize(
    ("nodes", "name", "expected"),
    [
        ([WEB, DB], "web", WEB),
        ([WEB, DB], "web.example.com", WEB),
        ([WEB, DB], "33333333-cccc", DB),
        ([WEB, WEB_TWIN], "22222222-bbbb", WEB_TWIN),
        ([TRICKY, WEB], "11111111-aaaa", WEB),
        ([FQDN], "db.example.com", FQDN),
        ([DB, FQDN], "db", DB),
    ],
)
def test_a_name_resolves_to_one_node(nodes: list[N], name: str, expected: N) -> None:
    assert resolve_node(nodes, name, CLUSTER) == expected


def test_no_node_or_several_are_errors_that_say_what_to_do() -> None:
    with pytest.raises(NotFoundError, match=r'^no node named "mail" \(see tsh ls\)$'):
        resolve_node([WEB, DB], "mail", CLUSTER)
    with pytest.raises(NotFoundError, match=r'^no node named "web.other.org" \(see tsh ls\)$'):
        resolve_node([WEB], "web.other.org", CLUSTER)
    with pytest.raises(NotFoundError) as err:
        resolve_node([WEB, WEB_TWIN], "web", CLUSTER)
    assert str(err.value) == (
        'several nodes are named "web"; give one of their host ids (11111111-aaaa, 22222222-bbbb, see tsh ls)'
    )
    # both "db" and "db.example.com" are this name's candidates
    with pytest.raises(NotFoundError, match=r'^several nodes are named "db\.example\.com"'):
        resolve_node([DB, FQDN], "db.example.com", CLUSTER)


NODES = [WEB, WEB_TWIN, DB, TRICKY, FQDN]
NAMES = ["web", "web.example.com", "db", "db.example.com", "11111111-aaaa", "22222222-bbbb", "x", "", ".example.com"]


@pytest.mark.parametrize("name", NAMES)
def test_names_node_keeps_every_candidate_resolution_looks_at(name: str) -> None:
    """The auth service keeps only the nodes a name could mean before checking the caller's roles on them; the
    result must be the one resolution over all the nodes gives, for every subset of nodes."""
    for size in range(len(NODES) + 1):
        for subset in itertools.combinations(NODES, size):
            kept = [n for n in subset if names_node(name, CLUSTER, host_id=n.host_id, hostname=n.hostname)]
            try:
                expected: N | str = resolve_node(list(subset), name, CLUSTER)
            except NotFoundError as err:
                expected = str(err)
            try:
                got: N | str = resolve_node(kept, name, CLUSTER)
            except NotFoundError as err:
                got = str(err)
            assert got == expected
