from __future__ import annotations

from collections.abc import Sequence

import pytest

from devicetrust.access import expand_traits
from devicetrust.errors import ValidationError

TRAITS = {
    "logins": ["alice", "ubuntu"],
    "kubernetes_groups": ["devs"],
    "groups": ["admins", "devs"],
    "empty": [],
    "blank": [""],
}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], ()),
        (["root"], ("root",)),
        (["{{internal.logins}}"], ("alice", "ubuntu")),
        (["{{external.logins}}"], ("alice", "ubuntu")),
        (["{{ internal.logins }}"], ("alice", "ubuntu")),
        (["{{internal.missing}}"], ()),
        (["{{external.missing}}", "root"], ("root",)),
        (["{{internal.empty}}"], ()),
        (["{{internal.blank}}"], ()),
        (["adm-{{internal.logins}}"], ("adm-alice", "adm-ubuntu")),
        (["{{internal.logins}}-x"], ("alice-x", "ubuntu-x")),
        (["a{{external.groups}}b"], ("aadminsb", "adevsb")),
        (["{{internal.kubernetes_groups}}", "developers"], ("devs", "developers")),
        (["devs", "{{internal.kubernetes_groups}}"], ("devs",)),
        (["{{internal.groups}}", "{{internal.kubernetes_groups}}"], ("admins", "devs")),
        (["ubuntu", "{{internal.logins}}", "root", "root"], ("ubuntu", "alice", "root")),
        (["*"], ("*",)),
        (["^x$"], ("^x$",)),
    ],
)
def test_expand_traits(values: list[str], expected: tuple[str, ...]) -> None:
    assert expand_traits(values, TRAITS) == expected


def test_no_traits_at_all() -> None:
    assert expand_traits(["{{internal.logins}}", "root"], {}) == ("root",)


def test_a_string_trait_value_is_one_value_not_characters() -> None:
    traits: dict[str, Sequence[str]] = {"logins": "root"}

    assert expand_traits(["{{internal.logins}}"], traits) == ("root",)


def test_trait_values_are_not_expanded_again() -> None:
    assert expand_traits(["{{internal.logins}}"], {"logins": ["{{internal.secret}}"]}) == ("{{internal.secret}}",)


def test_tuples_are_accepted() -> None:
    assert expand_traits(("{{internal.logins}}",), {"logins": ("a",)}) == ("a",)


@pytest.mark.parametrize("value", ["{{internal.logins", "{{bad}}", "{{internal.a}}{{internal.b}}"])
def test_malformed_template_raises(value: str) -> None:
    with pytest.raises(ValidationError, match="invalid template"):
        expand_traits([value], TRAITS)
