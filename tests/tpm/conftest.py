"""Two simulated devices (swtpm) for the module: A with its own local CA, B sharing A's CA. Each is started,
measured-booted (PCRs extended to match a simulated event log) and connected with TPMDevice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tpm.helpers import Device, require_swtpm


def _start(state_dir: Path) -> Iterator[Device]:
    from devicetrust.device.swtpm import SimulatedTPM, simulate_measured_boot
    from devicetrust.device.tpm import TPMDevice

    with SimulatedTPM(state_dir) as sim, TPMDevice(sim.tcti) as tpm:
        yield Device(state_dir, sim, tpm, simulate_measured_boot(tpm))


@pytest.fixture(scope="module")
def device_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    require_swtpm()
    from devicetrust.device.swtpm import manufacture

    state_dir = tmp_path_factory.mktemp("device-a")
    manufacture(state_dir)
    yield from _start(state_dir)


@pytest.fixture(scope="module")
def device_b(tmp_path_factory: pytest.TempPathFactory, device_a: Device) -> Iterator[Device]:
    from devicetrust.device.swtpm import manufacture

    state_dir = tmp_path_factory.mktemp("device-b")
    manufacture(state_dir, ca_dir=device_a.dir / "ca")
    yield from _start(state_dir)
