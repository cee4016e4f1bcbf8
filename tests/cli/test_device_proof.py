"""Which device key backend tsh uses: the flag, else $DEVICETRUST_DEVICE_KEY, else the platform's hardware."""

from __future__ import annotations

from pathlib import Path

import pytest

from devicetrust.cli.device_proof import ENV_DEVICE_KEY, chosen_backend
from devicetrust.device.keys import default_backend, open_device_key
from devicetrust.errors import ValidationError


def test_the_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DEVICE_KEY, "tpm")
    assert chosen_backend("unsafe-software") == "unsafe-software"


def test_the_environment_names_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DEVICE_KEY, "unsafe-software")
    assert chosen_backend() == "unsafe-software"


def test_without_either_the_platform_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DEVICE_KEY, raising=False)
    assert chosen_backend() == default_backend()


def test_an_unknown_backend_in_the_environment_is_named_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DEVICE_KEY, "yubikey")
    with pytest.raises(ValidationError) as raised:
        chosen_backend()
    assert str(raised.value) == (
        "DEVICETRUST_DEVICE_KEY: expected one of tpm, secure-enclave, unsafe-software, got 'yubikey'"
    )


def test_the_key_layer_names_no_command_line_flag(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"^unknown device key backend 'yubikey' \(expected one of "):
        open_device_key("yubikey", tmp_path)
