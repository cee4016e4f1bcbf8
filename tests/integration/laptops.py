"""A user with an enrolled device: signed up from a simulated laptop (its own swtpm), the laptop registered and
enrolled, and logged in again so the login certificates carry the device."""

from __future__ import annotations

from pathlib import Path

from tests.integration.cluster import PASSWORD, Cluster
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
