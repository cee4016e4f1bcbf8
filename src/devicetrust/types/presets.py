"""Preset roles, created with every cluster (as Teleport's)."""

from __future__ import annotations

from types import MappingProxyType

from devicetrust.types.labels import WILDCARD, Labels
from devicetrust.types.metadata import Metadata
from devicetrust.types.role import Role, RoleConditions, RoleOptions, Rule

ALL_LABELS: Labels = MappingProxyType({WILDCARD: (WILDCARD,)})
DEVICE_ADMIN_VERBS = ("create", "read", "list", "update", "delete", "create_enroll_token", "enroll")

PRESET_ROLE_NAMES: tuple[str, ...] = (
    "access",
    "editor",
    "auditor",
    "device-admin",
    "device-enroll",
    "require-trusted-device",
)


def preset_roles() -> tuple[Role, ...]:
    """The preset roles, in the order of :data:`PRESET_ROLE_NAMES`."""
    access = Role(
        metadata=Metadata(name="access", description="Access cluster resources with the user's own traits"),
        allow=RoleConditions(
            logins=("{{internal.logins}}",),
            node_labels=ALL_LABELS,
            kubernetes_labels=ALL_LABELS,
            kubernetes_groups=("{{internal.kubernetes_groups}}",),
            kubernetes_users=("{{internal.kubernetes_users}}",),
            db_labels=ALL_LABELS,
            db_names=("{{internal.db_names}}",),
            db_users=("{{internal.db_users}}",),
        ),
    )
    editor = Role(
        metadata=Metadata(name="editor", description="Edit cluster configuration: full administration"),
        allow=RoleConditions(rules=(Rule(resources=(WILDCARD,), verbs=(WILDCARD,)),)),
    )
    auditor = Role(
        metadata=Metadata(name="auditor", description="Review the audit log and recorded sessions"),
        allow=RoleConditions(
            rules=(
                Rule(resources=("event",), verbs=("list", "read")),
                Rule(resources=("session",), verbs=("list", "read")),
            )
        ),
    )
    device_admin = Role(
        metadata=Metadata(name="device-admin", description="Register, enroll and manage trusted devices"),
        allow=RoleConditions(rules=(Rule(resources=("device",), verbs=DEVICE_ADMIN_VERBS),)),
    )
    device_enroll = Role(
        metadata=Metadata(name="device-enroll", description="Enroll a device with an enrollment token"),
        allow=RoleConditions(rules=(Rule(resources=("device",), verbs=("enroll",)),)),
    )
    # Exactly the seed's role, so `tctl create -f` of the seed's require-trusted-device.yaml changes nothing.
    require_trusted_device = Role(
        metadata=Metadata(name="require-trusted-device"),
        options=RoleOptions(device_trust_mode="required"),
        allow=RoleConditions(
            node_labels=ALL_LABELS,
            logins=("{{internal.logins}}",),
            kubernetes_labels=ALL_LABELS,
            kubernetes_groups=("{{internal.kubernetes_groups}}", "developers"),
            db_labels=ALL_LABELS,
            db_names=(WILDCARD,),
            db_users=(WILDCARD,),
        ),
    )
    return (access, editor, auditor, device_admin, device_enroll, require_trusted_device)
