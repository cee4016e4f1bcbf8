from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from devicetrust.access import AccessChecker, device_required
from devicetrust.errors import AccessDeniedError
from devicetrust.types import KNOWN_VERBS, Metadata, Role, RoleConditions, RoleOptions, Rule, preset_roles

PRESETS = {role.name: role for role in preset_roles()}
ALICE_TRAITS: Mapping[str, Sequence[str]] = {
    "logins": ["alice", "ubuntu"],
    "kubernetes_groups": ["devs"],
    "kubernetes_users": ["alice@k8s"],
    "db_names": ["app"],
    "db_users": ["alice"],
    "env": ["staging"],
}
REQUEST_VERBS = [verb for verb in KNOWN_VERBS if verb != "*"]


def role(name: str, *, mode: str = "", allow: dict[str, Any] | None = None, deny: dict[str, Any] | None = None) -> Role:
    return Role(
        metadata=Metadata(name=name),
        options=RoleOptions(device_trust_mode=mode),
        allow=RoleConditions(**(allow or {})),
        deny=RoleConditions(**(deny or {})),
    )


def checker(*roles: Role, traits: Mapping[str, Sequence[str]] = ALICE_TRAITS) -> AccessChecker:
    return AccessChecker(roles, traits)


# Admin rules.


@pytest.mark.parametrize("verb", REQUEST_VERBS)
@pytest.mark.parametrize("resource", ["device", "user", "role", "lock", "token", "event", "cluster_auth_preference"])
def test_editor_may_do_everything(resource: str, verb: str) -> None:
    checker(PRESETS["editor"]).check_rule(resource, verb)


@pytest.mark.parametrize("verb", REQUEST_VERBS)
def test_device_admin_has_every_device_verb_and_nothing_else(verb: str) -> None:
    admin = checker(PRESETS["device-admin"])

    admin.check_rule("device", verb)
    assert admin.has_rule("device", verb)
    assert not admin.has_rule("user", verb)
    assert not admin.has_rule("role", verb)


@pytest.mark.parametrize("verb", REQUEST_VERBS)
def test_device_enroll_may_only_enroll(verb: str) -> None:
    assert checker(PRESETS["device-enroll"]).has_rule("device", verb) is (verb == "enroll")


@pytest.mark.parametrize("verb", REQUEST_VERBS)
@pytest.mark.parametrize("resource", ["event", "session"])
def test_auditor_lists_and_reads_events_and_sessions(resource: str, verb: str) -> None:
    assert checker(PRESETS["auditor"]).has_rule(resource, verb) is (verb in ("list", "read"))


@pytest.mark.parametrize("name", ["access", "require-trusted-device"])
@pytest.mark.parametrize("verb", REQUEST_VERBS)
def test_access_roles_grant_no_admin_rules(name: str, verb: str) -> None:
    assert not checker(PRESETS[name]).has_rule("device", verb)


def test_no_roles_grant_nothing() -> None:
    with pytest.raises(AccessDeniedError) as info:
        checker().check_rule("device", "list")

    assert str(info.value) == 'access denied: missing permission "list" on "device"'


def test_denial_message_names_verb_and_resource() -> None:
    with pytest.raises(AccessDeniedError) as info:
        checker(PRESETS["device-enroll"]).check_rule("device", "create_enroll_token")

    assert str(info.value) == 'access denied: missing permission "create_enroll_token" on "device"'


@pytest.mark.parametrize(
    ("deny_rule", "resource", "verb", "allowed"),
    [
        (Rule(("device",), ("delete",)), "device", "delete", False),
        (Rule(("device",), ("delete",)), "device", "list", True),
        (Rule(("device",), ("delete",)), "user", "delete", True),
        (Rule(("device",), ("*",)), "device", "enroll", False),
        (Rule(("*",), ("delete",)), "role", "delete", False),
        (Rule(("*",), ("delete",)), "role", "read", True),
        (Rule(("*",), ("*",)), "event", "list", False),
    ],
)
def test_deny_beats_allow(deny_rule: Rule, resource: str, verb: str, allowed: bool) -> None:
    # The deny lives in a separate role: it applies whichever role allows.
    restricted = checker(PRESETS["editor"], role("no", deny={"rules": (deny_rule,)}))
    same_role = checker(
        role("both", allow={"rules": (Rule(("*",), ("*",)),)}, deny={"rules": (deny_rule,)}),
    )

    for subject in (restricted, same_role):
        assert subject.has_rule(resource, verb) is allowed
        if allowed:
            subject.check_rule(resource, verb)
        else:
            with pytest.raises(AccessDeniedError):
                subject.check_rule(resource, verb)


def test_rules_from_several_roles_add_up() -> None:
    subject = checker(PRESETS["device-enroll"], PRESETS["auditor"])

    subject.check_rule("device", "enroll")
    subject.check_rule("event", "list")
    assert not subject.has_rule("device", "list")


@pytest.mark.parametrize(
    ("resource", "verb"), [("device", "get"), ("device", "*"), ("device", ""), ("*", "list"), ("", "list")]
)
def test_malformed_permission_question_is_a_bug(resource: str, verb: str) -> None:
    # Even the editor's "*" rule must not make a typo look granted.
    with pytest.raises(ValueError):
        checker(PRESETS["editor"]).check_rule(resource, verb)


# Logins and other principals.


def test_access_logins_come_from_traits() -> None:
    assert checker(PRESETS["access"]).logins() == ("alice", "ubuntu")


def test_logins_are_sorted_and_unique_across_roles() -> None:
    subject = checker(
        role("a", allow={"logins": ("zed", "{{internal.logins}}")}),
        role("b", allow={"logins": ("ubuntu", "adm")}),
    )

    assert subject.logins() == ("adm", "alice", "ubuntu", "zed")


def test_logins_minus_denied() -> None:
    subject = checker(PRESETS["access"], role("no-ubuntu", deny={"logins": ("ubuntu",)}))

    assert subject.logins() == ("alice",)


def test_denied_logins_expand_templates() -> None:
    subject = checker(
        role("a", allow={"logins": ("root", "{{internal.logins}}")}),
        role("d", deny={"logins": ("{{internal.logins}}",)}),
    )

    assert subject.logins() == ("root",)


def test_deny_wildcard_removes_every_login() -> None:
    subject = checker(PRESETS["access"], role("none", deny={"logins": ("*",)}))

    assert subject.logins() == ()


def test_missing_trait_grants_no_login() -> None:
    assert checker(PRESETS["access"], traits={}).logins() == ()


def test_a_wildcard_trait_value_never_becomes_a_login() -> None:
    assert checker(PRESETS["access"], traits={"logins": ["*", "alice"]}).logins() == ("alice",)


def test_kubernetes_principals() -> None:
    subject = checker(PRESETS["access"], PRESETS["require-trusted-device"])

    assert subject.kubernetes_groups() == ("developers", "devs")
    assert subject.kubernetes_users() == ("alice@k8s",)


def test_kubernetes_groups_minus_denied() -> None:
    subject = checker(PRESETS["require-trusted-device"], role("d", deny={"kubernetes_groups": ("developers",)}))

    assert subject.kubernetes_groups() == ("devs",)


def test_db_principals() -> None:
    assert checker(PRESETS["access"]).db_names() == ("app",)
    assert checker(PRESETS["access"]).db_users() == ("alice",)
    assert checker(PRESETS["require-trusted-device"]).db_users() == ("*",)
    assert checker(PRESETS["access"], PRESETS["require-trusted-device"]).db_names() == ("*", "app")


@pytest.mark.parametrize(
    ("roles", "user", "allowed"),
    [
        (("access",), "alice", True),
        (("access",), "postgres", False),
        (("require-trusted-device",), "postgres", True),
        (("require-trusted-device", "deny-postgres"), "postgres", False),
        (("require-trusted-device", "deny-postgres"), "alice", True),
        (("require-trusted-device", "deny-all"), "alice", False),
        ((), "alice", False),
    ],
)
def test_allows_db_user(roles: tuple[str, ...], user: str, allowed: bool) -> None:
    extra = {
        "deny-postgres": role("deny-postgres", deny={"db_users": ("postgres",)}),
        "deny-all": role("deny-all", deny={"db_users": ("*",)}),
    }
    subject = checker(*(PRESETS.get(name) or extra[name] for name in roles))

    assert subject.allows_db_user(user) is allowed


def test_allows_db_name() -> None:
    subject = checker(PRESETS["access"], role("d", deny={"db_names": ("{{internal.db_names}}",)}))

    assert not subject.allows_db_name("app")
    assert not subject.allows_db_name("other")
    assert checker(PRESETS["access"]).allows_db_name("app")


def test_db_users_with_denied_wildcard() -> None:
    subject = checker(PRESETS["require-trusted-device"], role("d", deny={"db_users": ("*",)}))

    assert subject.db_users() == ()


# Matching resources by labels.


PROD = {"env": "prod", "team": "sre"}
STAGING = {"env": "staging", "team": "web"}


def test_roles_matching_node() -> None:
    prod = role("prod", allow={"node_labels": {"env": ("prod",)}, "logins": ("root",)})
    everything = PRESETS["access"]
    subject = checker(prod, everything, PRESETS["editor"])

    assert subject.roles_matching_node(PROD) == (prod, everything)
    assert subject.roles_matching_node(STAGING) == (everything,)
    assert subject.roles_matching_node({}) == (everything,)


def test_deny_labels_of_any_role_exclude_the_node() -> None:
    subject = checker(PRESETS["access"], role("no-prod", deny={"node_labels": {"env": ("prod",)}}))

    assert subject.roles_matching_node(PROD) == ()
    assert subject.roles_matching_node(STAGING) == (PRESETS["access"],)


def test_deny_everything_excludes_every_node() -> None:
    subject = checker(PRESETS["access"], role("none", deny={"node_labels": {"*": ("*",)}}))

    assert subject.roles_matching_node(PROD) == ()
    assert subject.roles_matching_node({}) == ()


def test_label_values_may_use_traits() -> None:
    own_env = role("own-env", allow={"node_labels": {"env": ("{{external.env}}",)}})

    assert checker(own_env).roles_matching_node(STAGING) == (own_env,)
    assert checker(own_env).roles_matching_node(PROD) == ()
    assert checker(own_env, traits={}).roles_matching_node(STAGING) == ()
    assert checker(own_env, traits={"env": ["^.*$"]}).roles_matching_node(PROD) == (own_env,)


def test_deny_label_values_may_use_traits() -> None:
    subject = checker(PRESETS["access"], role("d", deny={"node_labels": {"env": ("{{external.env}}",)}}))

    assert subject.roles_matching_node(STAGING) == ()
    assert subject.roles_matching_node(PROD) == (PRESETS["access"],)


def test_kubernetes_and_database_matching_use_their_own_selectors() -> None:
    kube_only = role("kube", allow={"kubernetes_labels": {"env": ("prod",)}})
    db_only = role("db", allow={"db_labels": {"env": ("prod",)}})
    subject = checker(kube_only, db_only)

    assert subject.roles_matching_node(PROD) == ()
    assert subject.roles_matching_kubernetes_cluster(PROD) == (kube_only,)
    assert subject.roles_matching_database(PROD) == (db_only,)
    denied = checker(kube_only, db_only, role("d", deny={"db_labels": {"*": ("*",)}}))
    assert denied.roles_matching_database(PROD) == ()
    assert denied.roles_matching_kubernetes_cluster(PROD) == (kube_only,)


def test_node_logins_only_count_roles_matching_the_node() -> None:
    prod_root = role("prod-root", allow={"node_labels": {"env": ("prod",)}, "logins": ("root",)})
    subject = checker(prod_root, PRESETS["access"])

    assert subject.logins() == ("alice", "root", "ubuntu")
    assert subject.node_logins(PROD) == ("alice", "root", "ubuntu")
    assert subject.node_logins(STAGING) == ("alice", "ubuntu")


def test_node_logins_apply_every_roles_denials() -> None:
    subject = checker(PRESETS["access"], role("d", deny={"logins": ("ubuntu",)}))

    assert subject.node_logins(PROD) == ("alice",)


def test_node_logins_of_a_denied_node_are_empty() -> None:
    subject = checker(PRESETS["access"], role("d", deny={"node_labels": {"env": ("prod",)}}))

    assert subject.node_logins(PROD) == ()


# Putting it together: the seed's scenario.


@pytest.mark.parametrize(
    ("cluster_mode", "roles", "required"),
    [
        ("optional", ("access",), False),
        ("optional", ("access", "require-trusted-device"), True),
        ("required", ("access",), True),
        ("off", ("access", "require-trusted-device"), True),
    ],
)
def test_seed_device_requirement_for_a_node(cluster_mode: str, roles: tuple[str, ...], required: bool) -> None:
    subject = checker(*(PRESETS[name] for name in roles))

    matching = subject.roles_matching_node({"env": "prod"})

    assert device_required(cluster_mode, (r.device_trust_mode for r in matching), is_bot=False) is required


def test_mode_of_a_role_that_does_not_match_the_node_does_not_count() -> None:
    strict_prod = role("strict-prod", mode="required", allow={"node_labels": {"env": ("prod",)}})
    subject = checker(PRESETS["access"], strict_prod)

    modes_dev = [r.device_trust_mode for r in subject.roles_matching_node({"env": "dev"})]
    modes_prod = [r.device_trust_mode for r in subject.roles_matching_node({"env": "prod"})]

    assert device_required("optional", modes_dev, is_bot=False) is False
    assert device_required("optional", modes_prod, is_bot=False) is True


def test_checker_keeps_its_roles_and_copies_traits() -> None:
    traits = {"logins": ["alice"]}
    subject = AccessChecker([PRESETS["access"]], traits)
    traits["logins"].append("root")

    assert subject.roles == (PRESETS["access"],)
    assert subject.logins() == ("alice",)
