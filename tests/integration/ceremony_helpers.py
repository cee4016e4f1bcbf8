"""Raw-HTTP helpers shared by the SSH enforcement tests and bench_ssh_session: roles, users and bots, an
unsafe-software-key device enrolled and authenticated through the real ceremonies, and asyncssh sessions to the
cluster's node. Everything goes through the daemon's public API (:class:`benchmarks.harness.LeanClient`);
nothing is minted in-process here."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncssh
from benchmarks.harness import LeanClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicetrust.crypto.keys import generate_private_key, private_key_to_pem, public_key_to_openssh

CAP_PATH = "/v1/resources/cap/cluster-auth-preference"
#: The OS account sessions run as (created by tests/agent/harness.py:require_root_login).
LOGIN = "dt-test"

ClientKey = tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]


# ------------------------------------------------------------------------------------------------ settings
def set_device_trust(
    admin: LeanClient, mode: str, *, allow_unsafe_software_keys: bool = True, session_proof: str = "per_session"
) -> None:
    """Replace the cluster auth preference's device_trust settings."""
    cap = admin.call("GET", CAP_PATH)
    cap["spec"]["device_trust"] = {
        "mode": mode,
        "allow_unsafe_software_keys": allow_unsafe_software_keys,
        "session_proof": session_proof,
    }
    admin.call("PUT", "/v1/resources", {"resource": cap, "force": True})


def put_role(
    admin: LeanClient,
    name: str,
    mode: str | None,
    *,
    node_labels: dict[str, str] | None = None,
    logins: tuple[str, ...] = (LOGIN,),
) -> None:
    """A role granting ``logins`` on nodes matching ``node_labels`` (default: all) with ``device_trust_mode``
    ``mode`` (None: the option is not set)."""
    spec: dict[str, Any] = {"allow": {"node_labels": node_labels or {"*": "*"}, "logins": list(logins)}}
    if mode is not None:
        spec["options"] = {"device_trust_mode": mode}
    doc = {"kind": "role", "version": "v7", "metadata": {"name": name}, "spec": spec}
    admin.call("PUT", "/v1/resources", {"resource": doc, "force": True})


# ---------------------------------------------------------------------------------------------- identities
@dataclass
class UserLogin:
    """A user's (or bot's) key and the certificate the auth service issued for it."""

    name: str
    key: ec.EllipticCurvePrivateKey
    ssh_cert: str
    session_token: str

    def client_key(self, ssh_cert: str | None = None) -> ClientKey:
        """The asyncssh (key, certificate) pair; ``ssh_cert`` overrides the certificate (an augmented one)."""
        return (
            asyncssh.import_private_key(private_key_to_pem(self.key)),
            asyncssh.import_certificate(ssh_cert or self.ssh_cert),
        )


def create_user(admin: LeanClient, name: str, roles: list[str], logins: tuple[str, ...] = ()) -> str:
    """Create a user; returns its signup (invite) token."""
    body = {"name": name, "roles": roles, "traits": {"logins": list(logins)} if logins else {}}
    return str(admin.call("POST", "/v1/users", body)["invite_token"])


def signup_and_login(admin: LeanClient, anonymous: LeanClient, name: str, roles: list[str], password: str) -> UserLogin:
    """Create, sign up and log in a user with a fresh P-256 key: plain (not device-augmented) certificates."""
    invite = create_user(admin, name, roles)
    anonymous.call("POST", "/v1/signup", {"token": invite, "password": password})
    key = generate_private_key()
    reply = anonymous.call(
        "POST", "/v1/login", {"user": name, "password": password, "public_key": public_key_to_openssh(key.public_key())}
    )
    return UserLogin(name, key, reply["ssh_cert"], reply["session_token"])


def bot_join(anonymous: LeanClient, name: str, token: str) -> UserLogin:
    """Join a bot created by ``tctl bots add`` with its one-time token."""
    key = generate_private_key()
    reply = anonymous.call(
        "POST", "/v1/bots/join", {"token": token, "public_key": public_key_to_openssh(key.public_key())}
    )
    assert reply["identity"]["bot_name"] == name, reply["identity"]
    return UserLogin(reply["identity"]["user"], key, reply["ssh_cert"], reply["session_token"])


# ------------------------------------------------------------------------------------------------- devices
@dataclass
class SoftwareDevice:
    """A device enrolled with an unsafe software P-256 key (needs ``allow_unsafe_software_keys``)."""

    device_id: str
    asset_tag: str
    credential_id: str
    key: ec.EllipticCurvePrivateKey
    device_data: dict[str, str]


def answer(key: ec.EllipticCurvePrivateKey, challenge: dict[str, Any]) -> dict[str, Any]:
    """The reply to a macOS/software challenge: ECDSA-P256 over SHA-256(challenge), ASN.1 DER."""
    signature = key.sign(base64.b64decode(challenge["challenge"]), ec.ECDSA(hashes.SHA256()))
    return {"ceremony_id": challenge["ceremony_id"], "signature": base64.b64encode(signature).decode()}


def enroll_software_device(admin: LeanClient, user: LeanClient, asset_tag: str, credential_id: str) -> SoftwareDevice:
    """Register ``asset_tag`` (admin) and enroll it with a fresh software key (``user``: a logged-in client)."""
    added = admin.call("POST", "/v1/devices", {"os_type": "linux", "asset_tag": asset_tag, "create_enroll_token": True})
    key = generate_private_key()
    device_data = {"collect_time": datetime.now(UTC).isoformat(), "os_type": "linux", "serial_number": asset_tag}
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    challenge = user.call(
        "POST",
        "/v1/devices/enroll/begin",
        {
            "token": added["enroll_token"],
            "credential_id": credential_id,
            "device_data": device_data,
            "key": {"public_key_der": base64.b64encode(public_der).decode(), "attestation_type": "unsafe_software"},
        },
    )
    enrolled = user.call("POST", "/v1/devices/enroll/finish", answer(key, challenge))
    assert enrolled["spec"]["enroll_status"] == "enrolled", enrolled
    return SoftwareDevice(str(added["device"]["metadata"]["name"]), asset_tag, credential_id, key, device_data)


def authenticate_device(
    user: LeanClient, device: SoftwareDevice, ssh_cert: str, target: tuple[str, str] | None = None
) -> str:
    """Run the device-authentication ceremony for ``ssh_cert``; returns the device-augmented SSH certificate, or
    with ``target`` (kind, id) the session certificate for it."""
    begin: dict[str, Any] = {
        "credential_id": device.credential_id,
        "device_data": device.device_data,
        "ssh_cert": ssh_cert,
    }
    if target is not None:
        begin["target"] = {"kind": target[0], "id": target[1]}
    challenge = user.call("POST", "/v1/devices/authenticate/begin", begin)
    reply = user.call("POST", "/v1/devices/authenticate/finish", answer(device.key, challenge))
    return str(reply["ssh_cert"])


# ---------------------------------------------------------------------------------------------------- node
@dataclass(frozen=True)
class NodeInfo:
    host_id: str
    hostname: str
    host: str
    port: int


def wait_for_node(admin: LeanClient, within: float = 20.0) -> NodeInfo:
    """The cluster's (only) SSH node once it has joined and heartbeated."""
    deadline = time.monotonic() + within
    while True:
        items = admin.call("GET", "/v1/nodes")["items"]
        if items:
            node = items[0]
            host, _, port = str(node["addr"]).rpartition(":")
            return NodeInfo(str(node["host_id"]), str(node["hostname"]), host.strip("[]"), int(port))
        if time.monotonic() > deadline:
            raise AssertionError("no SSH node joined the cluster")
        time.sleep(0.1)


def connect_options(node: NodeInfo, host_ca_ssh: str, client_key: ClientKey, login: str = LOGIN) -> dict[str, Any]:
    """asyncssh.connect options: our key and certificate only, and the node verified against the host CA."""
    return {
        "host": node.host,
        "port": node.port,
        "username": login,
        "client_keys": [client_key],
        "known_hosts": asyncssh.import_known_hosts(f"@cert-authority * {host_ca_ssh.strip()}\n"),
        "host_key_alias": node.host_id,
        "config": None,
        "agent_path": None,
        "password_auth": False,
        "kbdint_auth": False,
        "gss_auth": False,
        "host_based_auth": False,
        "preferred_auth": "publickey",
        "connect_timeout": 10,
    }


async def run_command(
    node: NodeInfo, host_ca_ssh: str, client_key: ClientKey, command: str = "true", login: str = LOGIN
) -> asyncssh.SSHCompletedProcess:
    """Connect, run ``command`` in an exec session and disconnect. Raises what asyncssh raises (a rejected
    session channel: asyncssh.ChannelOpenError)."""
    async with asyncssh.connect(**connect_options(node, host_ca_ssh, client_key, login)) as conn:
        return await conn.run(command, check=False, encoding="utf-8")
