from __future__ import annotations

import pytest

from devicetrust.access import label_matches, pattern_matches
from devicetrust.types import Labels

NODE = {"env": "prod", "team": "sre", "region": "eu-west-1", "kernel": "6.1"}


def selector(**values: str | tuple[str, ...]) -> Labels:
    return {key: (value,) if isinstance(value, str) else value for key, value in values.items()}


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("*", "", True),
        ("*", "anything", True),
        ("prod", "prod", True),
        ("prod", "production", False),
        ("prod", "Prod", False),
        ("prod", "", False),
        ("eu-*", "eu-west-1", True),
        ("eu-*", "eu-", True),
        ("eu-*", "us-east-1", False),
        ("*-1", "eu-west-1", True),
        ("eu-*-1", "eu-west-1", True),
        ("eu-*-1", "eu-west-2", False),
        ("a.c", "abc", False),
        ("a.c", "a.c", True),
        ("6.*", "6.1", True),
        ("^prod$", "prod", True),
        ("^prod$", "prod\n", False),
        ("^prod$", "preprod", False),
        ("^prod.*$", "production", True),
        ("^(prod|staging)$", "staging", True),
        ("^(prod|staging)$", "dev", False),
        ("^pro", "production", False),
        ("^eu-[a-z]+-[0-9]$", "eu-west-1", True),
        ("^eu-[a-z]+-[0-9]$", "eu-west-10", False),
        ("^($", "(", False),
        ("{{internal.env}}", "{{internal.env}}", False),
        ("x-{{external.env}}", "x-prod", False),
    ],
)
def test_pattern_matches(pattern: str, value: str, matches: bool) -> None:
    assert pattern_matches(pattern, value) is matches


@pytest.mark.parametrize(
    ("sel", "labels", "matches"),
    [
        # '*': '*' matches everything, even no labels.
        (selector(**{"*": "*"}), NODE, True),
        (selector(**{"*": "*"}), {}, True),
        (selector(**{"*": ("x", "*")}), {}, True),
        # An empty selector matches nothing.
        ({}, NODE, False),
        ({}, {}, False),
        # Exact key and value.
        (selector(env="prod"), NODE, True),
        (selector(env="dev"), NODE, False),
        (selector(env="prod"), {}, False),
        (selector(env="prod"), {"Env": "prod"}, False),
        # Any of several values.
        (selector(env=("dev", "prod")), NODE, True),
        (selector(env=("dev", "staging")), NODE, False),
        # '*' value: the key must exist.
        (selector(env="*"), NODE, True),
        (selector(env="*"), {"env": ""}, True),
        (selector(owner="*"), NODE, False),
        # Every key must match.
        (selector(env="prod", team="sre"), NODE, True),
        (selector(env="prod", team="dev"), NODE, False),
        (selector(env="prod", owner="*"), NODE, False),
        # Regex values and keys.
        (selector(region="^eu-.*$"), NODE, True),
        (selector(region="^us-.*$"), NODE, False),
        (selector(region="^eu$"), NODE, False),
        (selector(**{"^te.*$": "sre"}), NODE, True),
        (selector(**{"^te.*$": "dev"}), NODE, False),
        (selector(**{"^x.*$": "*"}), NODE, False),
        # Glob values and keys.
        (selector(region="eu-*"), NODE, True),
        (selector(**{"reg*": "eu-*"}), NODE, True),
        # Wildcard key with a specific value: some label has that value.
        (selector(**{"*": "sre"}), NODE, True),
        (selector(**{"*": "qa"}), NODE, False),
        (selector(**{"*": "sre"}), {}, False),
        # The key and value must match on the same label.
        (selector(**{"^(env|team)$": "sre"}), {"env": "prod", "team": "sre"}, True),
        (selector(**{"^(env|owner)$": "sre"}), {"env": "prod", "team": "sre"}, False),
        # An unexpanded template value matches nothing.
        (selector(env="{{internal.env}}"), {"env": "{{internal.env}}"}, False),
    ],
)
def test_label_matches(sel: Labels, labels: dict[str, str], matches: bool) -> None:
    assert label_matches(sel, labels) is matches


def test_a_bare_string_value_is_one_pattern() -> None:
    assert label_matches({"env": "prod"}, {"env": "prod"})  # type: ignore[dict-item]
    assert not label_matches({"env": "prod"}, {"env": "p"})  # type: ignore[dict-item]
