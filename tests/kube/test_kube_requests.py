"""The kube service's pure request handling: routing, Kubernetes request info, impersonation within the grant,
Status replies."""

from __future__ import annotations

import json

import pytest

from devicetrust.agent.kube.requests import (
    AUTHENTICATED_GROUP,
    ImpersonationRefused,
    RequestInfo,
    impersonation,
    request_info,
    route,
    status_body,
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/kube/prod/api/v1/pods", ("prod", "/api/v1/pods")),
        ("/kube/prod/api/v1/namespaces/default/pods?limit=500", ("prod", "/api/v1/namespaces/default/pods?limit=500")),
        ("/kube/prod", ("prod", "/")),
        ("/kube/prod/", ("prod", "/")),
        ("/kube/prod?timeout=32s", ("prod", "/?timeout=32s")),
        ("/kube/", None),
        ("/api/v1/pods", None),
    ],
)
def test_route(path: str, expected: tuple[str, str] | None) -> None:
    assert route(path) == expected


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api", RequestInfo("get")),
        ("GET", "/version?timeout=32s", RequestInfo("get")),
        ("GET", "/api/v1", RequestInfo("get", api_version="v1")),
        ("GET", "/api/v1/namespaces", RequestInfo("list", resource="namespaces", api_version="v1")),
        ("GET", "/api/v1/namespaces/default", RequestInfo("get", "", "namespaces", "default", "", "v1")),
        ("GET", "/api/v1/namespaces/default/pods?limit=500", RequestInfo("list", "default", "pods", "", "", "v1")),
        ("GET", "/api/v1/namespaces/default/pods?watch=true", RequestInfo("watch", "default", "pods", "", "", "v1")),
        ("GET", "/api/v1/namespaces/default/pods/web-0", RequestInfo("get", "default", "pods", "web-0", "", "v1")),
        ("GET", "/api/v1/namespaces/a/pods/w/log", RequestInfo("get", "a", "pods", "w", "", "v1", "log")),
        (
            "GET",
            "/api/v1/namespaces/a/pods/w/exec?command=echo&stdout=true",
            RequestInfo("get", "a", "pods", "w", "", "v1", "exec"),
        ),
        ("POST", "/api/v1/namespaces/a/pods/w/attach", RequestInfo("create", "a", "pods", "w", "", "v1", "attach")),
        (
            "POST",
            "/api/v1/namespaces/a/pods/w/portforward?ports=80",
            RequestInfo("create", "a", "pods", "w", "", "v1", "portforward"),
        ),
        ("DELETE", "/api/v1/namespaces/a/pods", RequestInfo("deletecollection", "a", "pods", "", "", "v1")),
        ("DELETE", "/api/v1/namespaces/a/pods/w", RequestInfo("delete", "a", "pods", "w", "", "v1")),
        (
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            RequestInfo("create", "", "selfsubjectreviews", "", "authentication.k8s.io", "v1"),
        ),
        (
            "PATCH",
            "/apis/apps/v1/namespaces/a/deployments/d",
            RequestInfo("patch", "a", "deployments", "d", "apps", "v1"),
        ),
    ],
)
def test_request_info(method: str, path: str, expected: RequestInfo) -> None:
    assert request_info(method, path) == expected


GROUPS = ("developers", "viewers")


def test_without_headers_the_one_granted_user_and_every_granted_group() -> None:
    assert impersonation("alice", ("alice@corp",), GROUPS, [], []) == (
        "alice@corp",
        ("developers", "viewers", AUTHENTICATED_GROUP),
    )


def test_groups_only_acts_as_the_identity_itself() -> None:
    assert impersonation("alice", (), GROUPS, [], [])[0] == "alice"
    assert impersonation("alice", (), GROUPS, ["alice"], ["viewers"]) == ("alice", ("viewers", AUTHENTICATED_GROUP))


@pytest.mark.parametrize(
    ("users", "groups", "requested_users", "requested_groups", "message"),
    [
        ((), GROUPS, ["root"], [], 'user header "root" is not allowed in roles'),
        ((), GROUPS, ["alice"], ["system:masters"], 'group header "system:masters" value is not allowed in roles'),
        (("a", "b"), GROUPS, [], [], "please select a user to impersonate"),
        (("a",), GROUPS, ["a", "a"], [], "more than one Impersonate-User"),
    ],
)
def test_impersonation_outside_the_grant_is_refused(
    users: tuple[str, ...],
    groups: tuple[str, ...],
    requested_users: list[str],
    requested_groups: list[str],
    message: str,
) -> None:
    with pytest.raises(ImpersonationRefused, match=message):
        impersonation("alice", users, groups, requested_users, requested_groups)


def test_one_of_several_granted_users_may_be_chosen() -> None:
    assert impersonation("alice", ("a", "b"), (), ["b"], []) == ("b", (AUTHENTICATED_GROUP,))


def test_other_impersonation_headers_are_refused() -> None:
    with pytest.raises(ImpersonationRefused):
        impersonation("alice", (), GROUPS, [], [], other_impersonation=True)


def test_status_body_is_what_kubectl_prints() -> None:
    doc = json.loads(status_body(403, "access to resource requires a trusted device"))
    assert doc == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "access to resource requires a trusted device",
        "reason": "Forbidden",
        "code": 403,
    }
