"""What the Kubernetes tests share: the real kubectl, run against the fake API server or the kube service."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

KUBECTL_TIMEOUT_SECONDS = 60


def require_kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is required in CI")
        pytest.skip("kubectl is not installed")
    return path


def kubectl(kubeconfig: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real kubectl with ``kubeconfig`` (its cache under the kubeconfig's folder)."""
    home = kubeconfig.parent
    return subprocess.run(
        [require_kubectl(), f"--cache-dir={home / 'kube-cache'}", *args],
        env={**os.environ, **(env or {}), "KUBECONFIG": str(kubeconfig), "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT_SECONDS,
    )


def kubectl_env(kubeconfig: Path) -> dict[str, str]:
    """An environment for kubectl with just ``kubeconfig`` (and its folder as home)."""
    return {"KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent), "PATH": "/usr/bin:/bin"}


def start_kubectl(env: Mapping[str, str], *args: str, stdin: bool = False) -> subprocess.Popen[str]:
    """The real kubectl left running (a watch, ``logs -f``, ``exec -i``, ``port-forward``), its output piped."""
    return subprocess.Popen(
        [require_kubectl(), *args],
        env=dict(env),
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_port_forward(env: Mapping[str, str]) -> tuple[subprocess.Popen[str], int]:
    """The real ``kubectl port-forward pod/web-0 :8080`` left running, and its local port."""
    process = start_kubectl(env, "port-forward", "pod/web-0", ":8080")
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("Forwarding from 127.0.0.1:"), line + (process.stderr.read() if process.stderr else "")
    return process, int(line.split("127.0.0.1:", 1)[1].split()[0])


def echoed(port: int, data: bytes) -> bytes:
    """What a forwarded connection to ``port`` answers to ``data``."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        return conn.recv(4096)
