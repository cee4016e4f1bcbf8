"""Resources: frozen, self-validating dataclasses and their YAML/JSON documents. No I/O."""

from devicetrust.types._validation import FieldError
from devicetrust.types.clock import Clock, utcnow
from devicetrust.types.cluster_auth_preference import (
    AUTH_TYPES,
    CLUSTER_AUTH_PREFERENCE_NAME,
    SECOND_FACTORS,
    SESSION_PROOF_LOGIN,
    SESSION_PROOF_MODES,
    SESSION_PROOF_PER_SESSION,
    ClusterAuthPreference,
    DeviceTrustSettings,
    default_cluster_auth_preference,
)
from devicetrust.types.codec import (
    DOCUMENT_KINDS,
    RESOURCE_KINDS,
    Resource,
    load_resources,
    normalize_kind,
    parse_resource,
    profile_to_dict,
    resource_to_dict,
)
from devicetrust.types.device import (
    ATTESTATION_TYPES,
    ENROLL_STATUSES,
    MAX_COLLECTED_RECORDS,
    OS_TYPES,
    SOURCE_ORIGINS,
    Device,
    DeviceCredential,
    DeviceProfile,
    DeviceSource,
    os_display_name,
)
from devicetrust.types.duration import format_duration, parse_duration
from devicetrust.types.labels import WILDCARD, Labels, is_regex
from devicetrust.types.lock import LOCK_TARGET_KINDS, Lock, LockTarget, locks_in_force
from devicetrust.types.metadata import Metadata
from devicetrust.types.presets import PRESET_ROLE_NAMES, preset_roles
from devicetrust.types.role import (
    DEVICE_TRUST_MODES,
    KNOWN_VERBS,
    MODE_UNSET,
    Role,
    RoleConditions,
    RoleOptions,
    Rule,
)
from devicetrust.types.templates import TraitTemplate, parse_template
from devicetrust.types.user import Bot, Traits, User
from devicetrust.types.yaml_io import MAX_YAML_TEXT_CHARS, dump_yaml, load_yaml_documents

__all__ = [
    "ATTESTATION_TYPES",
    "AUTH_TYPES",
    "CLUSTER_AUTH_PREFERENCE_NAME",
    "DEVICE_TRUST_MODES",
    "DOCUMENT_KINDS",
    "ENROLL_STATUSES",
    "KNOWN_VERBS",
    "LOCK_TARGET_KINDS",
    "MAX_COLLECTED_RECORDS",
    "MAX_YAML_TEXT_CHARS",
    "MODE_UNSET",
    "OS_TYPES",
    "PRESET_ROLE_NAMES",
    "RESOURCE_KINDS",
    "SECOND_FACTORS",
    "SESSION_PROOF_LOGIN",
    "SESSION_PROOF_MODES",
    "SESSION_PROOF_PER_SESSION",
    "SOURCE_ORIGINS",
    "WILDCARD",
    "Bot",
    "Clock",
    "ClusterAuthPreference",
    "Device",
    "DeviceCredential",
    "DeviceProfile",
    "DeviceSource",
    "DeviceTrustSettings",
    "FieldError",
    "Labels",
    "Lock",
    "LockTarget",
    "Metadata",
    "Resource",
    "Role",
    "RoleConditions",
    "RoleOptions",
    "Rule",
    "TraitTemplate",
    "Traits",
    "User",
    "default_cluster_auth_preference",
    "dump_yaml",
    "format_duration",
    "is_regex",
    "load_resources",
    "load_yaml_documents",
    "locks_in_force",
    "normalize_kind",
    "os_display_name",
    "parse_duration",
    "parse_resource",
    "parse_template",
    "preset_roles",
    "profile_to_dict",
    "resource_to_dict",
    "utcnow",
]
