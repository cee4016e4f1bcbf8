"""What the kube service reads from a Kubernetes API request, and the replies it makes itself. Pure.

- :func:`route`: which cluster a request is for (its path starts with ``/kube/<cluster>``, as ``tsh kube login``
  writes the server URL) and the API path that remains.
- :func:`request_info`: the verb, namespace, resource and name of an API path (as the API server's
  RequestInfo), for the audit.
- :func:`impersonation`: who the request acts as on the API server, from what the roles grant and the
  ``Impersonate-*`` headers the client sent (only within the granted sets).
- :func:`status_body`: a ``metav1.Status`` error, as kubectl prints it (``Error from server (Forbidden): …``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs

__all__ = [
    "AUTHENTICATED_GROUP",
    "ImpersonationRefused",
    "RequestInfo",
    "impersonation",
    "request_info",
    "route",
    "status_body",
]

#: Every impersonated user is in this group (the API server adds it too; sent so the request says so).
AUTHENTICATED_GROUP = "system:authenticated"
ROUTE_PREFIX = "/kube/"
_HTTP_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
    431: "BadRequest",
    502: "InternalError",
    503: "ServiceUnavailable",
}


class ImpersonationRefused(Exception):
    """The client asked to act as a user or group its roles do not grant (message for the user)."""


def route(path: str) -> tuple[str, str] | None:
    """(cluster name, API path with query) of a request path ``/kube/<cluster>/<api path>``; None otherwise."""
    if not path.startswith(ROUTE_PREFIX):
        return None
    rest = path[len(ROUTE_PREFIX) :]
    name, slash, api_path = rest.partition("/")
    name, question, query = name.partition("?")
    if not name:
        return None
    if question:
        return name, "/?" + query
    return name, "/" + api_path if slash else "/"


@dataclass(frozen=True)
class RequestInfo:
    verb: str
    namespace: str = ""
    resource: str = ""
    name: str = ""
    api_group: str = ""
    api_version: str = ""
    #: ``exec``, ``attach``, ``portforward``, ``log``, … of ``pods``
    subresource: str = ""


_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def request_info(method: str, api_path: str) -> RequestInfo:
    """The Kubernetes verb and resource of a request, as the API server's RequestInfo resolver reads them
    (``exec`` over WebSocket is a GET, so ``get``; over SPDY a POST, so ``create``); non-resource paths (discovery,
    ``/version``) have only a verb (the lower-case HTTP method)."""
    path, _, query = api_path.partition("?")
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return RequestInfo(verb=method.lower())
    if not rest:
        return RequestInfo(verb=method.lower(), api_group=group, api_version=version)
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    elif rest[0] == "namespaces" and len(rest) == 2:
        rest = ["namespaces", rest[1]]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""  # pods/log, pods/exec: the resource is still "pods"
    watch = "watch" in query and parse_qs(query).get("watch", [""])[0] in ("1", "true")
    if method == "GET":
        verb = "watch" if watch else ("get" if name else "list")
    elif method == "DELETE" and not name:
        verb = "deletecollection"
    else:
        verb = _METHOD_VERBS.get(method, method.lower())
    return RequestInfo(verb, namespace, resource, name, group, version, subresource)


def impersonation(
    username: str,
    granted_users: Sequence[str],
    granted_groups: Sequence[str],
    requested_users: Sequence[str],
    requested_groups: Sequence[str],
    other_impersonation: bool = False,
) -> tuple[str, tuple[str, ...]]:
    """The user and groups a request acts as on the API server.

    Without ``Impersonate-*`` headers: the one granted user (the identity's own name when the roles grant
    groups only) and every granted group. With them: the requested user and groups, each of which must be
    granted. Several granted users and none requested is ambiguous and refused. ``system:authenticated`` is
    always added. Raises ImpersonationRefused."""
    if other_impersonation:
        raise ImpersonationRefused("impersonation request has been denied: only Impersonate-User and Impersonate-Group")
    if len(requested_users) > 1:
        raise ImpersonationRefused("impersonation request has been denied: more than one Impersonate-User header")
    if requested_users:
        user = requested_users[0]
        allowed = set(granted_users) or {username}
        if user not in allowed:
            raise ImpersonationRefused(
                f'impersonation request has been denied, user header "{user}" is not allowed in roles'
            )
    elif len(granted_users) > 1:
        raise ImpersonationRefused(
            "please select a user to impersonate, refusing to select a user due to several kubernetes_users set "
            f"up for this user: {', '.join(granted_users)}"
        )
    else:
        user = granted_users[0] if granted_users else username
    if requested_groups:
        for group in requested_groups:
            if group not in granted_groups and group != AUTHENTICATED_GROUP:
                raise ImpersonationRefused(
                    f'impersonation request has been denied, group header "{group}" value is not allowed in roles'
                )
        groups = tuple(dict.fromkeys(requested_groups))
    else:
        groups = tuple(granted_groups)
    return user, tuple(dict.fromkeys([*groups, AUTHENTICATED_GROUP]))


def status_body(code: int, message: str) -> bytes:
    """A ``metav1.Status`` failure document (kubectl prints ``Error from server (<reason>): <message>``)."""
    reason = _HTTP_REASONS.get(code, "InternalError")
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
    ).encode()
