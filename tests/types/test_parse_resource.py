"""parse_resource: strict documents, errors naming the resource and the field."""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from typing import Any

import pytest

from devicetrust.errors import ValidationError
from devicetrust.types import (
    DEVICE_TRUST_MODES,
    Bot,
    ClusterAuthPreference,
    Metadata,
    Role,
    RoleConditions,
    RoleOptions,
    Rule,
    User,
    normalize_kind,
    parse_resource,
)

PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2F0YWxvZw==\n-----END CERTIFICATE-----\n"


def role_doc(**spec: Any) -> dict[str, Any]:
    return {"kind": "role", "version": "v7", "metadata": {"name": "r"}, "spec": spec}


def full_role_doc() -> dict[str, Any]:
    return {
        "kind": "role",
        "version": "v7",
        "metadata": {"name": "r", "description": "d", "labels": {"team": "sre"}},
        "spec": {
            "options": {
                "device_trust_mode": "required",
                "max_session_ttl": "8h",
                "forward_agent": True,
                "port_forwarding": False,
            },
            "allow": {
                "logins": ["{{internal.logins}}"],
                "node_labels": {"env": ["prod", "staging"]},
                "kubernetes_labels": {"*": "*"},
                "kubernetes_groups": ["devs"],
                "kubernetes_users": ["alice"],
                "db_labels": {"engine": "^postgres-[0-9]+$"},
                "db_names": ["app"],
                "db_users": ["reader"],
                "rules": [{"resources": ["device"], "verbs": ["list", "read"]}],
            },
            "deny": {"logins": ["root"], "node_labels": {"secret": "*"}},
        },
    }


def user_doc(**spec: Any) -> dict[str, Any]:
    return {"kind": "user", "version": "v2", "metadata": {"name": "alice"}, "spec": spec}


def bot_doc(**spec: Any) -> dict[str, Any]:
    return {"kind": "bot", "version": "v1", "metadata": {"name": "ci"}, "spec": spec}


def cap_doc(**spec: Any) -> dict[str, Any]:
    return {
        "kind": "cluster_auth_preference",
        "version": "v2",
        "metadata": {"name": "cluster-auth-preference"},
        "spec": spec,
    }


def full_cap_doc() -> dict[str, Any]:
    return cap_doc(
        type="local",
        second_factors=["webauthn", "otp"],
        webauthn={"rp_id": "example.com", "attestation_allowed_cas": [PEM], "attestation_denied_cas": [PEM]},
        device_trust={
            "mode": "required",
            "auto_enroll": True,
            "ekcert_allowed_cas": [PEM],
            "allow_unsafe_software_keys": False,
        },
    )


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``value`` at dotted ``path`` (``rules[0]`` indexes a list)."""
    result = copy.deepcopy(doc)
    node: Any = result
    parts = path.split(".")
    for part in parts[:-1]:
        match = re.fullmatch(r"(\w+)\[(\d+)\]", part)
        node = node[match.group(1)][int(match.group(2))] if match else node.setdefault(part, {})
    node[parts[-1]] = value
    return result


def parse_error(doc: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse_resource(doc)
    return str(info.value)


# Parsing what is valid.


def test_full_role_parses_every_field() -> None:
    role = parse_resource(full_role_doc())

    assert role == Role(
        metadata=Metadata(name="r", description="d", labels={"team": "sre"}),
        options=RoleOptions(
            device_trust_mode="required",
            max_session_ttl=timedelta(hours=8),
            forward_agent=True,
            port_forwarding=False,
        ),
        allow=RoleConditions(
            logins=("{{internal.logins}}",),
            node_labels={"env": ("prod", "staging")},
            kubernetes_labels={"*": ("*",)},
            kubernetes_groups=("devs",),
            kubernetes_users=("alice",),
            db_labels={"engine": ("^postgres-[0-9]+$",)},
            db_names=("app",),
            db_users=("reader",),
            rules=(Rule(resources=("device",), verbs=("list", "read")),),
        ),
        deny=RoleConditions(logins=("root",), node_labels={"secret": ("*",)}),
    )


def test_role_without_spec_is_an_empty_role() -> None:
    doc = {"kind": "role", "version": "v7", "metadata": {"name": "r"}}

    assert parse_resource(doc) == Role(metadata=Metadata(name="r"))


@pytest.mark.parametrize(
    "path",
    [
        "spec",
        "spec.options",
        "spec.allow",
        "spec.deny",
        "spec.allow.logins",
        "spec.options.device_trust_mode",
    ],
)
def test_yaml_null_means_not_set(path: str) -> None:
    assert parse_resource(set_path(role_doc(), path, None)) == Role(metadata=Metadata(name="r"))


def test_full_user_and_bot_parse() -> None:
    traits = {"logins": ["alice", "ubuntu"], "db_users": ["alice"]}

    user = parse_resource(user_doc(roles=["access", "require-trusted-device"], traits=traits))
    bot = parse_resource(bot_doc(roles=["device-admin"], traits={"logins": ["ci"]}))

    assert user == User(
        metadata=Metadata(name="alice"),
        roles=("access", "require-trusted-device"),
        traits={"logins": ("alice", "ubuntu"), "db_users": ("alice",)},
    )
    assert bot == Bot(metadata=Metadata(name="ci"), roles=("device-admin",), traits={"logins": ("ci",)})


def test_full_cluster_auth_preference_parses() -> None:
    cap = parse_resource(full_cap_doc())

    assert isinstance(cap, ClusterAuthPreference)
    assert cap.second_factors == ("webauthn", "otp")
    assert cap.webauthn == {
        "rp_id": "example.com",
        "attestation_allowed_cas": (PEM,),
        "attestation_denied_cas": (PEM,),
    }
    assert cap.device_trust.mode == "required"
    assert cap.device_trust.auto_enroll is True
    assert cap.device_trust.ekcert_allowed_cas == (PEM,)


@pytest.mark.parametrize("mode", [None, ""])
def test_cluster_device_trust_mode_defaults_to_optional(mode: str | None) -> None:
    cap = parse_resource(cap_doc(device_trust={"mode": mode}))

    assert isinstance(cap, ClusterAuthPreference)
    assert cap.device_trust.mode == "optional"


def test_cluster_auth_preference_without_spec_is_the_default() -> None:
    cap = parse_resource(cap_doc())

    assert cap == ClusterAuthPreference()


@pytest.mark.parametrize("mode", DEVICE_TRUST_MODES)
def test_every_mode_is_accepted_in_roles_and_cluster(mode: str) -> None:
    role = parse_resource(role_doc(options={"device_trust_mode": mode}))
    cap = parse_resource(cap_doc(device_trust={"mode": mode}))

    assert isinstance(role, Role)
    assert isinstance(cap, ClusterAuthPreference)
    assert role.options.device_trust_mode == mode
    assert cap.device_trust.mode == mode


def test_metadata_revision_is_accepted_and_ignored() -> None:
    doc = set_path(role_doc(), "metadata.revision", "3f2a-77")

    assert parse_resource(doc) == parse_resource(role_doc())


# Unknown fields, at every level.


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (role_doc(), "extra"),
        (role_doc(), "metadata.expires"),
        (role_doc(), "metadata.namespace"),
        (role_doc(), "spec.allowed"),
        (role_doc(), "spec.options.device_trust"),
        (role_doc(), "spec.options.cert_format"),
        (role_doc(), "spec.allow.nodelabels"),
        (role_doc(), "spec.allow.node_label"),
        (role_doc(), "spec.deny.device_trust_mode"),
        (
            role_doc(allow={"rules": [{"resources": ["device"], "verbs": ["list"]}]}),
            "spec.allow.rules[0].where",
        ),
        (user_doc(), "spec.password"),
        (user_doc(), "spec.created_by"),
        (user_doc(), "status"),
        (bot_doc(), "spec.max_session_ttl"),
        (cap_doc(), "spec.second_factor"),
        (cap_doc(), "spec.device_trust.moed"),
        (cap_doc(), "spec.device_trust.enforce"),
        (cap_doc(webauthn={"rp_id": "x"}), "spec.webauthn.rpid"),
    ],
)
def test_unknown_field_is_named_with_its_full_path(doc: dict[str, Any], path: str) -> None:
    message = parse_error(set_path(doc, path, "x"))

    name = doc["metadata"]["name"]
    assert message.startswith(f'{doc["kind"]} "{name}": unknown field "{path}"')


def test_unknown_field_suggests_the_close_name() -> None:
    message = parse_error(set_path(role_doc(), "spec.allow.nodelabels", {"*": "*"}))

    assert message == 'role "r": unknown field "spec.allow.nodelabels" (did you mean "node_labels"?)'


def test_unknown_field_message_with_no_close_name_has_no_hint() -> None:
    message = parse_error(set_path(role_doc(), "spec.zzz", 1))

    assert message == 'role "r": unknown field "spec.zzz"'


# kind and version.


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (None, "kind: required field is missing"),
        ("", 'kind: unsupported kind ""'),
        ("roles", 'kind: unsupported kind "roles" (did you mean "role"?)'),
        ("Role", 'kind: unsupported kind "Role" (did you mean "role"?)'),
        ("cap", 'kind: unsupported kind "cap" (did you mean "cluster_auth_preference"?)'),
        ("token", 'kind: unsupported kind "token"'),
        ("widget", 'kind: unsupported kind "widget"'),
        (7, "kind: unsupported kind an integer"),
        (["role"], "kind: unsupported kind a list"),
    ],
)
def test_wrong_or_missing_kind_is_named(kind: Any, expected: str) -> None:
    doc = role_doc()
    if kind is None:
        del doc["kind"]
    else:
        doc["kind"] = kind

    message = parse_error(doc)

    assert message.startswith(expected)
    assert message.endswith("(supported kinds: role, user, bot, cluster_auth_preference, device, lock)")


@pytest.mark.parametrize(
    ("doc", "supported"),
    [(role_doc(), "v7"), (user_doc(), "v2"), (bot_doc(), "v1"), (cap_doc(), "v2")],
)
@pytest.mark.parametrize("version", ["v6", "v8", "V7", "", 7, None])
def test_wrong_or_missing_version_names_the_supported_one(doc: dict[str, Any], supported: str, version: Any) -> None:
    doc = copy.deepcopy(doc)
    if version is None:
        del doc["version"]
    else:
        doc["version"] = version

    message = parse_error(doc)

    assert "version: " in message
    assert message.endswith(f"(supported: {supported})")
    assert message.startswith(f'{doc["kind"]} "{doc["metadata"]["name"]}": version: ')


def test_user_version_of_a_role_is_refused() -> None:
    message = parse_error(set_path(role_doc(), "version", "v2"))

    assert message == 'role "r": version: unsupported version "v2" (supported: v7)'


# device_trust_mode.


@pytest.mark.parametrize("mode", ["strict", "Required", "on", "enabled", "required_for_humans", " required"])
def test_invalid_role_mode_names_the_field_and_lists_valid_modes(mode: str) -> None:
    message = parse_error(role_doc(options={"device_trust_mode": mode}))

    assert message == (
        f'role "r": spec.options.device_trust_mode: invalid device trust mode "{mode}" '
        "(valid modes: off, optional, required, required-for-humans)"
    )


@pytest.mark.parametrize("mode", ["strict", "OFF", "none"])
def test_invalid_cluster_mode_names_the_field(mode: str) -> None:
    message = parse_error(cap_doc(device_trust={"mode": mode}))

    assert message.startswith(
        f'cluster_auth_preference "cluster-auth-preference": spec.device_trust.mode: invalid device trust mode "{mode}"'
    )
    assert "(valid modes: off, optional, required, required-for-humans)" in message


@pytest.mark.parametrize("value", [False, True])
def test_boolean_mode_asks_for_quotes(value: bool) -> None:
    message = parse_error(role_doc(options={"device_trust_mode": value}))

    assert message.startswith('role "r": spec.options.device_trust_mode: expected a mode as a string')
    assert "quoted" in message


@pytest.mark.parametrize("value", [1, ["required"], {"mode": "required"}])
def test_non_string_mode_is_refused(value: Any) -> None:
    message = parse_error(role_doc(options={"device_trust_mode": value}))

    assert message.startswith('role "r": spec.options.device_trust_mode: expected a string')


# Wrong types, each naming its field.


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("not a mapping", "expected a resource mapping (kind, version, metadata, spec), got a string"),
        (set_path(role_doc(), "metadata", "r"), "role: metadata: expected a mapping, got a string"),
        (set_path(role_doc(), "metadata", {}), "role: metadata.name: required field is missing"),
        (set_path(role_doc(), "metadata.name", 5), "role: metadata.name: expected a string, got an integer"),
        (set_path(role_doc(), "metadata.name", ""), "role: metadata.name: must not be empty"),
        (
            set_path(role_doc(), "metadata.name", "a b"),
            'role "a b": metadata.name: invalid name "a b": use letters, digits and . _ @ : -',
        ),
        (
            set_path(role_doc(), "metadata.description", ["x"]),
            'role "r": metadata.description: expected a string',
        ),
        (set_path(role_doc(), "metadata.labels", ["x"]), 'role "r": metadata.labels: expected a mapping'),
        (
            set_path(role_doc(), "metadata.labels", {"env": 1}),
            'role "r": metadata.labels.env: expected a string',
        ),
        (
            set_path(role_doc(), "metadata.labels", {"a b": "x"}),
            'role "r": metadata.labels: invalid label key',
        ),
        (set_path(role_doc(), "spec", ["x"]), 'role "r": spec: expected a mapping, got a list'),
        (role_doc(options="required"), 'role "r": spec.options: expected a mapping, got a string'),
        (role_doc(allow=["logins"]), 'role "r": spec.allow: expected a mapping, got a list'),
        (role_doc(deny="all"), 'role "r": spec.deny: expected a mapping, got a string'),
        (
            role_doc(allow={"logins": "root"}),
            'role "r": spec.allow.logins: expected a list of strings, got a string',
        ),
        (
            role_doc(allow={"logins": [1]}),
            'role "r": spec.allow.logins[0]: expected a string, got an integer',
        ),
        (role_doc(allow={"logins": ["ok", ""]}), 'role "r": spec.allow.logins[1]: must not be empty'),
        (
            role_doc(deny={"logins": {"a": 1}}),
            'role "r": spec.deny.logins: expected a list of strings, got a mapping',
        ),
        (
            role_doc(allow={"kubernetes_groups": "devs"}),
            'role "r": spec.allow.kubernetes_groups: expected a list',
        ),
        (
            role_doc(allow={"kubernetes_users": "alice"}),
            'role "r": spec.allow.kubernetes_users: expected a list',
        ),
        (
            role_doc(allow={"db_names": "*"}),
            'role "r": spec.allow.db_names: expected a list of strings, got a string',
        ),
        (
            role_doc(allow={"db_users": True}),
            'role "r": spec.allow.db_users: expected a list of strings, got a boolean',
        ),
        (role_doc(allow={"node_labels": "*"}), 'role "r": spec.allow.node_labels: expected a mapping'),
        (role_doc(allow={"node_labels": ["*"]}), 'role "r": spec.allow.node_labels: expected a mapping'),
        (
            role_doc(allow={"node_labels": {"env": 1}}),
            'role "r": spec.allow.node_labels: label "env": expected a string or a list of strings, got an integer',
        ),
        (
            role_doc(allow={"db_labels": {"env": [1]}}),
            'role "r": spec.allow.db_labels: label "env": values must be',
        ),
        (
            role_doc(allow={"kubernetes_labels": {"env": []}}),
            'role "r": spec.allow.kubernetes_labels: label "env": at',
        ),
        (
            role_doc(allow={"rules": {"resources": ["x"]}}),
            'role "r": spec.allow.rules: expected a list of rules',
        ),
        (
            role_doc(allow={"rules": ["device"]}),
            'role "r": spec.allow.rules[0]: expected a mapping, got a string',
        ),
        (
            role_doc(allow={"rules": [{"verbs": ["list"]}]}),
            'role "r": spec.allow.rules[0].resources: required field is missing',
        ),
        (
            role_doc(allow={"rules": [{"resources": ["device"]}]}),
            'role "r": spec.allow.rules[0].verbs: required field is missing',
        ),
        (
            role_doc(allow={"rules": [{"resources": "device", "verbs": ["list"]}]}),
            'role "r": spec.allow.rules[0].resources: expected a list of strings, got a string',
        ),
        (
            role_doc(deny={"rules": [{"resources": ["device"], "verbs": ["list"]}, {"resources": [], "verbs": []}]}),
            'role "r": spec.deny.rules[1].resources: at least one resource is required',
        ),
        (
            role_doc(allow={"rules": [{"resources": ["device"], "verbs": []}]}),
            'role "r": spec.allow.rules[0].verbs: at least one verb is required',
        ),
        (
            role_doc(allow={"rules": [{"resources": ["device"], "verbs": ["list", "get"]}]}),
            'role "r": spec.allow.rules[0].verbs[1]: unknown verb "get" '
            "(valid verbs: list, read, create, update, "
            "delete, create_enroll_token, enroll, *)",
        ),
        (
            role_doc(allow={"rules": [{"resources": [""], "verbs": ["list"]}]}),
            'role "r": spec.allow.rules[0].resources[0]: must not be empty',
        ),
        (
            role_doc(options={"forward_agent": "yes"}),
            'role "r": spec.options.forward_agent: expected a boolean',
        ),
        (
            role_doc(options={"port_forwarding": 1}),
            'role "r": spec.options.port_forwarding: expected a boolean',
        ),
        (
            role_doc(options={"max_session_ttl": 3600}),
            'role "r": spec.options.max_session_ttl: expected a duration',
        ),
        (
            role_doc(options={"max_session_ttl": "8"}),
            'role "r": spec.options.max_session_ttl: invalid duration "8"',
        ),
        (
            role_doc(options={"max_session_ttl": "0h"}),
            'role "r": spec.options.max_session_ttl: invalid duration "0h"',
        ),
        (user_doc(roles="access"), 'user "alice": spec.roles: expected a list of strings, got a string'),
        (user_doc(roles=["access", "access"]), 'user "alice": spec.roles: "access" is listed twice'),
        (user_doc(roles=["bad role"]), 'user "alice": spec.roles[0]: invalid name "bad role"'),
        (user_doc(traits=["logins"]), 'user "alice": spec.traits: expected a mapping of trait names'),
        (user_doc(traits={"logins": "root"}), 'user "alice": spec.traits.logins: expected a list of strings'),
        (
            user_doc(traits={"logins": [None]}),
            'user "alice": spec.traits.logins[0]: expected a string, got null',
        ),
        (user_doc(traits={"": ["x"]}), 'user "alice": spec.traits: trait names must be non-empty strings'),
        (bot_doc(roles=[1]), 'bot "ci": spec.roles[0]: expected a string, got an integer'),
        (bot_doc(traits={"logins": {"a": "b"}}), 'bot "ci": spec.traits.logins: expected a list of strings'),
        (
            set_path(cap_doc(), "metadata.name", "cap"),
            'cluster_auth_preference "cap": metadata.name: must be "cluster-auth-preference", got "cap"',
        ),
        (cap_doc(type="github"), 'spec.type: unsupported type "github" (supported: local)'),
        (cap_doc(type=["local"]), "spec.type: expected a string, got a list"),
        (cap_doc(second_factors="webauthn"), "spec.second_factors: expected a list of strings, got a string"),
        (cap_doc(second_factors=["u2f"]), 'spec.second_factors[0]: unknown second factor "u2f"'),
        (cap_doc(second_factors=["otp", "otp"]), 'spec.second_factors: "otp" is listed twice'),
        (cap_doc(webauthn="example.com"), "spec.webauthn: expected a mapping, got a string"),
        (cap_doc(webauthn={}), "spec.webauthn.rp_id: required field is missing"),
        (cap_doc(webauthn={"rp_id": ""}), "spec.webauthn.rp_id: must not be empty"),
        (cap_doc(webauthn={"rp_id": 1}), "spec.webauthn.rp_id: expected a string, got an integer"),
        (
            cap_doc(webauthn={"rp_id": "x", "attestation_allowed_cas": PEM}),
            "spec.webauthn.attestation_allowed_cas: expected a list of strings, got a string",
        ),
        (cap_doc(device_trust="required"), "spec.device_trust: expected a mapping, got a string"),
        (cap_doc(device_trust={"auto_enroll": "true"}), "spec.device_trust.auto_enroll: expected a boolean"),
        (
            cap_doc(device_trust={"allow_unsafe_software_keys": 1}),
            "spec.device_trust.allow_unsafe_software_keys: expected a boolean",
        ),
        (
            cap_doc(device_trust={"ekcert_allowed_cas": PEM}),
            "spec.device_trust.ekcert_allowed_cas: expected a list of strings, got a string",
        ),
        (
            cap_doc(device_trust={"ekcert_allowed_cas": [PEM, "MIIB..."]}),
            "spec.device_trust.ekcert_allowed_cas[1]: expected one PEM certificate",
        ),
    ],
)
def test_wrong_value_is_named_by_its_field(doc: Any, message: str) -> None:
    assert message in parse_error(doc)


# Templates and label patterns.


@pytest.mark.parametrize(
    "value",
    [
        "{{internal.logins",
        "internal.logins}}",
        "{{internal}}",
        "{{logins}}",
        "{{internal.}}",
        "{{ex.logins}}",
        "{{email.local(external.email)}}",
        "{{internal.logins}}{{internal.logins}}",
        "}}{{internal.logins",
        "{{{internal.logins}}}",
        "{{}}",
    ],
)
@pytest.mark.parametrize("field", ["logins", "kubernetes_groups", "kubernetes_users", "db_names", "db_users"])
def test_bad_template_names_the_field(value: str, field: str) -> None:
    message = parse_error(role_doc(deny={field: ["ok", value]}))

    assert message.startswith(f'role "r": spec.deny.{field}[1]: invalid template "{value}"')


@pytest.mark.parametrize(
    "value",
    [
        "{{internal.logins}}",
        "{{external.logins}}",
        "{{ internal.logins }}",
        "pre-{{internal.logins}}",
        "{{internal.logins}}-suf",
        "a{{external.github_teams}}b",
        "{{external.groups.admins}}",
        "plain",
        "a{b}c",
    ],
)
def test_good_templates_and_literals_are_accepted(value: str) -> None:
    role = parse_resource(role_doc(allow={"logins": [value], "node_labels": {"env": value}}))

    assert isinstance(role, Role)
    assert role.allow.logins == (value,)


@pytest.mark.parametrize("section", ["allow", "deny"])
@pytest.mark.parametrize("field", ["node_labels", "kubernetes_labels", "db_labels"])
@pytest.mark.parametrize(
    ("selector", "problem"),
    [
        ({"env": "^("}, 'invalid regular expression "^(": missing ), unterminated subpattern'),
        ({"env": ["ok", "^[a-$"]}, 'invalid regular expression "^[a-$"'),
        ({"^(": "x"}, 'invalid regular expression "^("'),
        ({"env": "^prod"}, 'invalid regular expression "^prod": anchor it at both ends'),
        ({"env": "prod$"}, 'invalid regular expression "prod$": anchor it at both ends'),
        ({"env": "{{internal.env"}, 'invalid template "{{internal.env"'),
        ({"{{internal.env}}": "x"}, 'label key "{{internal.env}}": templates are only allowed in values'),
        ({"": "x"}, 'label keys must be non-empty strings, got ""'),
        ({"env": ""}, 'label "env": values must be non-empty strings, got ""'),
    ],
)
def test_bad_label_selector_names_the_field(section: str, field: str, selector: dict[str, Any], problem: str) -> None:
    message = parse_error(role_doc(**{section: {field: selector}}))

    assert message.startswith(f'role "r": spec.{section}.{field}: {problem}')


def test_allow_logins_refuse_the_wildcard() -> None:
    message = parse_error(role_doc(allow={"logins": ["ubuntu", "*"]}))

    assert message == 'role "r": spec.allow.logins: the wildcard "*" is not allowed in allowed logins'


def test_deny_logins_accept_the_wildcard() -> None:
    role = parse_resource(role_doc(deny={"logins": ["*"]}))

    assert isinstance(role, Role)
    assert role.deny.logins == ("*",)


def test_error_is_a_single_line() -> None:
    message = parse_error(role_doc(allow={"node_labels": {"env": "^("}}))

    assert "\n" not in message


# normalize_kind.


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("role", "role"),
        ("roles", "role"),
        ("ROLES", "role"),
        ("user", "user"),
        ("users", "user"),
        ("bot", "bot"),
        ("bots", "bot"),
        ("cluster_auth_preference", "cluster_auth_preference"),
        ("cluster_auth_preferences", "cluster_auth_preference"),
        ("cluster-auth-preference", "cluster_auth_preference"),
        ("cap", "cluster_auth_preference"),
        ("token", "token"),
        ("tokens", "token"),
        ("device", "device"),
        ("devices", "device"),
        ("lock", "lock"),
        ("locks", "lock"),
        (" role ", "role"),
    ],
)
def test_normalize_kind(name: str, kind: str) -> None:
    assert normalize_kind(name) == kind


@pytest.mark.parametrize("name", ["", "rol", "roless", "event", "node", "caps", "*"])
def test_normalize_kind_lists_the_valid_kinds(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        normalize_kind(name)

    assert str(info.value) == (
        f'unknown resource kind "{name}" '
        "(valid kinds: role, user, bot, cluster_auth_preference, token, device, lock, cert_authority)"
    )
