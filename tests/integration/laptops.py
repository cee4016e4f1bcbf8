"""A user with an enrolled device: signed up from a simulated laptop (its own swtpm), the laptop registered and
enrolled, and logged in again so the login certificates carry the device; and a thief holding a copy of that
laptop's profile but not its TPM."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.cluster import PASSWORD, Cluster, free_port
from tests.integration.test_cluster_cli import ok
from tests.integration.test_devices import Laptop, enroll_token


def enrolled_laptop(cluster: Cluster, root: Path, user: str, serial: str, *, roles: str, logins: str = "") -> Laptop:
    invite = cluster.add_user(user, roles=roles, logins=logins)
    laptop = Laptop(cluster, root, user, serial)
    try:
        ok(
            laptop.tsh(
                "login",
                f"--proxy={cluster.proxy}",
                f"--user={user}",
                f"--token={invite}",
                "--password-stdin",
                input=PASSWORD,
            )
        )
        ok(cluster.tctl("devices", "add", "--os=linux", f"--asset-tag={serial}"))
        ok(laptop.tsh("device", "enroll", f"--token={enroll_token(cluster, serial)}"))
        ok(laptop.login())
    except BaseException:
        laptop.stop()
        raise
    return laptop


#: How long an audit event may take to be listed after what caused it.
AUDIT_WAIT_SECONDS = 10.0


def copy_profile(laptop: Laptop, root: Path) -> Path:
    """A copy of ``laptop``'s profile under ``root``: the thief's home."""
    thief_home = root / "thief"
    shutil.copytree(laptop.home, thief_home)
    return thief_home


@dataclass
class StolenProfile:
    """A cluster, the owner's enrolled laptop, and at ``thief_home`` a copy of the laptop's whole profile (device
    state included) for a machine without that TPM."""

    cluster: Cluster
    laptop: Laptop
    thief_home: Path

    def thief_env(self, **extra: str) -> dict[str, str]:
        return self.cluster.env(
            TSH_HOME=str(self.thief_home),
            DEVICETRUST_TPM_TCTI=f"swtpm:host=127.0.0.1,port={free_port()}",
            DEVICETRUST_ASSET_TAG=self.laptop.serial,
            **extra,
        )

    def events(self, kind: str) -> list[dict[str, Any]]:
        out = ok(self.cluster.tctl("audit", "ls", f"--type={kind}", "--user=alice", "--format=json", "--limit=1000"))
        return list(json.loads(out))

    def wait_for_event(self, kind: str, predicate: Any) -> dict[str, Any]:
        """The latest ``kind`` event ``predicate`` accepts, once one is listed (within AUDIT_WAIT_SECONDS)."""
        deadline = time.monotonic() + AUDIT_WAIT_SECONDS
        while True:
            found = [event for event in self.events(kind) if predicate(event)]
            if found:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching {kind} event")
            time.sleep(0.2)
