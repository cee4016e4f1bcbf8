"""resource_to_dict writes canonical documents that parse back to the same resource."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from devicetrust.types import (
    Bot,
    ClusterAuthPreference,
    DeviceTrustSettings,
    Metadata,
    Resource,
    Role,
    RoleConditions,
    RoleOptions,
    Rule,
    User,
    default_cluster_auth_preference,
    dump_yaml,
    load_resources,
    parse_resource,
    preset_roles,
    resource_to_dict,
)

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2F0YWxvZw==\n-----END CERTIFICATE-----\n"

FULL_CONDITIONS = RoleConditions(
    logins=("{{internal.logins}}", "ubuntu", "adm-{{external.username}}"),
    node_labels={"env": ("prod", "staging"), "^team-.*$": ("^(sre|ops)$",), "region": ("eu-*",)},
    kubernetes_labels={"*": ("*",)},
    kubernetes_groups=("{{internal.kubernetes_groups}}", "developers"),
    kubernetes_users=("{{internal.kubernetes_users}}",),
    db_labels={"engine": ("postgres",)},
    db_names=("*",),
    db_users=("{{internal.db_users}}", "reader"),
    rules=(Rule(("device",), ("list", "read")), Rule(("*",), ("*",))),
)

SAMPLES: tuple[Resource, ...] = (
    *preset_roles(),
    Role(metadata=Metadata(name="empty")),
    Role(
        metadata=Metadata(name="full", description="every field", labels={"team": "sre", "tier": "1"}),
        options=RoleOptions(
            device_trust_mode="required-for-humans",
            max_session_ttl=timedelta(hours=1, minutes=30, seconds=5),
            forward_agent=True,
            port_forwarding=True,
        ),
        allow=FULL_CONDITIONS,
        deny=RoleConditions(logins=("*",), node_labels={"secret": ("true",)}, rules=(Rule(("lock",), ("delete",)),)),
    ),
    Role(metadata=Metadata(name="off"), options=RoleOptions(device_trust_mode="off")),
    Role(metadata=Metadata(name="deny-only"), deny=FULL_CONDITIONS),
    User(metadata=Metadata(name="alice@example.com")),
    User(
        metadata=Metadata(name="alice", labels={"dept": "eng"}),
        roles=("access", "require-trusted-device"),
        traits={"logins": ("alice", "ubuntu"), "kubernetes_groups": ("devs",), "empty": ()},
    ),
    Bot(metadata=Metadata(name="ci"), roles=("device-admin",)),
    Bot(metadata=Metadata(name="ci-2", description="d"), roles=(), traits={"logins": ("ci",)}),
    default_cluster_auth_preference(),
    ClusterAuthPreference(
        second_factors=("webauthn", "otp", "sso"),
        webauthn={"rp_id": "example.com", "attestation_allowed_cas": (PEM,), "attestation_denied_cas": ()},
        device_trust=DeviceTrustSettings(
            mode="required",
            auto_enroll=True,
            ekcert_allowed_cas=(PEM, PEM.strip()),
            allow_unsafe_software_keys=True,
        ),
    ),
    ClusterAuthPreference(device_trust=DeviceTrustSettings(mode="off")),
)


@pytest.mark.parametrize("resource", SAMPLES, ids=lambda r: f"{r.kind}-{r.metadata.name}")
def test_parse_of_to_dict_is_identity(resource: Resource) -> None:
    assert parse_resource(resource_to_dict(resource)) == resource


@pytest.mark.parametrize("resource", SAMPLES, ids=lambda r: f"{r.kind}-{r.metadata.name}")
def test_yaml_and_json_round_trips(resource: Resource) -> None:
    document = resource_to_dict(resource)

    assert load_resources(dump_yaml([document])) == (resource,)
    assert parse_resource(json.loads(json.dumps(document))) == resource


def test_all_samples_round_trip_as_one_yaml_stream() -> None:
    text = dump_yaml([resource_to_dict(resource) for resource in SAMPLES])

    assert load_resources(text) == SAMPLES


@pytest.mark.parametrize("resource", SAMPLES, ids=lambda r: f"{r.kind}-{r.metadata.name}")
def test_canonical_document_shape(resource: Resource) -> None:
    document = resource_to_dict(resource)

    assert list(document) == ["kind", "version", "metadata", "spec"]
    assert document["kind"] == resource.kind
    assert document["version"] == resource.version
    assert document["metadata"]["name"] == resource.metadata.name


def test_empty_role_omits_everything_optional() -> None:
    document = resource_to_dict(Role(metadata=Metadata(name="r")))

    assert document == {"kind": "role", "version": "v7", "metadata": {"name": "r"}, "spec": {}}


def test_device_trust_mode_is_kept_when_set() -> None:
    document = resource_to_dict(Role(metadata=Metadata(name="r"), options=RoleOptions(device_trust_mode="off")))

    assert document["spec"] == {"options": {"device_trust_mode": "off"}}


def test_full_role_document() -> None:
    role = SAMPLES[len(preset_roles()) + 1]
    assert isinstance(role, Role)

    document = resource_to_dict(role)

    assert document["metadata"] == {
        "name": "full",
        "description": "every field",
        "labels": {"team": "sre", "tier": "1"},
    }
    assert document["spec"]["options"] == {
        "device_trust_mode": "required-for-humans",
        "max_session_ttl": "1h30m5s",
        "forward_agent": True,
        "port_forwarding": True,
    }
    allow = document["spec"]["allow"]
    assert list(allow) == [
        "node_labels",
        "logins",
        "kubernetes_labels",
        "kubernetes_groups",
        "kubernetes_users",
        "db_labels",
        "db_names",
        "db_users",
        "rules",
    ]
    # One value is written as a string, several as a list.
    assert allow["node_labels"] == {"env": ["prod", "staging"], "^team-.*$": "^(sre|ops)$", "region": "eu-*"}
    assert allow["rules"] == [
        {"resources": ["device"], "verbs": ["list", "read"]},
        {"resources": ["*"], "verbs": ["*"]},
    ]
    assert document["spec"]["deny"] == {
        "logins": ["*"],
        "node_labels": {"secret": "true"},
        "rules": [{"resources": ["lock"], "verbs": ["delete"]}],
    }


def test_user_document() -> None:
    user = User(metadata=Metadata(name="alice"), roles=("access",), traits={"logins": ("alice",)})

    assert resource_to_dict(user) == {
        "kind": "user",
        "version": "v2",
        "metadata": {"name": "alice"},
        "spec": {"roles": ["access"], "traits": {"logins": ["alice"]}},
    }


def test_bot_document_keeps_empty_roles() -> None:
    assert resource_to_dict(Bot(metadata=Metadata(name="ci"))) == {
        "kind": "bot",
        "version": "v1",
        "metadata": {"name": "ci"},
        "spec": {"roles": []},
    }


def test_default_cluster_auth_preference_document() -> None:
    assert resource_to_dict(default_cluster_auth_preference()) == {
        "kind": "cluster_auth_preference",
        "version": "v2",
        "metadata": {"name": "cluster-auth-preference"},
        "spec": {"type": "local", "device_trust": {"mode": "optional", "session_proof": "per_session"}},
    }


def test_full_cluster_auth_preference_document() -> None:
    cap = SAMPLES[-2]

    assert resource_to_dict(cap)["spec"] == {
        "type": "local",
        "second_factors": ["webauthn", "otp", "sso"],
        "webauthn": {"rp_id": "example.com", "attestation_allowed_cas": [PEM], "attestation_denied_cas": []},
        "device_trust": {
            "mode": "required",
            "auto_enroll": True,
            "ekcert_allowed_cas": [PEM, PEM.strip()],
            "allow_unsafe_software_keys": True,
            "session_proof": "per_session",
        },
    }


def test_documents_are_fresh_plain_objects() -> None:
    role = preset_roles()[0]
    document = resource_to_dict(role)
    document["spec"]["allow"]["logins"].append("root")

    assert resource_to_dict(role)["spec"]["allow"]["logins"] == ["{{internal.logins}}"]
    json.dumps(document)


def test_to_dict_refuses_non_resources() -> None:
    with pytest.raises(TypeError):
        resource_to_dict(Metadata(name="x"))  # type: ignore[arg-type]
