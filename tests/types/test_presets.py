from __future__ import annotations

import pytest

from devicetrust.types import PRESET_ROLE_NAMES, Role, Rule, preset_roles


def presets() -> dict[str, Role]:
    return {role.name: role for role in preset_roles()}


def test_names_and_order() -> None:
    assert PRESET_ROLE_NAMES == (
        "access",
        "editor",
        "auditor",
        "device-admin",
        "device-enroll",
        "require-trusted-device",
    )
    assert tuple(role.name for role in preset_roles()) == PRESET_ROLE_NAMES


def test_presets_are_equal_on_every_call() -> None:
    assert preset_roles() == preset_roles()


def test_access() -> None:
    access = presets()["access"]

    assert access.allow.logins == ("{{internal.logins}}",)
    for selector in (access.allow.node_labels, access.allow.kubernetes_labels, access.allow.db_labels):
        assert dict(selector) == {"*": ("*",)}
    assert access.allow.kubernetes_groups == ("{{internal.kubernetes_groups}}",)
    assert access.allow.kubernetes_users == ("{{internal.kubernetes_users}}",)
    assert access.allow.db_names == ("{{internal.db_names}}",)
    assert access.allow.db_users == ("{{internal.db_users}}",)
    assert access.allow.rules == ()
    assert access.options.device_trust_mode == ""
    assert access.deny.is_empty()


def test_editor_administers_everything_without_logins() -> None:
    editor = presets()["editor"]

    assert editor.allow.rules == (Rule(("*",), ("*",)),)
    assert editor.allow.logins == ()
    assert not editor.allow.node_labels
    assert editor.deny.is_empty()


def test_auditor_reads_events_and_sessions() -> None:
    assert presets()["auditor"].allow.rules == (
        Rule(("event",), ("list", "read")),
        Rule(("session",), ("list", "read")),
    )


def test_device_admin_has_every_device_verb() -> None:
    (rule,) = presets()["device-admin"].allow.rules

    assert rule.resources == ("device",)
    assert set(rule.verbs) == {"create", "read", "list", "update", "delete", "create_enroll_token", "enroll"}


def test_device_enroll_only_enrolls() -> None:
    assert presets()["device-enroll"].allow.rules == (Rule(("device",), ("enroll",)),)


def test_require_trusted_device() -> None:
    role = presets()["require-trusted-device"]

    assert role.options.device_trust_mode == "required"
    assert role.allow.logins == ("{{internal.logins}}",)
    assert role.allow.kubernetes_groups == ("{{internal.kubernetes_groups}}", "developers")
    assert role.allow.db_names == ("*",)
    assert role.allow.db_users == ("*",)
    assert role.metadata.description == ""


@pytest.mark.parametrize("name", [n for n in PRESET_ROLE_NAMES if n != "require-trusted-device"])
def test_only_require_trusted_device_sets_a_mode(name: str) -> None:
    assert presets()[name].options.device_trust_mode == ""
