"""Dataclasses validate and normalize on construction: resources built in code are as safe as parsed ones."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from devicetrust.errors import ValidationError
from devicetrust.types import (
    KNOWN_VERBS,
    Bot,
    ClusterAuthPreference,
    DeviceTrustSettings,
    FieldError,
    Metadata,
    Role,
    RoleConditions,
    RoleOptions,
    Rule,
    User,
    default_cluster_auth_preference,
)

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2F0YWxvZw==\n-----END CERTIFICATE-----"


def error_of(factory: Any, **kwargs: Any) -> FieldError:
    with pytest.raises(FieldError) as info:
        factory(**kwargs)
    return info.value


# Metadata.


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "alice",
        "alice@example.com",
        "require-trusted-device",
        "node_1.prod",
        "a:b",
        "A-Z.09_@:-",
        "x" * 253,
    ],
)
def test_valid_names(name: str) -> None:
    assert Metadata(name=name).name == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "must not be empty"),
        ("x" * 254, "is 254 characters long, the limit is 253"),
        ("a b", 'invalid name "a b"'),
        ("a/b", 'invalid name "a/b"'),
        ("a\nb", "invalid name"),
        ("älice", 'invalid name "älice"'),
        ("a+b", 'invalid name "a+b"'),
        ("*", 'invalid name "*"'),
        (".", 'invalid name "."'),
        ("..", 'invalid name ".."'),
    ],
)
def test_invalid_names(name: str, problem: str) -> None:
    err = error_of(Metadata, name=name)

    assert err.field == "name"
    assert problem in err.problem


def test_field_error_is_a_validation_error_with_field_and_problem() -> None:
    err = error_of(Metadata, name="")

    assert isinstance(err, ValidationError)
    assert str(err) == "name: must not be empty"
    assert str(err.under("metadata")) == "metadata.name: must not be empty"
    assert str(err.under("")) == "name: must not be empty"


def test_metadata_labels_are_frozen_copies() -> None:
    labels = {"env": "prod"}
    metadata = Metadata(name="n", labels=labels)
    labels["env"] = "dev"

    assert metadata.labels == {"env": "prod"}
    with pytest.raises(TypeError):
        metadata.labels["env"] = "dev"  # type: ignore[index]


@pytest.mark.parametrize(
    ("labels", "field"),
    [({"env": 1}, "labels.env"), ({"": "x"}, "labels"), ({"a b": "x"}, "labels"), ({"é": "x"}, "labels")],
)
def test_metadata_label_errors(labels: Any, field: str) -> None:
    assert error_of(Metadata, name="n", labels=labels).field == field


def test_frozen() -> None:
    role = Role(metadata=Metadata(name="r"))

    with pytest.raises(dataclasses.FrozenInstanceError):
        role.metadata = Metadata(name="s")  # type: ignore[misc]


# Rule.


def test_rule_normalizes_lists_to_tuples() -> None:
    rule = Rule(resources=["device"], verbs=["list", "read"])  # type: ignore[arg-type]

    assert rule.resources == ("device",)
    assert rule.verbs == ("list", "read")


@pytest.mark.parametrize("verb", KNOWN_VERBS)
def test_every_known_verb_is_accepted(verb: str) -> None:
    assert Rule(resources=("device",), verbs=(verb,)).verbs == (verb,)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"resources": "device", "verbs": ("list",)}, "resources"),
        ({"resources": (), "verbs": ("list",)}, "resources"),
        ({"resources": ("",), "verbs": ("list",)}, "resources[0]"),
        ({"resources": ("device",), "verbs": "list"}, "verbs"),
        ({"resources": ("device",), "verbs": ()}, "verbs"),
        ({"resources": ("device",), "verbs": ("list", "LIST")}, "verbs[1]"),
        ({"resources": ("device",), "verbs": ("get",)}, "verbs[0]"),
        ({"resources": ("device",), "verbs": ("readnosecrets",)}, "verbs[0]"),
    ],
)
def test_rule_errors(kwargs: dict[str, Any], field: str) -> None:
    assert error_of(Rule, **kwargs).field == field


@pytest.mark.parametrize(
    ("rule", "resource", "verb", "covered"),
    [
        (Rule(("device",), ("list",)), "device", "list", True),
        (Rule(("device",), ("list",)), "device", "read", False),
        (Rule(("device",), ("list",)), "user", "list", False),
        (Rule(("device", "user"), ("list", "read")), "user", "read", True),
        (Rule(("*",), ("list",)), "anything", "list", True),
        (Rule(("*",), ("list",)), "anything", "delete", False),
        (Rule(("device",), ("*",)), "device", "create_enroll_token", True),
        (Rule(("device",), ("*",)), "devices", "create_enroll_token", False),
        (Rule(("*",), ("*",)), "role", "delete", True),
    ],
)
def test_rule_covers(rule: Rule, resource: str, verb: str, covered: bool) -> None:
    assert rule.covers(resource, verb) is covered


# RoleConditions.


def test_conditions_normalize_label_values_to_tuples() -> None:
    conditions = RoleConditions(node_labels={"env": "prod", "team": ["a", "b"]})  # type: ignore[dict-item]

    assert dict(conditions.node_labels) == {"env": ("prod",), "team": ("a", "b")}


def test_conditions_normalize_lists() -> None:
    conditions = RoleConditions(logins=["a"], rules=[Rule(("x",), ("list",))])  # type: ignore[arg-type]

    assert conditions.logins == ("a",)
    assert conditions.rules == (Rule(("x",), ("list",)),)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"logins": "root"}, "logins"),
        ({"kubernetes_groups": ("ok", 1)}, "kubernetes_groups[1]"),
        ({"db_users": ("{{internal.db_users",)}, "db_users[0]"),
        ({"db_names": ("{{bad}}",)}, "db_names[0]"),
        ({"kubernetes_users": ("}}",)}, "kubernetes_users[0]"),
        ({"node_labels": {"env": "^("}}, "node_labels"),
        ({"kubernetes_labels": "*"}, "kubernetes_labels"),
        ({"db_labels": {"env": ()}}, "db_labels"),
        ({"rules": ({"resources": ["x"], "verbs": ["list"]},)}, "rules[0]"),
        ({"rules": "device"}, "rules"),
    ],
)
def test_conditions_errors(kwargs: dict[str, Any], field: str) -> None:
    assert error_of(RoleConditions, **kwargs).field == field


def test_conditions_is_empty() -> None:
    assert RoleConditions().is_empty()
    assert not RoleConditions(logins=("a",)).is_empty()
    assert not RoleConditions(node_labels={"*": ("*",)}).is_empty()


# RoleOptions.


def test_options_accept_a_duration_string() -> None:
    options = RoleOptions(max_session_ttl="1h30m")  # type: ignore[arg-type]

    assert options.max_session_ttl == timedelta(hours=1, minutes=30)


@pytest.mark.parametrize(
    ("kwargs", "field", "problem"),
    [
        ({"device_trust_mode": "strict"}, "device_trust_mode", 'invalid device trust mode "strict"'),
        ({"device_trust_mode": None}, "device_trust_mode", "expected a string, got null"),
        ({"max_session_ttl": timedelta(0)}, "max_session_ttl", "not a positive whole number of seconds"),
        ({"max_session_ttl": timedelta(seconds=-5)}, "max_session_ttl", "not a positive whole number"),
        ({"max_session_ttl": timedelta(seconds=1.5)}, "max_session_ttl", "not a positive whole number"),
        ({"max_session_ttl": "forever"}, "max_session_ttl", 'invalid duration "forever"'),
        ({"max_session_ttl": 60}, "max_session_ttl", "expected a duration"),
        ({"forward_agent": "true"}, "forward_agent", "expected a boolean"),
        ({"port_forwarding": 0}, "port_forwarding", "expected a boolean"),
    ],
)
def test_options_errors(kwargs: dict[str, Any], field: str, problem: str) -> None:
    err = error_of(RoleOptions, **kwargs)

    assert err.field == field
    assert problem in err.problem


# Role.


def test_role_defaults_and_class_constants() -> None:
    role = Role(metadata=Metadata(name="r"))

    assert (Role.kind, Role.version) == ("role", "v7")
    assert (role.kind, role.version) == ("role", "v7")
    assert role.name == "r"
    assert role.device_trust_mode == ""
    assert role.options == RoleOptions()
    assert role.allow.is_empty()
    assert role.deny.is_empty()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"metadata": "r"}, "metadata"),
        ({"metadata": Metadata(name="r"), "options": {}}, "spec.options"),
        ({"metadata": Metadata(name="r"), "allow": {}}, "spec.allow"),
        ({"metadata": Metadata(name="r"), "deny": None}, "spec.deny"),
        ({"metadata": Metadata(name="r"), "allow": RoleConditions(logins=("*",))}, "spec.allow.logins"),
    ],
)
def test_role_errors(kwargs: dict[str, Any], field: str) -> None:
    assert error_of(Role, **kwargs).field == field


def test_equal_roles_are_equal_however_built() -> None:
    built_with_lists = Role(
        metadata=Metadata(name="r", labels={"a": "b"}),
        allow=RoleConditions(logins=["x"], node_labels={"env": "prod"}),  # type: ignore[arg-type, dict-item]
    )
    built_with_tuples = Role(
        metadata=Metadata(name="r", labels={"a": "b"}),
        allow=RoleConditions(logins=("x",), node_labels={"env": ("prod",)}),
    )

    assert built_with_lists == built_with_tuples


# User and Bot.


@pytest.mark.parametrize("cls", [User, Bot])
def test_identity_normalizes_and_validates(cls: type[User] | type[Bot]) -> None:
    identity = cls(metadata=Metadata(name="n"), roles=["access"], traits={"logins": ["a"]})  # type: ignore[arg-type, dict-item]

    assert identity.roles == ("access",)
    assert identity.traits == {"logins": ("a",)}
    assert identity.name == "n"


@pytest.mark.parametrize("cls", [User, Bot])
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"roles": "access"}, "spec.roles"),
        ({"roles": ("access", "access")}, "spec.roles"),
        ({"roles": ("a b",)}, "spec.roles[0]"),
        ({"traits": {"logins": "root"}}, "spec.traits.logins"),
        ({"traits": {"logins": ("",)}}, "spec.traits.logins[0]"),
        ({"traits": {1: ("x",)}}, "spec.traits"),
        ({"traits": []}, "spec.traits"),
    ],
)
def test_identity_errors(cls: type[User] | type[Bot], kwargs: dict[str, Any], field: str) -> None:
    assert error_of(cls, metadata=Metadata(name="n"), **kwargs).field == field


def test_identity_kinds() -> None:
    assert (User.kind, User.version) == ("user", "v2")
    assert (Bot.kind, Bot.version) == ("bot", "v1")


def test_user_has_no_password_field() -> None:
    assert [f.name for f in dataclasses.fields(User)] == ["metadata", "roles", "traits"]


# ClusterAuthPreference and DeviceTrustSettings.


def test_default_cluster_auth_preference() -> None:
    cap = default_cluster_auth_preference()

    assert cap == ClusterAuthPreference()
    assert (cap.kind, cap.version) == ("cluster_auth_preference", "v2")
    assert cap.name == "cluster-auth-preference"
    assert cap.type == "local"
    assert cap.second_factors == ()
    assert cap.webauthn is None
    assert cap.device_trust == DeviceTrustSettings(mode="optional")
    assert cap.device_trust.auto_enroll is False
    assert cap.device_trust.allow_unsafe_software_keys is False


def test_empty_cluster_mode_means_optional() -> None:
    assert DeviceTrustSettings(mode="").mode == "optional"


@pytest.mark.parametrize(
    "pem",
    [
        PEM,
        PEM + "\n",
        "\n  " + PEM + "\n\n",
        "-----BEGIN CERTIFICATE-----\r\nMIIB\r\nAQAB\r\n-----END CERTIFICATE-----\r\n",
    ],
)
def test_pem_certificates_are_accepted(pem: str) -> None:
    assert DeviceTrustSettings(ekcert_allowed_cas=(pem,)).ekcert_allowed_cas == (pem,)


@pytest.mark.parametrize(
    "pem",
    [
        "MIIBszCCAVmg",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
        "MIIB\n-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----",
        "-----BEGIN CERTIFICATE-----\n   \n-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
        "-----BEGIN CERTIFICATE-----\nMII!\n-----END CERTIFICATE-----",
        PEM + "\n" + PEM,
        "subject=CN=x\n" + PEM,
    ],
)
def test_non_pem_certificates_are_refused(pem: str) -> None:
    err = error_of(DeviceTrustSettings, ekcert_allowed_cas=(pem,))

    assert err.field == "ekcert_allowed_cas[0]"
    assert "expected one PEM certificate" in err.problem


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mode": "strict"}, "mode"),
        ({"mode": None}, "mode"),
        ({"auto_enroll": "yes"}, "auto_enroll"),
        ({"allow_unsafe_software_keys": None}, "allow_unsafe_software_keys"),
        ({"ekcert_allowed_cas": PEM}, "ekcert_allowed_cas"),
    ],
)
def test_device_trust_settings_errors(kwargs: dict[str, Any], field: str) -> None:
    assert error_of(DeviceTrustSettings, **kwargs).field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"metadata": Metadata(name="other")}, "metadata.name"),
        ({"metadata": None}, "metadata"),
        ({"type": "saml"}, "spec.type"),
        ({"second_factors": ("webauthn", "u2f")}, "spec.second_factors[1]"),
        ({"second_factors": ("sso", "sso")}, "spec.second_factors"),
        ({"webauthn": {"rp_id": "x", "origin": "y"}}, "spec.webauthn"),
        ({"webauthn": {"attestation_allowed_cas": ()}}, "spec.webauthn.rp_id"),
        (
            {"webauthn": {"rp_id": "x", "attestation_denied_cas": "pem"}},
            "spec.webauthn.attestation_denied_cas",
        ),
        ({"device_trust": {"mode": "required"}}, "spec.device_trust"),
    ],
)
def test_cluster_auth_preference_errors(kwargs: dict[str, Any], field: str) -> None:
    assert error_of(ClusterAuthPreference, **kwargs).field == field


def test_webauthn_is_frozen_with_tuples() -> None:
    source = {"rp_id": "example.com", "attestation_allowed_cas": ["a"]}
    cap = ClusterAuthPreference(webauthn=source)
    source["rp_id"] = "changed"

    assert cap.webauthn == {"rp_id": "example.com", "attestation_allowed_cas": ("a",)}
    assert cap.webauthn is not None
    with pytest.raises(TypeError):
        cap.webauthn["rp_id"] = "x"  # type: ignore[index]
