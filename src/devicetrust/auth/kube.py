"""Kubernetes clusters on the auth service: which ones a user may reach (``tsh kube ls``).

Kube services announce their clusters in their heartbeats (:mod:`devicetrust.auth.nodes`); a cluster is listed
while its service has been seen within :data:`KUBE_SERVICE_TTL`. Names are unique in the cluster: when two
services announce one name, the one seen last serves it. Credentials are session certificates from the device
proof (``tsh kube credentials``), so nothing is issued here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from devicetrust.auth.nodes import RES_KUBE_SERVICE, ServingAgent, announced

if TYPE_CHECKING:
    from devicetrust.auth.context import AuthContext, Caller

__all__ = ["KUBE_SERVICE_TTL", "KubeAccessService"]

#: A kube service not heard from for this long (heartbeats come every 30 s) no longer lists its clusters.
KUBE_SERVICE_TTL = timedelta(minutes=10)


class AnnouncedKubeCluster(TypedDict):
    name: str
    labels: dict[str, str]
    service: ServingAgent
    last_seen: str


class VisibleKubeCluster(AnnouncedKubeCluster):
    """A cluster as ``tsh kube ls`` lists it (:class:`devicetrust.protocol.KubeCluster`)."""

    kubernetes_users: list[str]
    kubernetes_groups: list[str]


def _announced_cluster(item: Mapping[str, Any], agent: ServingAgent, last_seen: str) -> AnnouncedKubeCluster:
    return {"name": item["name"], "labels": dict(item.get("labels", {})), "service": agent, "last_seen": last_seen}


class KubeAccessService:
    def __init__(self, context: AuthContext) -> None:
        self.context = context

    def _clusters(self, now: datetime) -> dict[str, AnnouncedKubeCluster]:
        """Every Kubernetes cluster a live service announces, by name (the most recently seen service wins)."""
        return announced(self.context, RES_KUBE_SERVICE, "kube_clusters", now, KUBE_SERVICE_TTL, _announced_cluster)

    def list_visible(self, caller: Caller) -> list[VisibleKubeCluster]:
        """The clusters whose labels one of the caller's roles allows (and none denies), by name, with the
        Kubernetes users and groups those roles grant there."""
        clusters = self._clusters(self.context.clock())
        visible: list[VisibleKubeCluster] = []
        for name in sorted(clusters):
            labels = clusters[name]["labels"]
            if caller.kind != "admin" and not caller.checker.roles_matching_kubernetes_cluster(labels):
                continue
            visible.append(
                {
                    **clusters[name],
                    "kubernetes_users": list(caller.checker.kubernetes_cluster_users(labels)),
                    "kubernetes_groups": list(caller.checker.kubernetes_cluster_groups(labels)),
                }
            )
        return visible
