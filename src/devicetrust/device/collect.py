"""What a device says about itself: serial (asset tag), model, OS, login user.

Collectors read the machine; the parsing they rely on is pure and tested on fixture files. Linux reads DMI from
sysfs and the OS from ``/etc/os-release``. The serials are root-only in sysfs, so a user's tsh reads the copy root
left in :data:`DMI_CACHE`, and only where there is none re-runs a tiny reader under sudo, which leaves that copy (as
Teleport does): a session proof, which collects every time, prompts for sudo once per machine, not per session.
The copy is no credential (the device key in the TPM is); root writes it so that a user's mistake cannot change
what the machine reports. macOS and Windows collectors sit behind the same interface.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from devicetrust.ceremony.messages import MAX_COLLECTED_FIELD_CHARS as MAX_FIELD_LENGTH
from devicetrust.ceremony.messages import CollectedData
from devicetrust.errors import DevicetrustError

#: Overrides the collected serial: for simulated devices and tests. The server still requires the serial to
#: match the registered device, so this grants nothing by itself.
ENV_ASSET_TAG = "DEVICETRUST_ASSET_TAG"
DMI_DIR = Path("/sys/class/dmi/id")
#: DMI values root read for users who cannot (written by ``sudo … dmi-read``; readable by all, writable by root).
DMI_CACHE = Path("/var/lib/devicetrust/dmi.json")
OS_RELEASE = Path("/etc/os-release")
#: Values firmware vendors ship when nobody set them; such a value is no serial at all.
PLACEHOLDER_SERIALS = frozenset(
    {
        "",
        "0",
        "none",
        "default string",
        "to be filled by o.e.m.",
        "system serial number",
        "not specified",
        "not applicable",
        "0123456789",
        "123456789",
    }
)


class CollectionError(DevicetrustError):
    kind = "device_collection"


def parse_os_release(text: str) -> dict[str, str]:
    """``/etc/os-release`` is shell-style KEY=value with optional quotes."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key.strip()] = value.replace('\\"', '"')
    return values


def clean_serial(value: str) -> str:
    value = value.strip()
    return "" if value.lower() in PLACEHOLDER_SERIALS else value


@dataclass(frozen=True)
class DMIValues:
    product_serial: str = ""
    board_serial: str = ""
    chassis_asset_tag: str = ""
    product_name: str = ""

    @property
    def serial(self) -> str:
        return self.product_serial or self.board_serial or self.chassis_asset_tag


def read_dmi(dmi_dir: Path = DMI_DIR) -> DMIValues:
    """Read DMI; raises PermissionError when the serials are root-only."""

    def read(name: str) -> str:
        try:
            return clean_serial((dmi_dir / name).read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    return DMIValues(
        product_serial=read("product_serial"),
        board_serial=read("board_serial"),
        chassis_asset_tag=read("chassis_asset_tag"),
        product_name=read("product_name"),
    )


def read_dmi_cache(path: Path = DMI_CACHE) -> DMIValues | None:
    """The values root left in ``path``; None where there are none or they are not a DMI record (read again)."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    names = {field.name for field in fields(DMIValues)}
    if not isinstance(values, dict) or set(values) != names or not all(isinstance(v, str) for v in values.values()):
        return None
    return DMIValues(**{name: clean_serial(value)[:MAX_FIELD_LENGTH] for name, value in values.items()})


def write_dmi_cache(values: DMIValues, path: Path = DMI_CACHE) -> None:
    """Leave ``values`` for users in ``path``, atomically (readers see the old file or the new, never a part)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        partial.write_text(json.dumps(asdict(values)))
        partial.chmod(0o644)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def read_dmi_with_sudo() -> DMIValues:
    """Re-run the DMI reader as root through sudo (prompting on the terminal if sudo needs to)."""
    sudo = shutil.which("sudo")
    if sudo is None:
        raise CollectionError(
            f"reading the device serial needs root; run as root, or set {ENV_ASSET_TAG} for a simulated device"
        )
    result = subprocess.run(
        [sudo, sys.executable, "-m", "devicetrust.device.collect", "dmi-read"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise CollectionError("reading the device serial needs root and 'sudo' did not succeed")
    return DMIValues(**json.loads(result.stdout))


def collect_linux(
    *,
    dmi_dir: Path = DMI_DIR,
    os_release: Path = OS_RELEASE,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
    allow_sudo: bool = True,
    dmi_cache: Path = DMI_CACHE,
) -> CollectedData:
    env = os.environ if environ is None else environ
    override = env.get(ENV_ASSET_TAG, "").strip()
    try:
        dmi = read_dmi(dmi_dir)
    except PermissionError:
        if override:
            dmi = DMIValues()
        else:
            dmi = read_dmi_cache(dmi_cache) or (read_dmi_with_sudo() if allow_sudo else DMIValues())
    serial = override or dmi.serial
    if not serial:
        raise CollectionError(f"this machine reports no serial number; set {ENV_ASSET_TAG} to its asset tag")
    try:
        release = parse_os_release(os_release.read_text())
    except OSError:
        release = {}
    return CollectedData(
        collect_time=(now or datetime.now(UTC)).isoformat(),
        os_type="linux",
        serial_number=serial[:MAX_FIELD_LENGTH],
        model_identifier=dmi.product_name,
        os_id=release.get("ID", ""),
        os_version=release.get("VERSION_ID", ""),
        os_build=platform.release(),
        os_username=_username(),
        system_serial_number=dmi.product_serial,
        base_board_serial_number=dmi.board_serial,
        reported_asset_tag=dmi.chassis_asset_tag,
    )


def collect_macos(*, environ: Mapping[str, str] | None = None, now: datetime | None = None) -> CollectedData:
    env = os.environ if environ is None else environ
    serial = env.get(ENV_ASSET_TAG, "").strip()
    model = ""
    if not serial:
        result = subprocess.run(
            ["ioreg", "-c", "IOPlatformExpertDevice", "-d", "2"], capture_output=True, text=True, check=False
        )
        for line in result.stdout.splitlines():
            if '"IOPlatformSerialNumber"' in line:
                serial = line.split("=", 1)[1].strip().strip('"')
            elif '"model"' in line:
                model = line.split("=", 1)[1].strip().strip('<>"')
    if not serial:
        raise CollectionError("could not read this Mac's serial number")
    version, _, _ = platform.mac_ver()
    return CollectedData(
        collect_time=(now or datetime.now(UTC)).isoformat(),
        os_type="macos",
        serial_number=serial,
        model_identifier=model,
        os_version=version,
        os_username=_username(),
    )


def collect_windows(*, environ: Mapping[str, str] | None = None, now: datetime | None = None) -> CollectedData:
    env = os.environ if environ is None else environ
    serial = env.get(ENV_ASSET_TAG, "").strip()
    if not serial:
        result = subprocess.run(
            ["powershell", "-NoProfile", "-Command", "(Get-CimInstance Win32_BIOS).SerialNumber"],
            capture_output=True,
            text=True,
            check=False,
        )
        serial = clean_serial(result.stdout)
    if not serial:
        raise CollectionError("could not read this PC's serial number")
    return CollectedData(
        collect_time=(now or datetime.now(UTC)).isoformat(),
        os_type="windows",
        serial_number=serial,
        os_version=platform.version(),
        os_username=_username(),
    )


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def collect() -> CollectedData:
    """Collect on this machine, whatever it is."""
    if sys.platform == "darwin":
        return collect_macos()
    if sys.platform == "win32":
        return collect_windows()
    return collect_linux()


def _dmi_read_main() -> None:
    """Run as root (through sudo): print the DMI values, and leave them for later reads by users."""
    values = read_dmi(DMI_DIR)
    try:
        write_dmi_cache(values, DMI_CACHE)
    except OSError as err:
        print(f"devicetrust: could not keep the DMI values in {DMI_CACHE}: {err}", file=sys.stderr)
    print(json.dumps(asdict(values)))


if __name__ == "__main__" and sys.argv[1:] == ["dmi-read"]:
    _dmi_read_main()
