"""Errors cross the wire as ``{"kind", "message"}`` and come back as the class that raised them."""

from __future__ import annotations

import httpx
import pytest

# Imported for the error classes they define next to their code.
import devicetrust.ceremony.messages
import devicetrust.device.collect
import devicetrust.device.tpm
import devicetrust.mdm.jamf.errors
from devicetrust.client import error_from_response
from devicetrust.errors import DevicetrustError, RateLimitedError, error_class


def every_error_class() -> list[type[DevicetrustError]]:
    found: list[type[DevicetrustError]] = []
    pending: list[type[DevicetrustError]] = [DevicetrustError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def reply(kind: str, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(400, json={"error": {"kind": kind, "message": message}}, headers=headers)


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda cls: cls.__name__)
def test_every_kind_comes_back_as_its_first_class(cls: type[DevicetrustError]) -> None:
    rebuilt = error_from_response(reply(cls.kind, "one line"))
    assert isinstance(rebuilt, error_class(cls.kind)) and str(rebuilt) == "one line"
    assert rebuilt.kind == cls.kind and issubclass(cls, error_class(cls.kind))


def test_the_ceremony_kind_is_known() -> None:
    assert error_class("device_trust") is devicetrust.ceremony.messages.CeremonyError


def test_a_rate_limit_keeps_its_retry_after() -> None:
    rebuilt = error_from_response(reply("rate_limited", "slow down", {"retry-after": "60"}))
    assert isinstance(rebuilt, RateLimitedError) and rebuilt.retry_after == 60


def test_an_unknown_kind_is_a_plain_error() -> None:
    rebuilt = error_from_response(reply("from_the_future", "newer server"))
    assert type(rebuilt) is DevicetrustError and str(rebuilt) == "newer server"
