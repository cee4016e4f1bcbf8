"""A real cluster: the `devicetrust` daemon as a subprocess on an ephemeral port, driven by the real CLIs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devicetrust.config import render_default_config

BIN = Path(sys.executable).parent
START_TIMEOUT_SECONDS = 30
PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    root: Path
    config_path: Path
    proxy: str
    process: subprocess.Popen[bytes]
    log_path: Path
    homes: dict[str, Path] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVICETRUST_", "TSH_"))}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        if "DEVICETRUST_CONFIG" not in extra:
            # No admin identity in the default data dir: tctl without a config must fall back to the tsh profile.
            # (With a config, the variable would beat the file's data_dir.)
            env["DEVICETRUST_DATA_DIR"] = str(self.root / "no-data-dir")
        env["HOME"] = str(self.root / "home")
        env.update(extra)
        return env

    def run(
        self, program: str, *args: str, input: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / program), *args],
            input=input,
            capture_output=True,
            text=True,
            env=dict(env or self.env()),
            timeout=120,
            check=False,
        )

    def tctl(self, *args: str, input: str | None = None, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return self.run("tctl", *args, input=input, env=self.env(DEVICETRUST_CONFIG=str(self.config_path), **extra_env))

    def home(self, name: str) -> Path:
        return self.homes.setdefault(name, self.root / "tsh" / name)

    def tsh(self, who: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.run("tsh", *args, input=input, env=self.env(TSH_HOME=str(self.home(who))))

    def tctl_as(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        """tctl with no config: it uses the tsh profile of ``who``."""
        return self.run("tctl", *args, env=self.env(TSH_HOME=str(self.home(who))))

    def add_user(self, name: str, roles: str = "access", logins: str = "") -> str:
        args = ["users", "add", name, f"--roles={roles}", "--format=json"]
        if logins:
            args.append(f"--logins={logins}")
        result = self.tctl(*args)
        assert result.returncode == 0, result.stderr
        return str(json.loads(result.stdout)["invite_token"])

    def signup_and_login(self, name: str, roles: str = "access", logins: str = "") -> dict[str, object]:
        token = self.add_user(name, roles, logins)
        result = self.tsh(
            name,
            "login",
            f"--proxy={self.proxy}",
            f"--user={name}",
            f"--token={token}",
            "--password-stdin",
            "--format=json",
            input=PASSWORD + "\n",
        )
        assert result.returncode == 0, result.stderr
        status: dict[str, object] = json.loads(result.stdout)
        return status

    def login(self, name: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
        return self.tsh(
            name,
            "login",
            f"--proxy={self.proxy}",
            f"--user={name}",
            "--password-stdin",
            input=password + "\n",
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def start_cluster(
    root: Path, storage_url: str = "", port: int = 0, extra_config: str = "", auth_workers: int | None = None
) -> Cluster:
    """Start ``devicetrust start`` on its own data dir; ``storage_url`` selects PostgreSQL; ``extra_config``: more
    top-level sections of devicetrust.yaml (e.g. jamf_service); ``auth_workers``: auth_service.workers (default:
    the daemon's, one per CPU)."""
    root.mkdir(parents=True, exist_ok=True)
    proxy = f"127.0.0.1:{port or free_port()}"
    config_path = root / "devicetrust.yaml"
    text = render_default_config(
        cluster_name="test.cluster",
        data_dir=root / "data",
        listen_addr=proxy,
        ssh_listen_addr=f"127.0.0.1:{free_port()}",
    )
    if storage_url:
        text = text.replace("    type: sqlite ", f"    type: postgres\n    conn_string: {storage_url}\n    #")
    if auth_workers is not None:
        text = text.replace("  # workers: 2\n", f"  workers: {auth_workers}\n")
        assert f"workers: {auth_workers}" in text
    config_path.write_text(text + extra_config)
    log_path = root / "devicetrust.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(BIN / "devicetrust"), "start", "--config", str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(root / "home")},
        )
    cluster = Cluster(root, config_path, proxy, process, log_path)
    identity = root / "data" / "admin" / "identity.json"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"devicetrust exited early:\n{log_path.read_text()}")
        if identity.exists() and cluster.tctl("status").returncode == 0:
            return cluster
        time.sleep(0.2)
    cluster.stop()
    raise AssertionError(f"devicetrust did not become ready:\n{log_path.read_text()}")
