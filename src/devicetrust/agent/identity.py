"""An agent's identity on disk (the SSH node's under ``<data_dir>/node/``, the database service's under
``<data_dir>/db/``), so a restarted agent does not need a new join token.

host.key        the host key (PKCS#8 PEM, 0600), generated once and kept across re-joins
host-cert.pub   the SSH host certificate the host CA issued at join (0644)
tls.crt         a database service's TLS server certificate from the host CA, for the same key (0644)
identity.json   host id, API session token, cluster CAs and the auth server it joined (0600)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from devicetrust.crypto.keys import generate_private_key, load_private_key_pem, private_key_to_pem
from devicetrust.errors import ConfigError, ValidationError
from devicetrust.files import write_atomic
from devicetrust.protocol import NodeJoinResponse

__all__ = ["NodeIdentity", "load_host_key", "load_identity", "save_identity"]

HOST_KEY_FILE = "host.key"
HOST_CERT_FILE = "host-cert.pub"
TLS_CERT_FILE = "tls.crt"
IDENTITY_FILE = "identity.json"
_FIELDS = (
    "host_id",
    "hostname",
    "cluster_name",
    "auth_server",
    "session_token",
    "host_ca_pem",
    "host_ca_ssh",
    "user_ca_ssh",
)


@dataclass(frozen=True)
class NodeIdentity:
    host_id: str
    hostname: str
    cluster_name: str
    auth_server: str
    session_token: str
    host_ca_pem: str
    host_ca_ssh: str
    user_ca_ssh: str
    host_cert: str
    tls_cert: str = ""
    #: the user CA as PEM, which signs users' X.509 certificates (database services check them)
    user_ca_pem: str = ""

    @classmethod
    def from_join(cls, reply: NodeJoinResponse, *, hostname: str, auth_server: str) -> NodeIdentity:
        return cls(
            host_id=reply.host_id,
            hostname=hostname,
            cluster_name=reply.cluster_name,
            auth_server=auth_server,
            session_token=reply.session_token,
            host_ca_pem=reply.host_ca_pem,
            host_ca_ssh=reply.host_ca_ssh,
            user_ca_ssh=reply.user_ca_ssh,
            host_cert=reply.host_cert,
            tls_cert=reply.tls_cert,
            user_ca_pem=reply.user_ca_pem,
        )


def load_host_key(node_dir: Path) -> ec.EllipticCurvePrivateKey:
    """The node's host key, created (0600) on first use."""
    path = node_dir / HOST_KEY_FILE
    if path.exists():
        try:
            return load_private_key_pem(path.read_bytes())
        except ValidationError as err:
            raise ConfigError(f"{path}: {err}") from None
    key = generate_private_key()
    write_atomic(path, private_key_to_pem(key))
    return key


def load_identity(node_dir: Path) -> NodeIdentity | None:
    """The stored identity, or None if the node never joined (or its files are incomplete)."""
    identity_path = node_dir / IDENTITY_FILE
    cert_path = node_dir / HOST_CERT_FILE
    if not identity_path.exists() or not cert_path.exists():
        return None
    try:
        data = json.loads(identity_path.read_text())
        values = {name: str(data[name]) for name in _FIELDS}
        user_ca_pem = str(data.get("user_ca_pem", ""))  # identities stored before database services lack it
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{identity_path} is damaged; delete {node_dir} and join the node again") from None
    tls_path = node_dir / TLS_CERT_FILE
    tls_cert = tls_path.read_text() if tls_path.exists() else ""
    return NodeIdentity(**values, host_cert=cert_path.read_text().strip(), tls_cert=tls_cert, user_ca_pem=user_ca_pem)


def save_identity(node_dir: Path, identity: NodeIdentity) -> None:
    data = asdict(identity)
    cert = data.pop("host_cert")
    tls_cert = data.pop("tls_cert")
    if tls_cert:
        write_atomic(node_dir / TLS_CERT_FILE, tls_cert.encode(), 0o644)
    write_atomic(node_dir / HOST_CERT_FILE, cert.strip().encode() + b"\n", 0o644)
    write_atomic(node_dir / IDENTITY_FILE, json.dumps(data, indent=2).encode())
