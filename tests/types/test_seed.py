"""The seed's YAML must parse verbatim and mean what the seed says."""

from __future__ import annotations

from devicetrust.types import (
    ClusterAuthPreference,
    Role,
    dump_yaml,
    load_resources,
    load_yaml_documents,
    parse_resource,
    preset_roles,
    resource_to_dict,
)

# Verbatim from seed/device-trust.md, "Role-based device enforcement".
SEED_ROLE_YAML = """\
kind: role
version: v7
metadata:
  name: require-trusted-device
spec:
  options:
    device_trust_mode: "required"
  allow:
    # SSH servers
    node_labels:
      '*': '*'
    logins:
      - '{{internal.logins}}'

    # Kubernetes clusters
    kubernetes_labels:
      '*': '*'
    kubernetes_groups:
      - '{{internal.kubernetes_groups}}'
      - developers

    # Databases
    db_labels:
      '*': '*'
    db_names:
      - '*'
    db_users:
      - '*'
"""

# Verbatim from seed/device-trust.md, "Cluster-wide device enforcement".
SEED_CLUSTER_AUTH_PREFERENCE_YAML = """\
kind: cluster_auth_preference
version: v2
metadata:
  name: cluster-auth-preference
spec:
  type: local
  second_factors: ["webauthn"]
  webauthn:
    rp_id: example.teleport.sh
  device_trust:
    mode: "required"
"""

# Verbatim from seed/device-trust.md, "Auto-enrollment": a fragment edited into the existing resource.
SEED_AUTO_ENROLL_FRAGMENT = """\
spec:
  device_trust:
    mode: "optional"
    auto_enroll: true
"""


def test_seed_role_parses_to_the_require_trusted_device_preset() -> None:
    (document,) = load_yaml_documents(SEED_ROLE_YAML, "require-trusted-device.yaml")
    role = parse_resource(document)

    assert isinstance(role, Role)
    assert role.name == "require-trusted-device"
    assert role.options.device_trust_mode == "required"
    assert dict(role.allow.node_labels) == {"*": ("*",)}
    assert dict(role.allow.kubernetes_labels) == {"*": ("*",)}
    assert dict(role.allow.db_labels) == {"*": ("*",)}
    assert role.allow.logins == ("{{internal.logins}}",)
    assert role.allow.kubernetes_groups == ("{{internal.kubernetes_groups}}", "developers")
    assert role.allow.db_names == ("*",)
    assert role.allow.db_users == ("*",)
    assert role.allow.rules == ()
    assert role.deny.is_empty()
    presets = {preset.name: preset for preset in preset_roles()}
    assert role == presets["require-trusted-device"]


def test_seed_cluster_auth_preference_parses() -> None:
    (cap,) = load_resources(SEED_CLUSTER_AUTH_PREFERENCE_YAML, "cap.yaml")

    assert isinstance(cap, ClusterAuthPreference)
    assert cap.metadata.name == "cluster-auth-preference"
    assert cap.type == "local"
    assert cap.second_factors == ("webauthn",)
    assert cap.webauthn == {"rp_id": "example.teleport.sh"}
    assert cap.device_trust.mode == "required"
    assert cap.device_trust.auto_enroll is False
    assert cap.device_trust.ekcert_allowed_cas == ()


def test_seed_documents_load_together_as_one_stream() -> None:
    resources = load_resources(SEED_ROLE_YAML + "---\n" + SEED_CLUSTER_AUTH_PREFERENCE_YAML)

    assert [type(resource) for resource in resources] == [Role, ClusterAuthPreference]


def test_seed_auto_enroll_fragment_edited_into_the_cluster_auth_preference() -> None:
    (cap,) = load_resources(SEED_CLUSTER_AUTH_PREFERENCE_YAML)
    document = resource_to_dict(cap)
    (fragment,) = load_yaml_documents(SEED_AUTO_ENROLL_FRAGMENT)
    document["spec"]["device_trust"] = fragment["spec"]["device_trust"]

    edited = parse_resource(document)

    assert isinstance(edited, ClusterAuthPreference)
    assert edited.device_trust.mode == "optional"
    assert edited.device_trust.auto_enroll is True


def test_seed_resources_survive_dump_and_reload() -> None:
    resources = load_resources(SEED_ROLE_YAML + "---\n" + SEED_CLUSTER_AUTH_PREFERENCE_YAML)

    text = dump_yaml([resource_to_dict(resource) for resource in resources])

    assert load_resources(text) == resources


def test_seed_role_dumps_in_the_seed_layout() -> None:
    (role,) = load_resources(SEED_ROLE_YAML)

    # The seed's text minus its comments and blank lines, with the mode unquoted as YAML allows.
    expected = "\n".join(
        line.replace('"required"', "required")
        for line in SEED_ROLE_YAML.splitlines()
        if line.strip() and not line.strip().startswith("#")
    )
    assert dump_yaml([resource_to_dict(role)]) == expected + "\n"
