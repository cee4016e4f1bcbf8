"""Simulated TPM devices with swtpm, for tests and the demo.

A device is a directory: ``tpm/`` (the TPM state), ``ca/`` (the swtpm local CA that signed its EK certificate,
unless a shared one is given) and the config files ``swtpm_setup`` reads. Command line::

    python -m devicetrust.device.swtpm manufacture --dir D [--ca-dir C]
    python -m devicetrust.device.swtpm start --dir D [--port P]     # prints the TCTI string
    python -m devicetrust.device.swtpm stop --dir D
    python -m devicetrust.device.swtpm ca --dir D                   # prints the EK CA PEMs
    python -m devicetrust.device.swtpm boot --dir D --event-log F   # measured boot + its event log
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final

from devicetrust.attestation import build_event_log
from devicetrust.errors import DevicetrustError

if TYPE_CHECKING:
    from .tpm import TPMDevice

__all__ = [
    "DEFAULT_SIMULATED_BOOT",
    "SimulatedTPM",
    "SwtpmError",
    "ek_ca_certificates",
    "main",
    "manufacture",
    "missing_tools",
    "simulate_measured_boot",
]

TOOLS: Final = ("swtpm", "swtpm_setup", "swtpm_ioctl", "swtpm_localca")
TPM_STATE_DIR: Final = "tpm"
CA_DIR: Final = "ca"
SETUP_CONFIG: Final = "swtpm_setup.conf"
LOCALCA_CONFIG: Final = "swtpm-localca.conf"
LOCALCA_OPTIONS: Final = "swtpm-localca.options"
PID_FILE: Final = "swtpm.pid"
PORT_FILE: Final = "swtpm.port"
LOG_FILE: Final = "swtpm.log"
ROOT_CA_FILE: Final = "swtpm-localca-rootca-cert.pem"
ISSUER_CA_FILE: Final = "issuercert.pem"
#: swtpm_setup takes ~0.7 s (the first run also creates the CA); allow for a loaded machine
SETUP_TIMEOUT_S: Final = 60.0
#: swtpm listens within ~10 ms
START_TIMEOUT_S: Final = 5.0
STOP_TIMEOUT_S: Final = 5.0
#: a port pair picked at random can be taken before swtpm binds it
MAX_START_ATTEMPTS: Final = 5
_POLL_INTERVAL_S: Final = 0.005
_LOOPBACK: Final = "127.0.0.1"
_DESCRIPTION: Final = "Simulated TPM devices with swtpm, for tests and the demo."
#: what a simulated device measures when it "boots": (PCR, event data)
DEFAULT_SIMULATED_BOOT: Final[tuple[tuple[int, bytes], ...]] = (
    (0, b"devicetrust simulated firmware 1.0"),
    (2, b"devicetrust simulated option ROMs"),
    (4, b"devicetrust simulated boot loader"),
    (7, b"secure boot: enabled"),
)


class SwtpmError(DevicetrustError):
    """swtpm is missing, or failed to manufacture / start / stop a simulated device."""

    kind = "swtpm"


def missing_tools() -> list[str]:
    """The swtpm programs not found on PATH (empty when simulated devices can run)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _require_tools() -> None:
    missing = missing_tools()
    if missing:
        raise SwtpmError(f"swtpm is not installed (missing {', '.join(missing)}; apt install swtpm swtpm-tools)")


def _tail(text: str | bytes, lines: int = 3) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _write_configs(state_dir: Path, ca_dir: Path) -> Path:
    localca = shutil.which("swtpm_localca") or "swtpm_localca"
    (state_dir / LOCALCA_CONFIG).write_text(
        f"statedir = {ca_dir}\n"
        f"signingkey = {ca_dir / 'signkey.pem'}\n"
        f"issuercert = {ca_dir / ISSUER_CA_FILE}\n"
        f"certserial = {ca_dir / 'certserial'}\n"
    )
    (state_dir / LOCALCA_OPTIONS).write_text(
        "--platform-manufacturer devicetrust\n--platform-version 2.1\n--platform-model swtpm\n"
    )
    setup = state_dir / SETUP_CONFIG
    setup.write_text(
        f"create_certs_tool = {localca}\n"
        f"create_certs_tool_config = {state_dir / LOCALCA_CONFIG}\n"
        f"create_certs_tool_options = {state_dir / LOCALCA_OPTIONS}\n"
        "active_pcr_banks = sha256\n"
    )
    return setup


def manufacture(state_dir: Path, *, ca_dir: Path | None = None) -> None:
    """Create a new TPM in ``state_dir``: SRK at 0x81000001, RSA-2048 and P-384 EKs with certificates signed by a
    local CA (in ``ca_dir``, default ``state_dir/ca``; share one to give many devices the same EK CA), platform
    certificate, SHA-256 PCR bank, NV locked. Overwrites an existing TPM there."""
    _require_tools()
    state_dir = state_dir.resolve()
    ca_dir = (ca_dir or state_dir / CA_DIR).resolve()
    tpm_dir = state_dir / TPM_STATE_DIR
    for directory in (state_dir, ca_dir, tpm_dir):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = _write_configs(state_dir, ca_dir)
    argv = [
        "swtpm_setup",
        "--tpm2",
        "--tpmstate",
        str(tpm_dir),
        "--config",
        str(config),
        "--create-ek-cert",
        "--create-platform-cert",
        "--create-spk",
        "--lock-nvram",
        "--overwrite",
        "--pcr-banks",
        "sha256",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=SETUP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SwtpmError(f"swtpm_setup did not finish within {SETUP_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise SwtpmError(f"swtpm_setup failed ({done.returncode}): {_tail(done.stderr or done.stdout)}")


def _ca_dir(state_dir: Path) -> Path:
    """The CA directory recorded in the device's swtpm-localca.conf."""
    try:
        lines = (state_dir / LOCALCA_CONFIG).read_text().splitlines()
    except OSError:
        raise SwtpmError(f"{state_dir} is not a manufactured swtpm device") from None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "statedir":
            return Path(value.strip())
    raise SwtpmError(f"{state_dir / LOCALCA_CONFIG} names no CA directory")


def ek_ca_certificates(state_dir: Path) -> list[str]:
    """The PEMs of the CA that signed the device's EK certificate: [issuer (intermediate), root]."""
    ca_dir = _ca_dir(state_dir.resolve())
    try:
        return [(ca_dir / name).read_text() for name in (ISSUER_CA_FILE, ROOT_CA_FILE)]
    except OSError:
        raise SwtpmError(f"no swtpm local CA in {ca_dir}") from None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((_LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_port_pair() -> int:
    """A port P with P+1 also free (swtpm's TCTI assumes the control port is P+1)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((_LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port < 65535 and _port_free(port + 1):
            return port
    raise SwtpmError("no free port pair on 127.0.0.1")


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((_LOOPBACK, port)) == 0


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by init) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # /proc/PID/stat is "pid (comm) state ..."; comm may contain spaces, the state follows the last ")"
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class SimulatedTPM:
    """A running swtpm for a manufactured device. ``with SimulatedTPM(d) as tpm: TPMDevice(tpm.tcti)``.

    By default swtpm runs as a child process that ``stop()`` always reaps. ``detach=True`` (the CLI's ``start``)
    lets it daemonize so it outlives this process; ``SimulatedTPM.running(d).stop()`` stops it later.
    """

    def __init__(self, state_dir: Path, *, port: int | None = None, detach: bool = False) -> None:
        self.state_dir = state_dir.resolve()
        self._requested_port = port
        self._detach = detach
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        #: the pid of a detached swtpm (read before stopping: swtpm deletes its pid file on exit)
        self._daemon_pid: int | None = None
        self.port: int | None = None

    @classmethod
    def running(cls, state_dir: Path) -> SimulatedTPM:
        """The detached swtpm started earlier for ``state_dir`` (from its port file)."""
        tpm = cls(state_dir, detach=True)
        try:
            tpm.port = int((tpm.state_dir / PORT_FILE).read_text().strip())
        except (OSError, ValueError):
            raise SwtpmError(f"no simulated TPM is running for {state_dir}") from None
        tpm._daemon_pid = _read_pid(tpm.state_dir / PID_FILE)
        return tpm

    @property
    def tcti(self) -> str:
        if self.port is None:
            raise SwtpmError("the simulated TPM is not running")
        return f"swtpm:host={_LOOPBACK},port={self.port}"

    def __enter__(self) -> SimulatedTPM:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _argv(self, port: int) -> list[str]:
        argv = [
            "swtpm",
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={self.state_dir / TPM_STATE_DIR}",
            "--server",
            f"type=tcp,port={port},bindaddr={_LOOPBACK}",
            "--ctrl",
            f"type=tcp,port={port + 1},bindaddr={_LOOPBACK}",
            # startup-clear: the TPM is ready for commands (and its PCRs are reset) without TPM2_Startup
            "--flags",
            "not-need-init,startup-clear",
            "--pid",
            f"file={self.state_dir / PID_FILE}",
            "--log",
            f"file={self.state_dir / LOG_FILE}",
        ]
        if self._detach:
            argv.append("--daemon")
        return argv

    def start(self) -> None:
        _require_tools()
        if self.port is not None:
            raise SwtpmError("the simulated TPM is already running")
        if not (self.state_dir / TPM_STATE_DIR).is_dir():
            raise SwtpmError(f"{self.state_dir} is not a manufactured swtpm device")
        attempts = 1 if self._requested_port else MAX_START_ATTEMPTS
        reason = ""
        for _ in range(attempts):
            port = self._requested_port or _free_port_pair()
            reason = self._try_start(port)
            if not reason:
                self.port = port
                if self._detach:
                    (self.state_dir / PORT_FILE).write_text(f"{port}\n")
                return
        raise SwtpmError(f"swtpm did not start: {reason}")

    def _try_start(self, port: int) -> str:
        """Start swtpm on ``port``/``port+1`` and wait until it listens; returns "" or why it failed."""
        (self.state_dir / PID_FILE).unlink(missing_ok=True)
        log = (self.state_dir / LOG_FILE).open("ab")
        proc = subprocess.Popen(self._argv(port), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None and (code != 0 or not self._detach):
                log.close()
                return f"swtpm exited with {code} (see {self.state_dir / LOG_FILE})"
            if _listening(port) and _listening(port + 1):
                if self._detach:
                    proc.wait(timeout=START_TIMEOUT_S)  # the foreground half of --daemon exits at once
                    log.close()
                    self._daemon_pid = _read_pid(self.state_dir / PID_FILE)
                else:
                    self._proc, self._log = proc, log
                return ""
            time.sleep(_POLL_INTERVAL_S)
        self._kill(proc)
        log.close()
        return f"not listening after {START_TIMEOUT_S:.0f} s"

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Shut swtpm down (control-channel shutdown, then SIGTERM) and reap it. Idempotent."""
        port, proc = self.port, self._proc
        self.port, self._proc = None, None
        if port is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["swtpm_ioctl", "--tcp", f"{_LOOPBACK}:{port + 1}", "-s"],
                    capture_output=True,
                    timeout=STOP_TIMEOUT_S,
                    check=False,
                )
        if proc is not None:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._kill(proc)
        elif port is not None:
            self._stop_daemon()
        if self._log is not None:
            self._log.close()
            self._log = None
        (self.state_dir / PORT_FILE).unlink(missing_ok=True)

    def _stop_daemon(self) -> None:
        """A detached swtpm is not our child: wait for its pid to go, SIGTERM it if it lingers."""
        pid, self._daemon_pid = self._daemon_pid, None
        if pid is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL_S)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def simulate_measured_boot(device: TPMDevice, events: Sequence[tuple[int, bytes]] = DEFAULT_SIMULATED_BOOT) -> bytes:
    """Extend the device's PCRs as firmware would for ``events`` and return the matching event log.

    Call it once after the simulated TPM starts (startup-clear zeroes the PCRs); the log then replays to the
    quoted PCR values."""
    log, _ = build_event_log(events)
    for pcr, data in events:
        device.extend_pcr(pcr, hashlib.sha256(data).digest())
    return log


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devicetrust.device.swtpm", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("manufacture", help="create a new simulated TPM in DIR")
    make.add_argument("--dir", type=Path, required=True)
    make.add_argument("--ca-dir", type=Path, help="a local CA shared by several devices (default DIR/ca)")
    start = commands.add_parser("start", help="start swtpm for DIR in the background and print its TCTI")
    start.add_argument("--dir", type=Path, required=True)
    start.add_argument("--port", type=int, help="server port (the control port is PORT+1); default: a free one")
    stop = commands.add_parser("stop", help="stop the swtpm started for DIR")
    stop.add_argument("--dir", type=Path, required=True)
    ca = commands.add_parser("ca", help="print the EK CA certificates (PEM) of DIR")
    ca.add_argument("--dir", type=Path, required=True)
    boot = commands.add_parser("boot", help="measure a simulated boot into the running TPM of DIR")
    boot.add_argument("--dir", type=Path, required=True)
    boot.add_argument("--event-log", type=Path, required=True, help="where to write the matching event log")
    args = parser.parse_args(argv)
    try:
        if args.command == "manufacture":
            manufacture(args.dir, ca_dir=args.ca_dir)
        elif args.command == "start":
            tpm = SimulatedTPM(args.dir, port=args.port, detach=True)
            tpm.start()
            print(tpm.tcti)
        elif args.command == "stop":
            SimulatedTPM.running(args.dir).stop()
        elif args.command == "boot":
            from .tpm import TPMDevice

            with TPMDevice(SimulatedTPM.running(args.dir).tcti) as device:
                args.event_log.write_bytes(simulate_measured_boot(device))
        else:
            print("".join(ek_ca_certificates(args.dir)), end="")
    except DevicetrustError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
