"""Access policy: role matching, trait templates and the device trust requirement. Pure, no I/O."""

from devicetrust.access.checker import AccessChecker
from devicetrust.access.decision import (
    DB_ACCESS_DENIED,
    KUBE_ACCESS_DENIED,
    DatabaseSession,
    DatabaseTarget,
    Decision,
    KubeClusterTarget,
    NodeTarget,
    allowed_until,
    database_session_locks,
    decide,
    kube_session_locks,
    lock_reason,
    session_locks,
)
from devicetrust.access.labels import label_matches, pattern_matches
from devicetrust.access.modes import TRUSTED_DEVICE_REQUIRED, UNAUTHORIZED_DEVICE, device_required, strictest_mode
from devicetrust.access.nodes import NamedNode, names_node, resolve_node
from devicetrust.access.traits import expand_traits

__all__ = [
    "DB_ACCESS_DENIED",
    "KUBE_ACCESS_DENIED",
    "TRUSTED_DEVICE_REQUIRED",
    "UNAUTHORIZED_DEVICE",
    "AccessChecker",
    "DatabaseSession",
    "DatabaseTarget",
    "Decision",
    "KubeClusterTarget",
    "NamedNode",
    "NodeTarget",
    "allowed_until",
    "database_session_locks",
    "decide",
    "device_required",
    "expand_traits",
    "kube_session_locks",
    "label_matches",
    "lock_reason",
    "names_node",
    "pattern_matches",
    "resolve_node",
    "session_locks",
    "strictest_mode",
]
