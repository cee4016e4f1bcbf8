"""What the Kubernetes tests share: the real kubectl, run against the fake API server or the kube service."""

from __future__ import annotations

import os
import shutil
import subprocess
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
