"""Our certificates as the real tools see them: ssh-keygen, openssl, and an OpenSSL TLS handshake."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from devicetrust.crypto.ca import CertAuthority
from devicetrust.crypto.certs import (
    certificate_to_pem,
    issue_ssh_host_cert,
    issue_ssh_user_cert,
    issue_tls_server_cert,
    issue_x509_client_cert,
)
from devicetrust.crypto.identity import (
    EXT_DEVICE_ASSET_TAG,
    EXT_DEVICE_CREDENTIAL_ID,
    EXT_DEVICE_ID,
    EXT_ROLES,
    EXT_TRAITS,
    DeviceExtensions,
    Identity,
)
from devicetrust.crypto.keys import fingerprint_sha256, generate_private_key, private_key_to_pem, public_key_to_openssh

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
DEVICE = DeviceExtensions(device_id="dev-1", asset_tag="C02ABC", credential_id="cred-1")


def require_tool(name: str) -> str:
    """Path of a system tool; a missing tool skips locally but fails in CI, where it must be installed."""
    path = shutil.which(name) or next((p for p in (f"/usr/bin/{name}",) if Path(p).is_file()), None)
    if path is None:
        message = f"{name} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (required in CI)")
        pytest.skip(message)
    return path


def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    # TZ=UTC: ssh-keygen prints validity in local time
    env = {**os.environ, "TZ": "UTC", "LC_ALL": "C"}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"{argv[0]} failed ({result.returncode}): {result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="module")
def user_ca() -> CertAuthority:
    return CertAuthority.generate("user", "example.com", datetime.now(UTC))


@pytest.fixture(scope="module")
def host_ca() -> CertAuthority:
    return CertAuthority.generate("host", "example.com", datetime.now(UTC))


@pytest.fixture(scope="module")
def client_key() -> ec.EllipticCurvePrivateKey:
    return generate_private_key()


def current_identity(**overrides: object) -> Identity:
    # openssl verify and TLS handshakes use the real clock
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "username": "alice",
        "roles": ("access", "editor"),
        "logins": ("alice", "root"),
        "traits": {"logins": ("alice", "root")},
        "not_before": now - timedelta(minutes=1),
        "not_after": now + timedelta(hours=12),
        "device": DEVICE,
    }
    fields.update(overrides)
    return Identity(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ssh-keygen


def test_ssh_keygen_reads_user_cert(
    tmp_path: Path, user_ca: CertAuthority, client_key: ec.EllipticCurvePrivateKey
) -> None:
    ssh_keygen = require_tool("ssh-keygen")
    identity = Identity(
        username="alice",
        roles=("access",),
        logins=("alice", "root"),
        traits={},
        not_before=NOW,
        not_after=NOW + timedelta(hours=12),
        device=DEVICE,
    )
    cert_file = tmp_path / "id_ecdsa-cert.pub"
    cert_file.write_bytes(issue_ssh_user_cert(user_ca, client_key.public_key(), identity) + b"\n")
    out = run([ssh_keygen, "-L", "-f", str(cert_file)]).stdout
    assert "ecdsa-sha2-nistp256-cert-v01@openssh.com user certificate" in out
    assert 'Key ID: "alice"' in out
    assert "Valid: from 2025-03-01T12:00:00 to 2025-03-02T00:00:00" in out
    principals = out.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["alice", "root"]
    assert f"Signing CA: ECDSA {fingerprint_sha256(user_ca.public_key())}" in out
    extensions = {line.split()[0] for line in out.split("Extensions:")[1].strip().splitlines()}
    assert {
        EXT_DEVICE_ID,
        EXT_DEVICE_ASSET_TAG,
        EXT_DEVICE_CREDENTIAL_ID,
        EXT_ROLES,
        EXT_TRAITS,
    } <= extensions
    assert {"permit-pty", "permit-agent-forwarding", "permit-port-forwarding", "permit-user-rc"} <= extensions


def test_ssh_keygen_reads_host_cert(
    tmp_path: Path, host_ca: CertAuthority, client_key: ec.EllipticCurvePrivateKey
) -> None:
    ssh_keygen = require_tool("ssh-keygen")
    line = issue_ssh_host_cert(
        host_ca, client_key.public_key(), "node-uuid", ["node-1.example.com"], NOW, NOW + timedelta(days=1)
    )
    cert_file = tmp_path / "host-cert.pub"
    cert_file.write_bytes(line + b"\n")
    out = run([ssh_keygen, "-L", "-f", str(cert_file)]).stdout
    assert "host certificate" in out
    assert 'Key ID: "node-uuid"' in out
    assert "node-1.example.com" in out


def test_fingerprint_matches_ssh_keygen(tmp_path: Path, client_key: ec.EllipticCurvePrivateKey) -> None:
    ssh_keygen = require_tool("ssh-keygen")
    pub_file = tmp_path / "id_ecdsa.pub"
    pub_file.write_text(public_key_to_openssh(client_key.public_key()) + " test\n")
    out = run([ssh_keygen, "-l", "-E", "sha256", "-f", str(pub_file)]).stdout
    assert out.split()[1] == fingerprint_sha256(client_key.public_key())


# --------------------------------------------------------------------------- openssl


def test_openssl_shows_client_subject_and_device_oids(
    tmp_path: Path, user_ca: CertAuthority, client_key: ec.EllipticCurvePrivateKey
) -> None:
    openssl = require_tool("openssl")
    cert = issue_x509_client_cert(user_ca, client_key.public_key(), current_identity())
    pem = tmp_path / "client.pem"
    pem.write_bytes(certificate_to_pem(cert))
    out = run([openssl, "x509", "-text", "-noout", "-in", str(pem)]).stdout
    subject = next(line for line in out.splitlines() if line.strip().startswith("Subject:"))
    assert "CN = alice" in subject
    assert "O = access" in subject and "O = editor" in subject
    assert "1.3.9999.3.1 = dev-1" in subject
    assert "1.3.9999.3.2 = C02ABC" in subject
    assert "1.3.9999.3.3 = cred-1" in subject
    assert "TLS Web Client Authentication" in out


def test_openssl_verify_client_and_server_certs(
    tmp_path: Path, user_ca: CertAuthority, host_ca: CertAuthority, client_key: ec.EllipticCurvePrivateKey
) -> None:
    openssl = require_tool("openssl")
    user_ca_pem = tmp_path / "user-ca.pem"
    user_ca_pem.write_bytes(user_ca.certificate_pem())
    host_ca_pem = tmp_path / "host-ca.pem"
    host_ca_pem.write_bytes(host_ca.certificate_pem())
    client_pem = tmp_path / "client.pem"
    client_pem.write_bytes(
        certificate_to_pem(issue_x509_client_cert(user_ca, client_key.public_key(), current_identity()))
    )
    now = datetime.now(UTC)
    server_pem = tmp_path / "server.pem"
    server_pem.write_bytes(
        certificate_to_pem(
            issue_tls_server_cert(
                host_ca,
                generate_private_key().public_key(),
                ["localhost"],
                ["127.0.0.1"],
                now - timedelta(minutes=1),
                now + timedelta(days=1),
            )
        )
    )

    def verify(ca: Path, purpose: str, leaf: Path) -> subprocess.CompletedProcess[str]:
        return run([openssl, "verify", "-CAfile", str(ca), "-purpose", purpose, str(leaf)], check=False)

    ok = verify(user_ca_pem, "sslclient", client_pem)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{client_pem}: OK", ok.stderr
    ok = verify(host_ca_pem, "sslserver", server_pem)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{server_pem}: OK", ok.stderr
    # and the negatives: wrong purpose, wrong CA
    assert verify(user_ca_pem, "sslserver", client_pem).returncode != 0
    assert verify(host_ca_pem, "sslclient", server_pem).returncode != 0
    assert verify(host_ca_pem, "sslclient", client_pem).returncode != 0


def test_mutual_tls_handshake(
    tmp_path: Path, user_ca: CertAuthority, host_ca: CertAuthority, client_key: ec.EllipticCurvePrivateKey
) -> None:
    """The auth service's setup in miniature: host-CA server cert, user-CA client cert, both verified."""
    now = datetime.now(UTC)
    server_key = generate_private_key()
    server_cert = issue_tls_server_cert(
        host_ca,
        server_key.public_key(),
        ["localhost"],
        [],
        now - timedelta(minutes=1),
        now + timedelta(days=1),
    )
    client_cert = issue_x509_client_cert(user_ca, client_key.public_key(), current_identity())
    files = {
        "server.pem": certificate_to_pem(server_cert),
        "server.key": private_key_to_pem(server_key),
        "client.pem": certificate_to_pem(client_cert),
        "client.key": private_key_to_pem(client_key),
        "user-ca.pem": user_ca.certificate_pem(),
        "host-ca.pem": host_ca.certificate_pem(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    server_ctx.load_verify_locations(tmp_path / "user-ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    client_ctx.load_verify_locations(tmp_path / "host-ca.pem")

    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    # TLS 1.3 sends the client certificate after the client considers the handshake done
    client.write(b"ping")
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"
    peer = server.getpeercert()
    assert peer is not None
    assert ((("commonName", "alice"),)) in peer["subject"]


def test_require_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "devicetrust-no-such-tool"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_tool(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        require_tool(missing)
