from __future__ import annotations

from datetime import timedelta

import pytest

from devicetrust.types import FieldError, TraitTemplate, format_duration, parse_duration, parse_template


@pytest.mark.parametrize(
    ("value", "template"),
    [
        ("{{internal.logins}}", TraitTemplate("", "internal", "logins", "")),
        ("{{external.groups}}", TraitTemplate("", "external", "groups", "")),
        ("{{  internal.logins  }}", TraitTemplate("", "internal", "logins", "")),
        ("pre-{{internal.logins}}", TraitTemplate("pre-", "internal", "logins", "")),
        ("{{internal.logins}}-suf", TraitTemplate("", "internal", "logins", "-suf")),
        ("a{{external.x.y}}b", TraitTemplate("a", "external", "x.y", "b")),
        ("{{internal.db_users}}", TraitTemplate("", "internal", "db_users", "")),
        ("{{external.team-1}}", TraitTemplate("", "external", "team-1", "")),
    ],
)
def test_parse_template(value: str, template: TraitTemplate) -> None:
    assert parse_template(value) == template


@pytest.mark.parametrize("value", ["root", "", "*", "a{b}", "{x}", "^{2}$", "a}b{c"])
def test_literals_are_not_templates(value: str) -> None:
    assert parse_template(value) is None


@pytest.mark.parametrize(
    ("value", "once_per_value"),
    [
        ("{{internal.logins", True),
        ("internal.logins}}", True),
        ("}}internal.logins{{", True),
        ("{{internal.a}}{{internal.b}}", True),
        ("{{internal.a}}}}", True),
        ("{{internal}}", False),
        ("{{internal.}}", False),
        ("{{.logins}}", False),
        ("{{secret.logins}}", False),
        ("{{Internal.logins}}", False),
        ("{{internal.lo gins}}", False),
        ("{{internal.logins | upper}}", False),
        ('{{regexp.replace(external.groups, "^(.*)$", "$1")}}', False),
        ("{{}}", False),
    ],
)
def test_malformed_templates(value: str, once_per_value: bool) -> None:
    with pytest.raises(FieldError) as info:
        parse_template(value, "spec.allow.logins[0]")

    message = str(info.value)
    assert message.startswith(f'spec.allow.logins[0]: invalid template "{value}": expected {{{{internal.NAME}}}}')
    assert message.endswith("once per value") is once_per_value


def test_template_expand_skips_empty_values() -> None:
    template = TraitTemplate("p-", "internal", "logins", "-s")

    assert list(template.expand(["a", "", "b"])) == ["p-a-s", "p-b-s"]


@pytest.mark.parametrize(
    ("text", "duration", "canonical"),
    [
        ("8h", timedelta(hours=8), "8h"),
        ("30m", timedelta(minutes=30), "30m"),
        ("45s", timedelta(seconds=45), "45s"),
        ("1h30m", timedelta(hours=1, minutes=30), "1h30m"),
        ("1h0m5s", timedelta(hours=1, seconds=5), "1h5s"),
        ("90m", timedelta(minutes=90), "1h30m"),
        ("3600s", timedelta(hours=1), "1h"),
        ("30h", timedelta(hours=30), "30h"),
        ("2h3m4s", timedelta(hours=2, minutes=3, seconds=4), "2h3m4s"),
    ],
)
def test_durations(text: str, duration: timedelta, canonical: str) -> None:
    assert parse_duration(text) == duration
    assert format_duration(duration) == canonical
    assert parse_duration(format_duration(duration)) == duration


@pytest.mark.parametrize(
    "text",
    ["", "8", "h", "0h", "0m0s", "-1h", "1.5h", "1d", "30m1h", "8H", " 8h", "8h ", "1h 30m", "1234567890h"],
)
def test_invalid_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize("duration", [timedelta(0), timedelta(seconds=-1), timedelta(milliseconds=1500)])
def test_unformattable_durations(duration: timedelta) -> None:
    with pytest.raises(ValueError, match="not a positive whole number of seconds"):
        format_duration(duration)
