"""Skip-or-fail for tests that need the TPM stack: skipped on a laptop without swtpm, a failure on CI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from devicetrust.device.swtpm import SimulatedTPM
    from devicetrust.device.tpm import TPMDevice


@dataclass
class Device:
    """A running simulated device (see conftest.py)."""

    dir: Path
    sim: SimulatedTPM
    tpm: TPMDevice
    #: the event log matching the PCRs its simulated boot extended
    event_log: bytes


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail when ``CI=true`` so a broken CI image cannot silently skip the TPM tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"TPM stack unavailable on CI: {reason}")
    pytest.skip(reason)


def require_tpm2_pytss() -> None:
    try:
        import tpm2_pytss  # noqa: F401
    except (ImportError, OSError) as exc:
        unavailable(f"tpm2-pytss cannot be imported: {exc}")


def require_swtpm() -> None:
    """tpm2-pytss and the swtpm programs."""
    require_tpm2_pytss()
    from devicetrust.device.swtpm import missing_tools

    missing = missing_tools()
    if missing:
        unavailable(f"swtpm is not installed (missing {', '.join(missing)})")
