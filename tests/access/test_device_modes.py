from __future__ import annotations

from collections.abc import Iterable

import pytest

from devicetrust.access import UNAUTHORIZED_DEVICE, device_required, strictest_mode
from devicetrust.errors import AccessDeniedError, ValidationError
from devicetrust.types import DEVICE_TRUST_MODES

STRICTNESS = ("off", "optional", "required-for-humans", "required")


def test_strictness_covers_every_mode() -> None:
    assert sorted(STRICTNESS) == sorted(DEVICE_TRUST_MODES)


@pytest.mark.parametrize(
    ("modes", "strictest"),
    [
        ([], ""),
        ([""], ""),
        (["", ""], ""),
        (["off"], "off"),
        (["off", ""], "off"),
        (["optional", "off"], "optional"),
        (["off", "optional"], "optional"),
        (["required-for-humans", "optional"], "required-for-humans"),
        (["required", "required-for-humans"], "required"),
        (["required-for-humans", "required"], "required"),
        (["off", "required", "optional"], "required"),
        (["", "off", "", "required-for-humans", "optional"], "required-for-humans"),
    ],
)
def test_strictest_mode(modes: list[str], strictest: str) -> None:
    assert strictest_mode(modes) == strictest
    assert strictest_mode(reversed(modes)) == strictest
    assert strictest_mode(iter(modes)) == strictest


@pytest.mark.parametrize("lower", range(len(STRICTNESS)))
@pytest.mark.parametrize("higher", range(len(STRICTNESS)))
def test_strictest_follows_the_order(lower: int, higher: int) -> None:
    expected = STRICTNESS[max(lower, higher)]

    assert strictest_mode([STRICTNESS[lower], STRICTNESS[higher]]) == expected


@pytest.mark.parametrize("unknown", ["strict", "Required", "on", " off", "required_for_humans"])
def test_unknown_mode_raises(unknown: str) -> None:
    with pytest.raises(ValidationError, match="unknown device trust mode"):
        strictest_mode(["required", unknown])


@pytest.mark.parametrize("unknown", [None, False, 1, ["required"]])
def test_non_string_mode_raises(unknown: object) -> None:
    with pytest.raises(ValidationError, match="unknown device trust mode"):
        strictest_mode(["optional", unknown])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("cluster", "roles", "human", "bot"),
    [
        ("off", [], False, False),
        ("optional", [], False, False),
        ("", [], False, False),
        ("required", [], True, True),
        ("required-for-humans", [], True, False),
        ("off", ["required"], True, True),
        ("optional", ["required-for-humans"], True, False),
        ("optional", ["", "off"], False, False),
        ("required-for-humans", ["required"], True, True),
        ("required", ["off"], True, True),
        ("required", ["required-for-humans"], True, True),
        ("off", ["optional", "required-for-humans", ""], True, False),
        ("", ["required"], True, True),
    ],
)
def test_device_required(cluster: str, roles: list[str], human: bool, bot: bool) -> None:
    assert device_required(cluster, roles, is_bot=False) is human
    assert device_required(cluster, roles, is_bot=True) is bot


@pytest.mark.parametrize(
    ("cluster", "roles"),
    [("strict", []), ("off", ["optional", "bogus"]), ("required", ["Required"]), ("", [None])],
)
def test_unknown_mode_denies(cluster: str, roles: Iterable[str]) -> None:
    for is_bot in (False, True):
        with pytest.raises(AccessDeniedError) as info:
            device_required(cluster, roles, is_bot=is_bot)
        assert str(info.value) == UNAUTHORIZED_DEVICE == "unauthorized device"


def test_role_modes_may_be_any_iterable() -> None:
    assert device_required("off", (mode for mode in ["required"]), is_bot=False) is True
